//! Pure parts: the nftables JSON documents weft applies (built with the
//! `nftables` crate's typed schema) and parsing of `nft -j list table`.
//!
//! Published ports are DNAT'ed through maps, so adding or removing a forward
//! is an element change, never a rule change. nft 1.0.6 cannot create a map
//! whose *data* is a concatenation (`: ipv4_addr . inet_service`) from JSON:
//! its parser ignores an array `"map"` type (the map silently becomes a set)
//! and rejects the string form. So every lookup key has two maps, one giving
//! the target address and one the target port, used together as
//! `dnat ip to KEY map @..._addr : KEY map @..._port`. Both are always
//! changed in the same transaction.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Map as MapExpr, MetaKey, NamedExpression,
};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, SetType};
use nftables::stmt::{Accept, NATFamily, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfHook};

use super::elements::{element_cmds, peer_elements, ElemOp};
use super::expr::*;
use super::{FirewallSpec, PortForward};

/// Target address of forwards bound to one host address.
pub(super) const IP_ADDR_MAP: &str = "publish_ip_addr";
/// Target port of forwards bound to one host address.
pub(super) const IP_PORT_MAP: &str = "publish_ip_port";
/// Target address of forwards on any local address.
pub(super) const ANY_ADDR_MAP: &str = "publish_any_addr";
/// Target port of forwards on any local address.
pub(super) const ANY_PORT_MAP: &str = "publish_any_port";
/// Public addresses of the current peers: the only sources the VXLAN port
/// accepts packets from.
pub const PEERS_SET: &str = "vxlan_peers";

const IP_KEY: &[SetType] = &[SetType::Ipv4Addr, SetType::InetProto, SetType::InetService];
const ANY_KEY: &[SetType] = &[SetType::InetProto, SetType::InetService];

// Chain priorities (nft names: dstnat = -100, srcnat = 100, filter = 0).
const PRIO_DSTNAT: i32 = -100;
const PRIO_NAT_OUTPUT: i32 = -100;
const PRIO_SRCNAT: i32 = 100;
const PRIO_FILTER: i32 = 0;

