//! Network policy enforcement against the fake kernel: the first write
//! replaces the table, a change of set members alone is an element
//! change, nothing changed writes nothing, a change of who is selected
//! replaces the table again, a restarted agent keeps a table that is
//! right, and a failed write is reported in `status` and retried.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use weft_common::cluster::EndpointEntry;
use weft_common::policy::parse;
use weft_common::policy::sets::Sets;

use super::applied;
use crate::enforce::Enforcer;
use crate::kernel::fake::FakeKernel;
use crate::state::PolicyState;

fn db(labels: &[(&str, &str)]) -> EndpointEntry {
    EndpointEntry {
        name: "db".into(),
        ip: Ipv4Addr::new(10, 244, 1, 2),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn state(members: &[u8]) -> PolicyState {
    PolicyState {
        revision: 7,
        policies: parse(
            r#"{"name": "db-in", "selector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"selector": {"matchLabels": {"app": "web"}}}]}]}"#,
        )
        .unwrap(),
        sets: Sets::from([(
            "db-in/ingress/0/0".to_string(),
            members
                .iter()
                .map(|l| Ipv4Addr::new(10, 244, 2, *l))
                .collect::<BTreeSet<_>>(),
        )]),
    }
}

#[tokio::test]
async fn the_table_is_replaced_then_edited_and_only_when_needed() {
    let k = Arc::new(FakeKernel::new());
    let e = Enforcer::new(k.clone());
    let local = [db(&[("app", "db")])];
    e.enforce(&state(&[3]), &local).await;
    let ops = applied(&k);
    assert_eq!(
        ops,
        ["nft table inet weft_policy (1 policies; ingress restricted at [db], egress at []; 1 address sets)"]
    );
    assert_eq!(e.status().endpoints, 1);
    e.enforce(&state(&[3]), &local).await;
    assert!(applied(&k).is_empty(), "nothing changed, nothing written");
    e.enforce(&state(&[4, 5]), &local).await;
    assert_eq!(
        applied(&k),
        ["nft policy sets s_db_in_ingress_0_0 +{ 10.244.2.4, 10.244.2.5 } -{ 10.244.2.3 }"]
    );
    let t = k.state().policy.unwrap();
    assert_eq!(
        t.sets["s_db_in_ingress_0_0"],
        BTreeSet::from([Ipv4Addr::new(10, 244, 2, 4), Ipv4Addr::new(10, 244, 2, 5)])
    );
    // A new agent (a restart) finds the table as it should be: no change;
    // one whose members moved meanwhile: those alone.
    let again = Enforcer::new(k.clone());
    again.enforce(&state(&[4, 5]), &local).await;
    assert!(applied(&k).is_empty(), "a restart changed the table");
    let third = Enforcer::new(k.clone());
    third.enforce(&state(&[6]), &local).await;
    assert_eq!(
        applied(&k),
        ["nft policy sets s_db_in_ingress_0_0 +{ 10.244.2.6 } -{ 10.244.2.4, 10.244.2.5 }"]
    );

    // The label goes: db is no longer selected, the table is rewritten
    // (empty).
    e.enforce(&state(&[4, 5]), &[db(&[])]).await;
    assert_eq!(
        applied(&k),
        ["nft table inet weft_policy (0 policies; ingress restricted at [], egress at []; 0 address sets)"]
    );
    assert_eq!(e.status().endpoints, 0);

    // A write that fails is reported; the next attempt starts from what
    // the kernel holds.
    k.fail_when(|op| matches!(op, crate::model::ops::Op::PolicyReplace(_)));
    e.enforce(&state(&[4]), &local).await;
    let st = e.status();
    assert!(st.error.is_some(), "{st:?}");
    k.clear_failures();
    applied(&k);
    e.enforce(&state(&[4]), &local).await;
    assert_eq!(
        applied(&k),
        ["nft table inet weft_policy (1 policies; ingress restricted at [db], egress at []; 1 address sets)"]
    );
    assert_eq!(e.status().error, None);
    assert_eq!(e.status().endpoints, 1);
}
