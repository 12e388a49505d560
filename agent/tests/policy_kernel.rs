//! The network policy table against the kernel (needs root: it fails, not
//! skips, without), in a scratch network namespace: the table loads as
//! `firewall::policy` writes it, its sets change member by member and all
//! or nothing, its counters are read back. (Packets against it: the
//! cluster tests in `tests/tests/policy_*.rs`.)

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use weft_agent::firewall::Table;
use weft_agent::model::policy::{compile, SetEdit};
use weft_common::cluster::EndpointEntry;
use weft_common::policy::parse;
use weft_common::policy::sets::Sets;

mod support;
use support::{run_cmd, Netns};

const POLICY: &str = r#"{"name": "db-in", "selector": {"matchLabels": {"app": "db"}},
    "ingress": [{"from": [{"selector": {"matchLabels": {"app": "web"}}},
                          {"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.8/29"]}}],
                 "ports": [{"port": 5432}, {"protocol": "UDP", "port": 53, "endPort": 54}]}]}"#;

fn db() -> EndpointEntry {
    EndpointEntry {
        name: "db".into(),
        ip: Ipv4Addr::new(10, 244, 1, 2),
        labels: [("app".to_string(), "db".to_string())].into(),
    }
}

#[test]
fn the_policy_table_loads_changes_and_counts() {
    let ns = Netns::new();
    ns.run(|| {
        let t = Table::new("weftpol_test");
        let web = Ipv4Addr::new(10, 244, 2, 3);
        let sets = Sets::from([("db-in/ingress/0/0".to_string(), BTreeSet::from([web]))]);
        let table = compile(&parse(POLICY).unwrap(), &sets, &[db()]);
        t.replace_policy(&table).unwrap();
        let listed = run_cmd("nft", &["list", "table", "inet", "weftpol_test"]);
        for want in [
            "ct direction reply accept",
            "ip daddr vmap { 10.244.1.2 : jump in_10_244_1_2 }",
            "ip saddr @s_db_in_ingress_0_0 tcp dport 5432 counter name \"a_db_in\" return",
            "ip saddr 203.0.113.0/24 ip saddr != 203.0.113.8/29 udp dport 53-54 counter name \"a_db_in\" return",
            "counter name \"d_db_in\" drop",
            "elements = { 10.244.2.3 }",
        ] {
            assert!(listed.contains(want), "missing {want:?} in\n{listed}");
        }
        // Read back: the fingerprint of what was written, the members.
        let view = t.observe_policy().unwrap().expect("the table is there");
        assert_eq!(
            view.fingerprint.as_deref(),
            Some(weft_agent::firewall::policy::fingerprint(&table).as_str())
        );
        assert_eq!(view.sets, table.sets);
        // Members change alone; deleting one that is not there fails
        // whole and changes nothing.
        let other = Ipv4Addr::new(10, 244, 3, 4);
        t.update_policy_sets(&[SetEdit {
            id: "s_db_in_ingress_0_0".into(),
            add: vec![other],
            remove: vec![web],
        }])
        .unwrap();
        let listed = run_cmd("nft", &["list", "set", "inet", "weftpol_test", "s_db_in_ingress_0_0"]);
        assert!(listed.contains("elements = { 10.244.3.4 }"), "{listed}");
        assert!(t
            .update_policy_sets(&[SetEdit {
                id: "s_db_in_ingress_0_0".into(),
                add: vec![web],
                remove: vec![Ipv4Addr::new(10, 9, 9, 9)],
            }])
            .is_err());
        let listed = run_cmd("nft", &["list", "set", "inet", "weftpol_test", "s_db_in_ingress_0_0"]);
        assert!(listed.contains("elements = { 10.244.3.4 }"), "{listed}");
        let counters = t.observe_policy().unwrap().unwrap().counters;
        assert_eq!(counters.get("a_db_in"), Some(&0), "{counters:?}");
        assert_eq!(counters.get("d_db_in"), Some(&0), "{counters:?}");
        // Replaced by an empty table: no chain, no set, nothing dropped.
        t.replace_policy(&Default::default()).unwrap();
        let listed = run_cmd("nft", &["list", "table", "inet", "weftpol_test"]);
        assert!(!listed.contains("in_10_244_1_2"), "{listed}");
    });
}