/// The whole table, replaced in one transaction: `add table` (so the next
/// command cannot fail), `delete table`, then everything anew. Expects
/// deduplicated, conflict-free forwards.
pub(super) fn sync_doc(
    table: &str,
    spec: &FirewallSpec,
    forwards: &[PortForward],
    peers: &BTreeSet<Ipv4Addr>,
) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(table_obj(table));
    batch.delete(table_obj(table));
    batch.add(table_obj(table));
    if spec.vxlan_port.is_some() {
        batch.add(set_obj(table, PEERS_SET));
    }

    batch.add(map_obj(table, IP_ADDR_MAP, IP_KEY, SetType::Ipv4Addr));
    batch.add(map_obj(table, IP_PORT_MAP, IP_KEY, SetType::InetService));
    batch.add(map_obj(table, ANY_ADDR_MAP, ANY_KEY, SetType::Ipv4Addr));
    batch.add(map_obj(table, ANY_PORT_MAP, ANY_KEY, SetType::InetService));

    let chains = [
        (
            "prerouting",
            NfChainType::NAT,
            NfHook::Prerouting,
            PRIO_DSTNAT,
        ),
        ("output", NfChainType::NAT, NfHook::Output, PRIO_NAT_OUTPUT),
        (
            "postrouting",
            NfChainType::NAT,
            NfHook::Postrouting,
            PRIO_SRCNAT,
        ),
        ("forward", NfChainType::Filter, NfHook::Forward, PRIO_FILTER),
        ("input", NfChainType::Filter, NfHook::Input, PRIO_FILTER),
    ];
    for (name, ty, hook, prio) in chains {
        batch.add(NfListObject::Chain(Chain {
            family: FAMILY,
            table: owned(table),
            name: Cow::Borrowed(name),
            _type: Some(ty),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        }));
    }

    for chain in ["prerouting", "output"] {
        // Forwards bound to a host address first: a NAT statement ends
        // evaluation, so they win over "any address" forwards of the same
        // port; a lookup miss ends only this rule.
        batch.add(rule(table, chain, dnat_rule(true)));
        batch.add(rule(table, chain, dnat_rule(false)));
    }

    let cluster = prefix(spec.cluster_cidr);
    let subnet = prefix(spec.subnet);
    let masquerade = || Statement::Masquerade(None);
    let accept = || Statement::Accept(None::<Accept>);
    // Egress to the outside world.
    batch.add(rule(
        table,
        "postrouting",
        vec![
            matches(ip("saddr"), Operator::EQ, cluster.clone()),
            matches(ip("daddr"), Operator::NEQ, cluster.clone()),
            matches(
                ip("daddr"),
                Operator::NEQ,
                prefix_of(Ipv4Addr::new(224, 0, 0, 0), 4),
            ),
            masquerade(),
        ],
    ));
    // Hairpin: a namespace reaching a published port of its own host.
    batch.add(rule(
        table,
        "postrouting",
        vec![
            matches(ct("status"), Operator::IN, string("dnat")),
            matches(ip("saddr"), Operator::EQ, subnet.clone()),
            matches(ip("daddr"), Operator::EQ, subnet),
            masquerade(),
        ],
    ));
    // Ports published on 127.0.0.1 (route_localnet is set on the bridge).
    batch.add(rule(
        table,
        "postrouting",
        vec![
            matches(
                ip("saddr"),
                Operator::EQ,
                prefix_of(Ipv4Addr::new(127, 0, 0, 0), 8),
            ),
            matches(meta(MetaKey::Oifname), Operator::EQ, string(&spec.bridge)),
            masquerade(),
        ],
    ));

    batch.add(rule(
        table,
        "forward",
        vec![
            matches(
                ct("state"),
                Operator::IN,
                Expression::List(vec![string("established"), string("related")]),
            ),
            accept(),
        ],
    ));
    batch.add(rule(
        table,
        "forward",
        vec![
            matches(ip("saddr"), Operator::EQ, cluster.clone()),
            accept(),
        ],
    ));
    batch.add(rule(
        table,
        "forward",
        vec![matches(ip("daddr"), Operator::EQ, cluster), accept()],
    ));
    // route_localnet on the bridge (for ports published on 127.0.0.1) would
    // also let a namespace reach the host's loopback-only services with a
    // crafted packet (the CVE-2020-8558 class): only replies may come in.
    let to_loopback = || {
        [
            matches(meta(MetaKey::Iifname), Operator::EQ, string(&spec.bridge)),
            matches(
                ip("daddr"),
                Operator::EQ,
                prefix_of(Ipv4Addr::new(127, 0, 0, 0), 8),
            ),
        ]
    };
    let mut replies = to_loopback().to_vec();
    replies.push(matches(
        ct("state"),
        Operator::IN,
        Expression::List(vec![string("established"), string("related")]),
    ));
    replies.push(accept());
    batch.add(rule(table, "input", replies));
    let mut others = to_loopback().to_vec();
    others.push(Statement::Drop(None));
    batch.add(rule(table, "input", others));
    // VXLAN has no authentication: a packet to the port from anyone but a
    // current peer would be decapsulated and forwarded as if it came from
    // inside the cluster. Dropped here, before the vxlan socket sees it.
    if let Some(port) = spec.vxlan_port {
        batch.add(rule(
            table,
            "input",
            vec![
                matches(
                    payload("udp", "dport"),
                    Operator::EQ,
                    Expression::Number(u32::from(port)),
                ),
                matches(ip("saddr"), Operator::NEQ, string(format!("@{PEERS_SET}"))),
                Statement::Counter(nftables::stmt::Counter::Anonymous(None)),
                Statement::Drop(None),
            ],
        ));
        if !peers.is_empty() {
            batch.add(peer_elements(table, peers.iter()));
        }
    }

    batch.add_all(element_cmds(table, forwards, ElemOp::Add));
    batch.to_nftables()
}

/// The fingerprint of every rule `sync_doc` writes, by chain, in order
/// (see `expr::fingerprint`): what a table written by this agent for
/// `spec` holds.
pub(super) fn fingerprints(table: &str, spec: &FirewallSpec) -> BTreeMap<String, Vec<String>> {
    let doc = sync_doc(table, spec, &[], &BTreeSet::new());
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in doc.objects.iter() {
        match o {
            NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(c))) => {
                out.entry(c.name.to_string()).or_default();
            }
            NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(r))) => {
                out.entry(r.chain.to_string())
                    .or_default()
                    .push(r.comment.clone().unwrap_or_default().into_owned());
            }
            _ => {}
        }
    }
    out
}

