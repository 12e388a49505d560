//! Network policy on this host, decided: for each local endpoint that a
//! policy selects in a direction, the traffic that direction allows, with
//! the address sets its rules name ([`compile`]); and what turns the
//! nftables table that holds it into another ([`diff`]): member changes of
//! sets alone are element changes; anything else replaces the table in one
//! transaction. Pure; `firewall::policy` writes it as nftables JSON.
//!
//! Same semantics as [`weft_common::policy::decide`]: egress at the
//! source and ingress at the destination, each open unless selected, then
//! allowed only by the union of the selecting policies' rules; a rule's
//! peers any of its `from`/`to` (none: anyone), its ports any of `ports`
//! (none: every port and traffic without ports, such as ICMP). Replies of
//! allowed connections pass (connection tracking); IPv6 `ipBlock`s match
//! nothing (weft routes IPv4).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::{IpNetwork, Ipv4Network};
use weft_common::cluster::EndpointEntry;
use weft_common::policy::sets::{self, set_id, SetChange, Sets};
use weft_common::policy::{Direction, Policy, PortRange};

/// The nftables table (family inet) that holds network policy.
pub const POLICY_TABLE: &str = "weft_policy";

/// Everything the policy table holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyTable {
    /// nft set name → member addresses: every set a chain names.
    pub sets: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// Chain name → what it allows (one chain per local endpoint and
    /// direction that some policy selects).
    pub chains: BTreeMap<String, EndpointChain>,
    /// Local endpoint → its egress chain (traffic from it).
    pub egress: BTreeMap<Ipv4Addr, String>,
    /// Local endpoint → its ingress chain (traffic to it).
    pub ingress: BTreeMap<Ipv4Addr, String>,
    /// Every policy named in a chain (each has an accepted and a dropped
    /// counter).
    pub policies: BTreeSet<String>,
}

/// One endpoint's chain for one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointChain {
    pub endpoint: String,
    pub direction: Direction,
    /// Tried in order; the first that matches lets the packet on.
    pub allow: Vec<Allow>,
    /// The policies that select the endpoint: a packet none allows is
    /// dropped and counted on each.
    pub selected_by: Vec<String>,
}

/// One allowed (peer, port) combination of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    pub policy: String,
    pub rule: usize,
    pub peer: PeerMatch,
    /// `None`: every port and traffic without ports.
    pub ports: Option<PortRange>,
}

/// Who the other end may be (the source for ingress, the destination for
/// egress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMatch {
    Any,
    /// A member of this nft set.
    Set(String),
    /// In `cidr` and in none of `except`.
    Block {
        cidr: Ipv4Network,
        except: Vec<Ipv4Network>,
    },
}

/// The nft set of a label-choosing rule peer: `s_` and its id with `/`
/// and `-` as `_` (policy names hold no `_`, so names stay distinct).
pub fn set_name(policy: &str, d: Direction, rule: usize, peer: usize) -> String {
    let id = set_id(policy, d, rule, peer);
    format!("s_{}", id.replace(['/', '-'], "_"))
}

/// The chain of a local endpoint for a direction: `in_10_244_1_2`.
pub fn chain_name(d: Direction, ip: Ipv4Addr) -> String {
    let d = match d {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    };
    format!("{d}_{}", ip.to_string().replace('.', "_"))
}

/// A policy's counter of accepted (`a_`) or dropped (`d_`) packets.
pub fn counter_name(accepted: bool, policy: &str) -> String {
    format!(
        "{}_{}",
        if accepted { "a" } else { "d" },
        policy.replace('-', "_")
    )
}

