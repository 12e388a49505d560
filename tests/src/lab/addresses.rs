//! The lab's addressing plan: the underlay, the router, the "internet", the
//! routed segment and the hosts' default subnets (the control namespace's
//! addresses are in [`crate::cluster`]).

use std::net::Ipv4Addr;

/// Underlay address of the router (the hosts' default gateway).
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Router address on the internet side.
pub const ROUTER_INTERNET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The "internet" host.
pub const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The underlay network of the simulated hosts.
pub const UNDERLAY_CIDR: &str = "198.18.0.0/24";
/// The segment behind the router ([`crate::LabOpts::routed`] hosts).
pub const ROUTED_CIDR: &str = "198.18.0.240/28";
/// The router's address on the routed segment.
pub const ROUTED_ROUTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 241);
/// The cluster CIDR the default host subnets come from.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// Underlay address of host `i` (1-based): 198.18.0.(10+i).
pub fn host_ip(i: usize) -> Ipv4Addr {
    assert!(
        (1..=200).contains(&i),
        "host index {i} out of range 1..=200"
    );
    Ipv4Addr::new(198, 18, 0, 10 + i as u8)
}

/// Address of the `k`-th (0-based) host on the routed segment.
pub fn routed_host_ip(k: usize) -> Ipv4Addr {
    assert!(k < 13, "at most 13 routed hosts");
    Ipv4Addr::new(198, 18, 0, 242 + k as u8)
}

/// Default subnet of host `i` (1-based): 10.244.i.0/24.
pub fn default_subnet(i: usize) -> String {
    format!("10.244.{i}.0/24")
}

/// First host address of an IPv4 CIDR: the gateway of a host subnet.
pub fn gateway_of(cidr: &str) -> Option<Ipv4Addr> {
    let (a, l) = cidr.split_once('/')?;
    let a: Ipv4Addr = a.parse().ok()?;
    let l: u32 = l.parse().ok()?;
    if l > 30 {
        return None;
    }
    let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
    Some(Ipv4Addr::from((u32::from(a) & mask) + 1))
}
