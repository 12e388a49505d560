//! The overlay as data: how each peer is reached ([`PeerPath`]), the
//! kernel entries that takes ([`Entries`]: per peer a permanent neighbour,
//! an FDB entry and a route, or one plain route with direct routing), and
//! the difference of two such sets ([`Diff`]) as operations in a safe
//! order: all neighbours, then all FDB entries, then all routes (a route
//! never points at a tunnel entry that is not there yet), then removals in
//! the reverse order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use weft_common::cluster::HostRecord;
use weft_common::MacAddr;

use super::observed::Hop;
use super::ops::{DevName, Op};

/// How a peer is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Vxlan,
    /// Plain route via the peer's public address on the underlay device.
    Direct,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Vxlan => "vxlan",
            Mode::Direct => "direct",
        }
    }
}

/// One peer as this host reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPath {
    pub name: String,
    pub subnet: Ipv4Network,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    pub mode: Mode,
}

/// Peer paths by peer name.
pub type Paths = BTreeMap<String, PeerPath>;

/// The peers as the controller last sent them (or as saved), by name;
/// shared between the controller link and the data plane.
pub type PeerSet = std::sync::Arc<BTreeMap<String, HostRecord>>;

/// Where a route leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTo {
    pub gateway: Ipv4Addr,
    pub dev: DevName,
    pub onlink: bool,
}

impl fmt::Display for RouteTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "via {} dev {}", self.gateway, self.dev)?;
        if self.onlink {
            write!(f, " onlink")?;
        }
        Ok(())
    }
}

/// A peer left out of the overlay, and why (the caller logs it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub name: String,
    pub subnet: Ipv4Network,
    pub public_ip: Ipv4Addr,
}

/// What the overlay decides from: this host's subnet and tunnel address,
/// and with direct routing the underlay device and how the kernel reaches
/// each peer's public address (`ip route get`).
#[derive(Debug, Clone, Default)]
pub struct PathFacts<'a> {
    pub subnet: Option<Ipv4Network>,
    pub local: Option<Ipv4Addr>,
    /// Set only with direct routing on and an underlay device known.
    pub underlay: Option<&'a str>,
    pub hops: Option<&'a BTreeMap<Ipv4Addr, Hop>>,
}

/// Each peer's path: direct when enabled and the kernel reaches its public
/// address without a gateway on the underlay device, else vxlan. Peers
/// that would clash with this host (its subnet or its address) are left
/// out and returned as ignored.
pub fn paths(peers: &BTreeMap<String, HostRecord>, facts: &PathFacts<'_>) -> (Paths, Vec<Ignored>) {
    let mut out = Paths::new();
    let mut ignored = Vec::new();
    for h in peers.values() {
        let clash =
            facts.subnet.is_some_and(|s| h.subnet.overlaps(s)) || Some(h.public_ip) == facts.local;
        if clash {
            ignored.push(Ignored {
                name: h.name.clone(),
                subnet: h.subnet,
                public_ip: h.public_ip,
            });
            continue;
        }
        let direct = match (facts.underlay, facts.hops) {
            (Some(dev), Some(hops)) => hops
                .get(&h.public_ip)
                .is_some_and(|hop| hop.gateway.is_none() && hop.dev.as_deref() == Some(dev)),
            _ => false,
        };
        out.insert(
            h.name.clone(),
            PeerPath {
                name: h.name.clone(),
                subnet: h.subnet,
                public_ip: h.public_ip,
                vtep_mac: h.vtep_mac,
                mode: if direct { Mode::Direct } else { Mode::Vxlan },
            },
        );
    }
    (out, ignored)
}

/// Peers by mode: (vxlan, direct).
pub fn count_modes(paths: &Paths) -> (usize, usize) {
    let direct = paths.values().filter(|p| p.mode == Mode::Direct).count();
    (paths.len() - direct, direct)
}

/// The weft-owned kernel state of the overlay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries {
    /// Neighbours on the vxlan device: remote subnet address → VTEP MAC.
    pub neigh: BTreeMap<Ipv4Addr, MacAddr>,
    /// FDB entries on the vxlan device: VTEP MAC → public IP.
    pub fdb: BTreeSet<(MacAddr, Ipv4Addr)>,
    /// Routes (main table) to other hosts' subnets.
    pub routes: BTreeMap<Ipv4Network, RouteTo>,
}

