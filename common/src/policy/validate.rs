//! The checks a policy passes before anything is written: each error is one
//! line naming the policy and the field (`web-ingress: ingress[0].ports[1]:
//! endPort 70 is below port 80`).

use crate::labels;
use crate::validate_name;

use super::{Direction, Peer, Policy, PortRange, Selector};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is not a policy document at all.
    #[error("not a policy document: {0}")]
    Decode(String),
    /// Policy (name or `#N`), what is wrong where.
    #[error("policy {0}: {1}")]
    Field(String, String),
}

/// Checks one decoded policy.
pub fn policy(p: &Policy) -> Result<(), PolicyError> {
    let bad = |what: String| Err(PolicyError::Field(p.name.clone(), what));
    if let Err(e) = validate_name(&p.name) {
        return bad(format!("name: {e}"));
    }
    if let Some(s) = &p.scope {
        if s.is_empty() {
            return bad("scope: empty (leave it out for every scope)".into());
        }
        if let Err(e) = labels::check_value(super::SCOPE_LABEL, s) {
            return bad(format!("scope: {e}"));
        }
    }
    if let Err(e) = selector("selector", &p.selector) {
        return bad(e);
    }
    if let Some(types) = &p.policy_types {
        if types.is_empty() {
            return bad("policyTypes: empty (leave it out, or list Ingress and/or Egress)".into());
        }
        for (i, t) in types.iter().enumerate() {
            if types[..i].contains(t) {
                return bad(format!("policyTypes: {t:?} is listed twice"));
            }
        }
        if !types.contains(&Direction::Egress) && !p.egress.is_empty() {
            return bad("egress rules, but policyTypes does not list Egress".into());
        }
        if !types.contains(&Direction::Ingress) && !p.ingress.is_empty() {
            return bad("ingress rules, but policyTypes does not list Ingress".into());
        }
    }
    for (dir, peers, rules) in [("ingress", "from", &p.ingress), ("egress", "to", &p.egress)] {
        for (i, r) in rules.iter().enumerate() {
            for (j, peer) in r.peers.iter().enumerate() {
                if let Err(e) = check_peer(peer) {
                    return bad(format!("{dir}[{i}].{peers}[{j}]: {e}"));
                }
            }
            for (j, port) in r.ports.iter().enumerate() {
                if let Err(e) = check_port(port) {
                    return bad(format!("{dir}[{i}].ports[{j}]: {e}"));
                }
            }
        }
    }
    Ok(())
}

fn selector(field: &str, s: &Selector) -> Result<(), String> {
    for (k, v) in &s.match_labels {
        labels::check_key(k)
            .and_then(|()| labels::check_value(k, v))
            .map_err(|e| format!("{field}.matchLabels: {e}"))?;
    }
    for (i, e) in s.match_expressions.iter().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        labels::check_key(&e.key).map_err(|err| format!("{at}: {err}"))?;
        use super::Operator::*;
        match e.operator {
            In | NotIn if e.values.is_empty() => {
                return Err(format!("{at}: {:?} needs values", e.operator))
            }
            Exists | DoesNotExist if !e.values.is_empty() => {
                return Err(format!("{at}: {:?} takes no values", e.operator))
            }
            _ => {}
        }
        for v in &e.values {
            labels::check_value(&e.key, v).map_err(|err| format!("{at}: {err}"))?;
        }
    }
    Ok(())
}

fn check_peer(p: &Peer) -> Result<(), String> {
    match (&p.selector, &p.scope_selector, &p.ip_block) {
        (None, None, None) => Err("needs a selector, a scopeSelector or an ipBlock".into()),
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            Err("an ipBlock stands alone (no selector or scopeSelector beside it)".into())
        }
        (_, _, Some(b)) => {
            if b.cidr.network() != b.cidr.ip() {
                return Err(format!(
                    "ipBlock.cidr {}: host bits are set; did you mean {}/{}?",
                    b.cidr,
                    b.cidr.network(),
                    b.cidr.prefix()
                ));
            }
            for e in &b.except {
                let inside = e.is_ipv4() == b.cidr.is_ipv4()
                    && b.cidr.contains(e.network())
                    && e.prefix() >= b.cidr.prefix();
                if !inside {
                    return Err(format!("ipBlock.except {e} is not inside cidr {}", b.cidr));
                }
            }
            Ok(())
        }
        (s, ss, None) => {
            if let Some(s) = s {
                selector("selector", s)?;
            }
            if let Some(s) = ss {
                selector("scopeSelector", s)?;
            }
            Ok(())
        }
    }
}

fn check_port(p: &PortRange) -> Result<(), String> {
    match (p.port, p.end_port) {
        (Some(0), _) => Err("port 0 is not a port (1-65535)".into()),
        (None, Some(_)) => Err("endPort needs a port".into()),
        (Some(a), Some(b)) if b < a => Err(format!("endPort {b} is below port {a}")),
        _ => Ok(()),
    }
}
