//! Endpoint reports and `weftctl policy explain`, end to end: real agents
//! in a cluster lab report their endpoints' addresses and labels to a
//! controller, which keeps them in etcd under `/weft/endpoints/<host>`;
//! `policy explain` decides from those and the stored policies. A label
//! change, a deleted endpoint and a removed host show up there; bad
//! arguments are refused with one line. Needs root.

use std::time::Duration;

use serde_json::{json, Value};
use weft_tests::cli::fails_with;
use weft_tests::{wait_until, Lab, LabOpts};

const WAIT: Duration = Duration::from_secs(20);

/// The endpoint lists in etcd, by host: name → (ip, labels).
fn reported(lab: &Lab) -> Vec<(String, Value)> {
    lab.etcd_dump()
        .into_iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("/weft/endpoints/")
                .map(|h| (h.to_string(), v))
        })
        .collect()
}

fn entry_of(lab: &Lab, host: &str, name: &str) -> Option<Value> {
    reported(lab)
        .into_iter()
        .find(|(h, _)| h == host)
        .and_then(|(_, list)| list.as_array()?.iter().find(|e| e["name"] == name).cloned())
}

fn explain(lab: &Lab, args: &[&str]) -> Value {
    let mut a = vec!["policy", "explain"];
    a.extend_from_slice(args);
    lab.weftctl_etcd_json(&a)
}

const POLICIES: &str = r#"
name: db-from-web
selector:
  matchLabels: {app: db}
ingress:
  - from:
      - selector:
          matchLabels: {app: web}
    ports:
      - port: 5432
"#;

#[test]
fn endpoints_are_reported_and_policy_explain_decides_from_them() {
    let lab = Lab::new(LabOpts::cluster(2, 1));
    let (h1, h2) = (lab.host(1), lab.host(2));
    let _a1 = h1.start_agent(&[]);
    let _a2 = h2.start_agent(&[]);
    h1.wait_connected(WAIT);
    h2.wait_connected(WAIT);
    let db = h1.weftctl_json(&["ns", "add", "db", "--label", "app=db"]);
    let web = h2.weftctl_json(&["ns", "add", "web", "--label", "app=web"]);
    h2.weftctl_json(&["ns", "add", "other"]);
    assert!(
        wait_until(WAIT, || entry_of(&lab, "h2", "other").is_some()
            && entry_of(&lab, "h1", "db").is_some()),
        "endpoints not reported: {:?}",
        reported(&lab)
    );
    assert_eq!(
        entry_of(&lab, "h1", "db").unwrap(),
        json!({"name": "db", "ip": db["ip"], "labels": {"app": "db"}})
    );
    assert_eq!(
        entry_of(&lab, "h2", "other").unwrap()["labels"],
        Value::Null,
        "no labels: the field is left out"
    );

    // Without policies everything is open.
    let e = explain(&lab, &["web", "db", "5432/tcp"]);
    assert_eq!(e["allowed"], true, "{e}");
    assert_eq!(e["ingress"], json!({"result": "open"}));

    let out = lab.weftctl_etcd_with_input(&["policy", "apply", "-f", "-"], POLICIES.as_bytes());
    assert!(out.status.success(), "{out:?}");
    let e = explain(&lab, &["h2/web", "h1/db", "5432/tcp"]);
    assert_eq!(e["allowed"], true, "{e}");
    assert_eq!(
        e["ingress"],
        json!({"result": "allowed", "policy": "db-from-web", "rule": 0})
    );
    assert_eq!(e["from"]["ip"], web["ip"]);
    let e = explain(&lab, &["other", db["ip"].as_str().unwrap(), "5432"]);
    assert_eq!(e["allowed"], false, "{e}");
    assert_eq!(
        e["ingress"],
        json!({"result": "denied", "policies": ["db-from-web"]})
    );
    // A ping matches no rule with ports.
    assert_eq!(explain(&lab, &["web", "db"])["allowed"], false);
    // From outside weft: only an ipBlock could allow it.
    let e = explain(&lab, &["203.0.113.9", "db", "5432/tcp"]);
    assert_eq!(e["egress"], json!({"result": "outside"}));
    assert_eq!(e["allowed"], false);
    // The table form names the policy and the rule.
    let text = lab.weftctl_etcd_ok(&["policy", "explain", "web", "db", "5432/tcp"]);
    assert!(
        text.contains("allowed")
            && text.contains("ingress at h1/db")
            && text.contains("allowed by db-from-web rule 0"),
        "{text}"
    );

    // A label change reaches the directory, and the decision.
    h2.weftctl_json(&["ns", "label", "other", "app=web"]);
    assert!(
        wait_until(WAIT, || explain(&lab, &["other", "db", "5432/tcp"])
            ["allowed"]
            == true),
        "the label change did not reach etcd: {:?}",
        reported(&lab)
    );

    // Bad arguments: one line, exit 2 before etcd, or naming what is not found.
    let (code, line) = fails_with(
        |a| lab.weftctl_etcd(a),
        &["policy", "explain", "web", "db", "80/icmp"],
    );
    assert_eq!(code, 2);
    assert!(
        line.contains("\"80/icmp\": protocol \"icmp\" is not tcp, udp or sctp"),
        "{line}"
    );
    let (code, line) = fails_with(
        |a| lab.weftctl_etcd(a),
        &["policy", "explain", "nope", "db", "80"],
    );
    assert_eq!(code, 1);
    assert!(line.contains("no endpoint \"nope\" on any host"), "{line}");

    // A deleted endpoint leaves the directory; a host without endpoints
    // has no list.
    h2.weftctl_json(&["ns", "del", "other"]);
    assert!(
        wait_until(WAIT, || entry_of(&lab, "h2", "other").is_none()),
        "deleted endpoint still reported: {:?}",
        reported(&lab)
    );
    h2.weftctl_json(&["ns", "del", "web"]);
    assert!(
        wait_until(WAIT, || reported(&lab).iter().all(|(h, _)| h != "h2")),
        "h2 has no endpoints but a list: {:?}",
        reported(&lab)
    );
    weft_tests::health::assert_healthy(&lab, &weft_tests::health::Opts::default());
}
