//! What the fake kernel holds, and how an operation changes it: as the
//! real kernel does (a deleted device takes its addresses, routes,
//! neighbours, settings and veth peer along; a deleted namespace its
//! devices; creating what exists fails with EEXIST).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use weft_common::{MacAddr, Proto};

use crate::firewall::{FirewallSpec, PortForward};
use crate::kernel::{Cause, KernelError};
use crate::model::observed::{Device, Hop};
use crate::model::ops::{DeviceChange, NsOp, Op, SpareId};
use crate::model::overlay::RouteTo;
use crate::model::RTPROT_WEFT;

/// A namespace's devices and addressing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeNs {
    pub devices: BTreeMap<String, Device>,
    pub addresses: BTreeMap<String, BTreeSet<(Ipv4Addr, u8)>>,
    pub default_route: Option<(Ipv4Addr, String)>,
}

impl FakeNs {
    pub fn new(next: &mut u32) -> FakeNs {
        let mut ns = FakeNs::default();
        ns.devices
            .insert("lo".into(), device(next, "lo", None, 65536));
        ns
    }
}

/// The fake firewall table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeTable {
    pub spec: FirewallSpec,
    pub forwards: BTreeSet<PortForward>,
    pub peers: BTreeSet<Ipv4Addr>,
}

/// Everything the fake kernel holds; tests read and change it directly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeState {
    pub next_index: u32,
    pub devices: BTreeMap<String, Device>,
    pub addresses: BTreeMap<String, BTreeSet<(Ipv4Addr, u8)>>,
    /// (device, address) → MAC.
    pub neigh: BTreeMap<(String, Ipv4Addr), MacAddr>,
    /// (device, MAC, destination).
    pub fdb: BTreeSet<(String, MacAddr, Ipv4Addr)>,
    /// Main-table routes: where to, and the protocol that made them.
    pub routes: BTreeMap<Ipv4Network, (RouteTo, u8)>,
    pub sysctls: BTreeMap<String, String>,
    /// Mounted endpoint namespaces, by name.
    pub netns: BTreeMap<String, FakeNs>,
    /// Namespace paths that hold some other file.
    pub stray_files: BTreeSet<String>,
    /// Host veth → (namespace, peer device).
    pub veth_peers: BTreeMap<String, (String, String)>,
    pub firewall: Option<FakeTable>,
    pub spares: BTreeMap<SpareId, FakeNs>,
    pub next_spare: u64,
    /// Ports something listens on: (host address, port, protocol).
    pub busy_ports: BTreeSet<(Option<Ipv4Addr>, u16, Proto)>,
    pub hops: BTreeMap<Ipv4Addr, Hop>,
    pub default_dev: Option<String>,
    /// The network policy table, as last replaced and edited.
    pub policy: Option<crate::model::policy::PolicyTable>,
    /// Every operation applied, in order.
    pub applied: Vec<Op>,
}

pub(super) fn device(next: &mut u32, name: &str, kind: Option<&str>, mtu: u32) -> Device {
    *next += 1;
    Device {
        index: *next,
        name: name.to_string(),
        kind: kind.map(str::to_string),
        master: None,
        mtu,
        mac: None,
        up: false,
        vxlan: None,
    }
}

pub(super) fn refused(what: impl Into<String>, errno: i32) -> KernelError {
    KernelError::new(
        what,
        Cause::Refused {
            errno,
            message: None,
        },
    )
}

