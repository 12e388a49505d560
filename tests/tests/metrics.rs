//! `--metrics-listen`: Prometheus metrics, `/healthz` and `/readyz` of the
//! agents and the controller, scraped from inside the lab's namespaces.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use weft_tests::cluster::controller_metrics_addr;
use weft_tests::http::{get_in, metric_in, wait_ready_in};
use weft_tests::{wait_until, Host, Lab, LabOpts};

/// Bound of one HTTP request: an endpoint that blocks (on etcd, say) fails
/// it, one that merely answers slowly on a busy machine does not.
const T: Duration = Duration::from_secs(5);

fn get(ns: &Path, addr: SocketAddr, path: &str) -> (u16, String) {
    get_in(ns, addr, path, T).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e:#}"))
}

/// The value of `name` in `/metrics` of `addr`; panics if it is missing.
fn value(ns: &Path, addr: SocketAddr, name: &str) -> f64 {
    metric_in(ns, addr, name, T).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Waits (bounded) until `name` of `h`'s agent satisfies `f`.
fn wait_agent(h: &Host, name: &str, f: impl Fn(f64) -> bool) {
    let ok = wait_until(Duration::from_secs(20), || f(h.agent_metric(name)));
    assert!(ok, "{}: {name} = {}", h.name, h.agent_metric(name));
}

fn wait_ready(ns: &Path, addr: SocketAddr) {
    wait_ready_in(ns, addr, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(get(ns, addr, "/readyz"), (200, "ready\n".into()));
}

#[test]
fn metrics_follow_the_cluster() {
    let lab = Lab::new(LabOpts::cluster(2, 1));
    let (h1, h2) = (lab.host(1), lab.host(2));
    let _a1 = h1.start_agent(&[]);
    let mut a2 = h2.start_agent(&[]);
    let c = lab.control();
    let cm = controller_metrics_addr(1);
    wait_ready(&c, cm);
    for h in [h1, h2] {
        wait_ready(&h.netns, h.metrics_addr());
        assert_eq!(
            get(&h.netns, h.metrics_addr(), "/healthz"),
            (200, "ok\n".into())
        );
        wait_agent(h, r#"weft_agent_peers{mode="vxlan"}"#, |v| v == 1.0);
        assert_eq!(h.agent_metric(r#"weft_agent_peers{mode="direct"}"#), 0.0);
        assert_eq!(h.agent_metric("weft_agent_controller_connected"), 1.0);
        assert_eq!(
            h.agent_metric(r#"weft_agent_controller{address="198.18.0.3:7470"}"#),
            1.0
        );
        assert!(h.agent_metric("weft_agent_reconcile_runs_total") >= 1.0);
        assert!(h.agent_metric("weft_agent_peer_snapshots_total") >= 1.0);
        assert!(h.agent_metric("weft_agent_peer_revision") > 0.0);
        // The overlay entries of the one peer were programmed.
        assert!(h.agent_metric(r#"weft_agent_changes_applied_total{kind="route"}"#) >= 1.0);
        assert!(h.agent_metric(r#"weft_agent_changes_applied_total{kind="fdb"}"#) >= 1.0);
        assert_eq!(h.agent_metric("weft_agent_endpoints"), 0.0);
    }
    // Content type, unknown paths.
    let (code, body) = get(&c, cm, "/metrics");
    assert_eq!(code, 200);
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert_eq!(get(&c, cm, "/nope").0, 404);
    assert_eq!(get(&h1.netns, h1.metrics_addr(), "/metrics/x").0, 404);

    let cv = |name: &str| value(&c, cm, name);
    assert_eq!(cv("weft_controller_connected_agents"), 2.0);
    assert!(cv(r#"weft_controller_registrations_total{result="ok"}"#) >= 2.0);
    assert_eq!(cv("weft_controller_allocations_total"), 2.0);
    assert!(cv(r#"weft_controller_etcd_request_duration_seconds_count{op="txn"}"#) >= 2.0);
    assert!(cv("weft_controller_snapshots_sent_total") >= 2.0);

    // ns add: one more endpoint, kernel changes applied.
    let before = h1.agent_changes_applied();
    let adds = h1.agent_metric(r#"weft_agent_endpoint_operations_total{op="add",result="ok"}"#);
    h1.add_endpoint("a");
    assert_eq!(h1.agent_metric("weft_agent_endpoints"), 1.0);
    assert_eq!(
        h1.agent_metric(r#"weft_agent_endpoint_operations_total{op="add",result="ok"}"#),
        adds + 1.0
    );
    assert!(
        h1.agent_changes_applied() > before,
        "no kernel change counted for ns add"
    );
    // A refused ns add counts as an error.
    let (code, _, _) = h1.weftctl_err(&["ns", "add", "a"]);
    assert_ne!(code, 0);
    assert_eq!(
        h1.agent_metric(r#"weft_agent_endpoint_operations_total{op="add",result="error"}"#),
        1.0
    );

    // h2's agent stops, then the host is removed: the gauges follow.
    let rev = h1.agent_metric("weft_agent_peer_revision");
    a2.stop();
    let ok = wait_until(Duration::from_secs(20), || {
        cv("weft_controller_connected_agents") == 1.0
    });
    assert!(
        ok,
        "connected agents: {}",
        cv("weft_controller_connected_agents")
    );
    let out = lab.weftctl_etcd(&["host", "rm", "h2"]);
    assert!(out.status.success(), "{out:?}");
    wait_agent(h1, r#"weft_agent_peers{mode="vxlan"}"#, |v| v == 0.0);
    assert!(h1.agent_metric("weft_agent_peer_revision") > rev);
    assert!(h1.agent_metric("weft_agent_peer_deltas_total") >= 1.0);
    assert_eq!(cv("weft_controller_allocations_total"), 2.0);
    assert!(cv("weft_controller_deltas_sent_total") >= 1.0);
}

#[test]
fn agent_is_not_ready_until_a_controller_answers() {
    let lab = Lab::new(LabOpts::cluster(1, 1));
    let h1 = lab.host(1);
    // --check-config shows the listener.
    let out = h1.run_agent(&["--check-config"], T);
    let cfg: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(cfg["metrics_listen"], h1.metrics_addr().to_string());

    assert!(lab.kill_held("controller-c1"));
    let mut a = h1.spawn_agent(&[]).unwrap();
    let addr = h1.metrics_addr();
    let mut last = None;
    let answered = wait_until(Duration::from_secs(20), || {
        last = get_in(&h1.netns, addr, "/readyz", T).ok();
        last.is_some()
    });
    assert!(answered, "the agent's listener never answered");
    let (code, body) = last.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("not ready: ") && body.contains("controller"),
        "{body}"
    );
    assert_eq!(body.lines().count(), 1, "{body}");
    assert_eq!(get(&h1.netns, addr, "/healthz"), (200, "ok\n".into()));
    assert_eq!(h1.agent_metric("weft_agent_controller_connected"), 0.0);

    lab.start_controller(1, &[]).unwrap();
    a.wait_ready(Duration::from_secs(30)).unwrap();
    wait_ready(&h1.netns, addr);
    assert_eq!(h1.agent_metric("weft_agent_controller_connected"), 1.0);
}

/// With etcd gone, `/readyz` says not ready and `/healthz` still answers
/// at once: neither waits for etcd (each request is bounded by [`T`]; how
/// fast they answer is weft-bench's business, not a pass/fail here).
#[test]
fn controller_readiness_follows_etcd_and_health_answers_without_it() {
    let lab = Lab::new(LabOpts::cluster(1, 1));
    let c = lab.control();
    let cm = controller_metrics_addr(1);
    wait_ready(&c, cm);
    assert!(lab.kill_held("etcd"));
    let mut last = (0, String::new());
    let ok = wait_until(Duration::from_secs(15), || {
        last = get(&c, cm, "/readyz");
        last.0 == 503
    });
    assert!(ok, "still ready with etcd killed: {last:?}");
    assert!(last.1.contains("etcd"), "{last:?}");
    for _ in 0..10 {
        assert_eq!(get(&c, cm, "/healthz"), (200, "ok\n".into()));
        assert_eq!(get(&c, cm, "/readyz").0, 503);
    }
    assert!(value(&c, cm, r#"weft_controller_etcd_errors_total{op="get"}"#) >= 1.0);
    lab.start_etcd().unwrap();
    wait_ready(&c, cm);
}