/// `fib daddr type local dnat ip to KEY map @addr : KEY map @port`, KEY being
/// `ip daddr . meta l4proto . th dport` (bound forwards) or
/// `meta l4proto . th dport` (any address; IPv4 only, hence the nfproto match).
fn dnat_rule(bound: bool) -> Vec<Statement<'static>> {
    let mut key = Vec::with_capacity(3);
    if bound {
        key.push(ip("daddr"));
    }
    key.push(meta(MetaKey::L4proto));
    key.push(payload("th", "dport"));
    let key = Expression::Named(NamedExpression::Concat(key));
    let (addr_map, port_map) = if bound {
        (IP_ADDR_MAP, IP_PORT_MAP)
    } else {
        (ANY_ADDR_MAP, ANY_PORT_MAP)
    };
    let lookup = |map: &str| {
        Expression::Named(NamedExpression::Map(Box::new(MapExpr {
            key: key.clone(),
            data: string(format!("@{map}")),
        })))
    };
    let mut stmts = Vec::with_capacity(3);
    if !bound {
        stmts.push(matches(
            meta(MetaKey::Nfproto),
            Operator::EQ,
            string("ipv4"),
        ));
    }
    stmts.push(matches(
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: HashSet::from([FibFlag::Daddr]),
        })),
        Operator::EQ,
        string("local"),
    ));
    stmts.push(Statement::DNAT(Some(NAT {
        addr: Some(lookup(addr_map)),
        family: Some(NATFamily::IP),
        port: Some(lookup(port_map)),
        flags: None,
    })));
    stmts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::testing::*;
    use serde_json::{json, Value};
    use weft_common::Proto;

    #[test]
    fn sync_starts_with_add_delete_add_table() {
        let cmds = commands(&sync_doc("weft", &spec(), &[], &Default::default()));
        let t = json!({"family": "inet", "name": "weft"});
        assert_eq!(cmds[0], json!({"add": {"table": t}}));
        assert_eq!(cmds[1], json!({"delete": {"table": t}}));
        assert_eq!(cmds[2], json!({"add": {"table": t}}));
        // No elements without forwards: maps, chains and rules only.
        assert!(cmds
            .iter()
            .all(|c| c.get("add").is_some_and(|a| a.get("element").is_none())
                || c.get("delete").is_some()));
    }

    #[test]
    fn sync_maps_have_concatenated_keys_and_single_data() {
        let cmds = commands(&sync_doc("t1", &spec(), &[], &Default::default()));
        let maps: Vec<&Value> = cmds.iter().filter_map(|c| c["add"].get("map")).collect();
        assert_eq!(maps.len(), 4);
        assert_eq!(
            maps[0],
            &json!({"family": "inet", "table": "t1", "name": "publish_ip_addr",
                    "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "ipv4_addr"})
        );
        assert_eq!(maps[3]["name"], "publish_any_port");
        assert_eq!(maps[3]["type"], json!(["inet_proto", "inet_service"]));
        assert_eq!(maps[3]["map"], "inet_service");
    }

    #[test]
    fn sync_chains() {
        let cmds = commands(&sync_doc("weft", &spec(), &[], &Default::default()));
        let chains: Vec<(String, String, i64)> = cmds
            .iter()
            .filter_map(|c| c["add"].get("chain"))
            .map(|c| {
                assert_eq!(c["policy"], "accept");
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["type"].as_str().unwrap().to_owned(),
                    c["prio"].as_i64().unwrap(),
                )
            })
            .collect();
        let expect = [
            ("prerouting", "nat", -100),
            ("output", "nat", -100),
            ("postrouting", "nat", 100),
            ("forward", "filter", 0),
            ("input", "filter", 0),
        ]
        .map(|(n, t, p)| (n.to_owned(), t.to_owned(), p));
        assert_eq!(chains, expect);
    }

    fn rules_of(cmds: &[Value], chain: &str) -> Vec<Value> {
        cmds.iter()
            .filter_map(|c| c["add"].get("rule"))
            .filter(|r| r["chain"] == chain)
            .map(|r| r["expr"].clone())
            .collect()
    }

    #[test]
    fn dnat_rules_bound_first_then_any() {
        let cmds = commands(&sync_doc("weft", &spec(), &[], &Default::default()));
        for chain in ["prerouting", "output"] {
            let rules = rules_of(&cmds, chain);
            assert_eq!(rules.len(), 2, "{chain}");
            let fib = json!({"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}});
            let key_ip = json!({"concat": [
                {"payload": {"protocol": "ip", "field": "daddr"}},
                {"meta": {"key": "l4proto"}},
                {"payload": {"protocol": "th", "field": "dport"}}]});
            assert_eq!(
                rules[0],
                json!([fib, {"dnat": {"family": "ip",
                    "addr": {"map": {"key": key_ip, "data": "@publish_ip_addr"}},
                    "port": {"map": {"key": key_ip, "data": "@publish_ip_port"}}}}])
            );
            let key_any = json!({"concat": [
                {"meta": {"key": "l4proto"}},
                {"payload": {"protocol": "th", "field": "dport"}}]});
            assert_eq!(
                rules[1],
                json!([
                    {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}},
                    fib,
                    {"dnat": {"family": "ip",
                        "addr": {"map": {"key": key_any, "data": "@publish_any_addr"}},
                        "port": {"map": {"key": key_any, "data": "@publish_any_port"}}}}])
            );
        }
    }

    #[test]
    fn postrouting_and_forward_rules() {
        let spec = FirewallSpec {
            // Host bits are cleared.
            cluster_cidr: "10.244.7.7/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            bridge: "br-x".into(),
            vxlan_port: None,
        };
        let cmds = commands(&sync_doc("weft", &spec, &[], &Default::default()));
        let pfx = |a: &str, l: u32| json!({"prefix": {"addr": a, "len": l}});
        let ipm = |f: &str, op: &str, r: Value| json!({"match": {"op": op, "left": {"payload": {"protocol": "ip", "field": f}}, "right": r}});
        let cl = pfx("10.244.0.0", 16);
        let sub = pfx("10.244.1.0", 24);
        assert_eq!(
            rules_of(&cmds, "postrouting"),
            vec![
                json!([ipm("saddr", "==", cl.clone()), ipm("daddr", "!=", cl.clone()),
                       ipm("daddr", "!=", pfx("224.0.0.0", 4)), {"masquerade": null}]),
                json!([{"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                       ipm("saddr", "==", sub.clone()), ipm("daddr", "==", sub), {"masquerade": null}]),
                json!([ipm("saddr", "==", pfx("127.0.0.0", 8)),
                       {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br-x"}},
                       {"masquerade": null}]),
            ]
        );
        assert_eq!(
            rules_of(&cmds, "forward"),
            vec![
                json!([{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
                       {"accept": null}]),
                json!([ipm("saddr", "==", cl.clone()), {"accept": null}]),
                json!([ipm("daddr", "==", cl), {"accept": null}]),
            ]
        );
    }

    #[test]
    fn slash_32_is_a_plain_address() {
        assert_eq!(prefix("10.0.0.1/32".parse().unwrap()), string("10.0.0.1"));
    }

    #[test]
    fn sync_adds_elements_last() {
        let f = [
            fwd(
                Some([192, 168, 1, 1]),
                8080,
                Proto::Tcp,
                [10, 244, 1, 2],
                80,
            ),
            fwd(None, 53, Proto::Udp, [10, 244, 1, 3], 5353),
        ];
        let cmds = commands(&sync_doc("weft", &spec(), &f, &Default::default()));
        let n = cmds.len();
        let elems: Vec<&Value> = cmds[n - 4..].iter().map(|c| &c["add"]["element"]).collect();
        let names: Vec<&str> = elems.iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "publish_any_addr",
                "publish_any_port",
                "publish_ip_addr",
                "publish_ip_port"
            ]
        );
        assert_eq!(
            elems[0]["elem"],
            json!([[{"concat": ["udp", 53]}, "10.244.1.3"]])
        );
        assert_eq!(elems[1]["elem"], json!([[{"concat": ["udp", 53]}, 5353]]));
        assert_eq!(
            elems[2]["elem"],
            json!([[{"concat": ["192.168.1.1", "tcp", 8080]}, "10.244.1.2"]])
        );
        assert_eq!(
            elems[3]["elem"],
            json!([[{"concat": ["192.168.1.1", "tcp", 8080]}, 80]])
        );
    }
}
