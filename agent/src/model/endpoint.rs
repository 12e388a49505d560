//! Endpoints as data: the persisted record of a namespace on the bridge,
//! what it needs in the kernel ([`EndpointSpec`]), the checks of an
//! `ns add` request that need no kernel, and the operations that build
//! an endpoint or repair it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use weft_common::name::host_veth_name;
use weft_common::{validate_name, Labels, MacAddr, NameError, PortMapping, Proto};

use super::attachment::AttachmentRecord;
use super::firewall::PortForward;
use super::observed::NsView;
use super::ops::{DeviceChange, NsOp, Op, VethSpec};
use super::{MAX_ENDPOINTS, MAX_PUBLISH, NS_IFACE};

/// One endpoint as persisted (`endpoints/<name>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRecord {
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub host_veth: String,
    #[serde(default)]
    pub publish: Vec<PortMapping>,
    /// A container's namespace attached by `weft-cni`: the runtime's, not
    /// weft's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<AttachmentRecord>,
    /// The operator's labels (`ns add --label`, `ns label`, or the CNI
    /// config's `args.cni.labels`).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

impl EndpointRecord {
    /// How the kernel layer names its namespace: the endpoint's name
    /// (under the agent's namespace directory), or the runtime's absolute
    /// path for an attachment.
    pub fn netns(&self) -> &str {
        self.attachment
            .as_ref()
            .map_or(self.name.as_str(), |a| a.netns.as_str())
    }

    /// The interface inside the namespace.
    pub fn iface(&self) -> &str {
        self.attachment
            .as_ref()
            .map_or(NS_IFACE, |a| a.ifname.as_str())
    }

    /// `namespace a` or `container c0ffee… interface eth0`, for log lines.
    pub fn describe(&self) -> String {
        match &self.attachment {
            None => format!("namespace {}", self.name),
            Some(a) => format!(
                "container {} interface {} ({})",
                short_id(&a.container_id),
                a.ifname,
                a.netns
            ),
        }
    }

    /// The port forwards its published ports need.
    pub fn forwards(&self) -> Vec<PortForward> {
        self.publish
            .iter()
            .map(|p| PortForward {
                host_ip: p.host_ip,
                host_port: p.host_port,
                proto: p.proto,
                target: self.ip,
                target_port: p.port,
            })
            .collect()
    }

    /// What takes the endpoint off the bridge: its published ports, its
    /// veth pair (and so its address and route) and, for a namespace of
    /// weft's, the namespace. An attachment's namespace is its runtime's.
    pub fn teardown_ops(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        let forwards = self.forwards();
        if !forwards.is_empty() {
            ops.push(Op::DelForwards(forwards));
        }
        ops.push(Op::DeleteDevice {
            name: self.host_veth.clone(),
            index: None,
        });
        if self.attachment.is_none() {
            ops.push(Op::DeleteNetns {
                name: self.name.clone(),
            });
        }
        ops
    }

    /// `", publishing 8080:80/tcp …"` for log lines, or nothing.
    pub fn published(&self) -> String {
        if self.publish.is_empty() {
            return String::new();
        }
        let list: Vec<String> = self.publish.iter().map(|p| p.to_string()).collect();
        format!(", publishing {}", list.join(" "))
    }
}

/// A container ID as runtimes show it: its first 12 characters.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// What an endpoint needs in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub name: String,
    /// The namespace as the kernel layer names it ([`EndpointRecord::netns`]).
    pub netns: String,
    /// The interface inside it.
    pub iface: String,
    /// Whether weft made the namespace (`ns add`); an attachment's belongs
    /// to its runtime: weft neither creates nor deletes it, nor touches its
    /// `lo`.
    pub owned: bool,
    pub host_veth: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub mac: MacAddr,
    pub mtu: u32,
    pub gateway: Ipv4Addr,
    /// The bridge.
    pub master: String,
}

/// `ns add` refused before anything changes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AddRefusal {
    #[error("invalid namespace name: {0}")]
    Name(#[from] NameError),
    #[error("namespace {0:?} already exists")]
    Duplicate(String),
    #[error("{count} published ports requested; at most {MAX_PUBLISH} per namespace")]
    TooManyPorts { count: usize },
    #[error(
        "this host already has {MAX_ENDPOINTS} namespaces, the most one Linux bridge can hold"
    )]
    BridgeFull,
    #[error("host interface name {veth} of namespace {name:?} collides with namespace {other:?}; pick another name")]
    VethCollision {
        name: String,
        veth: String,
        other: String,
    },
    #[error("--publish {spec} is given twice")]
    PublishTwice { spec: PortMapping },
    #[error(
        "--publish {spec}: host port {port}/{proto} is already published by namespace {owner:?}"
    )]
    PortPublished {
        spec: PortMapping,
        port: u16,
        proto: Proto,
        owner: String,
    },
}

