//! Whether one connection is allowed, and which policy and rule decided:
//! egress at the source AND ingress at the destination, each open unless
//! a policy selects the endpoint for that direction, and then allowed only
//! by the union of those policies' rules (Kubernetes NetworkPolicy v1).
//! Replies of an allowed connection always pass (connection tracking), so
//! only the direction that opens a connection is decided here.

use std::fmt;
use std::net::IpAddr;

use crate::Labels;

use super::{scope_labels, scope_of, Direction, Peer, Policy, Protocol, Rule};

/// One end of a connection: a weft endpoint (its labels), or an address
/// outside weft (no labels: only `ipBlock`s match it, and no policy
/// selects it).
#[derive(Debug, Clone, Copy)]
pub struct Party<'a> {
    pub ip: IpAddr,
    pub labels: Option<&'a Labels>,
}

/// How one direction was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// No policy selects the endpoint for this direction (or the end is not
    /// a weft endpoint): open.
    Open,
    /// Allowed by rule `rule` (counting from 0) of `policy`.
    Allowed { policy: String, rule: usize },
    /// Selected by these policies, none of whose rules allows it.
    Denied { policies: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub egress: Side,
    pub ingress: Side,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        !matches!(self.egress, Side::Denied { .. }) && !matches!(self.ingress, Side::Denied { .. })
    }
}

/// What a connection carries: a port of a protocol, or traffic without
/// ports (ICMP: a ping), which only rules without `ports` allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    Port(Protocol, u16),
    Other,
}

impl Traffic {
    /// `80/tcp`, `53/udp`, `5000/sctp` (the protocol defaults to TCP).
    pub fn parse(s: &str) -> Result<Traffic, String> {
        let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            other => return Err(format!("{s:?}: protocol {other:?} is not tcp, udp or sctp")),
        };
        match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(Traffic::Port(proto, p)),
            _ => Err(format!(
                "{s:?}: port {port:?} is not a number from 1 to 65535"
            )),
        }
    }
}

impl fmt::Display for Traffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Traffic::Port(proto, port) => write!(f, "{port}/{proto}"),
            Traffic::Other => f.write_str("traffic without ports (ICMP)"),
        }
    }
}

/// `from` opening a connection to `to` carrying `traffic`.
pub fn decide(policies: &[Policy], from: Party<'_>, to: Party<'_>, traffic: Traffic) -> Verdict {
    Verdict {
        egress: side(policies, Direction::Egress, from, to, traffic),
        ingress: side(policies, Direction::Ingress, to, from, traffic),
    }
}

/// The direction `d` at `me` (the source for egress, the destination for
/// ingress), the other end being `other`.
fn side(
    policies: &[Policy],
    d: Direction,
    me: Party<'_>,
    other: Party<'_>,
    traffic: Traffic,
) -> Side {
    let Some(labels) = me.labels else {
        return Side::Open;
    };
    let mut selecting = Vec::new();
    for p in policies {
        if !p.directions().contains(&d) || !p.selects(labels) {
            continue;
        }
        if let Some(i) = p
            .rules(d)
            .iter()
            .position(|r| rule_matches(p, r, other, traffic))
        {
            return Side::Allowed {
                policy: p.name.clone(),
                rule: i,
            };
        }
        selecting.push(p.name.clone());
    }
    if selecting.is_empty() {
        Side::Open
    } else {
        Side::Denied {
            policies: selecting,
        }
    }
}

fn rule_matches(p: &Policy, r: &Rule, other: Party<'_>, traffic: Traffic) -> bool {
    (r.peers.is_empty() || r.peers.iter().any(|peer| peer_matches(p, peer, other)))
        && (r.ports.is_empty()
            || match traffic {
                Traffic::Port(proto, port) => r.ports.iter().any(|pr| pr.matches(proto, port)),
                Traffic::Other => false,
            })
}

/// Whether `peer` (in a rule of `p`) means `party`.
pub fn peer_matches(p: &Policy, peer: &Peer, party: Party<'_>) -> bool {
    if let Some(b) = &peer.ip_block {
        return b.contains(party.ip);
    }
    let Some(labels) = party.labels else {
        return false;
    };
    let scope = scope_of(labels);
    let in_scope = match (&peer.scope_selector, &p.scope) {
        (Some(ss), _) => ss.matches(&scope_labels(scope)),
        (None, Some(own)) => scope == own,
        (None, None) => true,
    };
    in_scope && peer.selector.as_ref().is_none_or(|s| s.matches(labels))
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Side::Open => f.write_str("open (no policy selects it)"),
            Side::Allowed { policy, rule } => write!(f, "allowed by {policy} rule {rule}"),
            Side::Denied { policies } => {
                write!(
                    f,
                    "denied: selected by {} and no rule allows it",
                    policies.join(", ")
                )
            }
        }
    }
}
