//! weft's nftables table as data: what it must hold besides port forwards
//! ([`FirewallSpec`]), and one port forward. The documents are built in
//! `crate::firewall`.

use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use weft_common::Proto;

/// What the table must contain besides port forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    /// Traffic from here to outside it is masqueraded.
    pub cluster_cidr: Ipv4Network,
    /// This host's subnet (on the bridge).
    pub subnet: Ipv4Network,
    /// Bridge name, "weft0".
    pub bridge: String,
    /// The VXLAN UDP port (cluster mode): packets to it are accepted only
    /// from the addresses in the peer set.
    pub vxlan_port: Option<u16>,
}

/// One DNAT entry: traffic to `host_ip:host_port` (any local address of the
/// host when `None`) goes to `target:target_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortForward {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub proto: Proto,
    pub target: Ipv4Addr,
    pub target_port: u16,
}

impl fmt::Display for PortForward {
    /// `[HOSTIP:]HOSTPORT/PROTO -> TARGET:PORT`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}/{} -> {}:{}",
            self.host_port, self.proto, self.target, self.target_port
        )
    }
}
