//! Why a host's registration (or its session) is refused: one variant per
//! reason, each with the sentence an operator reads (what happened, then
//! how to give the host its subnet back, then the other way out) and the
//! stable code agents act on ([`RefusalCode`]).

use std::fmt;

use ipnetwork::Ipv4Network;
use weft_common::refusal::RefusalCode;

/// A refused registration. `node` is the host, `want` the subnet it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The node name is not a valid name.
    InvalidName { reason: String },
    /// The node name differs from the name in the agent's certificate: a
    /// certificate names one host, so a stolen one cannot claim another
    /// host's subnet.
    NameMismatch { node: String, cert: String },
    /// No network config in etcd.
    NotInitialised,
    /// Every host subnet is held or reserved.
    Exhausted {
        cidr: Ipv4Network,
        len: u8,
        count: u64,
    },
    /// The served subnet is not a host subnet of the cluster.
    OutsideCluster {
        node: String,
        want: Ipv4Network,
        cidr: Ipv4Network,
        len: u8,
    },
    /// The served subnet is held by another host.
    SubnetTaken {
        node: String,
        want: Ipv4Network,
        holder: String,
    },
    /// The served subnet is reserved, for another host or for none.
    SubnetReserved {
        node: String,
        want: Ipv4Network,
        for_host: Option<String>,
    },
    /// Another subnet is reserved for this host: it cannot keep the one it
    /// serves.
    ReservedElsewhere {
        node: String,
        want: Ipv4Network,
        pinned: Ipv4Network,
    },
    /// The host's record holds another subnet than the one it serves.
    RecordMismatch {
        node: String,
        want: Ipv4Network,
        holds: Ipv4Network,
    },
    /// The host's record holds a subnet that is not a host subnet of the
    /// cluster (the config changed under it).
    RecordOutsideCluster {
        node: String,
        holds: Ipv4Network,
        cidr: Ipv4Network,
        len: u8,
    },
    /// The host's record vanished during its session.
    RecordGone,
}

impl Refusal {
    /// The stable code of this refusal.
    pub fn code(&self) -> RefusalCode {
        match self {
            Refusal::InvalidName { .. } => RefusalCode::InvalidName,
            Refusal::NameMismatch { .. } => RefusalCode::NameMismatch,
            Refusal::NotInitialised => RefusalCode::NotInitialised,
            Refusal::Exhausted { .. } => RefusalCode::Exhausted,
            Refusal::OutsideCluster { .. } => RefusalCode::OutsideCluster,
            Refusal::SubnetTaken { .. } => RefusalCode::SubnetTaken,
            Refusal::SubnetReserved { .. } => RefusalCode::SubnetReserved,
            Refusal::ReservedElsewhere { .. } => RefusalCode::ReservedElsewhere,
            Refusal::RecordMismatch { .. } => RefusalCode::RecordMismatch,
            Refusal::RecordOutsideCluster { .. } => RefusalCode::RecordOutsideCluster,
            Refusal::RecordGone => RefusalCode::RecordGone,
        }
    }
}

/// The other way out of every refusal about a served subnet: the host
/// gives it up.
fn afresh(node: &str) -> String {
    format!("start {node} afresh on a new subnet: delete its namespaces (`weftctl ns del NAME` on {node}), stop its agent, remove its state directory and start the agent again")
}

