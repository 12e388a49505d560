//! Network policy as nftables JSON (pure), in its own table `inet
//! weft_policy` so that weft's main table stays as it is:
//!
//! ```text
//! table inet weft_policy {
//!     counter a_db_in { }            # accepted by policy db-in
//!     counter d_db_in { }            # dropped at endpoints db-in selects
//!     set s_db_in_ingress_0_0 { type ipv4_addr; elements = { 10.244.2.3 } }
//!     chain forward {
//!         type filter hook forward priority -10; policy accept;
//!         ct direction reply accept
//!         ip saddr vmap { 10.244.1.2 : jump out_10_244_1_2 }
//!         ip daddr vmap { 10.244.1.2 : jump in_10_244_1_2 }
//!     }
//!     chain in_10_244_1_2 {
//!         ip saddr @s_db_in_ingress_0_0 meta l4proto tcp th dport 5432 counter name "a_db_in" return
//!         counter name "d_db_in" drop
//!     }
//! }
//! ```
//!
//! Traffic between two endpoints of one host is bridged: it reaches the
//! `forward` hook through the kernel's bridge netfilter (`br_netfilter`,
//! which weft turns on for its bridge), with connection tracking, as
//! routed traffic does. Replies of a tracked connection pass; every packet
//! opening or continuing a connection is checked, so a flow that a new
//! policy no longer allows stops at its next packet.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Range, SetItem, Verdict};
use nftables::schema::{Chain, Counter, NfListObject, Nftables, Rule, Set, SetType, SetTypeValue};
use nftables::stmt::{Counter as CounterRef, JumpTarget, Operator, Statement, VerdictMap};
use nftables::types::{NfChainPolicy, NfChainType, NfHook};
use weft_common::policy::{Direction, PortRange};

use super::expr::{
    ct, element_obj_named, ip, matches, meta, owned, prefix, string, table_obj, FAMILY,
};
use crate::model::observed::PolicyView;
use crate::model::policy::{counter_name, Allow, PeerMatch, PolicyTable, SetEdit};

/// Before weft's own forward chain (priority filter, 0).
const PRIO: i32 = -10;

/// The whole table, replacing what is there in one transaction. Its first
/// rule carries the table's [`fingerprint`] as its comment.
pub(super) fn replace_doc(table: &str, t: &PolicyTable) -> Nftables<'static> {
    doc(table, t, Some(fingerprint(t)))
}

/// A hash of everything the table holds but set members (which change
/// element by element): equal fingerprints, equal rules. FNV-1a of the
/// table's JSON: stable across Rust versions.
pub fn fingerprint(t: &PolicyTable) -> String {
    let mut shape = t.clone();
    for m in shape.sets.values_mut() {
        m.clear();
    }
    let json = serde_json::to_string(&doc("t", &shape, None)).expect("nft JSON");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("weft:{h:016x}")
}

/// The table's nft JSON as read back (`nft -j list table`): the
/// fingerprint, set members and counters.
pub(super) fn view(json: &str) -> Result<PolicyView, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut out = PolicyView::default();
    for o in v["nftables"].as_array().into_iter().flatten() {
        if let Some(r) = o.get("rule") {
            if r["chain"] == "forward" && out.fingerprint.is_none() {
                out.fingerprint = r["comment"].as_str().map(str::to_string);
            }
        } else if let Some(s) = o.get("set") {
            let name = s["name"].as_str().unwrap_or_default().to_string();
            let members = s["elem"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str()?.parse().ok())
                .collect();
            out.sets.insert(name, members);
        } else if let Some(c) = o.get("counter") {
            if let (Some(n), Some(p)) = (c["name"].as_str(), c["packets"].as_u64()) {
                out.counters.insert(n.to_string(), p);
            }
        }
    }
    Ok(out)
}

