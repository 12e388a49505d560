//! Network policy reaches every agent: the controller resolves each rule
//! peer that chooses endpoints by labels into the addresses of every host
//! that match, and streams the policies and those sets to every agent
//! (a snapshot, then deltas). A policy written or deleted, a label
//! changed, an endpoint added on another host: each reaches every host.
//! With the controller gone an agent keeps the last policy (fail static,
//! shown in `status`), also across its own restart. Real agents,
//! controller and etcd in a 3-host lab; needs root.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use weft_tests::{wait_until, Host, Lab, LabOpts};

const WAIT: Duration = Duration::from_secs(20);
const SET: &str = "db-from-web/ingress/0/0";

/// The address sets an agent saved (`policy.json` in its state), by id.
fn saved_sets(h: &Host) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(h.state_dir.join("policy.json")).unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    v["sets"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, ips)| {
                    let mut ips: Vec<String> = ips
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i.as_str().unwrap().to_string())
                        .collect();
                    ips.sort();
                    (k.clone(), ips)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until every host saved `want` as the db-from-web set.
fn wait_set_everywhere(lab: &Lab, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    for h in lab.hosts() {
        let ok = wait_until(WAIT, || {
            saved_sets(h).get(SET).cloned().unwrap_or_default() == want
        });
        assert!(
            ok,
            "{}: set {SET} is {:?}, want {want:?}",
            h.name,
            saved_sets(h)
        );
    }
}

fn apply(lab: &Lab, yaml: &str) {
    let out = lab.weftctl_etcd_with_input(&["policy", "apply", "-f", "-"], yaml.as_bytes());
    assert!(out.status.success(), "{out:?}");
}

const DB_FROM_WEB: &str = r#"
name: db-from-web
selector: {matchLabels: {app: db}}
ingress:
  - from: [{selector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
"#;

#[test]
fn policies_and_resolved_sets_reach_every_host_and_stay_when_cut_off() {
    let lab = Lab::new(LabOpts::cluster(3, 1));
    let mut agents: Vec<_> = lab.hosts().iter().map(|h| h.start_agent(&[])).collect();
    for h in lab.hosts() {
        h.wait_connected(WAIT);
    }
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));
    let ip = |v: &Value| v["ip"].as_str().unwrap().to_string();
    h1.weftctl_json(&["ns", "add", "db", "-l", "app=db"]);
    let web2 = ip(&h2.weftctl_json(&["ns", "add", "web", "-l", "app=web"]));
    let web3 = ip(&h3.weftctl_json(&["ns", "add", "web", "-l", "app=web"]));

    apply(&lab, DB_FROM_WEB);
    wait_set_everywhere(&lab, &[&web2, &web3]);
    for h in lab.hosts() {
        let st = h.wait_status(WAIT, "policy current", |s| {
            s.policy
                .as_ref()
                .is_some_and(|p| p.current && p.policies == 1)
        });
        let p = st.policy.unwrap();
        assert_eq!((p.sets, p.addresses), (1, 2), "{}: {p:?}", h.name);
    }
    let line = String::from_utf8(h1.weftctl(&["status", "--no-probe"]).stdout).unwrap();
    assert!(
        line.contains("policy:      1 policies, 1 address sets (2 addresses)")
            && line.contains(", current"),
        "{line}"
    );

    // A label change on h3 and a new endpoint on h2 reach every host.
    h3.weftctl_json(&["ns", "label", "web", "app=other"]);
    wait_set_everywhere(&lab, &[&web2]);
    let api2 = ip(&h2.weftctl_json(&["ns", "add", "api", "-l", "app=web"]));
    wait_set_everywhere(&lab, &[&web2, &api2]);

    // The controller goes: every agent keeps the policy and says so.
    assert!(lab.kill_held("controller-c1"));
    for h in lab.hosts() {
        let st = h.wait_status(WAIT, "policy kept", |s| {
            s.policy.as_ref().is_some_and(|p| !p.current)
        });
        assert_eq!(st.policy.unwrap().policies, 1, "{}", h.name);
    }
    let line = String::from_utf8(h1.weftctl(&["status", "--no-probe"]).stdout).unwrap();
    assert!(line.contains("KEPT from before"), "{line}");
    // h1's agent restarts while no controller answers: it still holds
    // the policy it saved.
    agents[0].kill();
    agents[0] = h1.start_agent(&[]);
    let p = h1.status().policy.expect("policy in status");
    assert_eq!((p.policies, p.addresses, p.current), (1, 2, false), "{p:?}");

    // The controller is back: a snapshot makes it current again; a
    // deleted policy leaves every host.
    lab.start_controller(1, &[]).unwrap();
    for h in lab.hosts() {
        h.wait_status(WAIT, "policy current again", |s| {
            s.policy.as_ref().is_some_and(|p| p.current)
        });
    }
    lab.weftctl_etcd_ok(&["policy", "delete", "db-from-web"]);
    for h in lab.hosts() {
        let st = h.wait_status(WAIT, "policy deleted", |s| {
            s.policy.as_ref().is_some_and(|p| p.policies == 0)
        });
        assert_eq!(st.policy.unwrap().sets, 0);
        assert!(saved_sets(h).is_empty(), "{}: {:?}", h.name, saved_sets(h));
    }
}