impl FakeState {
    /// Removes a device as the kernel does: with its addresses, routes,
    /// neighbours, settings, ports' membership and veth peer.
    pub fn remove_device(&mut self, name: &str) {
        if self.devices.remove(name).is_none() {
            return;
        }
        self.addresses.remove(name);
        let conf = [
            format!("net/ipv4/conf/{name}/"),
            format!("net/ipv6/conf/{name}/"),
        ];
        self.sysctls
            .retain(|k, _| !conf.iter().any(|c| k.starts_with(c.as_str())));
        self.neigh.retain(|(d, _), _| d != name);
        self.fdb.retain(|(d, _, _)| d != name);
        self.routes.retain(|_, (r, _)| &*r.dev != name);
        for d in self.devices.values_mut() {
            if d.master.as_deref() == Some(name) {
                d.master = None;
            }
        }
        if let Some((ns, peer)) = self.veth_peers.remove(name) {
            if let Some(n) = self.netns.get_mut(&ns) {
                n.devices.remove(&peer);
                n.addresses.remove(&peer);
                if n.default_route.as_ref().is_some_and(|(_, d)| *d == peer) {
                    n.default_route = None;
                }
            }
        }
    }

    fn remove_netns(&mut self, name: &str) {
        if self.netns.remove(name).is_some() {
            let hosts: Vec<String> = self
                .veth_peers
                .iter()
                .filter(|(_, (ns, _))| ns == name)
                .map(|(h, _)| h.clone())
                .collect();
            for h in hosts {
                self.veth_peers.remove(&h);
                self.remove_device(&h);
            }
        }
        self.stray_files.remove(name);
    }

    fn dev_mut(&mut self, name: &str) -> Result<&mut Device, KernelError> {
        self.devices
            .get_mut(name)
            .ok_or_else(|| refused(format!("find link {name}"), libc::ENODEV))
    }

    fn change(&mut self, c: &DeviceChange) -> Result<(), KernelError> {
        if let Some(m) = &c.master {
            if !self.devices.contains_key(m) {
                return Err(refused(format!("find link {m}"), libc::ENODEV));
            }
        }
        let d = self.dev_mut(&c.name)?;
        apply_change(d, c);
        Ok(())
    }

    fn inside(&mut self, ns: &str, op: &NsOp) -> Result<(), KernelError> {
        let n = self
            .netns
            .get_mut(ns)
            .ok_or_else(|| refused(format!("open namespace {ns}"), libc::ENOENT))?;
        ns_op(n, op)
    }

