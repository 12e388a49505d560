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

use ipnetwork::Ipv4Network;
use nftables::batch::Batch;
use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Map as MapExpr, Meta, MetaKey, NamedExpression, Payload,
    PayloadField, Prefix, CT,
};
use nftables::schema::{
    Chain, Element, Map, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetType, SetTypeValue,
    Table,
};
use nftables::stmt::{Accept, Match, NATFamily, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use weft_common::Proto;

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
pub(super) const PEERS_SET: &str = "vxlan_peers";

const FAMILY: NfFamily = NfFamily::INet;
const IP_KEY: &[SetType] = &[SetType::Ipv4Addr, SetType::InetProto, SetType::InetService];
const ANY_KEY: &[SetType] = &[SetType::InetProto, SetType::InetService];

// Chain priorities (nft names: dstnat = -100, srcnat = 100, filter = 0).
const PRIO_DSTNAT: i32 = -100;
const PRIO_NAT_OUTPUT: i32 = -100;
const PRIO_SRCNAT: i32 = 100;
const PRIO_FILTER: i32 = 0;

/// What a map element is looked up by: host address (none for "any local
/// address"), protocol and host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Key {
    pub host_ip: Option<Ipv4Addr>,
    pub proto: Proto,
    pub port: u16,
}

impl Key {
    pub fn of(f: &PortForward) -> Self {
        Key {
            host_ip: f.host_ip,
            proto: f.proto,
            port: f.host_port,
        }
    }

    fn addr_map(&self) -> &'static str {
        if self.host_ip.is_some() {
            IP_ADDR_MAP
        } else {
            ANY_ADDR_MAP
        }
    }

    fn port_map(&self) -> &'static str {
        if self.host_ip.is_some() {
            IP_PORT_MAP
        } else {
            ANY_PORT_MAP
        }
    }

    fn expr(&self) -> Expression<'static> {
        let mut parts = Vec::with_capacity(3);
        if let Some(ip) = self.host_ip {
            parts.push(string(ip.to_string()));
        }
        parts.push(Expression::String(Cow::Borrowed(self.proto.as_str())));
        parts.push(Expression::Number(u32::from(self.port)));
        Expression::Named(NamedExpression::Concat(parts))
    }
}

/// Exact duplicates removed, in a stable order.
pub(super) fn dedup(forwards: &[PortForward]) -> Vec<PortForward> {
    forwards
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The first pair of (deduplicated) forwards that claim the same key but
/// send it to different targets.
pub(super) fn find_conflict(forwards: &[PortForward]) -> Option<(PortForward, PortForward)> {
    let mut seen: BTreeMap<Key, PortForward> = BTreeMap::new();
    for f in forwards {
        if let Some(prev) = seen.insert(Key::of(f), *f) {
            if prev != *f {
                return Some((prev, *f));
            }
        }
    }
    None
}

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

/// Adds and removes peer addresses in one transaction (removals first).
/// Expects `del` to hold only present and `add` only absent addresses.
pub(super) fn peers_doc(table: &str, add: &[Ipv4Addr], del: &[Ipv4Addr]) -> Nftables<'static> {
    let mut batch = Batch::new();
    if !del.is_empty() {
        batch.delete(peer_elements(table, del.iter()));
    }
    if !add.is_empty() {
        batch.add(peer_elements(table, add.iter()));
    }
    batch.to_nftables()
}

fn peer_elements<'a>(
    table: &str,
    ips: impl Iterator<Item = &'a Ipv4Addr>,
) -> NfListObject<'static> {
    element_obj(
        table,
        PEERS_SET,
        ips.map(|ip| string(ip.to_string())).collect(),
    )
}

fn set_obj(table: &str, name: &'static str) -> NfListObject<'static> {
    NfListObject::Set(Box::new(Set {
        family: FAMILY,
        table: owned(table),
        name: Cow::Borrowed(name),
        handle: None,
        set_type: SetTypeValue::Single(SetType::Ipv4Addr),
        policy: None,
        flags: None,
        elem: None,
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }))
}

/// Deletes the table whether or not it exists.
pub(super) fn teardown_doc(table: &str) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(table_obj(table));
    batch.delete(table_obj(table));
    batch.to_nftables()
}

