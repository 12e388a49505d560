//! CNI attachments against the fake kernel: ADD builds only the wiring
//! into the runtime's namespace (never a namespace of weft's), DEL and GC
//! release without touching the namespace, CHECK names what differs, a
//! failure leaves nothing, and a reconcile releases an attachment whose
//! namespace is gone.

use std::sync::Arc;

use weft_common::api::{AttachmentKey, ErrorCode};

use super::*;
use crate::endpoints::EndpointError;
use crate::kernel::fake::FakeNs;

const NS: &str = "/run/netns/cni-test-1";

fn key(id: &str) -> AttachmentKey {
    AttachmentKey {
        container_id: id.into(),
        ifname: "eth0".into(),
    }
}

/// A started host on the fake kernel with one runtime namespace at [`NS`].
async fn host(tag: &str) -> (Arc<FakeKernel>, TempDir, Agent) {
    let k = Arc::new(FakeKernel::with_underlay(UNDERLAY_IP));
    let dir = TempDir::new(tag);
    let a = agent(&k, &dir, standalone(), PeerSet::default());
    a.start(&[]).await.unwrap();
    runtime_netns(&k, NS);
    k.take_applied();
    (k, dir, a)
}

/// CNI ADD of `key` in `netns` on `network`, no ports, no labels.
async fn attach(
    a: &Agent,
    key: AttachmentKey,
    netns: &str,
    network: &str,
) -> Result<weft_common::api::Endpoint, EndpointError> {
    a.endpoints
        .cni_add(
            key,
            netns.into(),
            network.into(),
            vec![],
            Default::default(),
        )
        .await
}

/// A namespace as a container runtime makes it (with its `lo`).
fn runtime_netns(k: &FakeKernel, path: &str) {
    k.with(|s| {
        let ns = FakeNs::new(&mut s.next_index);
        s.netns.insert(path.into(), ns);
    });
}

#[tokio::test]
async fn add_wires_the_runtimes_namespace_and_del_unwires_it() {
    let (k, _dir, a) = host("att-add").await;
    let ep = attach(&a, key("c1"), NS, "weft").await.unwrap();
    assert_eq!(ep.netns, NS);
    assert_eq!(ep.iface, "eth0");
    assert_eq!(ep.attachment.as_ref().unwrap().container_id, "c1");
    let ops = applied(&k);
    assert!(ops[0].starts_with("link add wv"), "{ops:?}");
    assert!(
        !ops.iter()
            .any(|o| o.starts_with("netns") || o.contains("link set lo")),
        "weft neither makes the namespace nor touches its lo: {ops:?}"
    );
    assert!(
        ops.iter()
            .any(|o| o.contains(&format!("address add {}/24 dev eth0", ep.ip))),
        "{ops:?}"
    );
    // ADD again: refused, nothing applied.
    let e = attach(&a, key("c1"), NS, "weft").await.unwrap_err();
    assert!(matches!(e, EndpointError::AttachmentExists(_)), "{e}");
    assert_eq!(e.code(), ErrorCode::Exists);
    assert!(applied(&k).is_empty());

    let del = a.endpoints.cni_del(key("c1")).await.unwrap();
    assert_eq!(del.map(|e| e.ip), Some(ep.ip));
    let ops = applied(&k);
    assert!(
        !ops.iter().any(|o| o.starts_with("netns")),
        "DEL never deletes the runtime's namespace: {ops:?}"
    );
    assert!(k.state().netns.contains_key(NS));
    assert!(!k.state().netns[NS].devices.contains_key("eth0"));
    // DEL again, and of something never added: nothing to do, success.
    assert_eq!(a.endpoints.cni_del(key("c1")).await.unwrap(), None);
    assert_eq!(a.endpoints.cni_del(key("never")).await.unwrap(), None);
    assert!(a.endpoints.list().await.is_empty());
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    let (k, dir, a) = host("att-bad").await;
    let before = k.state();
    let cases: Vec<(AttachmentKey, &str, ErrorCode)> = vec![
        (key("-x"), NS, ErrorCode::Invalid),
        (
            AttachmentKey {
                container_id: "c".into(),
                ifname: "a/b".into(),
            },
            NS,
            ErrorCode::Invalid,
        ),
        (key("c"), "relative", ErrorCode::Invalid),
        (key("c"), "/run/netns/absent", ErrorCode::NotFound),
    ];
    for (k2, ns, code) in cases {
        let e = attach(&a, k2.clone(), ns, "weft").await.unwrap_err();
        assert_eq!(e.code(), code, "{k2} {ns}: {e}");
    }
    // An interface of that name exists in the namespace already.
    k.with(|s| {
        let lo = s.netns[NS].devices["lo"].clone();
        s.netns
            .get_mut(NS)
            .unwrap()
            .devices
            .insert("eth0".into(), lo);
    });
    let e = attach(&a, key("c"), NS, "weft").await.unwrap_err();
    assert!(matches!(e, EndpointError::InterfaceExists { .. }), "{e}");
    k.with(|s| {
        s.netns.get_mut(NS).unwrap().devices.remove("eth0");
    });
    let mut after = k.state();
    after.applied.clear();
    let mut want = before;
    want.applied.clear();
    after.next_index = want.next_index;
    assert_eq!(after, want, "a refused ADD changed the kernel");
    let files = std::fs::read_dir(dir.0.join("endpoints")).unwrap().count();
    assert_eq!(files, 0);
    assert!(a.endpoints.list().await.is_empty());
}

