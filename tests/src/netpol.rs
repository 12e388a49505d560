//! The Kubernetes network-policy e2e cases with their expected
//! reachability (`tests/data/netpol_cases.yaml`, from the upstream source):
//! reading them, the endpoints of their layout, their policies with real
//! addresses, and reachability matrices printed as the upstream tests
//! print them. Its unit test holds `weft_common::policy::decide` to every
//! table without root; `tests/policy_truth_tables.rs` holds the data plane
//! of a 3-host lab to them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::Deserialize;
use weft_common::policy::decide::Traffic;
use weft_common::policy::{self, Policy};

/// The layout: scopes x, y, z × endpoints a, b, c, in matrix order.
pub const PODS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];

#[derive(Debug, Clone, Deserialize)]
struct File {
    cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub name: String,
    pub upstream: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Step {
    /// The policies in force for this step (JSON values; CIDRs may hold
    /// `{x/a}`).
    pub policies: Vec<serde_json::Value>,
    /// Labels to set on endpoints before probing: `x/b` → {key: value}.
    #[serde(default)]
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
    pub probe: String,
    pub expect: String,
}

/// Every case of the file.
pub fn cases() -> Vec<Case> {
    let f: File = serde_norway::from_str(include_str!("../data/netpol_cases.yaml"))
        .expect("tests/data/netpol_cases.yaml");
    f.cases
}

/// Who may reach whom: `m[from][to]`.
pub type Matrix = [[bool; 9]; 9];

/// The endpoint name of a pod of the layout in a lab: `x-a`.
pub fn endpoint_name(pod: &str) -> String {
    pod.replace('/', "-")
}

/// The labels an endpoint of the layout starts with: `{scope: x, pod: a}`.
pub fn base_labels(pod: &str) -> BTreeMap<String, String> {
    let (scope, name) = pod.split_once('/').expect("scope/pod");
    [
        (policy::SCOPE_LABEL.to_string(), scope.to_string()),
        ("pod".to_string(), name.to_string()),
    ]
    .into()
}

/// The step's probe as traffic.
pub fn traffic(step: &Step) -> Traffic {
    Traffic::parse(&step.probe).expect("probe")
}

/// The step's policies, with `{x/a}/N` in CIDRs made the network of
/// length N around that endpoint's address.
pub fn policies(step: &Step, ip_of: impl Fn(&str) -> Ipv4Addr) -> Vec<Policy> {
    let mut text = serde_json::to_string(&step.policies).expect("policies");
    for pod in PODS {
        let hole = format!("{{{pod}}}/");
        while let Some(i) = text.find(&hole) {
            let rest = &text[i + hole.len()..];
            let len: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let net = Ipv4Network::new(ip_of(pod), len.parse().expect("prefix")).expect("cidr");
            let with = format!("{}/{}", net.network(), net.prefix());
            text.replace_range(i..i + hole.len() + len.len(), &with);
        }
    }
    policy::parse(&text).unwrap_or_else(|e| panic!("policies of the step: {e}"))
}

/// The expected matrix of a step.
pub fn expected(step: &Step) -> Matrix {
    let mut m = [[false; 9]; 9];
    let rows: Vec<&str> = step.expect.lines().skip(1).collect();
    assert_eq!(rows.len(), 9, "{}", step.expect);
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells.len(), 10, "{row}");
        assert_eq!(cells[0], PODS[i], "{row}");
        for (j, c) in cells[1..].iter().enumerate() {
            m[i][j] = match *c {
                "X" => true,
                "." => false,
                other => panic!("cell {other:?} in {row}"),
            };
        }
    }
    m
}

/// Expected against observed, as the upstream tests print it: `X`/`.`
/// where they agree, `x!` (expected open, found closed) or `.!` where
/// they do not.
pub fn table(expected: &Matrix, observed: &Matrix) -> String {
    let mut out = format!("     {}\n", PODS.join("  "));
    for (i, from) in PODS.iter().enumerate() {
        out += from;
        out += " ";
        for j in 0..9 {
            let (e, o) = (expected[i][j], observed[i][j]);
            out += match (e, o == e) {
                (true, true) => "  X  ",
                (false, true) => "  .  ",
                (true, false) => " X!  ",
                (false, false) => " .!  ",
            };
        }
        out += "\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use weft_common::policy::decide::{decide, Party};

    /// Every step of every case, decided from the policies alone (no
    /// kernel): the decision the agents enforce and `explain` prints
    /// agrees with the upstream tables. An endpoint reaching itself is
    /// never policed (it stays in its namespace), as upstream allows.
    #[test]
    fn the_decision_matches_every_upstream_table() {
        let all = cases();
        assert!(all.len() >= 25, "{} cases", all.len());
        let ip_of = |pod: &str| {
            let i = PODS.iter().position(|p| *p == pod).unwrap() as u8;
            Ipv4Addr::new(10, 244, 1 + i % 3, 10 + i)
        };
        let mut failures = Vec::new();
        for case in &all {
            let mut labels: BTreeMap<&str, BTreeMap<String, String>> =
                PODS.iter().map(|p| (*p, base_labels(p))).collect();
            for (n, step) in case.steps.iter().enumerate() {
                for (pod, set) in &step.labels {
                    labels.get_mut(pod.as_str()).unwrap().extend(set.clone());
                }
                let ps = policies(step, ip_of);
                let want = expected(step);
                let mut seen = [[false; 9]; 9];
                for (i, from) in PODS.iter().enumerate() {
                    for (j, to) in PODS.iter().enumerate() {
                        seen[i][j] = i == j
                            || decide(
                                &ps,
                                Party {
                                    ip: IpAddr::V4(ip_of(from)),
                                    labels: Some(&labels[from]),
                                },
                                Party {
                                    ip: IpAddr::V4(ip_of(to)),
                                    labels: Some(&labels[to]),
                                },
                                traffic(step),
                            )
                            .allowed();
                    }
                }
                if seen != want {
                    failures.push(format!(
                        "{} step {} ({}):\n{}",
                        case.name,
                        n + 1,
                        step.probe,
                        table(&want, &seen)
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