/// The checks of `ns add` that need only the endpoints there are: the
/// name, the limits, the host veth name and the published ports among
/// themselves and against every other endpoint's. Returns the endpoint's
/// host veth name.
pub fn check_add(
    name: &str,
    publish: &[PortMapping],
    endpoints: &BTreeMap<String, EndpointRecord>,
) -> Result<String, AddRefusal> {
    validate_name(name)?;
    if publish.len() > MAX_PUBLISH {
        return Err(AddRefusal::TooManyPorts {
            count: publish.len(),
        });
    }
    if endpoints.contains_key(name) {
        return Err(AddRefusal::Duplicate(name.to_string()));
    }
    if endpoints.len() >= MAX_ENDPOINTS {
        return Err(AddRefusal::BridgeFull);
    }
    let veth = host_veth_name(name);
    if let Some(other) = endpoints.values().find(|r| r.host_veth == veth) {
        return Err(AddRefusal::VethCollision {
            name: name.to_string(),
            veth,
            other: other.name.clone(),
        });
    }
    for (i, p) in publish.iter().enumerate() {
        if publish[..i].iter().any(|q| q.conflicts_with(p)) {
            return Err(AddRefusal::PublishTwice { spec: *p });
        }
        if let Some((owner, _)) = endpoints
            .values()
            .flat_map(|r| r.publish.iter().map(move |q| (&r.name, q)))
            .find(|(_, q)| q.conflicts_with(p))
        {
            return Err(AddRefusal::PortPublished {
                spec: *p,
                port: p.host_port,
                proto: p.proto,
                owner: owner.clone(),
            });
        }
    }
    Ok(veth)
}

impl EndpointSpec {
    fn inside(&self, op: NsOp) -> Op {
        Op::InNetns {
            netns: self.netns.clone(),
            op,
        }
    }

    /// The interface's address and default route.
    fn addressing(&self) -> [NsOp; 2] {
        [
            NsOp::AddAddress {
                dev: self.iface.clone(),
                addr: self.ip,
                prefix: self.prefix,
            },
            NsOp::ReplaceDefaultRoute {
                gateway: self.gateway,
                dev: self.iface.clone(),
            },
        ]
    }

    pub fn veth(&self) -> VethSpec {
        VethSpec {
            host: self.host_veth.clone(),
            master: self.master.clone(),
            mtu: self.mtu,
            netns: self.netns.clone(),
            peer: self.iface.clone(),
            peer_mac: self.mac,
        }
    }

    /// The veth pair and everything inside the namespace, once the
    /// namespace exists and has no interface of that name: the veth's ends
    /// are made with the MTU and the inner MAC, so only `up`, the address
    /// and the route remain (and `lo` up, in a namespace weft made).
    pub fn wire_ops(&self) -> Vec<Op> {
        let mut ops = vec![Op::CreateVeth(self.veth())];
        if self.owned {
            ops.push(self.inside(NsOp::SetDevice(up("lo"))));
        }
        ops.push(self.inside(NsOp::SetDevice(up(&self.iface))));
        ops.extend(self.addressing().map(|o| self.inside(o)));
        ops
    }

    /// A new endpoint built from scratch, in order; each step but the
    /// first two lives inside the namespace and goes with it. An
    /// attachment's namespace exists already: only the wiring is built.
    pub fn build_ops(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        if self.owned {
            ops.push(Op::CreateNetns {
                name: self.name.clone(),
            });
        }
        ops.extend(self.wire_ops());
        ops
    }

    /// What a spare's `eth0` still needs to become this endpoint's (its
    /// `lo` is up, its MTU set; its MAC is a random one).
    pub fn spare_inside(&self) -> Vec<NsOp> {
        let mut ops = vec![NsOp::SetDevice(DeviceChange {
            mac: Some(self.mac),
            ..up(NS_IFACE)
        })];
        ops.extend(self.addressing());
        ops
    }

    /// What differs inside the namespace: `lo` up (in a namespace weft
    /// made), the interface up with the MTU, the address, the default route
    /// via the gateway. `None` when there is no `lo` or no interface to
    /// correct (the caller rebuilds the veth).
    pub fn inside_repairs(&self, v: &NsView) -> Option<Vec<NsOp>> {
        let lo = v.devices.get("lo")?;
        let eth = v.devices.get(&self.iface)?;
        let mut ops = Vec::new();
        if self.owned && !lo.up {
            ops.push(NsOp::SetDevice(up("lo")));
        }
        if !eth.up || eth.mtu != self.mtu {
            ops.push(NsOp::SetDevice(DeviceChange {
                mtu: (eth.mtu != self.mtu).then_some(self.mtu),
                ..up(&self.iface)
            }));
        }
        let [addr, route] = self.addressing();
        if !v
            .addresses
            .get(&self.iface)
            .is_some_and(|a| a.contains(&(self.ip, self.prefix)))
        {
            ops.push(addr);
        }
        let routed = v
            .default_routes
            .iter()
            .any(|(gw, dev)| *gw == Some(self.gateway) && dev.as_deref() == Some(&*self.iface));
        if !routed {
            ops.push(route);
        }
        Some(ops)
    }
}

