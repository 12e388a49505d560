//! Desired against observed: the changes that bring the host namespace,
//! weft's nftables table and every endpoint in line, each with the reason
//! the agent logs for it. Only what differs is changed, so a restart on a
//! host that is as it should be changes nothing.

use std::collections::BTreeMap;

use thiserror::Error;
use weft_common::name::is_weft_veth_name;

use super::desired::{FirewallWant, HostSpec, Sysctl, VxlanSpec};
use super::endpoint::EndpointSpec;
use super::observed::{FirewallView, HostView, NetnsPresence, NsView};
use super::ops::{DeviceChange, NsOp, Op};
use super::BRIDGE;

/// Why a reconcile runs: what is missing at start was not deleted under
/// the agent, so the reasons it logs differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Start,
    /// A kernel event or the periodic check.
    Repair,
}

/// One operation and why it is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub op: Op,
    pub why: String,
    /// Logged at debug only: it follows from a change already logged (the
    /// insides of a namespace that was just re-created).
    pub quiet: bool,
}

impl Change {
    pub fn new(op: Op, why: impl Into<String>) -> Change {
        Change {
            op,
            why: why.into(),
            quiet: false,
        }
    }

    fn quiet(op: Op, why: impl Into<String>) -> Change {
        Change {
            quiet: true,
            ..Change::new(op, why)
        }
    }
}

/// The host is in a state weft must not change by itself.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DiffError {
    #[error("{BRIDGE} exists but is a {kind} device, not a bridge; remove it so weft can create its bridge")]
    NotABridge { kind: String },
}

fn found(cause: Cause) -> &'static str {
    match cause {
        Cause::Start => "found so at agent start",
        Cause::Repair => "changed outside weft",
    }
}

fn created(cause: Cause) -> &'static str {
    match cause {
        Cause::Start => "agent start (not present)",
        Cause::Repair => "restored (deleted outside weft)",
    }
}

/// The device a per-device sysctl key is about (`…/conf/<dev>/…`).
fn sysctl_dev(key: &str) -> Option<&str> {
    let rest = key
        .strip_prefix("net/ipv4/conf/")
        .or_else(|| key.strip_prefix("net/ipv6/conf/"))?;
    rest.split('/').next()
}

fn sysctls<'a>(
    want: impl Iterator<Item = &'a Sysctl>,
    seen: &BTreeMap<String, String>,
) -> Vec<Change> {
    want.filter_map(|s| {
        let now = seen.get(&s.key).map(|v| v.trim());
        (now != Some(s.value)).then(|| {
            Change::new(
                Op::Sysctl {
                    key: s.key.clone(),
                    value: s.value.to_string(),
                },
                format!("{} (was {})", s.why, now.unwrap_or("unset")),
            )
        })
    })
    .collect()
}

/// The sysctls, the bridge and its gateway address, and in cluster mode
/// the vxlan device and its address, in the order they can be applied
/// (a device's sysctls once it exists). Also says whether the vxlan
/// device is (re)created, which takes its overlay entries with it.
pub fn host(
    spec: &HostSpec,
    want: &[Sysctl],
    seen: &HostView,
    cause: Cause,
) -> Result<(Vec<Change>, bool), DiffError> {
    let of = |dev: Option<&str>| {
        let w: Vec<&Sysctl> = want.iter().filter(|s| sysctl_dev(&s.key) == dev).collect();
        sysctls(w.into_iter(), &seen.sysctls)
    };
    let mut out = of(None);
    out.extend(bridge(spec, seen, cause)?);
    out.extend(of(Some(BRIDGE)));
    let mut vxlan_new = false;
    if let Some(v) = &spec.vxlan {
        let (changes, new) = vxlan(v, spec.vxlan_addr(), seen, cause);
        vxlan_new = new;
        out.extend(changes);
        out.extend(of(Some(&v.name)));
    }
    Ok((out, vxlan_new))
}