/// Adds forwards; `create` fails on a key that is already present.
pub(super) fn add_doc(table: &str, forwards: &[PortForward]) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add_all(element_cmds(table, forwards, ElemOp::Create));
    batch.to_nftables()
}

/// Deletes the given keys from the address and the port maps.
pub(super) fn del_doc(table: &str, addr_keys: &[Key], port_keys: &[Key]) -> Nftables<'static> {
    let mut batch = Batch::new();
    for (keys, map_of) in [
        (addr_keys, Key::addr_map as fn(&Key) -> &'static str),
        (port_keys, Key::port_map),
    ] {
        for map in [IP_ADDR_MAP, IP_PORT_MAP, ANY_ADDR_MAP, ANY_PORT_MAP] {
            let elem: Vec<_> = keys
                .iter()
                .filter(|k| map_of(k) == map)
                .map(Key::expr)
                .collect();
            if !elem.is_empty() {
                batch.delete(element_obj(table, map, elem));
            }
        }
    }
    batch.to_nftables()
}

#[derive(Clone, Copy)]
enum ElemOp {
    Add,
    Create,
}

fn element_cmds(table: &str, forwards: &[PortForward], op: ElemOp) -> Vec<NfObject<'static>> {
    let mut per_map: BTreeMap<&'static str, Vec<Expression<'static>>> = BTreeMap::new();
    for f in forwards {
        let key = Key::of(f);
        per_map
            .entry(key.addr_map())
            .or_default()
            .push(Expression::List(vec![
                key.expr(),
                string(f.target.to_string()),
            ]));
        per_map
            .entry(key.port_map())
            .or_default()
            .push(Expression::List(vec![
                key.expr(),
                Expression::Number(u32::from(f.target_port)),
            ]));
    }
    per_map
        .into_iter()
        .map(|(map, elem)| {
            let obj = element_obj(table, map, elem);
            NfObject::CmdObject(match op {
                ElemOp::Add => NfCmd::Add(obj),
                ElemOp::Create => NfCmd::Create(obj),
            })
        })
        .collect()
}

fn element_obj(
    table: &str,
    map: &'static str,
    elem: Vec<Expression<'static>>,
) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: FAMILY,
        table: owned(table),
        name: Cow::Borrowed(map),
        elem: Cow::Owned(elem),
    })
}

fn table_obj(table: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: FAMILY,
        name: owned(table),
        handle: None,
    })
}

fn map_obj(
    table: &str,
    name: &'static str,
    key: &'static [SetType],
    data: SetType,
) -> NfListObject<'static> {
    NfListObject::Map(Box::new(Map {
        family: FAMILY,
        table: owned(table),
        name: Cow::Borrowed(name),
        handle: None,
        set_type: SetTypeValue::Concatenated(Cow::Borrowed(key)),
        map: SetTypeValue::Single(data),
        policy: None,
        flags: None,
        elem: None,
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }))
}

fn rule(table: &str, chain: &'static str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: FAMILY,
        table: owned(table),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: None,
    })
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

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

fn ip(field: &'static str) -> Expression<'static> {
    payload("ip", field)
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed(key),
        family: None,
        dir: None,
    }))
}

/// A network as nft wants it: network address (host bits cleared) and length.
fn prefix(net: Ipv4Network) -> Expression<'static> {
    prefix_of(net.network(), net.prefix())
}

/// `addr/len`; a /32 is a plain address.
fn prefix_of(addr: Ipv4Addr, len: u8) -> Expression<'static> {
    let addr = string(addr.to_string());
    if len == 32 {
        addr
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(addr),
            len: u32::from(len),
        }))
    }
}

fn string(s: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(s.into()))
}

fn owned(s: &str) -> Cow<'static, str> {
    Cow::Owned(s.to_owned())
}

/// The contents of the four DNAT maps.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct MapState {
    pub addr: BTreeMap<Key, Ipv4Addr>,
    pub port: BTreeMap<Key, u16>,
}

