//! `weftctl policy apply/list/show/delete` against the real etcd of a
//! cluster lab: YAML and JSON files, all-or-nothing applies, what lands in
//! etcd (read back with etcdctl), one-line refusals that change nothing,
//! and policies in `cluster backup`. (Enforcement is not built yet.)

use std::path::PathBuf;

use serde_json::{json, Value};
use weft_tests::cli::{fails_with, json_with, table_with};
use weft_tests::{Lab, LabOpts};

fn table(lab: &Lab, args: &[&str]) -> String {
    table_with(|a| lab.weftctl_etcd(a), args)
}

fn json_out(lab: &Lab, args: &[&str]) -> Value {
    json_with(|a| lab.weftctl_etcd(a), args)
}

/// The policy keys in etcd, with their values.
fn stored(lab: &Lab) -> Vec<(String, Value)> {
    lab.etcd_dump()
        .into_iter()
        .filter(|(k, _)| k.starts_with("/weft/policies/"))
        .collect()
}

fn file(lab: &Lab, name: &str, text: &str) -> PathBuf {
    let p = lab.dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const YAML: &str = r#"
name: deny-x
scope: x
selector: {}
---
- name: web-from-front
  scope: x
  selector:
    matchLabels: {app: web}
  ingress:
    - from:
        - selector:
            matchLabels: {tier: front}
        - scopeSelector:
            matchExpressions: [{key: scope, operator: In, values: [y, z]}]
      ports:
        - port: 80
        - protocol: UDP
          port: 5000
          endPort: 5010
"#;

#[test]
fn policies_are_applied_listed_shown_deleted_and_backed_up() {
    let lab = Lab::new(LabOpts::cluster(1, 1));
    let yaml = file(&lab, "p.yaml", YAML);
    let yaml = yaml.to_str().unwrap();
    assert_eq!(
        table(&lab, &["policy", "apply", "-f", yaml]),
        "policy deny-x created\npolicy web-from-front created\n"
    );
    assert_eq!(
        json_out(&lab, &["policy", "apply", "-f", yaml]),
        json!([{"name": "deny-x", "result": "unchanged"},
               {"name": "web-from-front", "result": "unchanged"}])
    );
    let keys: Vec<String> = stored(&lab).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        ["/weft/policies/deny-x", "/weft/policies/web-from-front"]
    );

    // JSON on stdin, changing one of them.
    let changed = json!({"name": "deny-x", "scope": "x", "selector": {},
                         "policyTypes": ["Ingress", "Egress"]});
    let out = lab.weftctl_etcd_with_input(
        &["policy", "apply", "-f", "-"],
        changed.to_string().as_bytes(),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "policy deny-x updated\n"
    );

    let list = table(&lab, &["policy", "list"]);
    let rows: Vec<Vec<&str>> = list
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows,
        [
            vec!["NAME", "SCOPE", "SELECTOR", "INGRESS", "EGRESS"],
            vec!["deny-x", "x", "(all)", "deny all", "deny all"],
            vec!["web-from-front", "x", "app=web", "1 rule", "-"],
        ],
        "{list}"
    );
    let listed = json_out(&lab, &["policy", "list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    let shown = json_out(&lab, &["policy", "show", "web-from-front"]);
    assert_eq!(shown, listed[1]);
    assert_eq!(
        shown["ingress"][0]["ports"][1],
        json!({"protocol": "UDP", "port": 5000, "endPort": 5010})
    );
    let yaml_shown = table(&lab, &["policy", "show", "web-from-front"]);
    assert!(
        yaml_shown.starts_with("name: web-from-front\n"),
        "{yaml_shown}"
    );

    // Refusals: one line naming the file and the field, and nothing written.
    let before = stored(&lab);
    let not_yaml = file(&lab, "t.yaml", "name: [");
    let empty = file(&lab, "e.json", "[]");
    let bad_port = file(
        &lab,
        "bad.yaml",
        "- {name: ok, selector: {}}\n- {name: bad, selector: {}, egress: [{ports: [{port: 80, endPort: 70}]}]}\n",
    );
    let cases: Vec<(Vec<&str>, i32, String)> = vec![
        (
            vec!["policy", "apply", "-f", bad_port.to_str().unwrap()],
            2,
            "policy bad: egress[0].ports[0]: endPort 70 is below port 80".into(),
        ),
        (
            vec!["policy", "apply", "-f", not_yaml.to_str().unwrap()],
            2,
            "not YAML or JSON".into(),
        ),
        (
            vec!["policy", "apply", "-f", empty.to_str().unwrap()],
            2,
            "holds no policy".into(),
        ),
        (
            vec!["policy", "apply", "-f", "/nonexistent/p.yaml"],
            1,
            "read policies from /nonexistent/p.yaml".into(),
        ),
        (
            vec!["policy", "show", "nope"],
            1,
            "no policy \"nope\"".into(),
        ),
        (
            vec!["policy", "delete", "nope"],
            1,
            "no policy \"nope\"".into(),
        ),
    ];
    for (args, code, needle) in &cases {
        let (c, msg) = fails_with(|a| lab.weftctl_etcd(a), args);
        assert_eq!(c, *code, "weftctl {}: {msg}", args.join(" "));
        assert!(
            msg.contains(needle.as_str()),
            "weftctl {}: {msg}",
            args.join(" ")
        );
    }
    assert_eq!(stored(&lab), before, "a refused apply wrote nothing");

    // Backups hold them.
    let backup = lab.dir.join("backup.json");
    table(
        &lab,
        &["cluster", "backup", "--file", backup.to_str().unwrap()],
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&backup).unwrap()).unwrap();
    assert_eq!(doc["policies"]["web-from-front"], listed[1]);

    assert_eq!(
        table(&lab, &["policy", "delete", "deny-x"]),
        "deleted policy deny-x\n"
    );
    let keys: Vec<String> = stored(&lab).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["/weft/policies/web-from-front"]);
}
