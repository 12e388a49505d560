//! The reconciler against the fake kernel: what a start, a restart, a
//! repair and a peer change do to the kernel — and that nothing else
//! changes.

use std::net::Ipv4Addr;
use std::sync::Arc;

use weft_common::MacAddr;

use super::*;
use crate::model::diff::Cause;
use crate::model::observed::NetnsPresence;
use crate::model::ops::Op;

async fn start(a: &Agent) {
    a.start(&[]).await.expect("start reconcile");
}

#[tokio::test]
async fn standalone_first_start_builds_the_host_and_a_restart_changes_nothing() {
    let k = Arc::new(FakeKernel::with_underlay(UNDERLAY_IP));
    let dir = TempDir::new("restart");
    let a = agent(&k, &dir, standalone(), PeerSet::default());
    start(&a).await;
    let first = applied(&k);
    assert_eq!(first[0], "sysctl net.ipv4.ip_forward=1");
    assert!(
        first
            .contains(&"link add weft0 type bridge address 0a:58:0a:f4:01:01 mtu 1500".to_string()),
        "{first:#?}"
    );
    assert!(
        first.contains(&"address add 10.244.1.1/24 dev weft0".to_string()),
        "{first:#?}"
    );
    assert!(
        first
            .iter()
            .any(|l| l.starts_with("nft table inet weft (masquerade from 10.244.1.0/24")),
        "{first:#?}"
    );
    assert!(
        !first.iter().any(|l| l.contains("type vxlan")),
        "standalone has no tunnel: {first:#?}"
    );
    a.endpoints
        .add(
            "a".into(),
            None,
            vec!["8080:80".parse().unwrap()],
            Default::default(),
        )
        .await
        .unwrap();
    a.endpoints
        .add("b".into(), None, vec![], Default::default())
        .await
        .unwrap();
    k.take_applied();
    drop(a);
    released(&dir);

    // The restart: state equal to the kernel, so not one operation.
    let a = agent(&k, &dir, standalone(), PeerSet::default());
    start(&a).await;
    assert_eq!(applied(&k), Vec::<String>::new());
    // Nor does a repair.
    a.repair().await;
    assert_eq!(applied(&k), Vec::<String>::new());
}

#[tokio::test]
async fn cluster_start_programs_the_tunnel_and_a_restart_changes_nothing() {
    let k = Arc::new(FakeKernel::with_underlay(UNDERLAY_IP));
    let dir = TempDir::new("cluster");
    let set = peers(&[peer(2), peer(3)]);
    let a = agent(&k, &dir, cluster(), set.clone());
    start(&a).await;
    let first = applied(&k);
    for want in [
        "link add weft.1 type vxlan id 1 dstport 4789 local 198.18.0.11 address 02:00:00:00:00:01 mtu 1450",
        "address add 10.244.1.0/32 dev weft.1",
        "sysctl net/ipv6/conf/weft.1/disable_ipv6=1",
        "neigh replace 10.244.2.0 lladdr 02:00:00:00:00:02 dev weft.1 nud permanent",
        "fdb append 02:00:00:00:00:03 dst 198.18.0.13 dev weft.1",
        "route replace 10.244.3.0/24 via 10.244.3.0 dev weft.1 onlink",
    ] {
        assert!(first.iter().any(|l| l == want), "{want:?} not in {first:#?}");
    }
    let fw = k.state().firewall.expect("nft table");
    assert_eq!(fw.spec.vxlan_port, Some(4789));
    assert_eq!(fw.peers.len(), 2, "the VXLAN port accepts both peers");
    a.endpoints
        .add("a".into(), None, vec![], Default::default())
        .await
        .unwrap();
    k.take_applied();
    drop(a);
    released(&dir);
    let a = agent(&k, &dir, cluster(), set);
    start(&a).await;
    assert_eq!(applied(&k), Vec::<String>::new());
}