impl Entries {
    /// What `paths` need, through the vxlan device `vxlan` and, for direct
    /// routes, the underlay device `underlay` (without one, a direct path
    /// falls back to the tunnel).
    pub fn of(paths: &Paths, vxlan: &str, underlay: Option<&str>) -> Entries {
        let mut e = Entries::default();
        let vxlan: DevName = vxlan.into();
        let underlay: Option<DevName> = underlay.map(Into::into);
        for p in paths.values() {
            match (p.mode, &underlay) {
                (Mode::Direct, Some(dev)) => {
                    e.routes.insert(
                        p.subnet,
                        RouteTo {
                            gateway: p.public_ip,
                            dev: dev.clone(),
                            onlink: false,
                        },
                    );
                }
                _ => {
                    let addr = p.subnet.network();
                    e.neigh.insert(addr, p.vtep_mac);
                    e.fdb.insert((p.vtep_mac, p.public_ip));
                    e.routes.insert(
                        p.subnet,
                        RouteTo {
                            gateway: addr,
                            dev: vxlan.clone(),
                            onlink: true,
                        },
                    );
                }
            }
        }
        e
    }
}

/// The changes that take one set of entries to another.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diff {
    pub add_neigh: Vec<(Ipv4Addr, MacAddr)>,
    pub add_fdb: Vec<(MacAddr, Ipv4Addr)>,
    pub add_routes: Vec<(Ipv4Network, RouteTo)>,
    pub del_routes: Vec<Ipv4Network>,
    pub del_fdb: Vec<(MacAddr, Ipv4Addr)>,
    pub del_neigh: Vec<Ipv4Addr>,
}

