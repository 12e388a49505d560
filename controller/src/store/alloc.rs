//! The allocation decision, pure: which subnet a registering host without
//! a host record gets, or why it gets none. Decided from a view of every
//! subnet key before anything is written (`register` then writes it in one
//! guarded transaction).

use std::collections::{BTreeMap, HashSet};

use ipnetwork::Ipv4Network;
use weft_common::cluster::{NetworkConfig, SubnetRecord};

use super::refusal::Refusal;

/// Where a registration without a host record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// A subnet reserved for this host (the reservation stays, leaseless).
    Pinned(Ipv4Network),
    /// A subnet whose key names this host though it has no record (a
    /// hand-edited or half-restored etcd): taken over as it is.
    Reclaim(Ipv4Network),
    /// A free subnet: its key is created.
    Free(Ipv4Network),
}

impl Choice {
    pub fn subnet(self) -> Ipv4Network {
        match self {
            Choice::Pinned(n) | Choice::Reclaim(n) | Choice::Free(n) => n,
        }
    }
}

/// Decides the subnet of `node`, which has no host record, from every
/// subnet key (`rec` gives a key's record). `want` is the subnet the host
/// already serves: it keeps that one or nothing. Refused (nothing to
/// write) when `want` is not a host subnet of the cluster, is held by or
/// reserved for another host (or for none), or another subnet is reserved
/// for this host. Without `want`: the subnet reserved for it, else a free
/// one.
pub fn choose<V>(
    cfg: &NetworkConfig,
    node: &str,
    want: Option<Ipv4Network>,
    subnets: &BTreeMap<Ipv4Network, V>,
    rec: impl Fn(&V) -> &SubnetRecord,
) -> Result<Choice, Refusal> {
    let mine = |r: &SubnetRecord| r.host.as_deref() == Some(node);
    let pinned = subnets
        .iter()
        .find(|(net, v)| rec(v).reserved && mine(rec(v)) && cfg.is_host_subnet(**net))
        .map(|(net, _)| *net);
    let Some(want) = want else {
        if let Some(net) = pinned {
            return Ok(Choice::Pinned(net));
        }
        let used: HashSet<Ipv4Network> = subnets.keys().copied().collect();
        return pick_free(cfg, &used)
            .map(Choice::Free)
            .ok_or(Refusal::Exhausted {
                cidr: cfg.cidr,
                len: cfg.subnet_len,
                count: cfg.subnet_count(),
            });
    };
    if !cfg.is_host_subnet(want) {
        return Err(Refusal::OutsideCluster {
            node: node.to_string(),
            want,
            cidr: cfg.cidr,
            len: cfg.subnet_len,
        });
    }
    let node_s = node.to_string();
    match subnets.get(&want).map(&rec) {
        Some(r) if mine(r) && r.reserved => Ok(Choice::Pinned(want)),
        Some(r) if mine(r) => Ok(Choice::Reclaim(want)),
        Some(SubnetRecord {
            reserved: false,
            host: Some(h),
        }) => Err(Refusal::SubnetTaken {
            node: node_s,
            want,
            holder: h.clone(),
        }),
        Some(SubnetRecord { host, .. }) => Err(Refusal::SubnetReserved {
            node: node_s,
            want,
            for_host: host.clone(),
        }),
        None => match pinned {
            Some(p) => Err(Refusal::ReservedElsewhere {
                node: node_s,
                want,
                pinned: p,
            }),
            None => Ok(Choice::Free(want)),
        },
    }
}