#[tokio::test]
async fn a_peer_that_moved_replaces_exactly_its_neighbour_and_fdb_entry() {
    let k = Arc::new(FakeKernel::with_underlay(UNDERLAY_IP));
    let dir = TempDir::new("moved");
    let a = agent(&k, &dir, cluster(), peers(&[peer(2), peer(3)]));
    start(&a).await;
    k.take_applied();
    // h3 comes back from another address with a new VTEP MAC.
    let mut moved = peer(3);
    moved.public_ip = Ipv4Addr::new(198, 18, 0, 99);
    moved.vtep_mac = MacAddr([2, 0, 0, 0, 0, 0x33]);
    a.reconciler
        .set_peers(peers(&[peer(2), moved.clone()]), "controller")
        .await;
    assert_eq!(
        applied(&k),
        [
            "nft add element inet weft vxlan_peers { 198.18.0.99 }, delete { 198.18.0.13 }",
            "neigh replace 10.244.3.0 lladdr 02:00:00:00:00:33 dev weft.1 nud permanent",
            "fdb append 02:00:00:00:00:33 dst 198.18.0.99 dev weft.1",
            "fdb del 02:00:00:00:00:03 dst 198.18.0.13 dev weft.1",
        ]
    );
    // Only its address changes (same MAC): the FDB entry alone.
    let mut again = moved.clone();
    again.public_ip = Ipv4Addr::new(198, 18, 0, 98);
    a.reconciler
        .set_peers(peers(&[peer(2), again]), "controller")
        .await;
    assert_eq!(
        applied(&k),
        [
            "nft add element inet weft vxlan_peers { 198.18.0.98 }, delete { 198.18.0.99 }",
            "fdb append 02:00:00:00:00:33 dst 198.18.0.98 dev weft.1",
            "fdb del 02:00:00:00:00:33 dst 198.18.0.99 dev weft.1",
        ]
    );
    // The same set again: nothing.
    let same = a.reconciler.paths().await;
    assert_eq!(same.len(), 2);
    a.repair().await;
    assert_eq!(applied(&k), Vec::<String>::new());
}

#[tokio::test]
async fn a_route_deleted_outside_weft_is_restored_and_strays_go() {
    let k = Arc::new(FakeKernel::with_underlay(UNDERLAY_IP));
    let dir = TempDir::new("route");
    let a = agent(&k, &dir, cluster(), peers(&[peer(2), peer(3)]));
    start(&a).await;
    k.take_applied();
    let h3: ipnetwork::Ipv4Network = "10.244.3.0/24".parse().unwrap();
    k.with(|s| {
        s.routes.remove(&h3);
        // A stray route planted on weft's device.
        let (to, _) = s.routes.values().next().cloned().unwrap();
        s.routes.insert("10.244.9.0/24".parse().unwrap(), (to, 4));
    });
    a.repair().await;
    assert_eq!(
        applied(&k),
        [
            "route replace 10.244.3.0/24 via 10.244.3.0 dev weft.1 onlink",
            "route del 10.244.9.0/24",
        ]
    );
}

#[tokio::test]
async fn a_bridge_deleted_outside_weft_comes_back_with_its_ports() {
    let k = Arc::new(FakeKernel::with_underlay(UNDERLAY_IP));
    let dir = TempDir::new("bridge");
    let a = agent(&k, &dir, standalone(), PeerSet::default());
    start(&a).await;
    a.endpoints
        .add("a".into(), None, vec![], Default::default())
        .await
        .unwrap();
    k.take_applied();
    let veth = weft_common::name::host_veth_name("a");
    k.with(|s| s.remove_device(BRIDGE));
    a.repair().await;
    let ops = applied(&k);
    assert_eq!(
        ops[..4],
        [
            "link add weft0 type bridge address 0a:58:0a:f4:01:01 mtu 1500",
            "address add 10.244.1.1/24 dev weft0",
            "sysctl net/ipv4/conf/weft0/rp_filter=2",
            "sysctl net/ipv4/conf/weft0/route_localnet=1",
        ]
    );
    assert!(
        ops.contains(&format!("link set {veth} master weft0 up")),
        "{ops:#?}"
    );
    assert_eq!(
        k.state().devices[&veth].master.as_deref(),
        Some(BRIDGE),
        "a's veth is a port of the new bridge"
    );
    a.repair().await;
    assert_eq!(applied(&k), Vec::<String>::new(), "repaired once");
}

