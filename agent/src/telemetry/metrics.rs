//! The agent's Prometheus metrics (`--metrics-listen`, served by
//! `weft_common::http`). One set per process: the agent is one daemon per
//! network namespace. Callers report plain numbers and labels; nothing
//! here knows the layers it counts for.

use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use weft_common::metrics::{register, timed};

type Label = [(&'static str, String); 1];
type Labels2 = [(&'static str, &'static str); 2];
type Labels2Owned = [(&'static str, String); 2];

fn label(k: &'static str, v: impl Into<String>) -> Label {
    [(k, v.into())]
}

pub struct Metrics {
    pub endpoints: Gauge,
    pub peers: Family<Label, Gauge>,
    pub reconcile_runs: Counter,
    pub reconcile_errors: Counter,
    pub reconcile_duration: Histogram,
    pub changes: Family<Label, Counter>,
    pub netlink_errors: Counter,
    pub endpoint_ops: Family<Labels2, Counter>,
    pub controller_connected: Gauge,
    pub controller_info: Family<Label, Gauge>,
    pub revision: Gauge,
    pub snapshots: Counter,
    pub deltas: Counter,
    pub policy_packets: Family<Labels2Owned, Counter>,
    /// The address `controller_info` carries now.
    controller_addr: Mutex<Option<String>>,
    registry: Arc<Registry>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("weft_agent");
        let endpoints = register(
            &mut r,
            "endpoints",
            "Namespaces (endpoints) this agent serves",
            Gauge::default(),
        );
        let peers = register(
            &mut r,
            "peers",
            "Remote hosts programmed in the data plane, by mode (vxlan or direct)",
            Family::<Label, Gauge>::default(),
        );
        for m in ["vxlan", "direct"] {
            let _ = peers.get_or_create(&label("mode", m));
        }
        let reconcile_runs = register(
            &mut r,
            "reconcile_runs",
            "Reconciles of the kernel with the agent's state (at start, on kernel events, periodically)",
            Counter::default(),
        );
        let reconcile_errors = register(
            &mut r,
            "reconcile_errors",
            "Reconciles that failed (retried later)",
            Counter::default(),
        );
        let reconcile_duration = register(
            &mut r,
            "reconcile_duration_seconds",
            "How long one reconcile took",
            Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        );
        let changes = register(
            &mut r,
            "changes_applied",
            "Kernel changes applied, by kind: route, neigh, fdb (overlay entries), link (created, changed or deleted devices), address, sysctl, netns (namespaces made or removed), nft (committed nftables transactions)",
            Family::<Label, Counter>::default(),
        );
        for k in CHANGE_KINDS {
            let _ = changes.get_or_create(&label("kind", k));
        }
        let netlink_errors = register(
            &mut r,
            "netlink_errors",
            "Kernel operations (netlink requests, sysctls, namespaces) that failed; nft failures are logged, not counted here",
            Counter::default(),
        );
        let endpoint_ops = register(
            &mut r,
            "endpoint_operations",
            "ns add and ns del requests, by op (add, del) and result (ok, error)",
            Family::<Labels2, Counter>::default(),
        );
        for op in ["add", "del"] {
            for res in ["ok", "error"] {
                let _ = endpoint_ops.get_or_create(&[("op", op), ("result", res)]);
            }
        }
        let controller_connected = register(
            &mut r,
            "controller_connected",
            "1 while a session with a controller is up, else 0",
            Gauge::default(),
        );
        let controller_info = register(
            &mut r,
            "controller",
            "1 for the controller the agent is connected to or trying (label address)",
            Family::<Label, Gauge>::default(),
        );
        let revision = register(
            &mut r,
            "peer_revision",
            "etcd revision of the last peer snapshot or delta applied",
            Gauge::default(),
        );
        let snapshots = register(
            &mut r,
            "peer_snapshots",
            "Peer snapshots received from controllers",
            Counter::default(),
        );
        let deltas = register(
            &mut r,
            "peer_deltas",
            "Peer deltas received from controllers",
            Counter::default(),
        );
        let policy_packets = register(
            &mut r,
            "policy_packets",
            "Packets network policy decided, by policy and verdict: accepted (by a rule of the policy) or dropped (at an endpoint the policy selects, counted on every policy that selects it)",
            Family::<Labels2Owned, Counter>::default(),
        );
        Metrics {
            policy_packets,
            endpoints,
            peers,
            reconcile_runs,
            reconcile_errors,
            reconcile_duration,
            changes,
            netlink_errors,
            endpoint_ops,
            controller_connected,
            controller_info,
            revision,
            snapshots,
            deltas,
            controller_addr: Mutex::new(None),
            registry: Arc::new(r),
        }
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }
}

/// The `kind` labels of `changes_applied`.
pub const CHANGE_KINDS: [&str; 8] = [
    "route", "neigh", "fdb", "link", "address", "sysctl", "netns", "nft",
];

/// What a batch of kernel operations did: changes applied by kind, and
/// how many operations failed.
pub fn applied<'a>(by_kind: impl IntoIterator<Item = (&'a str, usize)>, failed: usize) {
    let m = get();
    for (kind, n) in by_kind {
        if n > 0 {
            m.changes
                .get_or_create(&label("kind", kind))
                .inc_by(n as u64);
        }
    }
    m.netlink_errors.inc_by(failed as u64);
}

/// Peers as programmed now, by mode.
pub fn set_peers(vxlan: usize, direct: usize) {
    let m = get();
    m.peers
        .get_or_create(&label("mode", "vxlan"))
        .set(vxlan as i64);
    m.peers
        .get_or_create(&label("mode", "direct"))
        .set(direct as i64);
}

pub fn set_endpoints(n: usize) {
    get().endpoints.set(n as i64);
}

/// Counts an `ns add` / `ns del` outcome.
pub fn endpoint_op<T, E>(op: &'static str, r: Result<T, E>) -> Result<T, E> {
    let res = if r.is_ok() { "ok" } else { "error" };
    get()
        .endpoint_ops
        .get_or_create(&[("op", op), ("result", res)])
        .inc();
    r
}

/// Runs one reconcile, counting it and timing it.
pub async fn reconcile<T, E>(f: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let m = get();
    let r = timed(&m.reconcile_duration, &m.reconcile_errors, f).await;
    m.reconcile_runs.inc();
    r
}

/// The controller link: which controller, and whether a session is up.
pub fn controller(address: &str, connected: bool) {
    let m = get();
    m.controller_connected.set(connected as i64);
    let mut cur = m.controller_addr.lock().expect("metrics");
    if cur.as_deref() != Some(address) {
        if let Some(old) = cur.take() {
            m.controller_info.remove(&label("address", old));
        }
        *cur = Some(address.to_string());
    }
    m.controller_info
        .get_or_create(&label("address", address))
        .set(1);
}

/// Adds packets network policy decided: `accepted` or not, for `policy`.
pub fn policy_packets(policy: &str, accepted: bool, packets: u64) {
    let verdict = if accepted { "accepted" } else { "dropped" };
    get()
        .policy_packets
        .get_or_create(&[
            ("policy", policy.to_string()),
            ("verdict", verdict.to_string()),
        ])
        .inc_by(packets);
}

/// A peer snapshot (or delta) at `revision` was taken into the peer set.
pub fn peer_message(snapshot: bool, revision: i64) {
    let m = get();
    if snapshot {
        m.snapshots.inc();
    } else {
        m.deltas.inc();
    }
    m.revision.set(revision);
}

/// The controller link as metrics show it: (connected, address).
pub fn controller_link() -> (bool, Option<String>) {
    let m = get();
    let addr = m.controller_addr.lock().expect("metrics").clone();
    (m.controller_connected.get() == 1, addr)
}

/// What `--metrics-listen` serves.
pub fn endpoints() -> weft_common::http::Endpoints {
    weft_common::http::Endpoints {
        heartbeat: Default::default(),
        registry: get().registry(),
        ready: weft_common::http::ready_fn(|| super::ready::get().check()),
    }
}
