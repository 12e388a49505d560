//! The controller's Prometheus metrics (`--metrics-listen`, served by
//! `weft_common::http`). One set per process.

use std::future::Future;
use std::sync::{Arc, LazyLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
pub use weft_common::metrics::GaugeGuard;
use weft_common::metrics::{register, timed};

type Label = [(&'static str, &'static str); 1];

/// etcd operations timed by [`etcd`].
pub const ETCD_OPS: [&str; 6] = [
    "get",
    "txn",
    "lease_grant",
    "lease_revoke",
    "lease_keep_alive",
    "watch",
];

pub struct Metrics {
    pub connected_agents: Gauge,
    pub registrations: Family<Label, Counter>,
    pub allocations: Counter,
    pub lease_expiries: Counter,
    pub etcd_latency: Family<Label, Histogram>,
    pub etcd_errors: Family<Label, Counter>,
    pub fanout_queue: Gauge,
    pub deltas: Counter,
    pub delta_frames: Counter,
    pub snapshots: Counter,
    pub snapshot_waiters: Gauge,
    pub pending: Gauge,
    registry: Arc<Registry>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("weft_controller");
        let connected_agents = register(
            &mut r,
            "connected_agents",
            "Agents with a registered session on this controller",
            Gauge::default(),
        );
        let registrations = register(
            &mut r,
            "registrations",
            "Registrations by result: ok, refused (bad name, certificate mismatch, cluster not initialised, no free subnet) or error (etcd failed)",
            Family::<Label, Counter>::default(),
        );
        for res in ["ok", "refused", "error"] {
            let _ = registrations.get_or_create(&[("result", res)]);
        }
        let allocations = register(
            &mut r,
            "allocations",
            "New subnets handed out by this controller",
            Counter::default(),
        );
        let lease_expiries = register(
            &mut r,
            "lease_expiries",
            "Host leases found gone while a session held them (expired, or revoked by weftctl host rm)",
            Counter::default(),
        );
        let etcd_latency = register(
            &mut r,
            "etcd_request_duration_seconds",
            "etcd request latency by op (get, txn, lease_grant, lease_revoke, lease_keep_alive, watch)",
            Family::<Label, Histogram>::new_with_constructor(
                (|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))) as fn() -> Histogram,
            ),
        );
        let etcd_errors = register(
            &mut r,
            "etcd_errors",
            "Failed etcd requests by op",
            Family::<Label, Counter>::default(),
        );
        for op in ETCD_OPS {
            let _ = etcd_latency.get_or_create(&[("op", op)]);
            let _ = etcd_errors.get_or_create(&[("op", op)]);
        }
        let fanout_queue = register(
            &mut r,
            "fanout_queue_depth",
            "Deltas buffered for the slowest session (fan-out backlog; a session more than 4096 behind is resynced with a snapshot)",
            Gauge::default(),
        );
        let deltas = register(
            &mut r,
            "deltas_sent",
            "Delta frames written to agent sessions",
            Counter::default(),
        );
        let delta_frames = register(
            &mut r,
            "deltas_broadcast",
            "Delta frames produced by the host watch (each goes to every session)",
            Counter::default(),
        );
        let snapshots = register(
            &mut r,
            "snapshots_sent",
            "Peer snapshots written to agent sessions (first ones and resyncs)",
            Counter::default(),
        );
        let snapshot_waiters = register(
            &mut r,
            "snapshot_waiters",
            "Sessions waiting for their turn to receive a snapshot",
            Gauge::default(),
        );
        let pending = register(
            &mut r,
            "pending_connections",
            "Connections between their first packet and their assignment",
            Gauge::default(),
        );
        Metrics {
            connected_agents,
            registrations,
            allocations,
            lease_expiries,
            etcd_latency,
            etcd_errors,
            fanout_queue,
            deltas,
            delta_frames,
            snapshots,
            snapshot_waiters,
            pending,
            registry: Arc::new(r),
        }
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }
}

/// Times one etcd request and counts its failure.
pub async fn etcd<T, E>(op: &'static str, f: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let m = get();
    // Handles, not the families' guards: nothing is locked across the await.
    let latency = m.etcd_latency.get_or_create(&[("op", op)]).clone();
    let errors = m.etcd_errors.get_or_create(&[("op", op)]).clone();
    timed(&latency, &errors, f).await
}

/// How a registration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Assigned a subnet; `allocated`: a new one.
    Ok { allocated: bool },
    /// Refused (bad name, certificate mismatch, cluster not initialised,
    /// no free subnet, the subnet it serves is taken, …).
    Refused,
    /// etcd failed (or holds data weft cannot read).
    Error,
}

/// Counts a registration's outcome.
pub fn registration(outcome: Registration) {
    let res = match outcome {
        Registration::Ok { allocated } => {
            if allocated {
                get().allocations.inc();
            }
            "ok"
        }
        Registration::Refused => "refused",
        Registration::Error => "error",
    };
    get().registrations.get_or_create(&[("result", res)]).inc();
}

/// One connected agent until dropped.
pub fn connected() -> GaugeGuard {
    GaugeGuard::new(&get().connected_agents)
}

/// One session waiting for a snapshot turn until dropped.
pub fn snapshot_waiter() -> GaugeGuard {
    GaugeGuard::new(&get().snapshot_waiters)
}
