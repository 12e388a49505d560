//! `weftctl cluster backup` / `cluster restore` against the lab's real etcd:
//! the cluster's keys are lost, restored from a backup, and every host gets
//! its subnet back while a new host gets only what is truly free.

use std::collections::BTreeMap;

use ipnetwork::Ipv4Network;
use serde_json::Value;
use weft_common::cluster::SubnetRecord;
use weft_tests::cli::fails_with;
use weft_tests::{Lab, LabOpts};

/// (subnet → its record) and (host → subnet) as etcd holds them.
fn holdings(
    lab: &Lab,
) -> (
    BTreeMap<Ipv4Network, SubnetRecord>,
    BTreeMap<String, String>,
) {
    (lab.etcd_subnets(), lab.etcd_host_subnets())
}

/// A refusal: one `weftctl: …` line, the same in table and JSON form.
fn fails(lab: &Lab, args: &[&str]) -> (i32, String) {
    fails_with(|a| lab.weftctl_etcd(a), args)
}

#[test]
fn a_backup_restores_every_subnet_to_its_host_and_nothing_twice() {
    weft_tests::require_root();
    // Four /24s: h1, h2, one reservation, one free.
    let lab = Lab::new(LabOpts {
        cluster_cidr: Some("10.244.0.0/22".into()),
        ..LabOpts::cluster(3, 1)
    });
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));
    let mut a1 = h1.start_agent(&[]);
    let mut a2 = h2.start_agent(&[]);
    let web1 = h1.add_endpoint("web");
    let web2 = h2.add_endpoint("web");
    let (_, before) = holdings(&lab);
    assert_eq!(before.len(), 2, "{before:?}");
    let free: Vec<String> = (0..4)
        .map(|i| format!("10.244.{i}.0/24"))
        .filter(|s| !before.values().any(|v| v == s))
        .collect();
    let reserved = free[0].clone();
    let last_free = free[1].clone();
    lab.weftctl_etcd_json(&["subnet", "reserve", &reserved]);
    let (subnets_before, _) = holdings(&lab);

    let file = lab.dir.join("weft-backup.json");
    let f = file.display().to_string();
    let summary = lab.weftctl_etcd_json(&["cluster", "backup", "--file", &f]);
    assert_eq!(summary["hosts"], 2, "{summary}");
    assert_eq!(summary["subnets"], 3, "{summary}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(doc["weft_backup"], 1);
    assert_eq!(doc["config"]["cidr"], "10.244.0.0/22");

    // Restoring over a live cluster is refused and changes nothing.
    let (code, err) = fails(&lab, &["cluster", "restore", &f]);
    assert_eq!(code, 2);
    assert!(err.contains("restore only into an empty prefix"), "{err}");
    assert_eq!(holdings(&lab).0, subnets_before);

    // Disaster: the agents stop and weft's keys are lost.
    a1.stop();
    a2.stop();
    lab.exec_ok(
        lab.control(),
        &[
            "etcdctl",
            "--endpoints",
            &lab.etcd_endpoints(),
            "del",
            "--prefix",
            "/weft/",
        ],
    );
    assert!(lab.etcd_dump().is_empty());

    // A damaged backup is refused by name and writes nothing.
    let bad = lab.dir.join("bad-backup.json");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&bad, &text[..text.len() / 2]).unwrap();
    let (code, err) = fails(&lab, &["cluster", "restore", &bad.display().to_string()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("bad-backup.json is not a weft backup"),
        "{err}"
    );
    let mut v = doc.clone();
    v["hosts"]["h2"]["subnet"] = v["hosts"]["h1"]["subnet"].clone();
    std::fs::write(&bad, v.to_string()).unwrap();
    let (_, err) = fails(&lab, &["cluster", "restore", &bad.display().to_string()]);
    assert!(err.contains("refused: host h2 holds"), "{err}");
    assert!(lab.etcd_dump().is_empty(), "a refused restore wrote keys");

    let r = lab.weftctl_etcd_json(&["cluster", "restore", &f, "--lease-ttl", "600"]);
    assert_eq!(
        (r["hosts"].as_u64(), r["subnets"].as_u64()),
        (Some(2), Some(3))
    );
    let (subnets_after, after) = holdings(&lab);
    assert_eq!(subnets_after, subnets_before);
    assert_eq!(after, before);
    // Host keys hang on leases again (a restored host that never returns
    // is dropped when its lease ends).
    let out = lab.exec_ok(
        lab.control(),
        &[
            "etcdctl",
            "--endpoints",
            &lab.etcd_endpoints(),
            "get",
            "--prefix",
            "/weft/hosts/",
            "-w",
            "json",
        ],
    );
    let kvs: Value = serde_json::from_str(&out).unwrap();
    let leases: std::collections::BTreeSet<u64> = kvs["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| kv["lease"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        leases.len() == 2 && !leases.contains(&0),
        "each restored host has a lease of its own: {out}"
    );

    // A new host gets the one subnet that is really free; the others come
    // back to theirs, and the endpoints reach each other.
    let _a3 = h3.start_agent(&[]);
    let _a1 = h1.start_agent(&[]);
    let _a2 = h2.start_agent(&[]);
    let mut now = BTreeMap::new();
    weft_tests::wait_until(weft_tests::WAIT, || {
        now = holdings(&lab).1;
        now.len() == 3
    });
    assert_eq!(now.get("h3"), Some(&last_free), "{now:?}");
    assert_eq!(now.get("h1"), before.get("h1"));
    assert_eq!(now.get("h2"), before.get("h2"));
    let ip2 = web2.ip;
    assert!(
        weft_tests::wait_until(weft_tests::WAIT, || lab.ping_once(&web1.netns, ip2)),
        "web on h1 ({}) cannot reach web on h2 ({ip2}) after the restore",
        web1.ip
    );
}
