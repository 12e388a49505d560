//! What the host namespace should hold, computed from the agent's fixed
//! settings ([`HostSpec`]), its endpoints and its peers' paths.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use weft_common::MacAddr;

use super::endpoint::{EndpointRecord, EndpointSpec};
use super::firewall::{FirewallSpec, PortForward};
use super::observed::Device;
use super::overlay::{Entries, Paths};
use super::{BRIDGE, VXLAN_UDP_CSUM};

/// How the vxlan device is to be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// The tunnel's source address (when the underlay device holds it).
    pub local: Option<Ipv4Addr>,
    /// The underlay device, by name.
    pub dev: Option<String>,
    pub mtu: u32,
    pub mac: MacAddr,
}

impl VxlanSpec {
    /// Whether an existing device was made with these parameters (MTU, MAC
    /// and up can be changed in place; these cannot).
    pub fn matches(&self, d: &Device) -> bool {
        let Some(v) = &d.vxlan else {
            return false;
        };
        v.vni == Some(self.vni)
            && v.port == Some(self.port)
            && v.local == self.local
            && (self.dev.is_none() || v.dev == self.dev)
            && v.learning == Some(false)
            && v.udp_csum == Some(VXLAN_UDP_CSUM)
    }
}

/// A sysctl weft owns, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    pub key: String,
    pub value: &'static str,
    pub why: &'static str,
}

/// The key of a per-device setting in slash form (device names hold dots),
/// e.g. `net/ipv4/conf/weft.1/rp_filter`.
pub fn dev_key(family: &str, dev: &str, name: &str) -> String {
    format!("net/{family}/conf/{dev}/{name}")
}

/// What the agent serves, fixed for its life: from its flags, the
/// controller's assignment and the facts found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub subnet: Ipv4Network,
    /// MTU of the bridge, the vxlan device and every veth.
    pub mtu: u32,
    /// The tunnel (cluster mode).
    pub vxlan: Option<VxlanSpec>,
    /// The underlay device: direct routes leave through it.
    pub underlay: Option<String>,
    pub firewall: FirewallSpec,
    /// Whether the kernel has IPv6 (`/proc/sys/net/ipv6`): its settings
    /// are wanted only then.
    pub ipv6: bool,
}

impl HostSpec {
    /// The gateway of the subnet: its first host address, on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        super::ipam::gateway(self.subnet)
    }

    /// The bridge's fixed MAC, derived from the gateway: the kernel would
    /// otherwise give the bridge the lowest MAC of its ports, which changes
    /// as ports come and go and makes every neighbour's entry stale.
    pub fn bridge_mac(&self) -> MacAddr {
        MacAddr::from_ipv4(self.gateway())
    }

    /// The vxlan device's own address: the subnet's network address.
    pub fn vxlan_addr(&self) -> (Ipv4Addr, u8) {
        (self.subnet.network(), 32)
    }

    /// Traffic to this range stays inside the cluster (not masqueraded).
    pub fn cluster_cidr(&self) -> Ipv4Network {
        self.firewall.cluster_cidr
    }

    /// What an endpoint needs, given its record.
    pub fn endpoint(&self, rec: &EndpointRecord) -> EndpointSpec {
        EndpointSpec {
            name: rec.name.clone(),
            netns: rec.netns().to_string(),
            iface: rec.iface().to_string(),
            owned: rec.attachment.is_none(),
            host_veth: rec.host_veth.clone(),
            ip: rec.ip,
            prefix: self.subnet.prefix(),
            mac: rec.mac,
            mtu: self.mtu,
            gateway: self.gateway(),
            master: BRIDGE.to_string(),
        }
    }

    /// The sysctls of the host namespace, in the order they can be set:
    /// a device's keys exist only once the device does.
    pub fn sysctls(&self) -> Vec<Sysctl> {
        let rp = "loose reverse-path filter on weft devices";
        let mut s = vec![
            Sysctl {
                key: "net.ipv4.ip_forward".into(),
                value: "1",
                why: "namespaces route through this host",
            },
            Sysctl {
                key: dev_key("ipv4", BRIDGE, "rp_filter"),
                value: "2",
                why: rp,
            },
            Sysctl {
                key: dev_key("ipv4", BRIDGE, "route_localnet"),
                value: "1",
                why: "published ports answer on 127.0.0.1 too",
            },
        ];
        if let Some(v) = &self.vxlan {
            s.push(Sysctl {
                key: dev_key("ipv4", &v.name, "rp_filter"),
                value: "2",
                why: rp,
            });
            if self.ipv6 {
                s.push(Sysctl {
                    key: dev_key("ipv6", &v.name, "disable_ipv6"),
                    value: "1",
                    why: "weft routes IPv4 only; no IPv6 solicitations into the tunnel",
                });
            }
        }
        s
    }
}

/// The nftables table weft owns, as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallWant {
    pub spec: FirewallSpec,
    /// Sorted, deduplicated.
    pub forwards: Vec<PortForward>,
    /// The VXLAN peer set (cluster mode).
    pub peers: BTreeSet<Ipv4Addr>,
}

/// The host as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredHost {
    pub sysctls: Vec<Sysctl>,
    pub overlay: Entries,
    pub endpoints: Vec<EndpointSpec>,
    pub firewall: FirewallWant,
}

/// The desired host: `records` are the endpoints, `paths` the peers as
/// reached now.
pub fn host<'a>(
    spec: &HostSpec,
    records: impl IntoIterator<Item = &'a EndpointRecord>,
    paths: &Paths,
) -> DesiredHost {
    let records: Vec<&EndpointRecord> = records.into_iter().collect();
    let overlay = match &spec.vxlan {
        Some(v) => Entries::of(paths, &v.name, spec.underlay.as_deref()),
        None => Entries::default(),
    };
    let mut forwards: Vec<PortForward> = records.iter().flat_map(|r| r.forwards()).collect();
    forwards.sort();
    forwards.dedup();
    let peers = match spec.vxlan {
        Some(_) => paths.values().map(|p| p.public_ip).collect(),
        None => BTreeSet::new(),
    };
    DesiredHost {
        sysctls: spec.sysctls(),
        overlay,
        endpoints: records.iter().map(|r| spec.endpoint(r)).collect(),
        firewall: FirewallWant {
            spec: spec.firewall.clone(),
            forwards,
            peers,
        },
    }
}