impl MapState {
    /// Reads the maps out of `nft -j list table` output. Other objects are
    /// ignored; an element weft could not have written is an error.
    pub fn parse(listing: &str) -> Result<Self, String> {
        let doc: serde_json::Value =
            serde_json::from_str(listing).map_err(|e| format!("invalid JSON: {e}"))?;
        let objects = doc
            .get("nftables")
            .and_then(serde_json::Value::as_array)
            .ok_or("no \"nftables\" array")?;
        let mut state = MapState::default();
        for obj in objects {
            let Some(map) = obj.get("map") else { continue };
            let map: Map<'static> =
                serde_json::from_value(map.clone()).map_err(|e| format!("unreadable map: {e}"))?;
            let (bound, is_addr) = match map.name.as_ref() {
                IP_ADDR_MAP => (true, true),
                IP_PORT_MAP => (true, false),
                ANY_ADDR_MAP => (false, true),
                ANY_PORT_MAP => (false, false),
                _ => continue,
            };
            for elem in map.elem.iter().flat_map(|e| e.iter()) {
                let bad = || format!("unexpected element in map {}: {elem:?}", map.name);
                let Expression::List(pair) = elem else {
                    return Err(bad());
                };
                let [key, value] = pair.as_slice() else {
                    return Err(bad());
                };
                let key = parse_key(key, bound).ok_or_else(bad)?;
                if is_addr {
                    state.addr.insert(key, parse_ipv4(value).ok_or_else(bad)?);
                } else {
                    state.port.insert(key, parse_port(value).ok_or_else(bad)?);
                }
            }
        }
        Ok(state)
    }

    /// Keys present in both maps of their kind, i.e. forwards that work.
    pub fn forwards(&self) -> Vec<PortForward> {
        let mut forwards: Vec<PortForward> = self
            .addr
            .iter()
            .filter_map(|(key, &target)| {
                self.port.get(key).map(|&target_port| PortForward {
                    host_ip: key.host_ip,
                    host_port: key.port,
                    proto: key.proto,
                    target,
                    target_port,
                })
            })
            .collect();
        forwards.sort();
        forwards
    }

    /// Whether the key is in either map, with whatever target.
    pub fn has_key(&self, key: &Key) -> bool {
        self.addr.contains_key(key) || self.port.contains_key(key)
    }

    /// Which keys to delete from the address and port maps to remove the
    /// requested forwards. A key whose present target differs from the
    /// requested one belongs to another forward and is left alone; a
    /// half-present entry (only in one of the two maps) that agrees with the
    /// request is removed too.
    pub fn removals(&self, requested: &[PortForward]) -> (Vec<Key>, Vec<Key>) {
        let mut addr_keys = BTreeSet::new();
        let mut port_keys = BTreeSet::new();
        for f in requested {
            let key = Key::of(f);
            let addr = self.addr.get(&key);
            let port = self.port.get(&key);
            let agrees =
                addr.is_none_or(|a| *a == f.target) && port.is_none_or(|p| *p == f.target_port);
            if agrees {
                if addr.is_some() {
                    addr_keys.insert(key);
                }
                if port.is_some() {
                    port_keys.insert(key);
                }
            }
        }
        (
            addr_keys.into_iter().collect(),
            port_keys.into_iter().collect(),
        )
    }
}

fn parse_key(expr: &Expression, bound: bool) -> Option<Key> {
    let Expression::Named(NamedExpression::Concat(parts)) = expr else {
        return None;
    };
    let (host_ip, rest) = match (bound, parts.as_slice()) {
        (true, [ip, rest @ ..]) => (Some(parse_ipv4(ip)?), rest),
        (false, rest) => (None, rest),
        _ => return None,
    };
    let [proto, port] = rest else { return None };
    Some(Key {
        host_ip,
        proto: parse_proto(proto)?,
        port: parse_port(port)?,
    })
}

