//! The operations that take the kernel from what it holds to what it
//! should hold: the output of the diffs (`model::diff`, `model::overlay`)
//! and the input of [`crate::kernel::Kernel::apply`].
//!
//! Devices are named, never numbered: an index is a fact of one kernel at
//! one moment, while the decisions here must hold for any kernel (the fake
//! of the unit tests included). The kernel layer resolves names to
//! indexes when it applies an operation.
//!
//! `Display` gives each operation in the form an operator knows from `ip`,
//! `bridge` and `nft`; the agent logs every change as "<operation>: <why>".

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use weft_common::MacAddr;

use super::desired::VxlanSpec;
use super::firewall::{FirewallSpec, PortForward};
use super::overlay::RouteTo;
use super::NFT_TABLE;

/// A device's name where thousands of operations name the same device
/// (the overlay's entries): shared, not copied.
pub type DevName = std::sync::Arc<str>;

/// A spare namespace held by the kernel layer (see `endpoints::pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpareId(pub u64);

/// Changes to an existing device; `None` leaves that property as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceChange {
    pub name: String,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    /// Makes the device a port of this bridge.
    pub master: Option<String>,
    /// Brings it up (a device is never taken down).
    pub up: bool,
}

/// A veth pair whose peer is created directly inside a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    /// The host end, a port of `master`.
    pub host: String,
    pub master: String,
    pub mtu: u32,
    /// The namespace (by endpoint name) the peer is created in.
    pub netns: String,
    pub peer: String,
    pub peer_mac: MacAddr,
}

/// An operation inside an endpoint's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsOp {
    SetDevice(DeviceChange),
    DeleteDevice {
        name: String,
    },
    AddAddress {
        dev: String,
        addr: Ipv4Addr,
        prefix: u8,
    },
    /// `default via <gateway> dev <dev> onlink`, replacing any other
    /// default route (onlink: it does not wait for the address).
    ReplaceDefaultRoute {
        gateway: Ipv4Addr,
        dev: String,
    },
}

/// One operation on the kernel (or on the nftables table weft owns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `/proc/sys/<key> = value` in the host namespace.
    Sysctl {
        key: String,
        value: String,
    },
    /// A bridge, up, with a fixed MAC.
    CreateBridge {
        name: String,
        mac: MacAddr,
        mtu: u32,
    },
    CreateVxlan(VxlanSpec),
    SetDevice(DeviceChange),
    /// By index when known (the device observed, never another one that
    /// has taken its name since), else by name. Absent is not an error.
    DeleteDevice {
        name: String,
        index: Option<u32>,
    },
    AddAddress {
        dev: String,
        addr: Ipv4Addr,
        prefix: u8,
    },
    DelAddress {
        dev: String,
        addr: Ipv4Addr,
        prefix: u8,
    },
    /// A permanent neighbour (`nud permanent`), replacing any other.
    ReplaceNeigh {
        dev: DevName,
        ip: Ipv4Addr,
        mac: MacAddr,
    },
    DelNeigh {
        dev: DevName,
        ip: Ipv4Addr,
    },
    /// A permanent FDB entry of the device itself (`self`).
    ReplaceFdb {
        dev: DevName,
        mac: MacAddr,
        dst: Ipv4Addr,
    },
    /// `dst`: the entry's destination (a vxlan device keeps one entry per
    /// destination); `None` for an entry that has none.
    DelFdb {
        dev: DevName,
        mac: MacAddr,
        dst: Option<Ipv4Addr>,
    },
    /// A main-table route marked as weft's (`proto 119`).
    ReplaceRoute {
        dst: Ipv4Network,
        to: RouteTo,
    },
    DelRoute {
        dst: Ipv4Network,
    },
    /// A new namespace bind-mounted at `<netns-dir>/<name>`, `lo` down,
    /// IPv6 off for the devices made in it later.
    CreateNetns {
        name: String,
    },
    /// Unmounts and removes `<netns-dir>/<name>`; absent is not an error.
    DeleteNetns {
        name: String,
    },
    CreateVeth(VethSpec),
    InNetns {
        netns: String,
        op: NsOp,
    },
    /// Turns a spare into endpoint `netns`: names its namespace, renames
    /// its host end to `host`, makes it a port of `master`, brings it up,
    /// and applies `inside` in the namespace, the two sides at once. On
    /// failure nothing of it is left named.
    AdoptSpare {
        spare: SpareId,
        netns: String,
        host: String,
        master: String,
        inside: Vec<NsOp>,
    },
    /// Replaces weft's nftables table whole, in one transaction.
    FirewallSync {
        spec: FirewallSpec,
        forwards: Vec<PortForward>,
        peers: BTreeSet<Ipv4Addr>,
    },
    /// All or nothing; a key already present fails the whole change.
    AddForwards(Vec<PortForward>),
    /// Absent entries are not an error.
    DelForwards(Vec<PortForward>),
    /// The VXLAN peer set: `add` must be absent, `del` present.
    UpdatePeers {
        add: Vec<Ipv4Addr>,
        del: Vec<Ipv4Addr>,
    },
    /// Replaces the network policy table in one transaction.
    PolicyReplace(Box<super::policy::PolicyTable>),
    /// Changes members of the policy table's address sets.
    PolicySets(Vec<super::policy::SetEdit>),
}