/// Addresses of `dev`: any other than `want` goes, `want` is added.
fn addresses(
    dev: &str,
    want: (std::net::Ipv4Addr, u8),
    seen: &HostView,
    other: impl Fn() -> String,
    missing: &str,
) -> Vec<Change> {
    let empty = Default::default();
    let have = seen.addresses.get(dev).unwrap_or(&empty);
    let mut out: Vec<Change> = have
        .iter()
        .filter(|a| **a != want)
        .map(|(ip, len)| {
            Change::new(
                Op::DelAddress {
                    dev: dev.to_string(),
                    addr: *ip,
                    prefix: *len,
                },
                other(),
            )
        })
        .collect();
    if !have.contains(&want) {
        out.push(Change::new(
            Op::AddAddress {
                dev: dev.to_string(),
                addr: want.0,
                prefix: want.1,
            },
            missing,
        ));
    }
    out
}

fn bridge(spec: &HostSpec, seen: &HostView, cause: Cause) -> Result<Vec<Change>, DiffError> {
    let mac = spec.bridge_mac();
    let mut out = Vec::new();
    let exists = match seen.devices.get(BRIDGE) {
        None => {
            out.push(Change::new(
                Op::CreateBridge {
                    name: BRIDGE.into(),
                    mac,
                    mtu: spec.mtu,
                },
                created(cause),
            ));
            false
        }
        Some(d) if !d.is_kind("bridge") => {
            return Err(DiffError::NotABridge {
                kind: d.kind.clone().unwrap_or_else(|| "unknown".into()),
            })
        }
        Some(d) => {
            if d.mtu != spec.mtu || d.mac != Some(mac) || !d.up {
                let old = d.mac.map_or_else(|| "none".to_string(), |m| m.to_string());
                out.push(Change::new(
                    Op::SetDevice(DeviceChange {
                        name: BRIDGE.into(),
                        mtu: Some(spec.mtu),
                        mac: Some(mac),
                        master: None,
                        up: true,
                    }),
                    format!(
                        "corrected (was mtu {} mac {old} up={}; {})",
                        d.mtu,
                        d.up,
                        found(cause)
                    ),
                ));
            }
            true
        }
    };
    let missing = match (exists, cause) {
        (false, _) => "gateway of the new bridge",
        (true, Cause::Start) => "gateway missing at agent start",
        (true, Cause::Repair) => "gateway restored (removed outside weft)",
    };
    out.extend(addresses(
        BRIDGE,
        (spec.gateway(), spec.subnet.prefix()),
        seen,
        || format!("not this host's gateway ({})", found(cause)),
        missing,
    ));
    Ok(out)
}

fn vxlan(
    v: &VxlanSpec,
    addr: (std::net::Ipv4Addr, u8),
    seen: &HostView,
    cause: Cause,
) -> (Vec<Change>, bool) {
    let mut out = Vec::new();
    let new = match seen.devices.get(&v.name) {
        Some(d) if v.matches(d) => {
            if d.mtu != v.mtu || d.mac != Some(v.mac) || !d.up {
                out.push(Change::new(
                    Op::SetDevice(DeviceChange {
                        name: v.name.clone(),
                        mtu: (d.mtu != v.mtu).then_some(v.mtu),
                        mac: (d.mac != Some(v.mac)).then_some(v.mac),
                        master: None,
                        up: true,
                    }),
                    format!(
                        "corrected (was mtu {} up={}; {})",
                        d.mtu,
                        d.up,
                        found(cause)
                    ),
                ));
            }
            false
        }
        Some(d) => {
            out.push(Change::new(
                Op::DeleteDevice {
                    name: v.name.clone(),
                    index: Some(d.index),
                },
                format!(
                    "it exists with other parameters ({:?}, kind {:?}); re-creating it as vni {} port {} local {:?}",
                    d.vxlan, d.kind, v.vni, v.port, v.local
                ),
            ));
            out.push(Change::new(
                Op::CreateVxlan(v.clone()),
                "re-created: it had other parameters",
            ));
            true
        }
        None => {
            out.push(Change::new(Op::CreateVxlan(v.clone()), created(cause)));
            true
        }
    };
    let missing = match (new, cause) {
        (true, _) => "new device",
        (false, Cause::Start) => "missing at agent start",
        (false, Cause::Repair) => "restored (removed outside weft)",
    };
    let mut view = seen.clone();
    if new {
        view.addresses.remove(&v.name);
    }
    out.extend(addresses(
        &v.name,
        addr,
        &view,
        || format!("not this host's subnet address ({})", found(cause)),
        missing,
    ));
    (out, new)
}