#[tokio::test]
async fn a_vanished_namespace_is_rebuilt_and_its_old_veth_dropped() {
    let k = Arc::new(FakeKernel::with_underlay(UNDERLAY_IP));
    let dir = TempDir::new("netns");
    let a = agent(&k, &dir, standalone(), PeerSet::default());
    start(&a).await;
    a.endpoints
        .add("a".into(), None, vec![], Default::default())
        .await
        .unwrap();
    k.take_applied();
    // The namespace is unmounted under the agent; some process keeps it
    // (and so the veth) alive.
    k.with(|s| {
        s.netns.remove("a");
    });
    assert_eq!(k.with(|s| s.netns.len()), 0);
    a.repair().await;
    let ops = applied(&k);
    let veth = weft_common::name::host_veth_name("a");
    assert_eq!(ops[0], "netns add a");
    assert_eq!(ops[1], format!("link del {veth}"));
    assert!(
        ops[2].starts_with(&format!("link add {veth} master weft0")),
        "{ops:#?}"
    );
    assert_eq!(
        k.state().netns["a"].addresses["eth0"].iter().next(),
        Some(&(Ipv4Addr::new(10, 244, 1, 2), 24))
    );
    a.repair().await;
    assert_eq!(applied(&k), Vec::<String>::new());
}

#[tokio::test]
async fn inside_a_namespace_only_what_changed_is_restored() {
    let k = Arc::new(FakeKernel::with_underlay(UNDERLAY_IP));
    let dir = TempDir::new("inside");
    let a = agent(&k, &dir, standalone(), PeerSet::default());
    start(&a).await;
    a.endpoints
        .add("a".into(), None, vec![], Default::default())
        .await
        .unwrap();
    k.take_applied();
    k.with(|s| s.netns.get_mut("a").unwrap().default_route = None);
    // A repair looks inside only when the host side is broken…
    a.repair().await;
    assert_eq!(applied(&k), Vec::<String>::new());
    // …a start always does.
    let r = a
        .reconciler
        .reconcile(Cause::Start, &a.endpoints.lock().await.records, &[])
        .await;
    r.unwrap();
    assert_eq!(
        applied(&k),
        ["route replace default via 10.244.1.1 dev eth0 (in namespace a)"]
    );
}

#[tokio::test]
async fn leftovers_of_an_interrupted_ns_add_are_removed_at_start() {
    let k = Arc::new(FakeKernel::with_underlay(UNDERLAY_IP));
    let dir = TempDir::new("pending");
    let a = agent(&k, &dir, standalone(), PeerSet::default());
    start(&a).await;
    // What a crash half-way through `ns add x` leaves: its namespace, its
    // veth and its marker.
    let spec = a
        .reconciler
        .spec()
        .endpoint(&crate::model::endpoint::EndpointRecord {
            name: "x".into(),
            ip: Ipv4Addr::new(10, 244, 1, 9),
            mac: MacAddr::from_ipv4(Ipv4Addr::new(10, 244, 1, 9)),
            host_veth: weft_common::name::host_veth_name("x"),
            publish: vec![],
            attachment: None,
            labels: Default::default(),
        });
    let r = k
        .apply(&spec.build_ops()[..2], crate::kernel::OnError::Stop)
        .await;
    assert!(r.is_ok());
    a.endpoints.state().mark_pending("x").unwrap();
    k.take_applied();
    a.start(&["x".into()]).await.unwrap();
    assert_eq!(
        applied(&k),
        [
            format!("link del {}", spec.host_veth),
            "netns del x".to_string()
        ]
    );
    assert_eq!(k.with(|s| s.netns.len()), 0);
    assert!(
        !a.endpoints.state().is_pending("x"),
        "the marker is cleared"
    );
    assert!(matches!(k.netns_presence("x").await, NetnsPresence::Absent));
}

#[tokio::test]
async fn a_foreign_device_called_weft0_stops_the_start() {
    let k = Arc::new(FakeKernel::with_underlay(UNDERLAY_IP));
    k.with(|s| {
        let mut d = s.devices["eth0"].clone();
        d.name = BRIDGE.into();
        d.index = 99;
        d.kind = Some("dummy".into());
        s.devices.insert(BRIDGE.into(), d);
    });
    let dir = TempDir::new("foreign");
    let a = agent(&k, &dir, standalone(), PeerSet::default());
    let e = a.start(&[]).await.unwrap_err().to_string();
    assert_eq!(
        e,
        "weft0 exists but is a dummy device, not a bridge; remove it so weft can create its bridge"
    );
    assert_eq!(k.take_applied(), Vec::<Op>::new(), "nothing changed");
}