    pub(super) fn one(&mut self, op: &Op) -> Result<(), KernelError> {
        let exists = |what: String| refused(what, libc::EEXIST);
        match op {
            Op::Sysctl { key, value } => {
                self.sysctls.insert(key.clone(), value.clone());
            }
            Op::CreateBridge { name, mac, mtu } => {
                if self.devices.contains_key(name) {
                    return Err(exists(format!("create bridge {name}")));
                }
                let mut d = device(&mut self.next_index, name, Some("bridge"), *mtu);
                d.mac = Some(*mac);
                d.up = true;
                self.devices.insert(name.clone(), d);
                for k in ["rp_filter", "route_localnet"] {
                    self.sysctls
                        .insert(format!("net/ipv4/conf/{name}/{k}"), "0".into());
                }
            }
            Op::CreateVxlan(v) => {
                if self.devices.contains_key(&v.name) {
                    return Err(exists(format!("create vxlan device {}", v.name)));
                }
                let mut d = device(&mut self.next_index, &v.name, Some("vxlan"), v.mtu);
                d.mac = Some(v.mac);
                d.up = true;
                d.vxlan = Some(crate::model::observed::VxlanInfo {
                    vni: Some(v.vni),
                    port: Some(v.port),
                    local: v.local,
                    dev: v.dev.clone(),
                    learning: Some(false),
                    udp_csum: Some(crate::model::VXLAN_UDP_CSUM),
                });
                self.devices.insert(v.name.clone(), d);
                self.sysctls
                    .insert(format!("net/ipv4/conf/{}/rp_filter", v.name), "0".into());
                self.sysctls
                    .insert(format!("net/ipv6/conf/{}/disable_ipv6", v.name), "0".into());
            }
            Op::SetDevice(c) => self.change(c)?,
            Op::PolicyReplace(t) => self.policy = Some((**t).clone()),
            Op::PolicySets(edits) => {
                let t = self
                    .policy
                    .as_mut()
                    .ok_or_else(|| refused("update policy sets", libc::ENOENT))?;
                for e in edits {
                    let set = t
                        .sets
                        .get_mut(&e.id)
                        .ok_or_else(|| refused(format!("update set {}", e.id), libc::ENOENT))?;
                    for ip in &e.remove {
                        if !set.remove(ip) {
                            return Err(refused(
                                format!("delete {ip} from {}", e.id),
                                libc::ENOENT,
                            ));
                        }
                    }
                    set.extend(e.add.iter().copied());
                }
            }
            Op::DeleteDevice { name, index } => {
                let same = self
                    .devices
                    .get(name)
                    .is_some_and(|d| index.is_none_or(|i| d.index == i));
                if same {
                    self.remove_device(name);
                }
            }
            Op::AddAddress { dev, addr, prefix } => {
                self.dev_mut(dev)?;
                if !self
                    .addresses
                    .entry(dev.clone())
                    .or_default()
                    .insert((*addr, *prefix))
                {
                    return Err(exists(format!("add address {addr}/{prefix} to {dev}")));
                }
            }
            Op::DelAddress { dev, addr, prefix } => {
                let removed = self
                    .addresses
                    .get_mut(dev)
                    .is_some_and(|a| a.remove(&(*addr, *prefix)));
                if !removed {
                    return Err(refused(
                        format!("delete address {addr}/{prefix} from {dev}"),
                        libc::EADDRNOTAVAIL,
                    ));
                }
            }
            Op::ReplaceNeigh { dev, ip, mac } => {
                self.dev_mut(dev)?;
                self.neigh.insert((dev.to_string(), *ip), *mac);
            }
            Op::DelNeigh { dev, ip } => {
                self.neigh.remove(&(dev.to_string(), *ip));
            }
            Op::ReplaceFdb { dev, mac, dst } => {
                self.dev_mut(dev)?;
                self.fdb.insert((dev.to_string(), *mac, *dst));
            }
            Op::DelFdb { dev, mac, dst } => match dst {
                Some(d) => {
                    self.fdb.remove(&(dev.to_string(), *mac, *d));
                }
                None => self.fdb.retain(|(d, m, ip)| {
                    !(d.as_str() == &**dev && m == mac && ip.is_unspecified())
                }),
            },
            Op::ReplaceRoute { dst, to } => {
                self.dev_mut(&to.dev)?;
                self.routes.insert(*dst, (to.clone(), RTPROT_WEFT));
            }
            Op::DelRoute { dst } => {
                self.routes.remove(dst);
            }
            Op::CreateNetns { name } => {
                if self.netns.contains_key(name) || self.stray_files.contains(name) {
                    return Err(exists(format!("create namespace {name}")));
                }
                let ns = FakeNs::new(&mut self.next_index);
                self.netns.insert(name.clone(), ns);
            }
            Op::DeleteNetns { name } => self.remove_netns(name),
            Op::CreateVeth(v) => {
                if self.devices.contains_key(&v.host) {
                    return Err(exists(format!("create veth {}", v.host)));
                }
                if !self.devices.contains_key(&v.master) {
                    return Err(refused(format!("find link {}", v.master), libc::ENODEV));
                }
                let next = &mut self.next_index;
                let mut peer = device(next, &v.peer, Some("veth"), v.mtu);
                peer.mac = Some(v.peer_mac);
                let mut host = device(next, &v.host, Some("veth"), v.mtu);
                host.master = Some(v.master.clone());
                host.up = true;
                let ns = self
                    .netns
                    .get_mut(&v.netns)
                    .ok_or_else(|| refused(format!("open namespace {}", v.netns), libc::ENOENT))?;
                if ns.devices.contains_key(&v.peer) {
                    return Err(exists(format!("create veth {} (peer {})", v.host, v.peer)));
                }
                ns.devices.insert(v.peer.clone(), peer);
                self.devices.insert(v.host.clone(), host);
                self.veth_peers
                    .insert(v.host.clone(), (v.netns.clone(), v.peer.clone()));
            }
            Op::InNetns { netns, op } => self.inside(netns, op)?,
            Op::AdoptSpare {
                spare,
                netns,
                host,
                master,
                inside,
            } => {
                let mut ns = self.spares.remove(spare).ok_or_else(|| {
                    KernelError::other(format!("take spare namespace for {netns}"), "no such spare")
                })?;
                if self.netns.contains_key(netns) || self.stray_files.contains(netns) {
                    return Err(exists(format!("create namespace {netns}")));
                }
                let old = format!("wp.{}", spare.0);
                let mut d = self
                    .devices
                    .remove(&old)
                    .ok_or_else(|| KernelError::other("take a spare", "its veth is gone"))?;
                for op in inside {
                    ns_op(&mut ns, op)?;
                }
                d.name = host.clone();
                d.master = Some(master.clone());
                d.up = true;
                self.devices.insert(host.clone(), d);
                self.veth_peers
                    .insert(host.clone(), (netns.clone(), "eth0".into()));
                self.netns.insert(netns.clone(), ns);
            }
            Op::FirewallSync {
                spec,
                forwards,
                peers,
            } => {
                self.firewall = Some(FakeTable {
                    spec: spec.clone(),
                    forwards: forwards.iter().copied().collect(),
                    peers: peers.clone(),
                });
            }
            Op::AddForwards(f) => {
                let t = self
                    .firewall
                    .as_mut()
                    .ok_or_else(|| refused("add port forward", libc::ENOENT))?;
                let key = |p: &PortForward| (p.host_ip, p.host_port, p.proto);
                if f.iter()
                    .any(|p| t.forwards.iter().any(|q| key(q) == key(p)))
                {
                    return Err(exists("add port forward".into()));
                }
                t.forwards.extend(f.iter().copied());
            }
            Op::DelForwards(f) => {
                if let Some(t) = self.firewall.as_mut() {
                    for p in f {
                        t.forwards.remove(p);
                    }
                }
            }
            Op::UpdatePeers { add, del } => {
                let t = self
                    .firewall
                    .as_mut()
                    .ok_or_else(|| refused("update the VXLAN peer set", libc::ENOENT))?;
                for ip in del {
                    t.peers.remove(ip);
                }
                t.peers.extend(add.iter().copied());
            }
        }
        Ok(())
    }
}