/// weft's nftables table: replaced whole when it is missing or its rules
/// are not weft's; otherwise only map and set elements change.
pub fn firewall(want: &FirewallWant, seen: &FirewallView, cause: Cause) -> Vec<Change> {
    let sync = |why: &str| {
        vec![Change::new(
            Op::FirewallSync {
                spec: want.spec.clone(),
                forwards: want.forwards.clone(),
                peers: want.peers.clone(),
            },
            why,
        )]
    };
    if !seen.exists {
        return sync(match cause {
            Cause::Start => "created at agent start",
            Cause::Repair => "restored (deleted outside weft)",
        });
    }
    if !seen.rules_as_desired {
        return sync(match cause {
            Cause::Start => "replaced at agent start: its rules differ from this agent's",
            Cause::Repair => "replaced: its rules were changed outside weft",
        });
    }
    let missing = match cause {
        Cause::Start => "missing at agent start",
        Cause::Repair => "restored (removed outside weft)",
    };
    let mut out = Vec::new();
    let extra: Vec<_> = seen
        .forwards
        .iter()
        .filter(|f| !want.forwards.contains(f))
        .copied()
        .collect();
    if !extra.is_empty() {
        out.push(Change::new(
            Op::DelForwards(extra),
            "no namespace publishes it",
        ));
    }
    let absent: Vec<_> = want
        .forwards
        .iter()
        .filter(|f| !seen.forwards.contains(f))
        .copied()
        .collect();
    if !absent.is_empty() {
        out.push(Change::new(Op::AddForwards(absent), missing));
    }
    let add: Vec<_> = want.peers.difference(&seen.peers).copied().collect();
    let del: Vec<_> = seen.peers.difference(&want.peers).copied().collect();
    if !add.is_empty() || !del.is_empty() {
        out.push(Change::new(
            Op::UpdatePeers { add, del },
            format!("{missing}; or no peer has it"),
        ));
    }
    out
}

/// Veths named like an endpoint's host end that no endpoint owns: left by
/// a namespace deleted outside weft, or by a crash half-way through.
pub fn orphan_veths(endpoints: &[EndpointSpec], seen: &HostView) -> Vec<Change> {
    seen.devices
        .values()
        .filter(|d| is_weft_veth_name(&d.name) && d.is_kind("veth"))
        .filter(|d| !endpoints.iter().any(|e| e.host_veth == d.name))
        .map(|d| {
            Change::new(
                Op::DeleteDevice {
                    name: d.name.clone(),
                    index: Some(d.index),
                },
                "no namespace owns it",
            )
        })
        .collect()
}

/// What a half-built endpoint (`ns add` failed or the agent died half-way)
/// may have left: its host veth and its namespace.
pub fn leftovers(name: &str, veth: &str, seen: &HostView) -> Vec<Change> {
    let why = "half-built when ns add failed or the agent stopped";
    let mut out = Vec::new();
    if let Some(d) = seen.devices.get(veth) {
        out.push(Change::new(
            Op::DeleteDevice {
                name: veth.to_string(),
                index: Some(d.index),
            },
            why,
        ));
    }
    if seen.netns.get(name) == Some(&NetnsPresence::Mounted) {
        out.push(Change::new(
            Op::DeleteNetns {
                name: name.to_string(),
            },
            why,
        ));
    }
    out
}

/// The outcome of checking one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointCheck {
    /// Nothing to change.
    Healthy,
    /// Its namespace has to be looked into first (observe it, then check
    /// again with the view).
    LookInside,
    Repair(Vec<Change>),
    /// An attachment whose namespace is gone (the runtime deleted it, or
    /// crashed without a CNI DEL): its address and ports are to be
    /// released and its record removed.
    Gone,
}

