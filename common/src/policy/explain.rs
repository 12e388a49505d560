//! `weftctl policy explain FROM TO [PORT/PROTO]`: which endpoints FROM and
//! TO name in the cluster's endpoint directory (what agents reported),
//! and the decision for a connection between them, from the same
//! [`decide`] the agents' rules follow.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

use crate::cluster::EndpointEntry;
use crate::Labels;

use super::decide::{decide, Party, Side, Traffic, Verdict};
use super::Policy;

/// Every host's endpoints, by host name.
pub type Directory = BTreeMap<String, Vec<EndpointEntry>>;

/// One end of the connection: an endpoint of some host, or an address
/// outside weft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct End {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub ip: Ipv4Addr,
    /// `None` outside weft.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
}

impl End {
    fn endpoint(host: &str, e: &EndpointEntry) -> End {
        End {
            host: Some(host.to_string()),
            name: Some(e.name.clone()),
            ip: e.ip,
            labels: Some(e.labels.clone()),
        }
    }

    fn party(&self) -> Party<'_> {
        Party {
            ip: IpAddr::V4(self.ip),
            labels: self.labels.as_ref(),
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, &self.name) {
            (Some(h), Some(n)) => write!(f, "{h}/{n} ({})", self.ip),
            _ => write!(f, "{} (outside weft)", self.ip),
        }
    }
}