fn doc(table: &str, t: &PolicyTable, comment: Option<String>) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(table_obj(table));
    batch.delete(table_obj(table));
    batch.add(table_obj(table));
    for p in &t.policies {
        for accepted in [true, false] {
            batch.add(NfListObject::Counter(Counter {
                family: FAMILY,
                table: owned(table),
                name: Cow::Owned(counter_name(accepted, p)),
                handle: None,
                packets: None,
                bytes: None,
            }));
        }
    }
    for (name, members) in &t.sets {
        batch.add(NfListObject::Set(Box::new(Set {
            family: FAMILY,
            table: owned(table),
            name: Cow::Owned(name.clone()),
            handle: None,
            set_type: SetTypeValue::Single(SetType::Ipv4Addr),
            policy: None,
            flags: None,
            elem: (!members.is_empty())
                .then(|| Cow::Owned(members.iter().map(|a| string(a.to_string())).collect())),
            timeout: None,
            gc_interval: None,
            size: None,
            comment: None,
        })));
    }
    batch.add(NfListObject::Chain(Chain {
        family: FAMILY,
        table: owned(table),
        name: Cow::Borrowed("forward"),
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Forward),
        prio: Some(PRIO),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }));
    for name in t.chains.keys() {
        batch.add(NfListObject::Chain(Chain {
            family: FAMILY,
            table: owned(table),
            name: Cow::Owned(name.clone()),
            ..Chain::default()
        }));
    }
    let forward = |stmts| rule(table, "forward", stmts);
    let mut first = forward(vec![
        matches(ct("direction"), Operator::EQ, string("reply")),
        Statement::Accept(None),
    ]);
    if let (NfListObject::Rule(r), Some(c)) = (&mut first, comment) {
        r.comment = Some(Cow::Owned(c));
    }
    batch.add(first);
    for (field, map) in [("saddr", &t.egress), ("daddr", &t.ingress)] {
        if map.is_empty() {
            continue;
        }
        let items = map
            .iter()
            .map(|(addr, chain)| {
                SetItem::Mapping(
                    string(addr.to_string()),
                    Expression::Verdict(Verdict::Jump(JumpTarget {
                        target: Cow::Owned(chain.clone()),
                    })),
                )
            })
            .collect();
        batch.add(forward(vec![Statement::VerdictMap(VerdictMap {
            key: ip(field),
            data: Expression::Named(NamedExpression::Set(items)),
        })]));
    }
    for (name, chain) in &t.chains {
        for a in &chain.allow {
            batch.add(rule(table, name, allow_rule(chain.direction, a)));
        }
        let mut last: Vec<Statement<'static>> = chain
            .selected_by
            .iter()
            .map(|p| Statement::Counter(CounterRef::Named(Cow::Owned(counter_name(false, p)))))
            .collect();
        last.push(Statement::Drop(None));
        batch.add(rule(table, name, last));
    }
    batch.to_nftables()
}

/// One allowed combination: the other end, the protocol and ports, then
/// the policy's accepted counter and back to the forward chain (the other
/// direction may still be checked there).
fn allow_rule(d: Direction, a: &Allow) -> Vec<Statement<'static>> {
    let other = match d {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    let mut s = Vec::new();
    match &a.peer {
        PeerMatch::Any => {}
        PeerMatch::Set(name) => {
            s.push(matches(ip(other), Operator::EQ, string(format!("@{name}"))))
        }
        PeerMatch::Block { cidr, except } => {
            s.push(matches(ip(other), Operator::EQ, prefix(*cidr)));
            if !except.is_empty() {
                let items = except
                    .iter()
                    .map(|n| SetItem::Element(prefix(*n)))
                    .collect();
                s.push(matches(
                    ip(other),
                    Operator::NEQ,
                    Expression::Named(NamedExpression::Set(items)),
                ));
            }
        }
    }
    if let Some(p) = &a.ports {
        s.extend(port_match(p));
    }
    s.push(Statement::Counter(CounterRef::Named(Cow::Owned(
        counter_name(true, &a.policy),
    ))));
    s.push(Statement::Return(None));
    s
}

/// `meta l4proto tcp [th dport N | th dport N-M]`.
fn port_match(p: &PortRange) -> Vec<Statement<'static>> {
    let mut s = vec![matches(
        meta(nftables::expr::MetaKey::L4proto),
        Operator::EQ,
        string(p.protocol.to_string()),
    )];
    let dport = || super::expr::payload("th", "dport");
    match (p.port, p.end_port) {
        (None, _) => {}
        (Some(port), None) => s.push(matches(
            dport(),
            Operator::EQ,
            Expression::Number(u32::from(port)),
        )),
        (Some(port), Some(end)) => s.push(matches(
            dport(),
            Operator::EQ,
            Expression::Range(Box::new(Range {
                range: [
                    Expression::Number(u32::from(port)),
                    Expression::Number(u32::from(end)),
                ],
            })),
        )),
    }
    s
}

