//! Labels on endpoints, end to end: `weftctl ns add --label`, `ns label`,
//! shown by `ns list`/`ns show` and in JSON, kept across an agent restart,
//! bad ones refused with one line and nothing changed. The real agent in a
//! simulated host; needs root.

use std::collections::BTreeMap;

use weft_common::agent_client::CallError;
use weft_common::api::{ErrorCode, Request};
use weft_tests::{Host, Lab, LabOpts};

fn labels_of(h: &Host, name: &str) -> BTreeMap<String, String> {
    h.show_endpoint(name).labels
}

fn l(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The endpoint record the agent saved, as text.
fn saved(h: &Host, name: &str) -> String {
    std::fs::read_to_string(h.state_dir.join("endpoints").join(format!("{name}.json")))
        .unwrap_or_default()
}

#[test]
fn labels_are_set_shown_changed_kept_and_checked() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h1 = lab.host(1);
    let mut agent = h1.start_agent(&[]);

    let web = h1.weftctl_json(&["ns", "add", "web", "--label", "app=web", "-l", "tier=front"]);
    assert_eq!(
        web["labels"],
        serde_json::json!({"app": "web", "tier": "front"})
    );
    h1.add_endpoint("plain");
    let table = String::from_utf8(h1.weftctl(&["ns", "list"]).stdout).unwrap();
    let header = table.lines().next().unwrap();
    assert!(header.trim_end().ends_with("LABELS"), "{table}");
    let row = |name: &str| {
        table
            .lines()
            .find(|r| r.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row {name}:\n{table}"))
            .to_string()
    };
    assert!(
        row("web").trim_end().ends_with("app=web,tier=front"),
        "{table}"
    );
    assert!(row("plain").trim_end().ends_with('-'), "{table}");

    // Set one, change one, remove one and an absent one, in one call.
    let ep = h1.weftctl_json(&[
        "ns", "label", "web", "tier-", "env=prod", "app=api", "nope-",
    ]);
    assert_eq!(
        ep["labels"],
        serde_json::json!({"app": "api", "env": "prod"})
    );
    assert_eq!(labels_of(h1, "web"), l(&[("app", "api"), ("env", "prod")]));

    // Refusals: one line naming the bad value, exit 2 for usage errors,
    // and nothing changed (labels, saved record, no new namespace).
    let before = (h1.endpoints(), saved(h1, "web"));
    let cases: &[(&[&str], i32, &str)] = &[
        (&["ns", "label", "web", "a b=1"], 2, "\"a b\""),
        (&["ns", "label", "web", "app=we b"], 2, "app=\"we b\""),
        (&["ns", "label", "web", "--", "-x=1"], 2, "\"-x\""),
        (&["ns", "label", "web"], 2, "KEY=VALUE"),
        (
            &["ns", "label", "nosuch", "a=1"],
            1,
            "namespace \"nosuch\" does not exist",
        ),
        (
            &["ns", "add", "x", "--label", "app-"],
            2,
            "ns label removes them",
        ),
        (
            &["ns", "add", "x", "--label", "a=1", "--label", "a=2"],
            2,
            "given twice",
        ),
        (&["ns", "add", "x", "--label", "Ex.com/a=1"], 2, "prefix"),
    ];
    for (args, code, needle) in cases {
        let (c, stderr, _) = h1.weftctl_err(args);
        assert_eq!(c, *code, "weftctl {}: {stderr}", args.join(" "));
        assert!(
            stderr.contains(needle),
            "weftctl {}: {stderr}",
            args.join(" ")
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    }
    // The agent checks what reaches its socket itself, whatever the client.
    let mut client = h1.client();
    let bad = Request::NsLabel {
        name: "web".into(),
        set: l(&[("ok", "1"), ("bad key", "1")]),
        remove: vec![],
    };
    match client.call(&bad) {
        Err(CallError::Agent(msg, code)) => {
            assert_eq!(code, Some(ErrorCode::Invalid), "{msg}");
            assert!(msg.contains("\"bad key\""), "{msg}");
        }
        other => panic!("bad label accepted by the agent: {other:?}"),
    }
    let bad_add = Request::NsAdd {
        name: "x".into(),
        ip: None,
        publish: vec![],
        labels: l(&[("", "1")]),
    };
    assert!(matches!(
        client.call(&bad_add),
        Err(CallError::Agent(_, Some(ErrorCode::Invalid)))
    ));
    assert_eq!((h1.endpoints(), saved(h1, "web")), before);

    // Kept across an agent restart.
    agent.kill();
    let _agent = h1.start_agent(&[]);
    assert_eq!(labels_of(h1, "web"), l(&[("app", "api"), ("env", "prod")]));
    assert!(labels_of(h1, "plain").is_empty());
}