/// One endpoint: its namespace, its host veth (a port of the bridge, up,
/// with the MTU) and, when it is looked into, its inside. A repair run
/// looks inside only when the host side is visibly broken: that is rare,
/// and looking into every namespace every period would cost more.
pub fn endpoint(
    e: &EndpointSpec,
    seen: &HostView,
    inside: Option<&NsView>,
    cause: Cause,
) -> EndpointCheck {
    let host = seen.devices.get(&e.host_veth);
    let healthy_host =
        host.is_some_and(|d| d.master.as_deref() == Some(&e.master) && d.up && d.mtu == e.mtu);
    let presence = seen
        .netns
        .get(&e.netns)
        .copied()
        .unwrap_or(NetnsPresence::Absent);
    if presence != NetnsPresence::Mounted {
        if !e.owned {
            return EndpointCheck::Gone;
        }
        return EndpointCheck::Repair(rebuild(e, presence, host.map(|d| d.index)));
    }
    if cause == Cause::Repair && healthy_host {
        return EndpointCheck::Healthy;
    }
    let Some(inside) = inside else {
        return EndpointCheck::LookInside;
    };
    let mut out = Vec::new();
    let repairs = match host {
        Some(_) => e.inside_repairs(inside),
        None => None,
    };
    match (host, repairs) {
        (Some(d), Some(repairs)) => {
            if !healthy_host {
                out.push(Change::new(
                    Op::SetDevice(DeviceChange {
                        name: d.name.clone(),
                        mtu: (d.mtu != e.mtu).then_some(e.mtu),
                        mac: None,
                        master: Some(e.master.clone()),
                        up: true,
                    }),
                    format!(
                        "corrected {} of namespace {}: port of {}, up, mtu {}",
                        d.name, e.netns, e.master, e.mtu
                    ),
                ));
            }
            out.extend(repairs.into_iter().map(|op| {
                Change::new(
                    Op::InNetns {
                        netns: e.netns.clone(),
                        op,
                    },
                    "restored (changed outside weft)",
                )
            }));
        }
        (host, _) => {
            // The pair is gone or broken: whatever is left of it goes (a
            // stray eth0 inside, a host end whose peer is elsewhere).
            if let Some(d) = host {
                out.push(Change::new(
                    Op::DeleteDevice {
                        name: d.name.clone(),
                        index: Some(d.index),
                    },
                    format!("its peer is not the {} of namespace {}", e.iface, e.netns),
                ));
            }
            if inside.devices.contains_key(&e.iface) {
                out.push(Change::new(
                    Op::InNetns {
                        netns: e.netns.clone(),
                        op: NsOp::DeleteDevice {
                            name: e.iface.clone(),
                        },
                    },
                    "stray: its veth pair is gone",
                ));
            }
            out.extend(wire(e));
        }
    }
    if out.is_empty() {
        EndpointCheck::Healthy
    } else {
        EndpointCheck::Repair(out)
    }
}

/// A new veth pair for `e` and its inside: the veth creation is logged,
/// the rest follows from it.
fn wire(e: &EndpointSpec) -> Vec<Change> {
    let mut ops = e.wire_ops().into_iter();
    let mut out = vec![Change::new(
        ops.next().expect("wire_ops starts with the veth"),
        format!(
            "re-created veth {} of namespace {} (it was missing)",
            e.host_veth, e.netns
        ),
    )];
    out.extend(ops.map(|op| Change::quiet(op, "new veth")));
    out
}

/// The namespace is gone (or its path holds something else): a new one,
/// and a new veth pair into it. A host veth still present leads into the
/// old namespace (kept alive by some process): it is not this endpoint's
/// any more.
fn rebuild(e: &EndpointSpec, presence: NetnsPresence, old_veth: Option<u32>) -> Vec<Change> {
    let mut out = Vec::new();
    if presence == NetnsPresence::Other {
        out.push(Change::new(
            Op::DeleteNetns {
                name: e.name.clone(),
            },
            "not a namespace any more: removed to re-create it",
        ));
    }
    out.push(Change::new(
        Op::CreateNetns {
            name: e.name.clone(),
        },
        format!("re-created namespace {} (it was missing)", e.name),
    ));
    if let Some(index) = old_veth {
        out.push(Change::new(
            Op::DeleteDevice {
                name: e.host_veth.clone(),
                index: Some(index),
            },
            format!("it leads into the old namespace of {}", e.name),
        ));
    }
    out.extend(wire(e));
    out
}
