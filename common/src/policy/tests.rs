//! Policies decoded, checked and decided, on the layout of the Kubernetes
//! network-policy e2e tests: scopes x, y, z with endpoints a, b, c each
//! (labels `pod=a`…, `scope=x`…), every endpoint to every other on TCP 80.

use std::net::{IpAddr, Ipv4Addr};

use super::decide::{decide, Party, Side, Traffic};
use super::*;

const SCOPES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

struct Model {
    /// (name, address, labels): x/a is 10.244.0.1, x/b 10.244.0.2, … z/c
    /// 10.244.0.9.
    eps: Vec<(String, IpAddr, Labels)>,
}

impl Model {
    fn new() -> Model {
        let mut eps = Vec::new();
        for (i, s) in SCOPES.iter().enumerate() {
            for (j, p) in PODS.iter().enumerate() {
                let ip = IpAddr::V4(Ipv4Addr::new(10, 244, 0, (i * 3 + j + 1) as u8));
                let labels: Labels = [("scope", *s), ("pod", *p)]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                eps.push((format!("{s}/{p}"), ip, labels));
            }
        }
        Model { eps }
    }

    /// The reachability matrix as the e2e tests print it: a row per source,
    /// `X` allowed, `.` denied.
    fn matrix(&self, policies: &[Policy], proto: Protocol, port: u16) -> String {
        let mut out = String::new();
        for (from, fip, fl) in &self.eps {
            out += from;
            out += " ";
            for (_, tip, tl) in &self.eps {
                let v = decide(
                    policies,
                    Party {
                        ip: *fip,
                        labels: Some(fl),
                    },
                    Party {
                        ip: *tip,
                        labels: Some(tl),
                    },
                    Traffic::Port(proto, port),
                );
                out.push(if v.allowed() { 'X' } else { '.' });
            }
            out += "\n";
        }
        out
    }
}

/// Expected rows: one string of 9 marks per source, in model order.
fn expect(rows: [&str; 9]) -> String {
    let m = Model::new();
    m.eps
        .iter()
        .zip(rows)
        .map(|((n, _, _), r)| format!("{n} {}\n", r.replace(' ', "")))
        .collect()
}

fn policies(json: &str) -> Vec<Policy> {
    parse(json).unwrap_or_else(|e| panic!("{e}"))
}

fn check(json: &str, proto: Protocol, port: u16, rows: [&str; 9]) {
    let got = Model::new().matrix(&policies(json), proto, port);
    let want = expect(rows);
    assert_eq!(got, want, "\npolicy {json}\ngot:\n{got}\nwant:\n{want}");
}

const ALL: &str = "XXX XXX XXX";

#[test]
fn no_policy_everything_is_open() {
    check("[]", Protocol::Tcp, 80, [ALL; 9]);
}

#[test]
fn deny_all_ingress_in_a_scope() {
    let p = r#"{"name":"deny-all","scope":"x","selector":{}}"#;
    let to_y_z = "... XXX XXX";
    check(p, Protocol::Tcp, 80, [to_y_z; 9]);
}

#[test]
fn deny_all_egress_in_a_scope() {
    let p = r#"{"name":"deny-egress","scope":"x","selector":{},"policyTypes":["Egress"]}"#;
    let none = "... ... ...";
    check(
        p,
        Protocol::Tcp,
        80,
        [none, none, none, ALL, ALL, ALL, ALL, ALL, ALL],
    );
}

#[test]
fn allow_from_the_same_scope_only() {
    // Into x/a: from x only (a bare selector means "in the policy's scope").
    let p = r#"{"name":"same-scope","scope":"x","selector":{"matchLabels":{"pod":"a"}},
               "ingress":[{"from":[{"selector":{}}]}]}"#;
    let no_xa = ".XX XXX XXX";
    check(
        p,
        Protocol::Tcp,
        80,
        [ALL, ALL, ALL, no_xa, no_xa, no_xa, no_xa, no_xa, no_xa],
    );
}

#[test]
fn scope_and_endpoint_selectors_and_versus_or() {
    // AND: from pods b in scope y only.
    let and = r#"{"name":"and","scope":"x","selector":{"matchLabels":{"pod":"a"}},
        "ingress":[{"from":[{"scopeSelector":{"matchLabels":{"scope":"y"}},
                             "selector":{"matchLabels":{"pod":"b"}}}]}]}"#;
    let no_xa = ".XX XXX XXX";
    check(
        and,
        Protocol::Tcp,
        80,
        [no_xa, no_xa, no_xa, no_xa, ALL, no_xa, no_xa, no_xa, no_xa],
    );
    // OR: from anything in scope y, or from pod b in x.
    let or = r#"{"name":"or","scope":"x","selector":{"matchLabels":{"pod":"a"}},
        "ingress":[{"from":[{"scopeSelector":{"matchLabels":{"scope":"y"}}},
                            {"selector":{"matchLabels":{"pod":"b"}}}]}]}"#;
    check(
        or,
        Protocol::Tcp,
        80,
        [no_xa, ALL, no_xa, ALL, ALL, ALL, no_xa, no_xa, no_xa],
    );
}