/// The table for this host's endpoints `local` under `policies`, with the
/// resolved `sets` (by set id) the controller sent.
pub fn compile(policies: &[Policy], sets: &Sets, local: &[EndpointEntry]) -> PolicyTable {
    let mut t = PolicyTable::default();
    for ep in local {
        for d in [Direction::Ingress, Direction::Egress] {
            let selecting: Vec<&Policy> = policies
                .iter()
                .filter(|p| p.directions().contains(&d) && p.selects(&ep.labels))
                .collect();
            if selecting.is_empty() {
                continue;
            }
            let mut allow = Vec::new();
            for p in &selecting {
                t.policies.insert(p.name.clone());
                for (ri, rule) in p.rules(d).iter().enumerate() {
                    let mut peers = Vec::new();
                    if rule.peers.is_empty() {
                        peers.push(PeerMatch::Any);
                    }
                    for (pi, peer) in rule.peers.iter().enumerate() {
                        match &peer.ip_block {
                            Some(b) => {
                                if let IpNetwork::V4(cidr) = b.cidr {
                                    let except = b
                                        .except
                                        .iter()
                                        .filter_map(|e| match e {
                                            IpNetwork::V4(n) => Some(*n),
                                            IpNetwork::V6(_) => None,
                                        })
                                        .collect();
                                    peers.push(PeerMatch::Block { cidr, except });
                                }
                            }
                            None => {
                                let name = set_name(&p.name, d, ri, pi);
                                let members = sets
                                    .get(&set_id(&p.name, d, ri, pi))
                                    .cloned()
                                    .unwrap_or_default();
                                t.sets.insert(name.clone(), members);
                                peers.push(PeerMatch::Set(name));
                            }
                        }
                    }
                    let ports: Vec<Option<PortRange>> = if rule.ports.is_empty() {
                        vec![None]
                    } else {
                        rule.ports.iter().copied().map(Some).collect()
                    };
                    for peer in &peers {
                        for port in &ports {
                            allow.push(Allow {
                                policy: p.name.clone(),
                                rule: ri,
                                peer: peer.clone(),
                                ports: *port,
                            });
                        }
                    }
                }
            }
            let chain = chain_name(d, ep.ip);
            match d {
                Direction::Ingress => t.ingress.insert(ep.ip, chain.clone()),
                Direction::Egress => t.egress.insert(ep.ip, chain.clone()),
            };
            t.chains.insert(
                chain,
                EndpointChain {
                    endpoint: ep.name.clone(),
                    direction: d,
                    allow,
                    selected_by: selecting.iter().map(|p| p.name.clone()).collect(),
                },
            );
        }
    }
    t
}

impl PolicyTable {
    /// Whether `other` differs from this table only in set members.
    pub fn same_shape(&self, other: &PolicyTable) -> bool {
        self.chains == other.chains
            && self.egress == other.egress
            && self.ingress == other.ingress
            && self.policies == other.policies
            && self.sets.keys().eq(other.sets.keys())
    }

    /// What it holds, for logs: which endpoints are restricted how.
    pub fn describe(&self) -> String {
        let ends = |want: Direction| {
            self.chains
                .values()
                .filter(|c| c.direction == want)
                .map(|c| c.endpoint.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{} policies; ingress restricted at [{}], egress at [{}]; {} address sets",
            self.policies.len(),
            ends(Direction::Ingress),
            ends(Direction::Egress),
            self.sets.len()
        )
    }

    /// How many local endpoints a policy selects (in any direction).
    pub fn selected_endpoints(&self) -> usize {
        self.egress
            .keys()
            .chain(self.ingress.keys())
            .collect::<BTreeSet<_>>()
            .len()
    }
}

/// Members to add to and remove from one set (`id` is the nft set's name).
pub type SetEdit = SetChange;

/// How to turn the table `from` (none: not there, or unknown) into `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyDiff {
    Nothing,
    /// Member changes only.
    Sets(Vec<SetEdit>),
    /// Replace the whole table in one transaction.
    Replace,
}