fn rule(table: &str, chain: &str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: FAMILY,
        table: owned(table),
        chain: owned(chain),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: None,
    })
}

/// Member changes of sets, in one transaction.
pub(super) fn sets_doc(table: &str, edits: &[SetEdit]) -> Nftables<'static> {
    let mut batch = Batch::new();
    let elems = |ips: &[Ipv4Addr]| ips.iter().map(|a| string(a.to_string())).collect();
    for e in edits {
        if !e.remove.is_empty() {
            batch.delete(element_obj_named(table, &e.id, elems(&e.remove)));
        }
        if !e.add.is_empty() {
            batch.add(element_obj_named(table, &e.id, elems(&e.add)));
        }
    }
    batch.to_nftables()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use weft_common::cluster::EndpointEntry;
    use weft_common::policy::parse;
    use weft_common::policy::sets::Sets;

    /// The policy table of the example in the module's documentation.
    pub(crate) fn example() -> PolicyTable {
        let ps = parse(
            r#"{"name": "db-in", "selector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"selector": {"matchLabels": {"app": "web"}}},
                                      {"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.8/29"]}}],
                             "ports": [{"port": 5432}, {"protocol": "UDP", "port": 53, "endPort": 54}]}]}"#,
        )
        .unwrap();
        let web = Ipv4Addr::new(10, 244, 2, 3);
        let sets = Sets::from([("db-in/ingress/0/0".to_string(), BTreeSet::from([web]))]);
        let local = [EndpointEntry {
            name: "db".into(),
            ip: Ipv4Addr::new(10, 244, 1, 2),
            labels: [("app".to_string(), "db".to_string())].into(),
        }];
        crate::model::policy::compile(&ps, &sets, &local)
    }

    #[test]
    fn the_table_as_json() {
        let web = Ipv4Addr::new(10, 244, 2, 3);
        let t = example();
        let json = serde_json::to_string(&replace_doc("weft_policy", &t)).unwrap();
        for want in [
            r#"{"counter":{"family":"inet","table":"weft_policy","name":"a_db_in""#,
            r#""name":"s_db_in_ingress_0_0","type":"ipv4_addr","elem":["10.244.2.3"]"#,
            r#"{"match":{"left":{"ct":{"key":"direction"}},"right":"reply","op":"=="}},{"accept":null}"#,
            r#"{"vmap":{"key":{"payload":{"protocol":"ip","field":"daddr"}},"data":{"set":[["10.244.1.2",{"jump":{"target":"in_10_244_1_2"}}]]}}}"#,
            r#"{"match":{"left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"@s_db_in_ingress_0_0","op":"=="}}"#,
            r#"{"match":{"left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"set":[{"prefix":{"addr":"203.0.113.8","len":29}}]},"op":"!="}}"#,
            r#"{"match":{"left":{"payload":{"protocol":"th","field":"dport"}},"right":{"range":[53,54]},"op":"=="}}"#,
            r#"{"counter":"a_db_in"},{"return":null}"#,
            r#"{"counter":"d_db_in"},{"drop":null}"#,
        ] {
            assert!(json.contains(want), "missing {want}\nin {json}");
        }
        assert!(
            !json.contains(r#""field":"saddr"}},"data""#),
            "no egress dispatch without egress chains: {json}"
        );
        let edits = [SetEdit {
            id: "s_x".into(),
            add: vec![web],
            remove: vec![Ipv4Addr::new(10, 244, 2, 4)],
        }];
        let json = serde_json::to_string(&sets_doc("weft_policy", &edits)).unwrap();
        assert!(json.contains(r#"{"delete":{"element":{"family":"inet","table":"weft_policy","name":"s_x","elem":["10.244.2.4"]}}}"#), "{json}");
        assert!(json.contains(r#"{"add":{"element":{"family":"inet","table":"weft_policy","name":"s_x","elem":["10.244.2.3"]}}}"#), "{json}");
    }
}
