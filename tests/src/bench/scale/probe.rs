//! Sampling the controllers and etcd around each phase of the scale
//! benchmark: their memory and CPU time, and etcd's write counters from
//! its `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::bench::common::{cpu_ms, ms, status_kb};

#[derive(Serialize, Clone, Default)]
pub(super) struct Proc {
    pub(super) controller: String,
    pub(super) rss_kb: u64,
    pub(super) hwm_kb: u64,
    /// CPU time (user + system) since the controller started.
    pub(super) cpu_ms: f64,
}

#[derive(Serialize, Clone, Default)]
pub(super) struct Phase {
    pub(super) name: String,
    /// Wall time of the phase.
    pub(super) wall_ms: f64,
    /// Per controller, at the end of the phase.
    pub(super) controllers: Vec<Proc>,
    /// CPU used by each controller during the phase.
    pub(super) cpu_ms: Vec<f64>,
    /// etcd counters: increase during the phase.
    pub(super) etcd: BTreeMap<String, f64>,
    /// This process (the K clients), at the end of the phase.
    pub(super) bench_rss_kb: u64,
    /// CPU used by etcd and by this process (the clients) during the phase.
    pub(super) etcd_cpu_ms: f64,
    pub(super) bench_cpu_ms: f64,
}

/// etcd's counters that say how much it was asked to write (and read),
/// from its `/metrics` at `addr` (`IP:PORT`).
pub(super) fn etcd_metrics(addr: &str) -> Result<BTreeMap<String, f64>> {
    let addr: SocketAddr = addr.parse().context("etcd metrics address")?;
    let (code, body) = weft_tests::http::get(addr, "/metrics", Duration::from_secs(5))?;
    anyhow::ensure!(code == 200, "GET /metrics from etcd at {addr}: {code}");
    let mut out = BTreeMap::new();
    for line in body.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let wanted = [
            "etcd_server_proposals_committed_total",
            "etcd_mvcc_put_total",
            "etcd_mvcc_delete_total",
            "etcd_mvcc_txn_total",
            "etcd_mvcc_range_total",
            "etcd_debugging_mvcc_put_total",
            "etcd_debugging_mvcc_delete_total",
            "etcd_debugging_mvcc_txn_total",
            "etcd_debugging_mvcc_range_total",
            "etcd_debugging_lease_granted_total",
            "etcd_debugging_lease_revoked_total",
            "etcd_debugging_lease_renewed_total",
        ];
        let name = key.split('{').next().unwrap_or(key);
        let grpc = name == "grpc_server_handled_total";
        if !(wanted.contains(&name) || grpc) {
            continue;
        }
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let key = if grpc {
            // grpc_server_handled_total{grpc_code="OK",grpc_method="Txn",…}
            let method = key
                .split("grpc_method=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?");
            format!("grpc {method}")
        } else {
            name.to_string()
        };
        *out.entry(key).or_insert(0.0) += v;
    }
    Ok(out)
}

pub(super) fn diff(
    after: &BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

/// Sampling of the controllers and etcd around a phase.
pub(super) struct Probe {
    pub(super) pids: Vec<(String, i32)>,
    pub(super) etcd: String,
    pub(super) etcd_pid: i32,
    pub(super) cpu: Vec<f64>,
    /// etcd's and this process's CPU at the start of the phase.
    pub(super) other_cpu: (f64, f64),
    pub(super) counters: BTreeMap<String, f64>,
    pub(super) start: Instant,
}

impl Probe {
    pub(super) fn new(pids: Vec<(String, i32)>, etcd: String, etcd_pid: i32) -> Probe {
        let mut p = Probe {
            pids,
            etcd,
            etcd_pid,
            other_cpu: (0.0, 0.0),
            cpu: Vec::new(),
            counters: BTreeMap::new(),
            start: Instant::now(),
        };
        p.begin();
        p
    }

    pub(super) fn begin(&mut self) {
        self.cpu = self
            .pids
            .iter()
            .map(|(_, pid)| {
                let (u, s) = cpu_ms(*pid);
                u + s
            })
            .collect();
        self.other_cpu = self.others();
        self.counters = etcd_metrics(&self.etcd).unwrap_or_else(|e| {
            eprintln!("etcd metrics: {e:#}");
            BTreeMap::new()
        });
        self.start = Instant::now();
    }

    pub(super) fn others(&self) -> (f64, f64) {
        let (u, s) = cpu_ms(self.etcd_pid);
        let (bu, bs) = cpu_ms(std::process::id() as i32);
        (u + s, bu + bs)
    }

    /// Ends a phase (and begins the next).
    pub(super) fn end(&mut self, name: &str) -> Phase {
        let wall_ms = ms(self.start.elapsed());
        let counters = etcd_metrics(&self.etcd).unwrap_or_default();
        let controllers: Vec<Proc> = self
            .pids
            .iter()
            .map(|(label, pid)| {
                let (u, s) = cpu_ms(*pid);
                Proc {
                    controller: label.clone(),
                    rss_kb: status_kb(*pid, "VmRSS:"),
                    hwm_kb: status_kb(*pid, "VmHWM:"),
                    cpu_ms: u + s,
                }
            })
            .collect();
        let cpu_ms = controllers
            .iter()
            .zip(&self.cpu)
            .map(|(p, b)| p.cpu_ms - b)
            .collect();
        let others = self.others();
        let phase = Phase {
            etcd_cpu_ms: others.0 - self.other_cpu.0,
            bench_cpu_ms: others.1 - self.other_cpu.1,
            name: name.to_string(),
            wall_ms,
            controllers,
            cpu_ms,
            etcd: diff(&counters, &self.counters),
            bench_rss_kb: status_kb(std::process::id() as i32, "VmRSS:"),
        };
        self.begin();
        phase
    }
}