/// What kind of kernel object an operation changes: the label of the
/// `changes_applied` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    Sysctl,
    Link,
    Address,
    Neigh,
    Fdb,
    Route,
    Netns,
    Nft,
}

impl OpKind {
    pub const ALL: [OpKind; 8] = [
        OpKind::Sysctl,
        OpKind::Link,
        OpKind::Address,
        OpKind::Neigh,
        OpKind::Fdb,
        OpKind::Route,
        OpKind::Netns,
        OpKind::Nft,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Sysctl => "sysctl",
            OpKind::Link => "link",
            OpKind::Address => "address",
            OpKind::Neigh => "neigh",
            OpKind::Fdb => "fdb",
            OpKind::Route => "route",
            OpKind::Netns => "netns",
            OpKind::Nft => "nft",
        }
    }
}

impl NsOp {
    pub fn kind(&self) -> OpKind {
        match self {
            NsOp::SetDevice(_) | NsOp::DeleteDevice { .. } => OpKind::Link,
            NsOp::AddAddress { .. } => OpKind::Address,
            NsOp::ReplaceDefaultRoute { .. } => OpKind::Route,
        }
    }
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Sysctl { .. } => OpKind::Sysctl,
            Op::CreateBridge { .. }
            | Op::CreateVxlan(_)
            | Op::SetDevice(_)
            | Op::DeleteDevice { .. }
            | Op::CreateVeth(_)
            | Op::AdoptSpare { .. } => OpKind::Link,
            Op::AddAddress { .. } | Op::DelAddress { .. } => OpKind::Address,
            Op::ReplaceNeigh { .. } | Op::DelNeigh { .. } => OpKind::Neigh,
            Op::ReplaceFdb { .. } | Op::DelFdb { .. } => OpKind::Fdb,
            Op::ReplaceRoute { .. } | Op::DelRoute { .. } => OpKind::Route,
            Op::CreateNetns { .. } | Op::DeleteNetns { .. } => OpKind::Netns,
            Op::InNetns { op, .. } => op.kind(),
            Op::FirewallSync { .. }
            | Op::AddForwards(_)
            | Op::DelForwards(_)
            | Op::UpdatePeers { .. }
            | Op::PolicyReplace(_)
            | Op::PolicySets(_) => OpKind::Nft,
        }
    }

    /// Overlay entries: independent of each other within one step of a
    /// batch, so the kernel layer may have many of them in flight at once.
    pub fn is_overlay_entry(&self) -> bool {
        matches!(
            self,
            Op::ReplaceNeigh { .. }
                | Op::DelNeigh { .. }
                | Op::ReplaceFdb { .. }
                | Op::DelFdb { .. }
                | Op::ReplaceRoute { .. }
                | Op::DelRoute { .. }
        )
    }
}

impl fmt::Display for DeviceChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link set {}", self.name)?;
        if let Some(m) = &self.master {
            write!(f, " master {m}")?;
        }
        if let Some(m) = self.mtu {
            write!(f, " mtu {m}")?;
        }
        if let Some(m) = self.mac {
            write!(f, " address {m}")?;
        }
        if self.up {
            write!(f, " up")?;
        }
        Ok(())
    }
}

impl fmt::Display for NsOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NsOp::SetDevice(c) => write!(f, "{c}"),
            NsOp::DeleteDevice { name } => write!(f, "link del {name}"),
            NsOp::AddAddress { dev, addr, prefix } => {
                write!(f, "address add {addr}/{prefix} dev {dev}")
            }
            NsOp::ReplaceDefaultRoute { gateway, dev } => {
                write!(f, "route replace default via {gateway} dev {dev}")
            }
        }
    }
}

