//! `--metrics-listen`: Prometheus metrics, `/healthz` and `/readyz` of the
//! agents and the controller, scraped from inside the lab's namespaces.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use weft_tests::cluster::controller_metrics_addr;
use weft_tests::http::{get_in, metric_value};
use weft_tests::lab::{Host, Lab, LabOpts};
use weft_tests::wait_until;

const T: Duration = Duration::from_secs(5);

fn get(ns: &Path, addr: SocketAddr, path: &str) -> (u16, String) {
    get_in(ns, addr, path, T).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e:#}"))
}

/// The value of `name` in `/metrics` of `addr`; panics if it is missing.
fn value(ns: &Path, addr: SocketAddr, name: &str) -> f64 {
    let (code, body) = get(ns, addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    metric_value(&body, name).unwrap_or_else(|| panic!("no {name} in:\n{body}"))
}

fn agent_value(h: &Host, name: &str) -> f64 {
    value(&h.netns, h.metrics_addr(), name)
}

/// Waits (bounded) until `name` of `h`'s agent satisfies `f`.
fn wait_agent(h: &Host, name: &str, f: impl Fn(f64) -> bool) {
    let ok = wait_until(Duration::from_secs(20), || f(agent_value(h, name)));
    assert!(ok, "{}: {name} = {}", h.name, agent_value(h, name));
}

fn wait_ready(ns: &Path, addr: SocketAddr) {
    let mut last = (0, String::new());
    let ok = wait_until(Duration::from_secs(20), || {
        last = get(ns, addr, "/readyz");
        last.0 == 200
    });
    assert!(ok, "{addr} never became ready: {last:?}");
    assert_eq!(last.1, "ready\n");
}

fn changes_total(h: &Host) -> f64 {
    ["route", "neigh", "fdb", "link", "address", "nft"]
        .iter()
        .map(|k| {
            agent_value(
                h,
                &format!("weft_agent_changes_applied_total{{kind=\"{k}\"}}"),
            )
        })
        .sum()
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
        assert_eq!(agent_value(h, r#"weft_agent_peers{mode="direct"}"#), 0.0);
        assert_eq!(agent_value(h, "weft_agent_controller_connected"), 1.0);
        assert_eq!(
            agent_value(h, r#"weft_agent_controller{address="198.18.0.3:7470"}"#),
            1.0
        );
        assert!(agent_value(h, "weft_agent_reconcile_runs_total") >= 1.0);
        assert!(agent_value(h, "weft_agent_peer_snapshots_total") >= 1.0);
        assert!(agent_value(h, "weft_agent_peer_revision") > 0.0);
        // The overlay entries of the one peer were programmed.
        assert!(agent_value(h, r#"weft_agent_changes_applied_total{kind="route"}"#) >= 1.0);
        assert!(agent_value(h, r#"weft_agent_changes_applied_total{kind="fdb"}"#) >= 1.0);
        assert_eq!(agent_value(h, "weft_agent_endpoints"), 0.0);
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
    let before = changes_total(h1);
    let adds = agent_value(
        h1,
        r#"weft_agent_endpoint_operations_total{op="add",result="ok"}"#,
    );
    h1.ns_add("a", &[]);
    assert_eq!(agent_value(h1, "weft_agent_endpoints"), 1.0);
    assert_eq!(
        agent_value(
            h1,
            r#"weft_agent_endpoint_operations_total{op="add",result="ok"}"#
        ),
        adds + 1.0
    );
    assert!(
        changes_total(h1) > before,
        "no kernel change counted for ns add"
    );
    // A refused ns add counts as an error.
    let (code, _, _) = h1.weftctl_err(&["ns", "add", "a"]);
    assert_ne!(code, 0);
    assert_eq!(
        agent_value(
            h1,
            r#"weft_agent_endpoint_operations_total{op="add",result="error"}"#
        ),
        1.0
    );

    // h2's agent stops, then the host is removed: the gauges follow.
    let rev = agent_value(h1, "weft_agent_peer_revision");
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
    assert!(agent_value(h1, "weft_agent_peer_revision") > rev);
    assert!(agent_value(h1, "weft_agent_peer_deltas_total") >= 1.0);
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
    assert_eq!(agent_value(h1, "weft_agent_controller_connected"), 0.0);

    lab.start_controller(1, &[]).unwrap();
    a.wait_ready(Duration::from_secs(30)).unwrap();
    wait_ready(&h1.netns, addr);
    assert_eq!(agent_value(h1, "weft_agent_controller_connected"), 1.0);
}

#[test]
fn controller_readiness_follows_etcd_and_health_stays_fast() {
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
        let t = Instant::now();
        assert_eq!(get(&c, cm, "/healthz"), (200, "ok\n".into()));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "healthz took {:?}",
            t.elapsed()
        );
        let t = Instant::now();
        assert_eq!(get(&c, cm, "/readyz").0, 503);
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "readyz took {:?}",
            t.elapsed()
        );
    }
    assert!(value(&c, cm, r#"weft_controller_etcd_errors_total{op="get"}"#) >= 1.0);
    lab.start_etcd().unwrap();
    wait_ready(&c, cm);
}