pub fn diff(from: Option<&PolicyTable>, to: &PolicyTable) -> PolicyDiff {
    let Some(from) = from else {
        return PolicyDiff::Replace;
    };
    if !from.same_shape(to) {
        return PolicyDiff::Replace;
    }
    let edits = sets::diff(&from.sets, &to.sets);
    if edits.is_empty() {
        PolicyDiff::Nothing
    } else {
        PolicyDiff::Sets(edits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_common::policy::parse;
    use weft_common::policy::Protocol;

    fn ep(name: &str, last: u8, labels: &[(&str, &str)]) -> EndpointEntry {
        EndpointEntry {
            name: name.into(),
            ip: Ipv4Addr::new(10, 244, 1, last),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 2, last)
    }

    const DB: &str = r#"[{"name": "db-in", "selector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [{"selector": {"matchLabels": {"app": "web"}}},
                              {"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.8/29"]}},
                              {"ipBlock": {"cidr": "2001:db8::/32"}}],
                     "ports": [{"port": 5432}, {"protocol": "UDP", "port": 53, "endPort": 54}]}]},
        {"name": "deny-out", "selector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Egress"]}]"#;

    #[test]
    fn selected_endpoints_get_a_chain_per_direction_and_the_sets_their_rules_name() {
        let ps = parse(DB).unwrap();
        let sets = Sets::from([("db-in/ingress/0/0".to_string(), BTreeSet::from([ip(2)]))]);
        let local = [
            ep("db", 2, &[("app", "db")]),
            ep("web", 3, &[("app", "web")]),
        ];
        let t = compile(&ps, &sets, &local);
        let db = Ipv4Addr::new(10, 244, 1, 2);
        assert_eq!(
            t.ingress,
            BTreeMap::from([(db, "in_10_244_1_2".to_string())])
        );
        assert_eq!(
            t.egress,
            BTreeMap::from([(db, "out_10_244_1_2".to_string())])
        );
        assert_eq!(
            t.sets,
            BTreeMap::from([("s_db_in_ingress_0_0".to_string(), BTreeSet::from([ip(2)]))])
        );
        let inc = &t.chains["in_10_244_1_2"];
        assert_eq!(inc.selected_by, ["db-in"]);
        // 2 peers (the IPv6 block matches nothing here) × 2 port entries.
        assert_eq!(inc.allow.len(), 4);
        assert_eq!(
            inc.allow[0],
            Allow {
                policy: "db-in".into(),
                rule: 0,
                peer: PeerMatch::Set("s_db_in_ingress_0_0".into()),
                ports: Some(PortRange {
                    protocol: Protocol::Tcp,
                    port: Some(5432),
                    end_port: None
                }),
            }
        );
        assert_eq!(
            inc.allow[2].peer,
            PeerMatch::Block {
                cidr: "203.0.113.0/24".parse().unwrap(),
                except: vec!["203.0.113.8/29".parse().unwrap()]
            }
        );
        // Egress selected with no rule: deny all, counted on deny-out.
        let out = &t.chains["out_10_244_1_2"];
        assert!(out.allow.is_empty());
        assert_eq!(out.selected_by, ["deny-out"]);
        assert_eq!(t.selected_endpoints(), 1);
        assert_eq!(
            t.policies,
            BTreeSet::from(["db-in".to_string(), "deny-out".to_string()])
        );
    }

    #[test]
    fn member_changes_are_set_edits_and_anything_else_a_replace() {
        let ps = parse(DB).unwrap();
        let local = [ep("db", 2, &[("app", "db")])];
        let sets = |m: &[u8]| {
            Sets::from([(
                "db-in/ingress/0/0".to_string(),
                m.iter().map(|l| ip(*l)).collect::<BTreeSet<_>>(),
            )])
        };
        let a = compile(&ps, &sets(&[2, 3]), &local);
        assert_eq!(diff(None, &a), PolicyDiff::Replace);
        assert_eq!(diff(Some(&a), &a), PolicyDiff::Nothing);
        // A set emptied keeps its (empty) nft set: still only members.
        let b = compile(&ps, &Sets::new(), &local);
        assert_eq!(
            diff(Some(&a), &b),
            PolicyDiff::Sets(vec![SetEdit {
                id: "s_db_in_ingress_0_0".into(),
                add: vec![],
                remove: vec![ip(2), ip(3)]
            }])
        );
        let c = compile(&ps, &sets(&[3, 4]), &local);
        assert_eq!(
            diff(Some(&a), &c),
            PolicyDiff::Sets(vec![SetEdit {
                id: "s_db_in_ingress_0_0".into(),
                add: vec![ip(4)],
                remove: vec![ip(2)]
            }])
        );
        // A label change that selects another endpoint changes chains.
        let more = [
            ep("db", 2, &[("app", "db")]),
            ep("db2", 5, &[("app", "db")]),
        ];
        assert_eq!(
            diff(Some(&a), &compile(&ps, &sets(&[2, 3]), &more)),
            PolicyDiff::Replace
        );
        // No policy selects anything: an empty table.
        let none = compile(&[], &Sets::new(), &local);
        assert_eq!(none, PolicyTable::default());
    }
}
