//! What the kernel reports, as plain data: the input of the diffs, filled
//! in by [`crate::kernel::Kernel`]'s observe calls (or by hand in tests).
//! Only what weft decides from is here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use weft_common::MacAddr;

use super::firewall::PortForward;
use super::overlay::Entries;

/// The parameters of a vxlan device that are fixed at creation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<Ipv4Addr>,
    /// The underlay device, by name.
    pub dev: Option<String>,
    pub learning: Option<bool>,
    /// Outer UDP checksums on transmit (`udpcsum`).
    pub udp_csum: Option<bool>,
}

/// A network device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    /// The bridge it is a port of, by name.
    pub master: Option<String>,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    pub up: bool,
    pub vxlan: Option<VxlanInfo>,
}

impl Device {
    pub fn is_kind(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }
}

/// The network policy table as the kernel holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyView {
    /// The fingerprint of its rules, chains and set names, as written
    /// (`None`: not written by weft, or changed).
    pub fingerprint: Option<String>,
    /// Set name → members.
    pub sets: BTreeMap<String, std::collections::BTreeSet<Ipv4Addr>>,
    /// Counter name → packets.
    pub counters: BTreeMap<String, u64>,
}

/// What is at an endpoint's namespace path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetnsPresence {
    /// A bind-mounted network namespace.
    Mounted,
    /// Some other file (a namespace unmounted under us, a stray file).
    Other,
    Absent,
}

/// weft's nftables table as found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallView {
    pub exists: bool,
    /// Every chain, rule, map and set is the one weft writes for the
    /// desired spec (told by the fingerprints weft puts in rule comments).
    pub rules_as_desired: bool,
    /// The published-port map elements, sorted.
    pub forwards: Vec<PortForward>,
    /// The VXLAN peer set's elements.
    pub peers: BTreeSet<Ipv4Addr>,
}

/// What to read of the host namespace.
#[derive(Debug, Clone, Default)]
pub struct HostQuery {
    /// Devices whose IPv4 addresses are read.
    pub addresses_of: Vec<String>,
    /// The vxlan device whose neighbours and FDB entries are read, with
    /// the main-table routes through it or marked as weft's.
    pub vxlan: Option<String>,
    /// Sysctl keys to read (see `model::desired::Sysctl`).
    pub sysctls: Vec<String>,
    /// Namespaces whose path is checked: endpoint names (under the
    /// namespace directory) or an attachment's absolute path.
    pub netns: Vec<String>,
    /// The firewall spec to compare weft's table with; `None`: not read.
    pub firewall: Option<super::firewall::FirewallSpec>,
}

/// The host namespace as found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    /// Every device, by name.
    pub devices: BTreeMap<String, Device>,
    /// IPv4 addresses (with prefix length) of the devices asked for.
    pub addresses: BTreeMap<String, BTreeSet<(Ipv4Addr, u8)>>,
    /// The vxlan device's neighbours and FDB entries (an entry without an
    /// address or destination is kept with 0.0.0.0 or a zero MAC, so it
    /// differs from anything wanted) and weft's routes.
    pub overlay: Entries,
    /// Values of the sysctls asked for; a key the kernel does not have
    /// (its device does not exist yet) is absent.
    pub sysctls: BTreeMap<String, String>,
    pub netns: BTreeMap<String, NetnsPresence>,
    pub firewall: FirewallView,
}

/// Inside an endpoint's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsView {
    pub devices: BTreeMap<String, Device>,
    /// IPv4 addresses of every device, by device name.
    pub addresses: BTreeMap<String, BTreeSet<(Ipv4Addr, u8)>>,
    /// Default routes of the main table: (gateway, device name).
    pub default_routes: Vec<(Option<Ipv4Addr>, Option<String>)>,
}

/// What the underlay is decided from: every device, every IPv4 address
/// and the default route's device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnderlayView {
    pub devices: BTreeMap<String, Device>,
    pub addresses: BTreeMap<String, BTreeSet<(Ipv4Addr, u8)>>,
    pub default_dev: Option<String>,
}

/// How the kernel reaches an address (`ip route get`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub gateway: Option<Ipv4Addr>,
    pub dev: Option<String>,
}