fn parse_ipv4(expr: &Expression) -> Option<Ipv4Addr> {
    match expr {
        Expression::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// `nft -j` prints "tcp"/"udp"; with `-n` it prints protocol numbers.
fn parse_proto(expr: &Expression) -> Option<Proto> {
    match expr {
        Expression::String(s) if s == "tcp" => Some(Proto::Tcp),
        Expression::String(s) if s == "udp" => Some(Proto::Udp),
        Expression::Number(6) => Some(Proto::Tcp),
        Expression::Number(17) => Some(Proto::Udp),
        _ => None,
    }
}

fn parse_port(expr: &Expression) -> Option<u16> {
    match expr {
        Expression::Number(n) => u16::try_from(*n).ok(),
        Expression::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn fwd(
        host_ip: Option<[u8; 4]>,
        host_port: u16,
        proto: Proto,
        target: [u8; 4],
        target_port: u16,
    ) -> PortForward {
        PortForward {
            host_ip: host_ip.map(Ipv4Addr::from),
            host_port,
            proto,
            target: Ipv4Addr::from(target),
            target_port,
        }
    }

    fn spec() -> FirewallSpec {
        FirewallSpec {
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            bridge: "weft0".into(),
            vxlan_port: None,
        }
    }

    fn to_value(doc: &Nftables) -> Value {
        serde_json::to_value(doc).unwrap()
    }

    fn commands(doc: &Nftables) -> Vec<Value> {
        to_value(doc)["nftables"].as_array().unwrap().clone()
    }

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

    #[test]
    fn add_uses_create_and_skips_unused_maps() {
        let f = [
            fwd(None, 80, Proto::Tcp, [10, 244, 1, 2], 8080),
            fwd(None, 81, Proto::Tcp, [10, 244, 1, 2], 8081),
        ];
        let cmds = commands(&add_doc("weft", &f));
        assert_eq!(cmds.len(), 2);
        assert_eq!(
            cmds[0],
            json!({"create": {"element": {"family": "inet", "table": "weft", "name": "publish_any_addr",
                "elem": [[{"concat": ["tcp", 80]}, "10.244.1.2"], [{"concat": ["tcp", 81]}, "10.244.1.2"]]}}})
        );
        assert_eq!(
            cmds[1]["create"]["element"]["elem"],
            json!([[{"concat": ["tcp", 80]}, 8080], [{"concat": ["tcp", 81]}, 8081]])
        );
    }

    #[test]
    fn del_doc_deletes_keys_only() {
        let a = Key::of(&fwd(Some([1, 2, 3, 4]), 80, Proto::Udp, [10, 0, 0, 1], 1));
        let b = Key::of(&fwd(None, 81, Proto::Tcp, [10, 0, 0, 1], 1));
        let cmds = commands(&del_doc("weft", &[a, b], &[a]));
        assert_eq!(
            cmds,
            vec![
                json!({"delete": {"element": {"family": "inet", "table": "weft", "name": "publish_ip_addr",
                    "elem": [{"concat": ["1.2.3.4", "udp", 80]}]}}}),
                json!({"delete": {"element": {"family": "inet", "table": "weft", "name": "publish_any_addr",
                    "elem": [{"concat": ["tcp", 81]}]}}}),
                json!({"delete": {"element": {"family": "inet", "table": "weft", "name": "publish_ip_port",
                    "elem": [{"concat": ["1.2.3.4", "udp", 80]}]}}}),
            ]
        );
        assert!(commands(&del_doc("weft", &[], &[])).is_empty());
    }

    #[test]
    fn teardown_is_add_then_delete() {
        let t = json!({"family": "inet", "name": "x"});
        assert_eq!(
            commands(&teardown_doc("x")),
            vec![
                json!({"add": {"table": t}}),
                json!({"delete": {"table": t}})
            ]
        );
    }

    #[test]
    fn conflicts_and_dedup() {
        let a = fwd(None, 80, Proto::Tcp, [10, 0, 0, 1], 80);
        let a2 = fwd(None, 80, Proto::Tcp, [10, 0, 0, 2], 80);
        let udp = fwd(None, 80, Proto::Udp, [10, 0, 0, 2], 80);
        let bound = fwd(Some([1, 1, 1, 1]), 80, Proto::Tcp, [10, 0, 0, 3], 80);
        assert_eq!(dedup(&[a, udp, a, bound]).len(), 3);
        assert_eq!(find_conflict(&dedup(&[a, a, udp, bound])), None);
        assert_eq!(find_conflict(&[a, udp, a2]), Some((a, a2)));
    }

    // Captured from `nft -j list table` (nft 1.0.6); the second map as
    // printed with `-n` (numeric protocols).
    const LISTING: &str = r#"{"nftables": [
      {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
      {"table": {"family": "inet", "name": "weft", "handle": 7}},
      {"map": {"family": "inet", "name": "publish_ip_addr", "table": "weft", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 1, "map": "ipv4_addr",
               "elem": [[{"concat": ["192.168.1.1", "tcp", 8080]}, "10.244.1.2"], [{"concat": ["192.168.1.1", "udp", 53]}, "10.244.1.9"]]}},
      {"map": {"family": "inet", "name": "publish_ip_port", "table": "weft", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 2, "map": "inet_service",
               "elem": [[{"concat": ["192.168.1.1", 6, 8080]}, 80]]}},
      {"map": {"family": "inet", "name": "publish_any_addr", "table": "weft", "type": ["inet_proto", "inet_service"], "handle": 3, "map": "ipv4_addr",
               "elem": [[{"concat": ["udp", 53]}, "10.244.1.3"]]}},
      {"map": {"family": "inet", "name": "publish_any_port", "table": "weft", "type": ["inet_proto", "inet_service"], "handle": 4, "map": "inet_service",
               "elem": [[{"concat": ["udp", 53]}, 5353]]}},
      {"map": {"family": "inet", "name": "other", "table": "weft", "type": "ipv4_addr", "handle": 5, "map": "mark", "elem": [["1.2.3.4", 5]]}},
      {"chain": {"family": "inet", "table": "weft", "name": "prerouting", "handle": 5, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
      {"rule": {"family": "inet", "table": "weft", "chain": "prerouting", "handle": 6, "expr": [{"masquerade": null}]}}
    ]}"#;

    #[test]
    fn parse_listing() {
        let state = MapState::parse(LISTING).unwrap();
        assert_eq!(state.addr.len(), 3);
        assert_eq!(state.port.len(), 2);
        // 192.168.1.1:53/udp is only half present, so it is not a forward.
        assert_eq!(
            state.forwards(),
            vec![
                fwd(None, 53, Proto::Udp, [10, 244, 1, 3], 5353),
                fwd(
                    Some([192, 168, 1, 1]),
                    8080,
                    Proto::Tcp,
                    [10, 244, 1, 2],
                    80
                ),
            ]
        );
    }

    #[test]
    fn parse_empty_maps_and_errors() {
        let empty = r#"{"nftables": [{"map": {"family": "inet", "name": "publish_ip_addr", "table": "weft",
            "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 1, "map": "ipv4_addr"}}]}"#;
        assert_eq!(MapState::parse(empty).unwrap(), MapState::default());
        assert!(MapState::parse("nope").is_err());
        assert!(MapState::parse("{}").is_err());
        let bad = r#"{"nftables": [{"map": {"family": "inet", "name": "publish_any_port", "table": "weft",
            "type": ["inet_proto", "inet_service"], "handle": 1, "map": "inet_service",
            "elem": [[{"concat": ["sctp", 53]}, 53]]}}]}"#;
        let err = MapState::parse(bad).unwrap_err();
        assert!(err.contains("publish_any_port"), "{err}");
    }

    #[test]
    fn removals_respect_other_targets() {
        let state = MapState::parse(LISTING).unwrap();
        let present = fwd(
            Some([192, 168, 1, 1]),
            8080,
            Proto::Tcp,
            [10, 244, 1, 2],
            80,
        );
        let other_port = fwd(
            Some([192, 168, 1, 1]),
            8080,
            Proto::Tcp,
            [10, 244, 1, 2],
            81,
        );
        let other_ip = fwd(None, 53, Proto::Udp, [10, 244, 1, 4], 5353);
        let absent = fwd(None, 9999, Proto::Tcp, [10, 244, 1, 2], 80);
        let half = fwd(
            Some([192, 168, 1, 1]),
            53,
            Proto::Udp,
            [10, 244, 1, 9],
            1234,
        );
        let (a, p) = state.removals(&[present, present, other_port, other_ip, absent, half]);
        assert_eq!(a, vec![Key::of(&present), Key::of(&half)]);
        assert_eq!(p, vec![Key::of(&present)]);
        assert!(state.has_key(&Key::of(&half)));
        assert!(!state.has_key(&Key::of(&absent)));
    }
}