#[test]
fn ports_and_ranges() {
    let p = r#"{"name":"port81","scope":"x","selector":{"matchLabels":{"pod":"a"}},
        "ingress":[{"ports":[{"port":81},{"protocol":"UDP","port":80,"endPort":90}]}]}"#;
    let no_xa = ".XX XXX XXX";
    check(p, Protocol::Tcp, 80, [no_xa; 9]);
    check(p, Protocol::Tcp, 81, [ALL; 9]);
    check(p, Protocol::Udp, 85, [ALL; 9]);
    check(p, Protocol::Udp, 91, [no_xa; 9]);
}

#[test]
fn cidr_with_except_and_egress_to_a_cidr() {
    // Into x/a from 10.244.0.0/28 except y's and z's addresses 4-7 (/30) and 8 (/32).
    let p = r#"{"name":"cidr","scope":"x","selector":{"matchLabels":{"pod":"a"}},
        "ingress":[{"from":[{"ipBlock":{"cidr":"10.244.0.0/28","except":["10.244.0.4/30","10.244.0.8/32"]}}]}]}"#;
    let no_xa = ".XX XXX XXX";
    check(
        p,
        Protocol::Tcp,
        80,
        [ALL, ALL, ALL, no_xa, no_xa, no_xa, no_xa, no_xa, ALL],
    );
    // Egress of x/a only to z's addresses. Without policyTypes the policy
    // also restricts ingress (Kubernetes' default), with no ingress rule:
    // nothing reaches x/a either.
    let e = r#"{"name":"egress-cidr","scope":"x","selector":{"matchLabels":{"pod":"a"}},
        "egress":[{"to":[{"ipBlock":{"cidr":"10.244.0.7/32"}},{"ipBlock":{"cidr":"10.244.0.8/31"}}]}]}"#;
    let no_xa = ".XX XXX XXX";
    check(
        e,
        Protocol::Tcp,
        80,
        [
            "... ... XXX",
            no_xa,
            no_xa,
            no_xa,
            no_xa,
            no_xa,
            no_xa,
            no_xa,
            no_xa,
        ],
    );
    let egress_only = e.replace(r#""egress":"#, r#""policyTypes":["Egress"],"egress":"#);
    check(
        &egress_only,
        Protocol::Tcp,
        80,
        ["... ... XXX", ALL, ALL, ALL, ALL, ALL, ALL, ALL, ALL],
    );
}

#[test]
fn several_policies_on_one_endpoint_are_a_union() {
    let p = r#"[{"name":"from-y","scope":"x","selector":{"matchLabels":{"pod":"a"}},
                 "ingress":[{"from":[{"scopeSelector":{"matchLabels":{"scope":"y"}}}]}]},
                {"name":"from-z","scope":"x","selector":{"matchLabels":{"pod":"a"}},
                 "ingress":[{"from":[{"scopeSelector":{"matchLabels":{"scope":"z"}}}]}]}]"#;
    let no_xa = ".XX XXX XXX";
    check(
        p,
        Protocol::Tcp,
        80,
        [no_xa, no_xa, no_xa, ALL, ALL, ALL, ALL, ALL, ALL],
    );
    // explain: which policy and rule decided.
    let m = Model::new();
    let ps = policies(p);
    let party = |i: usize| Party {
        ip: m.eps[i].1,
        labels: Some(&m.eps[i].2),
    };
    let v = decide(&ps, party(6), party(0), Traffic::Port(Protocol::Tcp, 80));
    assert_eq!(
        v.ingress,
        Side::Allowed {
            policy: "from-z".into(),
            rule: 0
        }
    );
    assert_eq!(v.egress, Side::Open);
    let v = decide(&ps, party(1), party(0), Traffic::Port(Protocol::Tcp, 80));
    assert_eq!(
        v.ingress.to_string(),
        "denied: selected by from-y, from-z and no rule allows it"
    );
    // An address outside weft: only ipBlocks match it, no policy selects it.
    let outside = Party {
        ip: "203.0.113.2".parse().unwrap(),
        labels: None,
    };
    assert!(!decide(&ps, outside, party(0), Traffic::Port(Protocol::Tcp, 80)).allowed());
    assert!(decide(&ps, party(0), outside, Traffic::Port(Protocol::Tcp, 80)).allowed());
}

#[test]
fn an_unscoped_policy_selects_every_scope() {
    let p = r#"{"name":"only-a","selector":{"matchExpressions":[{"key":"pod","operator":"NotIn","values":["a"]}]},
        "ingress":[{"from":[{"selector":{"matchLabels":{"pod":"a"}}}]}]}"#;
    // b and c everywhere take only a's (of every scope).
    let row_a = ALL;
    let row_other = "X.. X.. X..";
    check(
        p,
        Protocol::Tcp,
        80,
        [
            row_a, row_other, row_other, row_a, row_other, row_other, row_a, row_other, row_other,
        ],
    );
}

