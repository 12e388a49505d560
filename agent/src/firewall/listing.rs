//! Reading `nft -j list table`: the DNAT maps' elements, the VXLAN peer
//! set and the fingerprints of the rules, so that the agent changes only
//! what differs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use nftables::expr::{Expression, NamedExpression};
use nftables::schema::Map;
use weft_common::Proto;

use super::elements::Key;
use super::ruleset::{ANY_ADDR_MAP, ANY_PORT_MAP, IP_ADDR_MAP, IP_PORT_MAP, PEERS_SET};
use super::PortForward;

/// weft's table as `nft -j list table` shows it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct TableState {
    pub exists: bool,
    /// Each chain's rules' comments, in order (`None`: a rule without one).
    pub chains: BTreeMap<String, Vec<Option<String>>>,
    pub map_names: BTreeSet<String>,
    pub set_names: BTreeSet<String>,
    pub maps: MapState,
    /// The VXLAN peer set's elements.
    pub peers: BTreeSet<Ipv4Addr>,
}

impl TableState {
    /// Reads `nft -j list table` output. Other objects are ignored; a map
    /// element weft could not have written is an error.
    pub fn parse(listing: &str) -> Result<Self, String> {
        let doc: serde_json::Value =
            serde_json::from_str(listing).map_err(|e| format!("invalid JSON: {e}"))?;
        let objects = doc
            .get("nftables")
            .and_then(serde_json::Value::as_array)
            .ok_or("no \"nftables\" array")?;
        let mut t = TableState {
            maps: MapState::from_objects(objects)?,
            ..TableState::default()
        };
        let name =
            |o: &serde_json::Value| o.get("name").and_then(|n| n.as_str()).map(str::to_string);
        for obj in objects {
            if obj.get("table").is_some() {
                t.exists = true;
            } else if let Some(c) = obj.get("chain") {
                t.chains.entry(name(c).unwrap_or_default()).or_default();
            } else if let Some(r) = obj.get("rule") {
                let chain = r.get("chain").and_then(|c| c.as_str()).unwrap_or_default();
                let comment = r
                    .get("comment")
                    .and_then(|c| c.as_str())
                    .map(str::to_string);
                t.chains.entry(chain.to_string()).or_default().push(comment);
            } else if let Some(m) = obj.get("map") {
                t.map_names.extend(name(m));
            } else if let Some(s) = obj.get("set") {
                let n = name(s);
                if n.as_deref() == Some(PEERS_SET) {
                    let elems = s.get("elem").and_then(|e| e.as_array());
                    for e in elems.into_iter().flatten() {
                        let ip = e.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok());
                        t.peers.extend(ip);
                    }
                }
                t.set_names.extend(n);
            }
        }
        Ok(t)
    }

    /// Whether the table holds exactly the chains and rules whose
    /// fingerprints are `want`, its four maps, and the peer set if
    /// `peers_set`.
    pub fn matches(&self, want: &BTreeMap<String, Vec<String>>, peers_set: bool) -> bool {
        let have: Option<BTreeMap<&String, Vec<&String>>> = self
            .chains
            .iter()
            .map(|(c, rules)| {
                Some((
                    c,
                    rules
                        .iter()
                        .map(|r| r.as_ref())
                        .collect::<Option<Vec<_>>>()?,
                ))
            })
            .collect();
        let want: BTreeMap<&String, Vec<&String>> =
            want.iter().map(|(c, r)| (c, r.iter().collect())).collect();
        have.is_some_and(|h| h == want)
            && [IP_ADDR_MAP, IP_PORT_MAP, ANY_ADDR_MAP, ANY_PORT_MAP]
                .iter()
                .all(|m| self.map_names.contains(*m))
            && (!peers_set || self.set_names.contains(PEERS_SET))
    }
}

/// The contents of the four DNAT maps.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct MapState {
    pub addr: BTreeMap<Key, Ipv4Addr>,
    pub port: BTreeMap<Key, u16>,
}

impl MapState {
    /// Reads the four maps out of a listing's objects; other objects are
    /// ignored, an element weft could not have written is an error.
    fn from_objects(objects: &[serde_json::Value]) -> Result<Self, String> {
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
    use crate::firewall::testing::*;
    use weft_common::Proto;

    fn maps(listing: &str) -> Result<MapState, String> {
        TableState::parse(listing).map(|t| t.maps)
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
        let state = maps(LISTING).unwrap();
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
        assert_eq!(maps(empty).unwrap(), MapState::default());
        assert!(maps("nope").is_err());
        assert!(maps("{}").is_err());
        let bad = r#"{"nftables": [{"map": {"family": "inet", "name": "publish_any_port", "table": "weft",
            "type": ["inet_proto", "inet_service"], "handle": 1, "map": "inet_service",
            "elem": [[{"concat": ["sctp", 53]}, 53]]}}]}"#;
        let err = maps(bad).unwrap_err();
        assert!(err.contains("publish_any_port"), "{err}");
    }

    #[test]
    fn removals_respect_other_targets() {
        let state = maps(LISTING).unwrap();
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

    #[test]
    fn table_state_reads_rules_comments_and_peers() {
        let listing = r#"{"nftables": [
          {"table": {"family": "inet", "name": "weft", "handle": 7}},
          {"set": {"family": "inet", "name": "vxlan_peers", "table": "weft", "type": "ipv4_addr", "handle": 2, "elem": ["198.18.0.12", "198.18.0.13"]}},
          {"chain": {"family": "inet", "table": "weft", "name": "input", "handle": 5, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
          {"chain": {"family": "inet", "table": "weft", "name": "forward", "handle": 6, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
          {"rule": {"family": "inet", "table": "weft", "chain": "input", "handle": 8, "comment": "weft:1", "expr": [{"accept": null}]}},
          {"rule": {"family": "inet", "table": "weft", "chain": "input", "handle": 9, "expr": [{"drop": null}]}}
        ]}"#;
        let t = TableState::parse(listing).unwrap();
        assert!(t.exists);
        assert_eq!(
            t.peers,
            [
                "198.18.0.12".parse().unwrap(),
                "198.18.0.13".parse().unwrap()
            ]
            .into()
        );
        assert_eq!(t.chains["input"], [Some("weft:1".to_string()), None]);
        assert_eq!(t.chains["forward"], Vec::<Option<String>>::new());
        let want: BTreeMap<String, Vec<String>> = [
            ("input".to_string(), vec!["weft:1".to_string()]),
            ("forward".to_string(), vec![]),
        ]
        .into();
        assert!(!t.matches(&want, true), "a rule without weft's comment");
        assert!(!TableState::default().exists);
    }
}