/// The VXLAN peer set as `nft` names it.
const PEERS: &str = "inet weft vxlan_peers";

/// At most this many addresses or forwards in one line.
const LIST_MAX: usize = 8;

fn list<T: fmt::Display>(items: &[T]) -> String {
    let mut s: Vec<String> = items.iter().take(LIST_MAX).map(|i| i.to_string()).collect();
    if items.len() > LIST_MAX {
        s.push(format!("and {} more", items.len() - LIST_MAX));
    }
    s.join(", ")
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Sysctl { key, value } => write!(f, "sysctl {key}={value}"),
            Op::CreateBridge { name, mac, mtu } => {
                write!(f, "link add {name} type bridge address {mac} mtu {mtu}")
            }
            Op::CreateVxlan(s) => write!(
                f,
                "link add {} type vxlan id {} dstport {} local {} address {} mtu {}",
                s.name,
                s.vni,
                s.port,
                s.local.map_or_else(|| "any".to_string(), |ip| ip.to_string()),
                s.mac,
                s.mtu
            ),
            Op::SetDevice(c) => write!(f, "{c}"),
            Op::DeleteDevice { name, .. } => write!(f, "link del {name}"),
            Op::AddAddress { dev, addr, prefix } => {
                write!(f, "address add {addr}/{prefix} dev {dev}")
            }
            Op::DelAddress { dev, addr, prefix } => {
                write!(f, "address del {addr}/{prefix} dev {dev}")
            }
            Op::ReplaceNeigh { dev, ip, mac } => {
                write!(f, "neigh replace {ip} lladdr {mac} dev {dev} nud permanent")
            }
            Op::DelNeigh { dev, ip } => write!(f, "neigh del {ip} dev {dev}"),
            Op::ReplaceFdb { dev, mac, dst } => write!(f, "fdb append {mac} dst {dst} dev {dev}"),
            Op::DelFdb { dev, mac, dst } => match dst {
                Some(d) => write!(f, "fdb del {mac} dst {d} dev {dev}"),
                None => write!(f, "fdb del {mac} dev {dev}"),
            },
            Op::ReplaceRoute { dst, to } => write!(f, "route replace {dst} {to}"),
            Op::DelRoute { dst } => write!(f, "route del {dst}"),
            Op::CreateNetns { name } => write!(f, "netns add {name}"),
            Op::DeleteNetns { name } => write!(f, "netns del {name}"),
            Op::CreateVeth(v) => write!(
                f,
                "link add {} master {} mtu {} type veth peer {} address {} netns {}",
                v.host, v.master, v.mtu, v.peer, v.peer_mac, v.netns
            ),
            Op::InNetns { netns, op } => write!(f, "{op} (in namespace {netns})"),
            Op::AdoptSpare {
                netns, host, master, ..
            } => write!(f, "take a spare namespace as {netns} (host end {host}, master {master})"),
            Op::FirewallSync {
                spec,
                forwards,
                peers,
            } => write!(
                f,
                "nft table inet {NFT_TABLE} (masquerade from {}, {} published ports, {} vxlan peers)",
                spec.cluster_cidr,
                forwards.len(),
                peers.len()
            ),
            Op::AddForwards(fw) => write!(f, "nft add port forward {}", list(fw)),
            Op::DelForwards(fw) => write!(f, "nft delete port forward {}", list(fw)),
            Op::UpdatePeers { add, del } => match (add.is_empty(), del.is_empty()) {
                (false, true) => write!(f, "nft add element {PEERS} {{ {} }}", list(add)),
                (true, false) => write!(f, "nft delete element {PEERS} {{ {} }}", list(del)),
                _ => write!(
                    f,
                    "nft add element {PEERS} {{ {} }}, delete {{ {} }}",
                    list(add),
                    list(del)
                ),
            },
            Op::PolicyReplace(t) => write!(
                f,
                "nft table inet {} ({})",
                super::policy::POLICY_TABLE,
                t.describe()
            ),
            Op::PolicySets(edits) => {
                let each: Vec<String> = edits
                    .iter()
                    .map(|e| {
                        format!(
                            "{} +{{ {} }} -{{ {} }}",
                            e.id,
                            list(&e.add),
                            list(&e.remove)
                        )
                    })
                    .collect();
                write!(f, "nft policy sets {}", each.join(", "))
            }
        }
    }
}
