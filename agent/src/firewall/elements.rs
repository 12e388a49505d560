//! Elements of the DNAT maps and of the VXLAN peer set: the documents
//! that add and remove published ports and peers without touching a rule.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression};
use nftables::schema::{NfCmd, NfListObject, NfObject, Nftables};

use super::expr::*;
use super::ruleset::{ANY_ADDR_MAP, ANY_PORT_MAP, IP_ADDR_MAP, IP_PORT_MAP, PEERS_SET};
use super::PortForward;
use weft_common::Proto;

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

pub(super) fn peer_elements<'a>(
    table: &str,
    ips: impl Iterator<Item = &'a Ipv4Addr>,
) -> NfListObject<'static> {
    element_obj(
        table,
        PEERS_SET,
        ips.map(|ip| string(ip.to_string())).collect(),
    )
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
pub(super) enum ElemOp {
    Add,
    Create,
}

pub(super) fn element_cmds(
    table: &str,
    forwards: &[PortForward],
    op: ElemOp,
) -> Vec<NfObject<'static>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::testing::*;
    use serde_json::json;
    use weft_common::Proto;

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
}