fn up(name: &str) -> DeviceChange {
    DeviceChange {
        name: name.to_string(),
        mtu: None,
        mac: None,
        master: None,
        up: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::observed::Device;

    fn rec(name: &str, ip: [u8; 4], publish: &[&str]) -> EndpointRecord {
        EndpointRecord {
            name: name.into(),
            ip: Ipv4Addr::from(ip),
            mac: MacAddr::from_ipv4(Ipv4Addr::from(ip)),
            host_veth: host_veth_name(name),
            publish: publish.iter().map(|p| p.parse().unwrap()).collect(),
            attachment: None,
            labels: Labels::new(),
        }
    }

    fn table(recs: &[EndpointRecord]) -> BTreeMap<String, EndpointRecord> {
        recs.iter().map(|r| (r.name.clone(), r.clone())).collect()
    }

    fn ports(p: &[&str]) -> Vec<PortMapping> {
        p.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn add_checks_name_duplicates_and_ports() {
        let t = table(&[rec("a", [10, 244, 1, 2], &["8080:80"])]);
        assert_eq!(check_add("b", &[], &t), Ok(host_veth_name("b")));
        assert!(matches!(check_add("B!", &[], &t), Err(AddRefusal::Name(_))));
        assert_eq!(
            check_add("a", &[], &t),
            Err(AddRefusal::Duplicate("a".into()))
        );
        let e = check_add("b", &ports(&["8080:81"]), &t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--publish 8080:81/tcp: host port 8080/tcp is already published by namespace \"a\""
        );
        let e = check_add("b", &ports(&["9090:1", "9090:2"]), &t).unwrap_err();
        assert_eq!(e.to_string(), "--publish 9090:2/tcp is given twice");
        // Another protocol or another host address does not conflict.
        assert!(check_add("b", &ports(&["8080:80/udp"]), &t).is_ok());
        let many = vec!["1:1".parse().unwrap(); MAX_PUBLISH + 1];
        assert_eq!(
            check_add("b", &many, &t),
            Err(AddRefusal::TooManyPorts {
                count: MAX_PUBLISH + 1
            })
        );
    }

    #[test]
    fn a_full_bridge_is_refused() {
        let recs: Vec<EndpointRecord> = (0..MAX_ENDPOINTS)
            .map(|i| {
                rec(
                    &format!("n{i}"),
                    [10, 244, (i / 250) as u8, (i % 250) as u8],
                    &[],
                )
            })
            .collect();
        assert_eq!(
            check_add("x", &[], &table(&recs)),
            Err(AddRefusal::BridgeFull)
        );
    }

    fn spec() -> EndpointSpec {
        EndpointSpec {
            name: "a".into(),
            netns: "a".into(),
            iface: "eth0".into(),
            owned: true,
            host_veth: host_veth_name("a"),
            ip: Ipv4Addr::new(10, 244, 1, 2),
            prefix: 24,
            mac: MacAddr::from_ipv4(Ipv4Addr::new(10, 244, 1, 2)),
            mtu: 1450,
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            master: "weft0".into(),
        }
    }

    fn dev(name: &str, up: bool, mtu: u32) -> Device {
        Device {
            index: 1,
            name: name.into(),
            kind: None,
            master: None,
            mtu,
            mac: None,
            up,
            vxlan: None,
        }
    }

    fn healthy() -> NsView {
        let s = spec();
        let mut v = NsView::default();
        v.devices.insert("lo".into(), dev("lo", true, 65536));
        v.devices.insert("eth0".into(), dev("eth0", true, 1450));
        v.addresses
            .entry("eth0".into())
            .or_default()
            .insert((s.ip, s.prefix));
        v.default_routes
            .push((Some(s.gateway), Some("eth0".into())));
        v
    }

    #[test]
    fn inside_repairs_only_what_differs() {
        let s = spec();
        assert_eq!(s.inside_repairs(&healthy()), Some(vec![]));
        let mut v = healthy();
        v.addresses.clear();
        v.default_routes.clear();
        v.devices.get_mut("eth0").unwrap().mtu = 1500;
        let ops: Vec<String> = s
            .inside_repairs(&v)
            .unwrap()
            .iter()
            .map(|o| o.to_string())
            .collect();
        assert_eq!(
            ops,
            [
                "link set eth0 mtu 1450 up",
                "address add 10.244.1.2/24 dev eth0",
                "route replace default via 10.244.1.1 dev eth0"
            ]
        );
        v.devices.remove("eth0");
        assert_eq!(s.inside_repairs(&v), None, "no eth0: rebuild the veth");
    }

    #[test]
    fn build_creates_the_namespace_then_wires_it() {
        let ops: Vec<String> = spec().build_ops().iter().map(|o| o.to_string()).collect();
        assert_eq!(ops[0], "netns add a");
        assert!(ops[1].starts_with("link add wv"), "{ops:?}");
        assert_eq!(ops.len(), 6, "{ops:?}");
        assert_eq!(
            ops[5],
            "route replace default via 10.244.1.1 dev eth0 (in namespace a)"
        );
    }
}