/// A refused allocation for a host that serves `want`: what happened
/// (`why`), how to give it `want` back if it can be (`back`), then the
/// other way out.
fn not_allocated(
    f: &mut fmt::Formatter<'_>,
    node: &str,
    want: Ipv4Network,
    why: &str,
    back: Option<String>,
) -> fmt::Result {
    let back = back.map_or_else(
        || " To go on:".to_string(),
        |b| format!(" To give {want} back to {node}: {b}; or"),
    );
    write!(
        f,
        "host {node} serves {want}, {why}: nothing allocated.{back} {}",
        afresh(node)
    )
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::InvalidName { reason } => write!(f, "invalid node name: {reason}"),
            Refusal::NameMismatch { node, cert } => write!(
                f,
                "node name {node:?} does not match the certificate's name {cert:?}"
            ),
            Refusal::NotInitialised => write!(
                f,
                "the cluster is not initialised: run `weftctl cluster init --cidr CIDR`"
            ),
            Refusal::Exhausted { cidr, len, count } => write!(
                f,
                "no free subnet left in {cidr}: all {count} /{len} subnets are held or reserved"
            ),
            Refusal::OutsideCluster {
                node,
                want,
                cidr,
                len,
            } => not_allocated(
                f,
                node,
                *want,
                &format!("which is not a /{len} subnet of the cluster cidr {cidr}"),
                None,
            ),
            Refusal::SubnetTaken { node, want, holder: h } => not_allocated(
                f,
                node,
                *want,
                &format!("which is now held by host {h} ({node}'s lease ended while it was away, or it was removed)"),
                Some(format!("stop the agent of {h} (its namespaces use {want}), `weftctl host rm {h}`, then `weftctl subnet reserve {want} --host {node}`")),
            ),
            Refusal::SubnetReserved { node, want, for_host } => not_allocated(
                f,
                node,
                *want,
                &match for_host {
                    Some(h) => format!("which is reserved for host {h}"),
                    None => "which is reserved".to_string(),
                },
                Some(format!("`weftctl subnet release {want}`, then `weftctl subnet reserve {want} --host {node}`")),
            ),
            Refusal::ReservedElsewhere { node, want, pinned } => not_allocated(
                f,
                node,
                *want,
                &format!("but {pinned} is reserved for it"),
                Some(format!("`weftctl subnet release {pinned}` (it then keeps {want})")),
            ),
            Refusal::RecordMismatch { node: n, want: w, holds: s } => write!(
                f,
                "host {n} serves {w}, but its host record holds {s} (another agent registered as {n}, or this host's state was replaced): nothing changed. To give {w} back to {n}: `weftctl host rm {n}` if no agent uses {s} any more; or {}",
                afresh(n)
            ),
            Refusal::RecordOutsideCluster { node, holds, cidr, len } => write!(
                f,
                "host {node} holds {holds}, which is not a /{len} of the cluster cidr {cidr}"
            ),
            Refusal::RecordGone => write!(
                f,
                "this host's record is gone (its lease ended or `weftctl host rm` removed it); register again"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    /// Every refusal about a served subnet names the host and the subnet
    /// first, and ends with the way out of starting afresh; each code is
    /// the documented one.
    #[test]
    fn sentences_and_codes() {
        let (node, want) = ("h3".to_string(), net("10.244.2.0/24"));
        let served = [
            (
                Refusal::OutsideCluster {
                    node: node.clone(),
                    want,
                    cidr: net("10.245.0.0/16"),
                    len: 24,
                },
                RefusalCode::OutsideCluster,
            ),
            (
                Refusal::SubnetTaken {
                    node: node.clone(),
                    want,
                    holder: "h4".into(),
                },
                RefusalCode::SubnetTaken,
            ),
            (
                Refusal::SubnetReserved {
                    node: node.clone(),
                    want,
                    for_host: None,
                },
                RefusalCode::SubnetReserved,
            ),
            (
                Refusal::ReservedElsewhere {
                    node: node.clone(),
                    want,
                    pinned: net("10.244.7.0/24"),
                },
                RefusalCode::ReservedElsewhere,
            ),
            (
                Refusal::RecordMismatch {
                    node: node.clone(),
                    want,
                    holds: net("10.244.9.0/24"),
                },
                RefusalCode::RecordMismatch,
            ),
        ];
        for (r, code) in served {
            let s = r.to_string();
            assert!(s.starts_with("host h3 serves 10.244.2.0/24"), "{s}");
            assert!(
                s.ends_with("remove its state directory and start the agent again"),
                "{s}"
            );
            assert_eq!(r.code(), code);
            assert!(r.code().persists());
        }
        assert_eq!(
            Refusal::RecordMismatch { node: node.clone(), want, holds: net("10.244.9.0/24") }.to_string(),
            "host h3 serves 10.244.2.0/24, but its host record holds 10.244.9.0/24 (another agent registered as h3, or this host's state was replaced): nothing changed. \
             To give 10.244.2.0/24 back to h3: `weftctl host rm h3` if no agent uses 10.244.9.0/24 any more; \
             or start h3 afresh on a new subnet: delete its namespaces (`weftctl ns del NAME` on h3), stop its agent, remove its state directory and start the agent again"
        );
        assert_eq!(
            Refusal::NameMismatch {
                node: "h2".into(),
                cert: "h1".into()
            }
            .to_string(),
            "node name \"h2\" does not match the certificate's name \"h1\""
        );
        assert!(!Refusal::RecordGone.code().persists());
    }
}