/// What `what` names: `HOST/NAME`, a `NAME` that one host has, or an
/// address (an endpoint's, or one outside weft). The error is one line
/// naming what did not resolve.
pub fn find(dir: &Directory, what: &str) -> Result<End, String> {
    if let Ok(ip) = what.parse::<Ipv4Addr>() {
        let found = dir
            .iter()
            .flat_map(|(h, list)| list.iter().map(move |e| (h, e)))
            .find(|(_, e)| e.ip == ip);
        return Ok(match found {
            Some((h, e)) => End::endpoint(h, e),
            None => End {
                host: None,
                name: None,
                ip,
                labels: None,
            },
        });
    }
    if let Some((host, name)) = what.split_once('/') {
        let list = dir
            .get(host)
            .ok_or_else(|| format!("{what:?}: no host {host:?} has reported endpoints"))?;
        return list
            .iter()
            .find(|e| e.name == name)
            .map(|e| End::endpoint(host, e))
            .ok_or_else(|| format!("{what:?}: host {host} has no endpoint {name:?}"));
    }
    let hits: Vec<(&String, &EndpointEntry)> = dir
        .iter()
        .flat_map(|(h, list)| list.iter().map(move |e| (h, e)))
        .filter(|(_, e)| e.name == what)
        .collect();
    match hits.as_slice() {
        [(h, e)] => Ok(End::endpoint(h, e)),
        [] => Err(format!(
            "no endpoint {what:?} on any host (give HOST/NAME, NAME or an IPv4 address)"
        )),
        many => Err(format!(
            "endpoint name {what:?} is on hosts {}: say which as HOST/{what}",
            many.iter()
                .map(|(h, _)| h.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The decision for one connection, with its two ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub from: End,
    pub to: End,
    pub traffic: Traffic,
    pub verdict: Verdict,
}

/// `from` opening a connection to `to` carrying `traffic`.
pub fn explain(policies: &[Policy], from: End, to: End, traffic: Traffic) -> Explanation {
    let verdict = decide(policies, from.party(), to.party(), traffic);
    Explanation {
        from,
        to,
        traffic,
        verdict,
    }
}

impl Explanation {
    pub fn allowed(&self) -> bool {
        self.verdict.allowed()
    }

    /// The JSON form of `policy explain -o json`.
    pub fn to_json(&self) -> serde_json::Value {
        let side = |s: &Side, end: &End| match s {
            _ if end.labels.is_none() => serde_json::json!({"result": "outside"}),
            Side::Open => serde_json::json!({"result": "open"}),
            Side::Allowed { policy, rule } => {
                serde_json::json!({"result": "allowed", "policy": policy, "rule": rule})
            }
            Side::Denied { policies } => {
                serde_json::json!({"result": "denied", "policies": policies})
            }
        };
        serde_json::json!({
            "allowed": self.allowed(),
            "from": self.from,
            "to": self.to,
            "traffic": match self.traffic {
                Traffic::Port(proto, port) => serde_json::json!({"protocol": proto.to_string(), "port": port}),
                Traffic::Other => serde_json::json!({"protocol": "icmp"}),
            },
            "egress": side(&self.verdict.egress, &self.from),
            "ingress": side(&self.verdict.ingress, &self.to),
        })
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |s: &Side, end: &End| {
            if end.labels.is_none() {
                "not a weft endpoint: no policy applies".to_string()
            } else {
                s.to_string()
            }
        };
        writeln!(
            f,
            "{} -> {} {}: {}",
            self.from,
            self.to,
            self.traffic,
            if self.allowed() { "allowed" } else { "denied" }
        )?;
        writeln!(
            f,
            "  egress at {}: {}",
            self.from,
            side(&self.verdict.egress, &self.from)
        )?;
        write!(
            f,
            "  ingress at {}: {}",
            self.to,
            side(&self.verdict.ingress, &self.to)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{parse, Protocol};

    fn entry(name: &str, ip: [u8; 4], labels: &[(&str, &str)]) -> EndpointEntry {
        EndpointEntry {
            name: name.into(),
            ip: Ipv4Addr::from(ip),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn dir() -> Directory {
        let mut d = Directory::new();
        d.insert(
            "h1".into(),
            vec![
                entry("web", [10, 244, 1, 2], &[("app", "web")]),
                entry("db", [10, 244, 1, 3], &[("app", "db")]),
            ],
        );
        d.insert(
            "h2".into(),
            vec![entry("web", [10, 244, 2, 2], &[("app", "web")])],
        );
        d
    }

    #[test]
    fn ends_are_found_by_host_and_name_name_or_address() {
        let d = dir();
        assert_eq!(find(&d, "h1/db").unwrap().ip, Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(find(&d, "db").unwrap().host.as_deref(), Some("h1"));
        assert_eq!(
            find(&d, "10.244.2.2").unwrap().to_string(),
            "h2/web (10.244.2.2)"
        );
        assert_eq!(
            find(&d, "203.0.113.5").unwrap().to_string(),
            "203.0.113.5 (outside weft)"
        );
        assert_eq!(
            find(&d, "web").unwrap_err(),
            "endpoint name \"web\" is on hosts h1, h2: say which as HOST/web"
        );
        assert_eq!(
            find(&d, "nope").unwrap_err(),
            "no endpoint \"nope\" on any host (give HOST/NAME, NAME or an IPv4 address)"
        );
        assert_eq!(
            find(&d, "h3/web").unwrap_err(),
            "\"h3/web\": no host \"h3\" has reported endpoints"
        );
        assert_eq!(
            find(&d, "h2/db").unwrap_err(),
            "\"h2/db\": host h2 has no endpoint \"db\""
        );
    }

    #[test]
    fn explanation_names_the_policy_and_rule_on_each_side() {
        let d = dir();
        let ps = parse(
            r#"{"name": "db-from-web", "selector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"selector": {"matchLabels": {"app": "web"}}}],
                             "ports": [{"protocol": "TCP", "port": 5432}]}]}"#,
        )
        .unwrap();
        let e = |from: &str, to: &str, t: Traffic| {
            explain(&ps, find(&d, from).unwrap(), find(&d, to).unwrap(), t)
        };
        let ok = e("h2/web", "db", Traffic::Port(Protocol::Tcp, 5432));
        assert!(ok.allowed());
        assert_eq!(
            ok.to_string(),
            "h2/web (10.244.2.2) -> h1/db (10.244.1.3) 5432/tcp: allowed\n  egress at h2/web (10.244.2.2): open (no policy selects it)\n  ingress at h1/db (10.244.1.3): allowed by db-from-web rule 0"
        );
        let ping = e("h2/web", "db", Traffic::Other);
        assert!(!ping.allowed());
        assert_eq!(
            ping.to_json()["ingress"],
            serde_json::json!({"result": "denied", "policies": ["db-from-web"]})
        );
        let outside = e("203.0.113.5", "db", Traffic::Port(Protocol::Tcp, 5432));
        assert!(!outside.allowed());
        assert_eq!(outside.to_json()["egress"]["result"], "outside");
        assert!(outside
            .to_string()
            .contains("egress at 203.0.113.5 (outside weft): not a weft endpoint"));
    }

    #[test]
    fn traffic_is_read_as_port_and_protocol() {
        assert_eq!(Traffic::parse("80"), Ok(Traffic::Port(Protocol::Tcp, 80)));
        assert_eq!(
            Traffic::parse("53/UDP"),
            Ok(Traffic::Port(Protocol::Udp, 53))
        );
        assert_eq!(
            Traffic::parse("80/icmp").unwrap_err(),
            "\"80/icmp\": protocol \"icmp\" is not tcp, udp or sctp"
        );
        assert_eq!(
            Traffic::parse("0/tcp").unwrap_err(),
            "\"0/tcp\": port \"0\" is not a number from 1 to 65535"
        );
    }
}