fn apply_change(d: &mut Device, c: &DeviceChange) {
    if let Some(m) = c.mtu {
        d.mtu = m;
    }
    if let Some(m) = c.mac {
        d.mac = Some(m);
    }
    if let Some(m) = &c.master {
        d.master = Some(m.clone());
    }
    if c.up {
        d.up = true;
    }
}

pub(super) fn ns_op(n: &mut FakeNs, op: &NsOp) -> Result<(), KernelError> {
    let missing = |name: &str| refused(format!("find link {name}"), libc::ENODEV);
    match op {
        NsOp::SetDevice(c) => {
            let d = n.devices.get_mut(&c.name).ok_or_else(|| missing(&c.name))?;
            apply_change(d, c);
        }
        NsOp::DeleteDevice { name } => {
            n.devices.remove(name);
            n.addresses.remove(name);
        }
        NsOp::AddAddress { dev, addr, prefix } => {
            if !n.devices.contains_key(dev) {
                return Err(missing(dev));
            }
            n.addresses
                .entry(dev.clone())
                .or_default()
                .insert((*addr, *prefix));
        }
        NsOp::ReplaceDefaultRoute { gateway, dev } => {
            if !n.devices.contains_key(dev) {
                return Err(missing(dev));
            }
            n.default_route = Some((*gateway, dev.clone()));
        }
    }
    Ok(())
}