#[test]
fn policy_types_default_as_in_kubernetes() {
    let p = &policies(r#"{"name":"p","selector":{}}"#)[0];
    assert_eq!(p.directions(), [Direction::Ingress]);
    let p = &policies(r#"{"name":"p","selector":{},"egress":[{}]}"#)[0];
    assert_eq!(p.directions(), [Direction::Ingress, Direction::Egress]);
}

#[test]
fn bad_policies_are_refused_naming_the_field() {
    let refused = |json: &str| parse(json).unwrap_err().to_string();
    let cases = [
        ("{", "not a policy document"),
        ("3", "expected a policy"),
        (r#"{"selector":{}}"#, "policy #1: missing field `name`"),
        (r#"{"name":"Bad","selector":{}}"#, "policy Bad: name:"),
        (
            r#"{"name":"p","selector":{},"bogus":1}"#,
            "unknown field `bogus`",
        ),
        (
            r#"{"name":"p","scope":"a b","selector":{}}"#,
            "policy p: scope:",
        ),
        (
            r#"{"name":"p","selector":{"matchLabels":{"a b":"c"}}}"#,
            "policy p: selector.matchLabels: label key \"a b\"",
        ),
        (
            r#"{"name":"p","selector":{"matchExpressions":[{"key":"a","operator":"In"}]}}"#,
            "policy p: selector.matchExpressions[0]: In needs values",
        ),
        (
            r#"{"name":"p","selector":{"matchExpressions":[{"key":"a","operator":"Exists","values":["x"]}]}}"#,
            "Exists takes no values",
        ),
        (
            r#"{"name":"p","selector":{"matchExpressions":[{"key":"a","operator":"Maybe"}]}}"#,
            "unknown variant `Maybe`",
        ),
        (
            r#"{"name":"p","selector":{},"ingress":[{"from":[{}]}]}"#,
            "policy p: ingress[0].from[0]: needs a selector, a scopeSelector or an ipBlock",
        ),
        (
            r#"{"name":"p","selector":{},"ingress":[{"to":[{"selector":{}}]}]}"#,
            "unknown field `to`",
        ),
        (
            r#"{"name":"p","selector":{},"egress":[{"from":[{"selector":{}}]}]}"#,
            "unknown field `from`",
        ),
        (
            r#"{"name":"p","selector":{},"ingress":[{"from":[{"selector":{},"ipBlock":{"cidr":"10.0.0.0/8"}}]}]}"#,
            "an ipBlock stands alone",
        ),
        (
            r#"{"name":"p","selector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.1/8"}}]}]}"#,
            "did you mean 10.0.0.0/8?",
        ),
        (
            r#"{"name":"p","selector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["11.0.0.0/16"]}}]}]}"#,
            "ipBlock.except 11.0.0.0/16 is not inside cidr 10.0.0.0/8",
        ),
        (
            r#"{"name":"p","selector":{},"egress":[{"ports":[{"port":80,"endPort":70}]}]}"#,
            "policy p: egress[0].ports[0]: endPort 70 is below port 80",
        ),
        (
            r#"{"name":"p","selector":{},"egress":[{"ports":[{"endPort":70}]}]}"#,
            "endPort needs a port",
        ),
        (
            r#"{"name":"p","selector":{},"egress":[{"ports":[{"port":70000}]}]}"#,
            "policy p:",
        ),
        (
            r#"{"name":"p","selector":{},"egress":[{"ports":[{"protocol":"ICMP"}]}]}"#,
            "unknown variant `ICMP`",
        ),
        (
            r#"{"name":"p","selector":{},"policyTypes":["Ingress"],"egress":[{}]}"#,
            "egress rules, but policyTypes does not list Egress",
        ),
        (
            r#"[{"name":"p","selector":{}},{"name":"p","selector":{}}]"#,
            "policy p: the name is given twice",
        ),
    ];
    for (json, want) in cases {
        let e = refused(json);
        assert!(e.contains(want), "{json}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text is a policy list or a one-line refusal, never a panic.
        #[test]
        fn any_text_parses_or_is_refused(s in "\\PC{0,200}") {
            if let Err(e) = parse(&s) {
                prop_assert!(!e.to_string().contains('\n'));
            }
        }

        /// What parses serializes to a document that parses to the same.
        #[test]
        fn parsed_policies_round_trip(
            scope in proptest::option::of("[a-z]{1,5}"),
            key in "[a-z]{1,5}",
            value in "[a-z0-9]{0,5}",
            port in proptest::option::of(1u16..),
            cidr in (any::<u32>(), 8u8..=32),
        ) {
            let (ip, len) = cidr;
            let net = ipnetwork::Ipv4Network::new(ip.into(), len).unwrap();
            let net = format!("{}/{len}", net.network());
            let doc = serde_json::json!({
                "name": "p",
                "scope": scope,
                "selector": {"matchLabels": {key.clone(): value}},
                "ingress": [{"from": [{"ipBlock": {"cidr": net}}], "ports": [{"port": port}]}],
                "egress": [{"to": [{"selector": {"matchExpressions": [{"key": key, "operator": "Exists"}]}}]}],
            });
            let p = parse(&doc.to_string()).unwrap();
            let again = parse(&serde_json::to_string(&p).unwrap()).unwrap();
            prop_assert_eq!(p, again);
        }
    }
}