#[tokio::test]
async fn check_names_what_differs() {
    let (k, _dir, a) = host("att-check").await;
    let ep = attach(&a, key("c1"), NS, "weft").await.unwrap();
    a.endpoints.cni_check(key("c1"), NS.into()).await.unwrap();
    k.with(|s| s.netns.get_mut(NS).unwrap().addresses.clear());
    let e = a
        .endpoints
        .cni_check(key("c1"), NS.into())
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Differs);
    assert!(e.to_string().contains(&ep.ip.to_string()), "{e}");
    let e = a
        .endpoints
        .cni_check(key("c1"), "/run/netns/other".into())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("/run/netns/other"), "{e}");
    let e = a
        .endpoints
        .cni_check(key("nope"), NS.into())
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
}

#[tokio::test]
async fn a_gone_namespace_is_released_by_the_next_repair_and_gc_sweeps() {
    let (k, _dir, a) = host("att-gone").await;
    let ep = attach(&a, key("c1"), NS, "weft").await.unwrap();
    runtime_netns(&k, "/run/netns/cni-test-2");
    attach(&a, key("c2"), "/run/netns/cni-test-2", "weft")
        .await
        .unwrap();
    runtime_netns(&k, "/run/netns/cni-test-3");
    attach(&a, key("c3"), "/run/netns/cni-test-3", "other")
        .await
        .unwrap();
    k.take_applied();
    // The runtime deleted c1's namespace (and so its veth pair).
    k.with(|s| {
        s.netns.remove(NS);
        s.devices.remove(&ep.host_veth);
    });
    a.repair().await;
    let ops = applied(&k);
    assert!(
        !ops.iter().any(|o| o.starts_with("netns")),
        "a gone attachment is not rebuilt: {ops:?}"
    );
    let mut left: Vec<String> = a
        .endpoints
        .list()
        .await
        .iter()
        .map(|e| e.attachment.as_ref().unwrap().container_id.clone())
        .collect();
    left.sort();
    assert_eq!(left, ["c2", "c3"]);
    // c1's address is free: a namespace may take it.
    a.endpoints
        .add("x".into(), Some(ep.ip), vec![], Default::default())
        .await
        .unwrap();
    // GC of "weft" keeping nothing removes c2 only (c3 is another network's).
    let r = a.endpoints.cni_gc("weft".into(), vec![]).await.unwrap();
    assert_eq!(r.removed, vec![key("c2")]);
    let names: Vec<String> = a
        .endpoints
        .list()
        .await
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // ns del refuses an attachment: its runtime removes it.
    let c3 = crate::model::attachment::endpoint_name(&key("c3"));
    let e = a.endpoints.del(&c3).await.unwrap_err();
    assert!(matches!(e, EndpointError::IsAttachment { .. }), "{e}");
    assert!(k.state().netns.contains_key("/run/netns/cni-test-3"));
}
