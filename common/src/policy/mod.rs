//! Network policy: who may talk to whom, with the semantics of Kubernetes
//! NetworkPolicy v1. This module is the pure part every component shares:
//! the documents operators write ([`Policy`], decoded from JSON by
//! [`parse`]), their checks ([`validate`]), label selectors
//! ([`selector`]) and the decision for one connection ([`decide`]), which
//! `policy explain` prints and the agents' rules must agree with.
//!
//! Scopes play the role of Kubernetes namespaces: an endpoint's scope is
//! the value of its label [`SCOPE_LABEL`] (`default` without one). A policy
//! with a `scope` selects only endpoints of that scope, and in its rules a
//! peer with only a `selector` means "in that scope"; a `scopeSelector`
//! selects scopes by their labels, which are `{scope: NAME}`. A policy
//! without a scope selects endpoints of every scope, and a bare `selector`
//! in its rules matches endpoints of every scope.

pub mod decide;
pub mod explain;
pub mod selector;
pub mod sets;
pub mod validate;

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::Labels;
pub use selector::{Expression, Operator, Selector};
pub use validate::PolicyError;

/// The label whose value is an endpoint's scope.
pub const SCOPE_LABEL: &str = "scope";
/// The scope of an endpoint without a [`SCOPE_LABEL`].
pub const DEFAULT_SCOPE: &str = "default";

/// One policy, as operators write it and etcd keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    /// The scope it lives in (a Kubernetes namespace), or none: every scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The endpoints it applies to; `{}` is all of them (in its scope).
    pub selector: Selector,
    /// The directions it restricts. Unset: ingress, and egress when it has
    /// `egress` rules (as Kubernetes does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<Direction>>,
    /// Rules written with `from:`.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "ingress_form")]
    pub ingress: Vec<Rule>,
    /// Rules written with `to:`.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "egress_form")]
    pub egress: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

/// One rule: traffic from (ingress) or to (egress) any of `peers` on any
/// of `ports`. No peers: every source or destination; no ports: every
/// port. Written `{from: [...], ports: [...]}` in `ingress` and `{to:
/// [...], ports: [...]}` in `egress`, as Kubernetes writes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortRange>,
}

/// The written forms of [`Rule`] per direction: `from` only in ingress,
/// `to` only in egress, anything else refused.
macro_rules! rule_form {
    ($module:ident, $form:ident, $peers:ident) => {
        #[derive(Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $form {
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            $peers: Vec<Peer>,
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            ports: Vec<PortRange>,
        }

        mod $module {
            use serde::{Deserialize, Deserializer, Serialize, Serializer};

            use super::{$form, Rule};

            pub fn serialize<S: Serializer>(rules: &[Rule], s: S) -> Result<S::Ok, S::Error> {
                let forms: Vec<$form> = rules
                    .iter()
                    .map(|r| $form {
                        $peers: r.peers.clone(),
                        ports: r.ports.clone(),
                    })
                    .collect();
                forms.serialize(s)
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Rule>, D::Error> {
                Ok(Vec::<$form>::deserialize(d)?
                    .into_iter()
                    .map(|f| Rule {
                        peers: f.$peers,
                        ports: f.ports,
                    })
                    .collect())
            }
        }
    };
}

rule_form!(ingress_form, IngressForm, from);
rule_form!(egress_form, EgressForm, to);

/// Endpoints chosen by labels (`selector`, `scopeSelector`, both: AND), or
/// addresses (`ipBlock`, alone).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_selector: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: IpNetwork,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<IpNetwork>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        })
    }
}

/// A protocol and optionally a port or a range `port..=endPort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRange {
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

impl PortRange {
    pub fn matches(&self, proto: Protocol, port: u16) -> bool {
        proto == self.protocol
            && match (self.port, self.end_port) {
                (None, _) => true,
                (Some(p), None) => port == p,
                (Some(p), Some(e)) => (p..=e).contains(&port),
            }
    }
}

impl Policy {
    /// The directions this policy restricts.
    pub fn directions(&self) -> Vec<Direction> {
        match &self.policy_types {
            Some(t) => t.clone(),
            None if self.egress.is_empty() => vec![Direction::Ingress],
            None => vec![Direction::Ingress, Direction::Egress],
        }
    }

    /// Whether it applies to an endpoint with `labels`.
    pub fn selects(&self, labels: &Labels) -> bool {
        self.scope.as_deref().is_none_or(|s| scope_of(labels) == s) && self.selector.matches(labels)
    }

    pub fn rules(&self, d: Direction) -> &[Rule] {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// The scope of an endpoint with `labels`.
pub fn scope_of(labels: &Labels) -> &str {
    labels
        .get(SCOPE_LABEL)
        .map_or(DEFAULT_SCOPE, String::as_str)
}

/// The labels a scope has, which `scopeSelector`s match: `{scope: NAME}`.
pub fn scope_labels(scope: &str) -> Labels {
    [(SCOPE_LABEL.to_string(), scope.to_string())].into()
}

/// One policy or many (a JSON object, or a list of them), checked whole:
/// the first error names the policy and the field.
pub fn parse(text: &str) -> Result<Vec<Policy>, PolicyError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| PolicyError::Decode(e.to_string()))?;
    parse_value(v)
}

/// [`parse`] of a document already decoded (from YAML, say).
pub fn parse_value(v: serde_json::Value) -> Result<Vec<Policy>, PolicyError> {
    let list = match v {
        serde_json::Value::Array(a) => a,
        o @ serde_json::Value::Object(_) => vec![o],
        _ => {
            return Err(PolicyError::Decode(
                "expected a policy (an object) or a list of them".into(),
            ))
        }
    };
    let mut out: Vec<Policy> = Vec::with_capacity(list.len());
    for (i, v) in list.into_iter().enumerate() {
        let name = v
            .get("name")
            .and_then(|n| n.as_str())
            .map_or_else(|| format!("#{}", i + 1), str::to_string);
        let p: Policy = serde_json::from_value(v)
            .map_err(|e| PolicyError::Field(name.clone(), e.to_string()))?;
        validate::policy(&p)?;
        if out.iter().any(|q| q.name == p.name) {
            return Err(PolicyError::Field(name, "the name is given twice".into()));
        }
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
