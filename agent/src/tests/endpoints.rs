//! `ns add` and `ns del` against the fake kernel: a failure at any step
//! takes back exactly what was made; refusals change nothing.

use std::sync::Arc;

use weft_common::Proto;

use super::*;
use crate::endpoints::EndpointError;
use crate::kernel::fake::FakeState;
use crate::kernel::SpareSpec;
use crate::model::ops::{NsOp, Op};

/// A started standalone host on the fake kernel.
async fn host(tag: &str) -> (Arc<FakeKernel>, TempDir, Agent) {
    let k = Arc::new(FakeKernel::with_underlay(UNDERLAY_IP));
    let dir = TempDir::new(tag);
    let a = agent(&k, &dir, standalone(), PeerSet::default());
    a.start(&[]).await.unwrap();
    k.take_applied();
    (k, dir, a)
}

/// The kernel's objects, without the log of operations.
fn objects(k: &FakeKernel) -> FakeState {
    let mut s = k.state();
    s.applied.clear();
    s.next_index = 0;
    s
}

fn state_files(dir: &TempDir) -> (Vec<String>, Vec<String>) {
    let ls = |sub: &str| {
        let mut v: Vec<String> = std::fs::read_dir(dir.0.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    (ls("endpoints"), ls("pending"))
}

/// Picks the operation to fail.
type Which = Box<dyn Fn(&Op) -> bool + Send>;

/// Each step of a build that can fail, named for the message.
fn steps() -> Vec<(&'static str, Which)> {
    vec![
        (
            "namespace",
            Box::new(|o| matches!(o, Op::CreateNetns { .. })),
        ),
        ("veth", Box::new(|o| matches!(o, Op::CreateVeth(_)))),
        (
            "lo up",
            Box::new(|o| matches!(o, Op::InNetns { op: NsOp::SetDevice(c), .. } if c.name == "lo")),
        ),
        (
            "eth0 up",
            Box::new(
                |o| matches!(o, Op::InNetns { op: NsOp::SetDevice(c), .. } if c.name == "eth0"),
            ),
        ),
        (
            "address",
            Box::new(|o| {
                matches!(
                    o,
                    Op::InNetns {
                        op: NsOp::AddAddress { .. },
                        ..
                    }
                )
            }),
        ),
        (
            "route",
            Box::new(|o| {
                matches!(
                    o,
                    Op::InNetns {
                        op: NsOp::ReplaceDefaultRoute { .. },
                        ..
                    }
                )
            }),
        ),
        (
            "published ports",
            Box::new(|o| matches!(o, Op::AddForwards(_))),
        ),
    ]
}

#[tokio::test]
async fn ns_add_failing_at_each_step_rolls_back_exactly_what_it_made() {
    for (i, (step, fail)) in steps().into_iter().enumerate() {
        let (k, dir, a) = host(&format!("rollback{i}")).await;
        let before = objects(&k);
        k.fail_when(fail);
        let e = a
            .endpoints
            .add(
                "a".into(),
                None,
                vec!["8080:80".parse().unwrap()],
                Default::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, EndpointError::Kernel(_)), "{step}: {e}");
        let ops = k.take_applied();
        // What was undone is exactly what was made, in reverse order.
        let made: Vec<&Op> = ops
            .iter()
            .take_while(|o| {
                !matches!(
                    o,
                    Op::DelForwards(_) | Op::DeleteDevice { .. } | Op::DeleteNetns { .. }
                )
            })
            .collect();
        let undone: Vec<&Op> = ops[made.len()..].iter().collect();
        let expect: Vec<Op> = made
            .iter()
            .rev()
            .filter_map(|o| crate::endpoints::undo::Undo::of(o))
            .filter_map(|u| u.op())
            .collect();
        assert_eq!(
            undone.into_iter().cloned().collect::<Vec<_>>(),
            expect,
            "{step}: {ops:#?}"
        );
        assert_eq!(objects(&k), before, "{step}: something was left behind");
        assert_eq!(
            state_files(&dir),
            (vec![], vec![]),
            "{step}: state left behind"
        );
        // The address went back: another endpoint may have it.
        k.clear_failures();
        let ip = "10.244.1.2".parse().unwrap();
        let ep = a
            .endpoints
            .add("b".into(), Some(ip), vec![], Default::default())
            .await
            .unwrap();
        assert_eq!(ep.ip, ip, "{step}");
    }
}

#[tokio::test]
async fn a_failed_state_write_takes_the_kernel_work_back() {
    let (k, dir, a) = host("statefail").await;
    let before = objects(&k);
    // A file where the endpoints directory was: no record can be written,
    // whoever the writer runs as.
    std::fs::remove_dir_all(dir.0.join("endpoints")).unwrap();
    std::fs::write(dir.0.join("endpoints"), b"").unwrap();
    let e = a
        .endpoints
        .add("a".into(), None, vec![], Default::default())
        .await
        .unwrap_err();
    assert!(matches!(e, EndpointError::State(_)), "{e}");
    assert_eq!(objects(&k), before, "the namespace and veth were removed");
}

#[tokio::test]
async fn a_spare_is_used_and_an_unusable_one_falls_back_to_a_new_namespace() {
    let (k, _dir, a) = host("spare").await;
    let spec = SpareSpec {
        master: BRIDGE.into(),
        mtu: 1500,
        iface: "eth0".into(),
    };
    for _ in 0..2 {
        let id = k.build_spare(&spec).await.unwrap();
        a.endpoints.pool.put(id);
    }
    k.take_applied();
    a.endpoints
        .add("a".into(), None, vec![], Default::default())
        .await
        .unwrap();
    let ops = k.take_applied();
    assert!(matches!(ops[0], Op::AdoptSpare { .. }), "{ops:#?}");
    assert_eq!(ops.len(), 1, "nothing but the spare: {ops:#?}");
    let st = k.state();
    let veth = weft_common::name::host_veth_name("a");
    assert_eq!(st.devices[&veth].master.as_deref(), Some(BRIDGE));
    assert_eq!(
        st.netns["a"].default_route,
        Some(("10.244.1.1".parse().unwrap(), "eth0".into()))
    );
    // The next spare fails: the endpoint is built from scratch instead.
    k.fail_when(|o| matches!(o, Op::AdoptSpare { .. }));
    a.endpoints
        .add("b".into(), None, vec![], Default::default())
        .await
        .unwrap();
    let ops: Vec<String> = k.take_applied().iter().map(|o| o.to_string()).collect();
    assert_eq!(ops[0], "netns add b", "{ops:#?}");
}

#[tokio::test]
async fn refusals_change_nothing_and_name_the_value() {
    let (k, _dir, a) = host("refuse").await;
    a.endpoints
        .add(
            "a".into(),
            None,
            vec!["8080:80".parse().unwrap()],
            Default::default(),
        )
        .await
        .unwrap();
    k.take_applied();
    let before = objects(&k);
    let cases: Vec<(&str, Option<&str>, Vec<&str>, &str)> = vec![
        ("a", None, vec![], "namespace \"a\" already exists"),
        (
            "b",
            None,
            vec!["8080:81"],
            "host port 8080/tcp is already published by namespace \"a\"",
        ),
        (
            "b",
            Some("10.244.2.5"),
            vec![],
            "address 10.244.2.5 is outside this host's subnet 10.244.1.0/24",
        ),
        (
            "b",
            Some("10.244.1.2"),
            vec![],
            "address 10.244.1.2 is already used by namespace \"a\"",
        ),
        ("B_", None, vec![], "invalid namespace name"),
    ];
    for (name, ip, publish, want) in cases {
        let e = a
            .endpoints
            .add(
                name.into(),
                ip.map(|i| i.parse().unwrap()),
                publish.iter().map(|p| p.parse().unwrap()).collect(),
                Default::default(),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{name}: {e}");
    }
    // A port something else listens on.
    k.with(|s| {
        s.busy_ports.insert((None, 9090, Proto::Tcp));
    });
    let e = a
        .endpoints
        .add(
            "b".into(),
            None,
            vec!["9090:80".parse().unwrap()],
            Default::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "--publish 9090:80/tcp: host port 9090/tcp is already in use on this host"
    );
    // Something not weft's at the namespace path.
    k.with(|s| {
        s.stray_files.insert("c".into());
    });
    let e = a
        .endpoints
        .add("c".into(), None, vec![], Default::default())
        .await
        .unwrap_err();
    assert!(matches!(e, EndpointError::ForeignNetns(_)), "{e}");
    let mut after = objects(&k);
    after.busy_ports.clear();
    after.stray_files.clear();
    assert_eq!(after, before);
    assert_eq!(k.take_applied(), Vec::<Op>::new());
}

#[tokio::test]
async fn ns_del_removes_ports_veth_and_namespace_and_frees_the_address() {
    let (k, dir, a) = host("del").await;
    let before = objects(&k);
    a.endpoints
        .add(
            "a".into(),
            None,
            vec!["8080:80".parse().unwrap()],
            Default::default(),
        )
        .await
        .unwrap();
    k.take_applied();
    a.endpoints.del("a").await.unwrap();
    let ops = applied(&k);
    assert_eq!(ops.len(), 3, "{ops:#?}");
    assert!(
        ops[0].starts_with("nft delete port forward 8080/tcp"),
        "{ops:#?}"
    );
    assert_eq!(ops[2], "netns del a");
    assert_eq!(objects(&k), before);
    assert_eq!(state_files(&dir), (vec![], vec![]));
    let e = a.endpoints.del("a").await.unwrap_err();
    assert_eq!(e.to_string(), "namespace \"a\" does not exist");
}
