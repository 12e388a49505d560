//! Local address management: which addresses of the host subnet the
//! namespaces hold. Pure bookkeeping; the caller persists the result.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IpamError {
    #[error("address {ip} is outside this host's subnet {subnet}")]
    Outside { ip: Ipv4Addr, subnet: Ipv4Network },
    #[error("address {ip} is the {what} of subnet {subnet} and cannot be given to a namespace")]
    Reserved {
        ip: Ipv4Addr,
        what: &'static str,
        subnet: Ipv4Network,
    },
    #[error("address {ip} is already used by namespace {owner:?}")]
    Taken { ip: Ipv4Addr, owner: String },
    #[error("subnet {subnet} is full: all {capacity} addresses are in use")]
    Full { subnet: Ipv4Network, capacity: u32 },
}

/// The gateway of a subnet: its first host address, held by the bridge.
pub fn gateway(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// Addresses of one subnet and who holds them.
#[derive(Debug, Clone)]
pub struct Ipam {
    subnet: Ipv4Network,
    used: BTreeMap<Ipv4Addr, String>,
    /// Allocation continues after the last address handed out (as the CNI
    /// host-local plugin does), so a just-freed address is not reused at once
    /// while stale ARP and conntrack entries for it may still exist.
    last: u32,
}

impl Ipam {
    pub fn new(subnet: Ipv4Network) -> Self {
        Ipam {
            subnet,
            used: BTreeMap::new(),
            last: u32::from(gateway(subnet)),
        }
    }

    /// First and last address a namespace may get.
    fn range(&self) -> (u32, u32) {
        let net = u32::from(self.subnet.network());
        let bcast = u32::from(self.subnet.broadcast());
        (net + 2, bcast - 1)
    }

    pub fn capacity(&self) -> u32 {
        let (lo, hi) = self.range();
        (hi + 1).saturating_sub(lo)
    }

    /// Records an address that is already in use (loaded from state).
    pub fn insert(&mut self, ip: Ipv4Addr, owner: &str) -> Result<(), IpamError> {
        self.check(ip)?;
        self.used.insert(ip, owner.to_string());
        self.last = self.last.max(u32::from(ip));
        Ok(())
    }

    fn check(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let subnet = self.subnet;
        if !subnet.contains(ip) {
            return Err(IpamError::Outside { ip, subnet });
        }
        let what = if ip == subnet.network() {
            Some("network address")
        } else if ip == gateway(subnet) {
            Some("gateway")
        } else if ip == subnet.broadcast() {
            Some("broadcast address")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(IpamError::Reserved { ip, what, subnet });
        }
        if let Some(owner) = self.used.get(&ip) {
            return Err(IpamError::Taken {
                ip,
                owner: owner.clone(),
            });
        }
        Ok(())
    }

    /// Gives `owner` the requested address, or the next free one.
    pub fn allocate(
        &mut self,
        owner: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError> {
        let ip = match requested {
            Some(ip) => {
                self.check(ip)?;
                ip
            }
            None => self.next_free().ok_or(IpamError::Full {
                subnet: self.subnet,
                capacity: self.capacity(),
            })?,
        };
        self.used.insert(ip, owner.to_string());
        self.last = u32::from(ip);
        Ok(ip)
    }

    fn next_free(&self) -> Option<Ipv4Addr> {
        let (lo, hi) = self.range();
        if lo > hi {
            return None;
        }
        let start = if self.last >= lo && self.last < hi {
            self.last + 1
        } else {
            lo
        };
        (start..=hi)
            .chain(lo..start)
            .map(Ipv4Addr::from)
            .find(|ip| !self.used.contains_key(ip))
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn hands_out_in_order_and_skips_reserved() {
        let mut ipam = Ipam::new(net("10.244.1.0/24"));
        assert_eq!(
            ipam.allocate("a", None).unwrap(),
            Ipv4Addr::new(10, 244, 1, 2)
        );
        assert_eq!(
            ipam.allocate("b", None).unwrap(),
            Ipv4Addr::new(10, 244, 1, 3)
        );
        assert_eq!(gateway(net("10.244.1.0/24")), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(ipam.capacity(), 253);
    }

    #[test]
    fn does_not_reuse_a_freed_address_at_once() {
        let mut ipam = Ipam::new(net("10.244.1.0/24"));
        let a = ipam.allocate("a", None).unwrap();
        ipam.allocate("b", None).unwrap();
        ipam.release(a);
        assert_eq!(
            ipam.allocate("c", None).unwrap(),
            Ipv4Addr::new(10, 244, 1, 4)
        );
    }

    #[test]
    fn refuses_bad_requests() {
        let mut ipam = Ipam::new(net("10.244.1.0/24"));
        let e = ipam
            .allocate("a", Some("10.244.2.5".parse().unwrap()))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "address 10.244.2.5 is outside this host's subnet 10.244.1.0/24"
        );
        for (ip, what) in [
            ("10.244.1.0", "network address"),
            ("10.244.1.1", "gateway"),
            ("10.244.1.255", "broadcast address"),
        ] {
            let e = ipam.allocate("a", Some(ip.parse().unwrap())).unwrap_err();
            assert!(
                matches!(e, IpamError::Reserved { what: w, .. } if w == what),
                "{e}"
            );
        }
        ipam.allocate("a", Some("10.244.1.9".parse().unwrap()))
            .unwrap();
        let e = ipam
            .allocate("b", Some("10.244.1.9".parse().unwrap()))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "address 10.244.1.9 is already used by namespace \"a\""
        );
    }

    #[test]
    fn full_subnet() {
        let mut ipam = Ipam::new(net("10.244.1.0/29"));
        for i in 0..5 {
            ipam.allocate(&format!("n{i}"), None).unwrap();
        }
        let e = ipam.allocate("x", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "subnet 10.244.1.0/29 is full: all 5 addresses are in use"
        );
    }

    proptest! {
        #[test]
        fn never_hands_out_an_address_twice(ops in proptest::collection::vec((any::<bool>(), 0u8..40), 1..300)) {
            let subnet = net("10.244.7.0/27");
            let mut ipam = Ipam::new(subnet);
            let mut held: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
            for (i, (alloc, pick)) in ops.into_iter().enumerate() {
                if alloc || held.is_empty() {
                    match ipam.allocate(&format!("n{i}"), None) {
                        Ok(ip) => {
                            prop_assert!(subnet.contains(ip));
                            prop_assert!(ip != subnet.network() && ip != gateway(subnet) && ip != subnet.broadcast());
                            prop_assert!(held.insert(ip, i).is_none(), "{} handed out twice", ip);
                        }
                        Err(IpamError::Full { .. }) => prop_assert_eq!(held.len() as u32, ipam.capacity()),
                        Err(e) => prop_assert!(false, "unexpected {}", e),
                    }
                } else {
                    let ip = *held.keys().nth(pick as usize % held.len()).unwrap();
                    held.remove(&ip);
                    ipam.release(ip);
                }
            }
        }
    }
}