/// A free subnet, starting at a random place (so concurrent allocators
/// rarely collide); `None` when every subnet is used.
pub fn pick_free(cfg: &NetworkConfig, used: &HashSet<Ipv4Network>) -> Option<Ipv4Network> {
    let n = cfg.subnet_count();
    if used.len() as u64 >= n {
        return None;
    }
    let start = rand::random_range(0..n);
    (0..n)
        .map(|i| (start + i) % n)
        .filter_map(|i| cfg.nth_subnet(i))
        .find(|s| !used.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(len: u8) -> NetworkConfig {
        NetworkConfig {
            subnet_len: len,
            ..NetworkConfig::new("10.244.0.0/16".parse().unwrap())
        }
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn held(h: &str) -> SubnetRecord {
        SubnetRecord {
            host: Some(h.into()),
            reserved: false,
        }
    }

    fn reserved(h: Option<&str>) -> SubnetRecord {
        SubnetRecord {
            host: h.map(str::to_string),
            reserved: true,
        }
    }

    fn choose_in(subnets: &[(&str, SubnetRecord)], want: Option<&str>) -> Result<Choice, String> {
        let map: BTreeMap<Ipv4Network, SubnetRecord> =
            subnets.iter().map(|(n, r)| (net(n), r.clone())).collect();
        choose(&cfg(24), "h3", want.map(net), &map, |r| r).map_err(|e| e.to_string())
    }

    /// A host that comes back to find its subnet taken is refused with
    /// both names and both remedies; it is never given another subnet.
    #[test]
    fn a_taken_subnet_is_refused_not_swapped() {
        let y = "10.244.2.0/24";
        let e = choose_in(&[(y, held("h4"))], Some(y)).unwrap_err();
        assert_eq!(
            e,
            "host h3 serves 10.244.2.0/24, which is now held by host h4 (h3's lease ended while it was away, or it was removed): nothing allocated. \
             To give 10.244.2.0/24 back to h3: stop the agent of h4 (its namespaces use 10.244.2.0/24), `weftctl host rm h4`, then `weftctl subnet reserve 10.244.2.0/24 --host h3`; \
             or start h3 afresh on a new subnet: delete its namespaces (`weftctl ns del NAME` on h3), stop its agent, remove its state directory and start the agent again"
        );
        for part in [
            "host h3 serves 10.244.2.0/24, which is now held by host h4",
            "nothing allocated",
            "`weftctl host rm h4`",
            "`weftctl subnet reserve 10.244.2.0/24 --host h3`",
            "start h3 afresh",
        ] {
            assert!(e.contains(part), "{part:?} missing: {e}");
        }
        let e = choose_in(&[(y, reserved(Some("h5")))], Some(y)).unwrap_err();
        assert!(
            e.contains("which is reserved for host h5")
                && e.contains("`weftctl subnet release 10.244.2.0/24`"),
            "{e}"
        );
        let e = choose_in(&[(y, reserved(None))], Some(y)).unwrap_err();
        assert!(
            e.contains("which is reserved: nothing allocated. To give"),
            "{e}"
        );
        // Outside the cluster: no way back, only the other way out.
        let e = choose_in(&[], Some("10.245.2.0/24")).unwrap_err();
        assert!(
            e.ends_with("nothing allocated. To go on: start h3 afresh on a new subnet: delete its namespaces (`weftctl ns del NAME` on h3), stop its agent, remove its state directory and start the agent again"),
            "{e}"
        );
        for bad in ["10.245.2.0/24", "10.244.2.0/25"] {
            let e = choose_in(&[], Some(bad)).unwrap_err();
            assert!(
                e.contains(&format!(
                    "host h3 serves {bad}, which is not a /24 subnet of the cluster cidr 10.244.0.0/16"
                )),
                "{e}"
            );
        }
        // Another subnet reserved for it: it cannot follow, so refused too.
        let e = choose_in(&[("10.244.7.0/24", reserved(Some("h3")))], Some(y)).unwrap_err();
        assert!(
            e.contains("but 10.244.7.0/24 is reserved for it")
                && e.contains("`weftctl subnet release 10.244.7.0/24`"),
            "{e}"
        );
    }

    #[test]
    fn a_served_subnet_that_is_free_or_its_own_is_given_back() {
        let y = "10.244.2.0/24";
        assert_eq!(
            choose_in(&[("10.244.1.0/24", held("h4"))], Some(y)),
            Ok(Choice::Free(net(y)))
        );
        assert_eq!(
            choose_in(&[(y, reserved(Some("h3")))], Some(y)),
            Ok(Choice::Pinned(net(y)))
        );
        // Its own reservation wins over another one pinned to it.
        assert_eq!(
            choose_in(
                &[
                    ("10.244.1.0/24", reserved(Some("h3"))),
                    (y, reserved(Some("h3")))
                ],
                Some(y)
            ),
            Ok(Choice::Pinned(net(y)))
        );
        assert_eq!(
            choose_in(&[(y, held("h3"))], Some(y)),
            Ok(Choice::Reclaim(net(y)))
        );
        // A new host: its reservation, else any free subnet.
        assert_eq!(
            choose_in(&[(y, reserved(Some("h3")))], None),
            Ok(Choice::Pinned(net(y)))
        );
        match choose_in(&[(y, held("h4"))], None) {
            Ok(Choice::Free(n)) => assert_ne!(n, net(y)),
            other => panic!("{other:?}"),
        }
    }

    fn record(host: u8, reserved: bool) -> SubnetRecord {
        SubnetRecord {
            host: (host < 4).then(|| format!("h{host}")),
            reserved,
        }
    }

    proptest! {
        /// pick_free never returns a used subnet or one outside the cidr, and
        /// finds one whenever one is free.
        #[test]
        fn pick_free_is_sound(len in 17u8..22, used_idx in proptest::collection::hash_set(0u64..32, 0..32)) {
            let cfg = cfg(len);
            let used: HashSet<Ipv4Network> = used_idx.iter().filter_map(|i| cfg.nth_subnet(*i)).collect();
            match pick_free(&cfg, &used) {
                Some(s) => {
                    prop_assert!(cfg.is_host_subnet(s));
                    prop_assert!(!used.contains(&s));
                }
                None => prop_assert_eq!(used.len() as u64, cfg.subnet_count()),
            }
        }

        /// Whatever etcd holds, `choose` never hands out a subnet another
        /// host holds or that is reserved for another host (or for none),
        /// gives a host that serves a subnet that subnet or nothing, and
        /// refuses only for one of the documented reasons.
        #[test]
        fn choose_is_sound(
            len in 17u8..22,
            keys in proptest::collection::btree_map(0u64..32, (0u8..5, any::<bool>()), 0..32),
            want in proptest::option::of(0u64..40),
            outside in any::<bool>(),
        ) {
            let cfg = cfg(len);
            let subnets: BTreeMap<Ipv4Network, SubnetRecord> = keys
                .iter()
                .filter_map(|(i, (h, r))| Some((cfg.nth_subnet(*i)?, record(*h, *r))))
                .collect();
            let want = match (want, outside) {
                (Some(_), true) => Some(net("10.99.0.0/24")),
                (w, _) => w.and_then(|i| cfg.nth_subnet(i)),
            };
            match choose(&cfg, "h3", want, &subnets, |r| r) {
                Ok(c) => {
                    let s = c.subnet();
                    prop_assert!(cfg.is_host_subnet(s));
                    if let Some(w) = want { prop_assert_eq!(s, w); }
                    match (c, subnets.get(&s)) {
                        (Choice::Free(_), None) => {}
                        (Choice::Pinned(_), Some(r)) => prop_assert!(r.reserved && r.host.as_deref() == Some("h3")),
                        (Choice::Reclaim(_), Some(r)) => prop_assert!(!r.reserved && r.host.as_deref() == Some("h3")),
                        (c, r) => prop_assert!(false, "{c:?} of a key {r:?}"),
                    }
                }
                Err(Refusal::Exhausted { .. }) => {
                    prop_assert!(want.is_none());
                    prop_assert_eq!(subnets.len() as u64, cfg.subnet_count());
                }
                Err(why) => {
                    let w = want.expect("a new host is never refused");
                    let s = why.to_string();
                    prop_assert!(s.starts_with(&format!("host h3 serves {w}")), "{}", s);
                    prop_assert!(why.code().persists());
                    let theirs = subnets.get(&w).is_some_and(|r| r.host.as_deref() != Some("h3"));
                    let pinned_elsewhere = subnets.iter().any(|(n, r)| *n != w && r.reserved && r.host.as_deref() == Some("h3"));
                    // Each refusal for its documented reason only.
                    match &why {
                        Refusal::OutsideCluster { .. } => prop_assert!(!cfg.is_host_subnet(w)),
                        Refusal::SubnetTaken { holder, .. } => {
                            let r = subnets.get(&w).expect("a taken subnet has a key");
                            prop_assert!(!r.reserved && r.host.as_deref() == Some(holder.as_str()) && holder != "h3");
                        }
                        Refusal::SubnetReserved { for_host, .. } => {
                            let r = subnets.get(&w).expect("a reserved subnet has a key");
                            // Reserved, or a key naming no host at all.
                            prop_assert!(r.host == *for_host && (r.reserved || r.host.is_none()));
                            prop_assert!(for_host.as_deref() != Some("h3"));
                        }
                        Refusal::ReservedElsewhere { pinned, .. } => {
                            prop_assert!(pinned_elsewhere && !subnets.contains_key(&w));
                            prop_assert!(subnets.get(pinned).is_some_and(|r| r.reserved && r.host.as_deref() == Some("h3")));
                        }
                        other => prop_assert!(false, "unexpected refusal {other:?}"),
                    }
                    prop_assert!(!cfg.is_host_subnet(w) || theirs || pinned_elsewhere, "{}", s);
                }
            }
        }
    }
}