impl Diff {
    pub fn between(from: &Entries, to: &Entries) -> Diff {
        Diff {
            add_neigh: to
                .neigh
                .iter()
                .filter(|(ip, mac)| from.neigh.get(ip) != Some(mac))
                .map(|(ip, mac)| (*ip, *mac))
                .collect(),
            add_fdb: to.fdb.difference(&from.fdb).copied().collect(),
            add_routes: to
                .routes
                .iter()
                .filter(|(dst, r)| from.routes.get(dst) != Some(r))
                .map(|(dst, r)| (*dst, r.clone()))
                .collect(),
            del_routes: from
                .routes
                .keys()
                .filter(|dst| !to.routes.contains_key(dst))
                .copied()
                .collect(),
            del_fdb: from.fdb.difference(&to.fdb).copied().collect(),
            del_neigh: from
                .neigh
                .keys()
                .filter(|ip| !to.neigh.contains_key(ip))
                .copied()
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.add_neigh.len()
            + self.add_fdb.len()
            + self.add_routes.len()
            + self.del_routes.len()
            + self.del_fdb.len()
            + self.del_neigh.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The changes of `self` that are not in `other` (e.g. a reconcile's
    /// repairs without what a path change already explains and logs).
    pub fn without(&self, other: &Diff) -> Diff {
        fn minus<T: PartialEq + Clone>(a: &[T], b: &[T]) -> Vec<T> {
            a.iter().filter(|x| !b.contains(x)).cloned().collect()
        }
        Diff {
            add_neigh: minus(&self.add_neigh, &other.add_neigh),
            add_fdb: minus(&self.add_fdb, &other.add_fdb),
            add_routes: minus(&self.add_routes, &other.add_routes),
            del_routes: minus(&self.del_routes, &other.del_routes),
            del_fdb: minus(&self.del_fdb, &other.del_fdb),
            del_neigh: minus(&self.del_neigh, &other.del_neigh),
        }
    }

    /// How many steps [`Diff::step`] has.
    pub const STEPS: usize = 6;

    /// How many operations step `n` has.
    pub fn step_len(&self, n: usize) -> usize {
        match n {
            0 => self.add_neigh.len(),
            1 => self.add_fdb.len(),
            2 => self.add_routes.len(),
            3 => self.del_routes.len(),
            4 => self.del_fdb.len(),
            5 => self.del_neigh.len(),
            _ => 0,
        }
    }

    /// The operations `range` of step `n` (0 to [`Diff::STEPS`] − 1) on
    /// the vxlan device `vxlan`: neighbours, FDB entries, routes to add,
    /// then routes, FDB entries, neighbours to remove. Within a step they
    /// are independent; the steps go in this order. An FDB entry observed
    /// without a destination (kept as 0.0.0.0) is deleted as one without.
    pub fn step(&self, vxlan: &DevName, n: usize, range: std::ops::Range<usize>) -> Vec<Op> {
        let dev = || vxlan.clone();
        match n {
            0 => self.add_neigh[range]
                .iter()
                .map(|(ip, mac)| Op::ReplaceNeigh {
                    dev: dev(),
                    ip: *ip,
                    mac: *mac,
                })
                .collect(),
            1 => self.add_fdb[range]
                .iter()
                .map(|(mac, dst)| Op::ReplaceFdb {
                    dev: dev(),
                    mac: *mac,
                    dst: *dst,
                })
                .collect(),
            2 => self.add_routes[range]
                .iter()
                .map(|(dst, to)| Op::ReplaceRoute {
                    dst: *dst,
                    to: to.clone(),
                })
                .collect(),
            3 => self.del_routes[range]
                .iter()
                .map(|dst| Op::DelRoute { dst: *dst })
                .collect(),
            4 => self.del_fdb[range]
                .iter()
                .map(|(mac, dst)| Op::DelFdb {
                    dev: dev(),
                    mac: *mac,
                    dst: (!dst.is_unspecified()).then_some(*dst),
                })
                .collect(),
            5 => self.del_neigh[range]
                .iter()
                .map(|ip| Op::DelNeigh {
                    dev: dev(),
                    ip: *ip,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Every operation, in the safe order (the steps one after another).
    pub fn ops(&self, vxlan: &str) -> Vec<Op> {
        let vxlan: DevName = vxlan.into();
        (0..Self::STEPS)
            .flat_map(|n| self.step(&vxlan, n, 0..self.step_len(n)))
            .collect()
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "+{} neighbours +{} fdb +{} routes, -{} routes -{} fdb -{} neighbours",
            self.add_neigh.len(),
            self.add_fdb.len(),
            self.add_routes.len(),
            self.del_routes.len(),
            self.del_fdb.len(),
            self.del_neigh.len()
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn peer(n: u8, mode: Mode) -> PeerPath {
        PeerPath {
            name: format!("h{n}"),
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: Ipv4Addr::new(198, 18, 0, 10 + n),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, n]),
            mode,
        }
    }

    pub fn set(ps: &[PeerPath]) -> Paths {
        ps.iter().map(|p| (p.name.clone(), p.clone())).collect()
    }

    fn record(n: u8) -> HostRecord {
        let p = peer(n, Mode::Vxlan);
        HostRecord {
            name: p.name,
            public_ip: p.public_ip,
            vtep_mac: p.vtep_mac,
            subnet: p.subnet,
            last_seen: 0,
        }
    }

    #[test]
    fn entries_per_mode() {
        let e = Entries::of(
            &set(&[peer(2, Mode::Vxlan), peer(3, Mode::Direct)]),
            "weft.1",
            Some("eth0"),
        );
        assert_eq!(e.neigh.len(), 1);
        assert_eq!(
            e.neigh[&Ipv4Addr::new(10, 244, 2, 0)],
            MacAddr([2, 0, 0, 0, 0, 2])
        );
        assert_eq!(
            e.fdb.iter().copied().collect::<Vec<_>>(),
            vec![(MacAddr([2, 0, 0, 0, 0, 2]), Ipv4Addr::new(198, 18, 0, 12))]
        );
        let r2 = &e.routes[&"10.244.2.0/24".parse().unwrap()];
        assert_eq!(r2.to_string(), "via 10.244.2.0 dev weft.1 onlink");
        let r3 = &e.routes[&"10.244.3.0/24".parse().unwrap()];
        assert_eq!(r3.to_string(), "via 198.18.0.13 dev eth0");
        // Without an underlay device, direct falls back to vxlan.
        let e = Entries::of(&set(&[peer(3, Mode::Direct)]), "weft.1", None);
        assert_eq!(e.neigh.len(), 1);
    }

    #[test]
    fn diff_adds_removes_and_updates_in_place() {
        let a = Entries::of(
            &set(&[peer(2, Mode::Vxlan), peer(3, Mode::Vxlan)]),
            "weft.1",
            None,
        );
        assert!(Diff::between(&a, &a).is_empty());
        let mut moved = peer(3, Mode::Vxlan);
        moved.vtep_mac = MacAddr([2, 0, 0, 0, 0, 0x33]);
        moved.public_ip = Ipv4Addr::new(198, 18, 0, 99);
        let b = Entries::of(&set(&[moved.clone(), peer(4, Mode::Vxlan)]), "weft.1", None);
        let d = Diff::between(&a, &b);
        // h3 changes in place: its neighbour is replaced, its route stays.
        assert_eq!(
            d.add_neigh,
            vec![
                (Ipv4Addr::new(10, 244, 3, 0), moved.vtep_mac),
                (Ipv4Addr::new(10, 244, 4, 0), MacAddr([2, 0, 0, 0, 0, 4]))
            ]
        );
        assert_eq!(d.add_fdb.len(), 2);
        assert_eq!(d.add_routes.len(), 1, "{d:?}");
        assert_eq!(d.del_routes, vec!["10.244.2.0/24".parse().unwrap()]);
        assert_eq!(d.del_fdb.len(), 2, "h2's and h3's old fdb entries");
        assert_eq!(d.del_neigh, vec![Ipv4Addr::new(10, 244, 2, 0)]);
        // Applying the diff to a gives b.
        let mut c = a.clone();
        for (ip, mac) in &d.add_neigh {
            c.neigh.insert(*ip, *mac);
        }
        c.fdb.extend(d.add_fdb.iter().copied());
        for (dst, r) in &d.add_routes {
            c.routes.insert(*dst, r.clone());
        }
        for dst in &d.del_routes {
            c.routes.remove(dst);
        }
        for f in &d.del_fdb {
            c.fdb.remove(f);
        }
        for ip in &d.del_neigh {
            c.neigh.remove(ip);
        }
        assert_eq!(c, b);
    }

    #[test]
    fn ops_come_in_the_safe_order() {
        let a = Entries::of(&set(&[peer(2, Mode::Vxlan)]), "weft.1", None);
        let b = Entries::of(&set(&[peer(3, Mode::Vxlan)]), "weft.1", None);
        let kinds: Vec<String> = Diff::between(&a, &b)
            .ops("weft.1")
            .iter()
            .map(|o| {
                o.to_string()
                    .split(' ')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "neigh replace",
                "fdb append",
                "route replace",
                "route del",
                "fdb del",
                "neigh del"
            ]
        );
    }

    #[test]
    fn mode_switch_replaces_route_and_drops_tunnel_entries() {
        let a = Entries::of(&set(&[peer(2, Mode::Vxlan)]), "weft.1", Some("eth0"));
        let b = Entries::of(&set(&[peer(2, Mode::Direct)]), "weft.1", Some("eth0"));
        let d = Diff::between(&a, &b);
        assert_eq!(d.add_routes.len(), 1);
        assert!(d.del_routes.is_empty());
        assert_eq!((d.del_fdb.len(), d.del_neigh.len()), (1, 1));
    }

    #[test]
    fn paths_leave_out_clashing_peers_and_go_direct_only_on_the_segment() {
        let peers: BTreeMap<String, HostRecord> = [2, 3, 4]
            .into_iter()
            .map(|n| (format!("h{n}"), record(n)))
            .collect();
        let own = PathFacts {
            subnet: Some("10.244.2.0/24".parse().unwrap()),
            local: Some(Ipv4Addr::new(198, 18, 0, 14)),
            ..Default::default()
        };
        let (p, ignored) = paths(&peers, &own);
        assert_eq!(p.keys().collect::<Vec<_>>(), ["h3"]);
        assert_eq!(
            ignored.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["h2", "h4"]
        );
        let mut hops = BTreeMap::new();
        hops.insert(
            Ipv4Addr::new(198, 18, 0, 13),
            Hop {
                gateway: None,
                dev: Some("eth0".into()),
            },
        );
        let direct = PathFacts {
            subnet: Some("10.244.9.0/24".parse().unwrap()),
            local: None,
            underlay: Some("eth0"),
            hops: Some(&hops),
        };
        let (p, _) = paths(&peers, &direct);
        assert_eq!(p["h3"].mode, Mode::Direct);
        assert_eq!(p["h2"].mode, Mode::Vxlan, "no hop known: tunnel");
        // Behind a gateway, or through another device: the tunnel.
        let mut behind = hops.clone();
        behind.insert(
            Ipv4Addr::new(198, 18, 0, 13),
            Hop {
                gateway: Some(Ipv4Addr::new(198, 18, 0, 1)),
                dev: Some("eth0".into()),
            },
        );
        let direct = PathFacts {
            hops: Some(&behind),
            ..direct
        };
        assert_eq!(paths(&peers, &direct).0["h3"].mode, Mode::Vxlan);
        assert_eq!(count_modes(&paths(&peers, &direct).0), (3, 0));
    }
}
