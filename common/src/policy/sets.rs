//! Resolved address sets: for every rule peer that chooses endpoints by
//! labels, the addresses of the endpoints (on every host) it means. The
//! controller resolves them and streams them to agents with deltas; an
//! agent then needs the policies, these sets and its own endpoints' labels,
//! never every endpoint of the cluster. A set is named by where its peer
//! is ([`set_id`]), so controller and agent agree without a table.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use super::decide::{peer_matches, Party};
use super::explain::Directory;
use super::{Direction, Policy};

/// Set id → member addresses. A set without members is absent.
pub type Sets = BTreeMap<String, BTreeSet<Ipv4Addr>>;

/// The set of peer `peer` of rule `rule` in direction `d` of `policy`:
/// `web/ingress/0/1`.
pub fn set_id(policy: &str, d: Direction, rule: usize, peer: usize) -> String {
    let d = match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    format!("{policy}/{d}/{rule}/{peer}")
}

/// Every label-choosing peer of `policies`, resolved against every host's
/// endpoints. `ipBlock` peers need no set.
pub fn resolve(policies: &[Policy], dir: &Directory) -> Sets {
    let mut out = Sets::new();
    for p in policies {
        for d in [Direction::Ingress, Direction::Egress] {
            for (r, rule) in p.rules(d).iter().enumerate() {
                for (i, peer) in rule.peers.iter().enumerate() {
                    if peer.ip_block.is_some() {
                        continue;
                    }
                    let members: BTreeSet<Ipv4Addr> = dir
                        .values()
                        .flatten()
                        .filter(|e| {
                            peer_matches(
                                p,
                                peer,
                                Party {
                                    ip: IpAddr::V4(e.ip),
                                    labels: Some(&e.labels),
                                },
                            )
                        })
                        .map(|e| e.ip)
                        .collect();
                    if !members.is_empty() {
                        out.insert(set_id(&p.name, d, r, i), members);
                    }
                }
            }
        }
    }
    out
}

/// A change of one set: addresses that joined and that left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetChange {
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<Ipv4Addr>,
}

/// What turns `old` into `new`, set by set.
pub fn diff(old: &Sets, new: &Sets) -> Vec<SetChange> {
    let empty = BTreeSet::new();
    let ids: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    ids.into_iter()
        .filter_map(|id| {
            let (o, n) = (old.get(id).unwrap_or(&empty), new.get(id).unwrap_or(&empty));
            let add: Vec<Ipv4Addr> = n.difference(o).copied().collect();
            let remove: Vec<Ipv4Addr> = o.difference(n).copied().collect();
            (!add.is_empty() || !remove.is_empty()).then(|| SetChange {
                id: id.clone(),
                add,
                remove,
            })
        })
        .collect()
}

/// Applies changes to `sets` (a set left empty is removed).
pub fn apply(sets: &mut Sets, changes: &[SetChange]) {
    for c in changes {
        let s = sets.entry(c.id.clone()).or_default();
        for ip in &c.remove {
            s.remove(ip);
        }
        s.extend(c.add.iter().copied());
        if s.is_empty() {
            sets.remove(&c.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::EndpointEntry;
    use crate::policy::parse;
    use proptest::prelude::*;

    /// Host, name, address, labels.
    type Ep<'a> = (&'a str, &'a str, [u8; 4], &'a [(&'a str, &'a str)]);

    fn dir(eps: &[Ep<'_>]) -> Directory {
        let mut d = Directory::new();
        for (host, name, ip, labels) in eps {
            d.entry(host.to_string()).or_default().push(EndpointEntry {
                name: name.to_string(),
                ip: Ipv4Addr::from(*ip),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            });
        }
        d
    }

    #[test]
    fn peers_resolve_to_the_addresses_of_every_host() {
        let ps = parse(
            r#"[{"name": "db", "scope": "x", "selector": {"matchLabels": {"app": "db"}},
                 "ingress": [{"from": [{"selector": {"matchLabels": {"app": "web"}}},
                                        {"ipBlock": {"cidr": "203.0.113.0/24"}},
                                        {"scopeSelector": {"matchLabels": {"scope": "y"}}}]}],
                 "egress": [{"to": [{"selector": {}}]}]}]"#,
        )
        .unwrap();
        let d = dir(&[
            (
                "h1",
                "web",
                [10, 0, 1, 2],
                &[("app", "web"), ("scope", "x")],
            ),
            (
                "h2",
                "web",
                [10, 0, 2, 2],
                &[("app", "web"), ("scope", "x")],
            ),
            (
                "h2",
                "web-y",
                [10, 0, 2, 3],
                &[("app", "web"), ("scope", "y")],
            ),
            ("h3", "db", [10, 0, 3, 2], &[("app", "db"), ("scope", "x")]),
        ]);
        let sets = resolve(&ps, &d);
        let ips = |v: &[[u8; 4]]| {
            v.iter()
                .map(|a| Ipv4Addr::from(*a))
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(
            sets,
            Sets::from([
                (
                    "db/ingress/0/0".to_string(),
                    ips(&[[10, 0, 1, 2], [10, 0, 2, 2]])
                ),
                ("db/ingress/0/2".to_string(), ips(&[[10, 0, 2, 3]])),
                (
                    "db/egress/0/0".to_string(),
                    ips(&[[10, 0, 1, 2], [10, 0, 2, 2], [10, 0, 3, 2]])
                ),
            ])
        );
    }

    fn arb_sets() -> impl Strategy<Value = Sets> {
        proptest::collection::btree_map(
            "[ab]/ingress/0/[01]",
            proptest::collection::btree_set(any::<[u8; 4]>().prop_map(Ipv4Addr::from), 1..5),
            0..4,
        )
    }

    proptest! {
        #[test]
        fn applying_the_diff_gives_the_new_sets(old in arb_sets(), new in arb_sets()) {
            let mut s = old.clone();
            apply(&mut s, &diff(&old, &new));
            prop_assert_eq!(&s, &new);
            prop_assert!(diff(&new, &new).is_empty());
        }
    }
}
