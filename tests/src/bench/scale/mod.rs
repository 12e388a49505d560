//! `weft-bench scale` (alias `register`): K in-process agents (real QUIC,
//! real certificates, no kernel work) against one or more controllers backed
//! by etcd.
//!
//! Per (K, controllers), on a fresh lab:
//! 1. all K register at once, spread over the controllers the way
//!    `weft-agent` spreads itself (a hash of the node name picks the first
//!    controller; failover goes round from there): time until every one is
//!    assigned, and until every one has its peer snapshot;
//! 2. fan-out: R changes one at a time through the real path (etcd write →
//!    each controller's watch → every session): an extra agent `xN` joins,
//!    then its record is removed as `weftctl host rm` removes it. Every
//!    client timestamps each delta it receives; the latency of a (change,
//!    client) pair is from the start of the change to that client's delta.
//!
//! Around each phase: each controller's RSS (VmRSS, VmHWM) and CPU time, and
//! etcd's write counters from its `/metrics` (raft proposals, mvcc
//! puts/deletes/txns, and gRPC calls by method).
mod clients;
mod probe;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use weft_tests::{Lab, LabOpts};

use super::common::{header, ms, stats, write_raw};
use probe::Phase;

#[derive(Serialize)]
struct Change {
    /// `join` or `remove`.
    kind: String,
    host: String,
    /// Per client that saw it: ms from the change's start.
    latencies_ms: Vec<f64>,
    /// Clients that had not seen it within the timeout.
    missing: usize,
    /// For joins: the joining agent's own registration time.
    register_ms: Option<f64>,
}

#[derive(Serialize)]
struct Run {
    agents: usize,
    controllers: usize,
    /// Agents that registered with each controller.
    per_controller: Vec<usize>,
    cert_issue_ms: f64,
    /// From the first connect to the last assignment.
    registered_ms: f64,
    /// Until every agent has also received its peer snapshot.
    snapshots_ms: f64,
    /// Per agent: connect + register until `assigned`.
    register_latencies_ms: Vec<f64>,
    failures: usize,
    /// Attempts that timed out or were refused and were retried.
    retries: usize,
    changes: Vec<Change>,
    /// Sessions that ended during the run.
    dropped: usize,
    phases: Vec<Phase>,
    hosts_in_etcd: usize,
}

/// Raises RLIMIT_NOFILE to its hard limit (thousands of sockets and
/// certificate files).
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

pub fn run(agents: &[usize], controllers: &[usize], changes: usize, out: &Path) -> Result<()> {
    raise_nofile();
    let mut runs = Vec::new();
    for &k in agents {
        for &c in controllers {
            runs.push(one(k, c, changes)?);
        }
    }
    header();
    println!("| agents | controllers | certs issued | all registered | all snapshots | register p50 / p99 | fan-out p50 | fan-out p99 | slowest change (last client) | controller peak RSS | controller CPU (register / fan-out) | etcd writes (register / fan-out) | retries | failures | dropped |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &runs {
        let (rp50, rp99, _, _) = stats(&r.register_latencies_ms);
        let fan: Vec<f64> = r
            .changes
            .iter()
            .flat_map(|c| c.latencies_ms.iter().copied())
            .collect();
        let (fp50, fp99, _, _) = stats(&fan);
        let last = r
            .changes
            .iter()
            .filter_map(|c| c.latencies_ms.iter().copied().reduce(f64::max))
            .fold(0.0, f64::max);
        let missing: usize = r.changes.iter().map(|c| c.missing).sum();
        let phase = |n: &str| r.phases.iter().find(|p| p.name == n);
        let peak = r
            .phases
            .iter()
            .flat_map(|p| p.controllers.iter().map(|c| c.hwm_kb))
            .max()
            .unwrap_or(0);
        let cpu = |n: &str| {
            phase(n)
                .map(|p| {
                    p.cpu_ms
                        .iter()
                        .map(|c| format!("{:.1}", c / 1000.0))
                        .collect::<Vec<_>>()
                        .join("+")
                })
                .unwrap_or_default()
        };
        let writes = |n: &str| {
            phase(n)
                .and_then(|p| p.etcd.get("etcd_server_proposals_committed_total"))
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "| {} | {} | {:.1} s | {:.2} s | {:.2} s | {:.0} / {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms{} | {:.1} MB | {} s / {} s | {:.0} / {:.0} | {} | {} | {} |",
            r.agents,
            r.controllers,
            r.cert_issue_ms / 1000.0,
            r.registered_ms / 1000.0,
            r.snapshots_ms / 1000.0,
            rp50,
            rp99,
            fp50,
            fp99,
            last,
            if missing > 0 {
                format!(" ({missing} never)")
            } else {
                String::new()
            },
            peak as f64 / 1024.0,
            cpu("register"),
            cpu("fan-out"),
            writes("register"),
            writes("fan-out"),
            r.retries,
            r.failures,
            r.dropped,
        );
    }
    println!();
    println!("etcd writes = raft proposals committed (every put, delete, txn, lease grant and revoke). Controller CPU per controller, summed with +.");
    for r in &runs {
        for p in &r.phases {
            let rpc: Vec<String> = p
                .etcd
                .iter()
                .filter_map(|(k, v)| k.strip_prefix("grpc ").map(|m| format!("{m} {v:.0}")))
                .collect();
            println!(
                "- K={} C={} {}: {:.1} s; CPU controllers {} s, etcd {:.1} s, clients {:.1} s; RSS {}; etcd calls: {}",
                r.agents,
                r.controllers,
                p.name,
                p.wall_ms / 1000.0,
                p.cpu_ms
                    .iter()
                    .map(|c| format!("{:.1}", c / 1000.0))
                    .collect::<Vec<_>>()
                    .join("+"),
                p.etcd_cpu_ms / 1000.0,
                p.bench_cpu_ms / 1000.0,
                p.controllers
                    .iter()
                    .map(|c| format!(
                        "{} {:.0}/{:.0} MB",
                        c.controller,
                        c.rss_kb as f64 / 1024.0,
                        c.hwm_kb as f64 / 1024.0
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
                rpc.join(", ")
            );
        }
    }
    write_raw(Some(out), "scale", &serde_json::json!({ "runs": runs }))
}

fn one(k: usize, c: usize, changes: usize) -> Result<Run> {
    let lab = Lab::try_new(LabOpts {
        cluster_cidr: Some("10.128.0.0/9".into()),
        ..LabOpts::cluster(1, c)
    })?;
    let pki_dir = lab.cluster_info().pki;
    let names: Vec<String> = (0..k).map(|i| format!("b{i}")).collect();
    let extra: Vec<String> = (0..changes).map(|i| format!("x{i}")).collect();
    eprintln!("K={k} C={c}: issuing {} certificates…", k + changes);
    let t = Instant::now();
    let all: Vec<&String> = names.iter().chain(&extra).collect();
    weft_tests::clients::issue_agents(&pki_dir, &all)?;
    let cert_issue_ms = ms(t.elapsed());
    let pids: Vec<(String, i32)> = (1..=c)
        .map(|j| {
            let l = format!("controller-c{j}");
            let pid = lab.held_pid(&l) as i32;
            (format!("c{j}"), pid)
        })
        .collect();
    let addrs = lab.cluster_info().controllers;
    let etcd = format!("{}:2379", weft_tests::cluster::ETCD_IP);
    let etcd_url = weft_tests::cluster::etcd_url();
    let host_ns = lab.host(1).netns.clone();
    let ctl_pids = pids.clone();
    let etcd_pid = lab.held_pid("etcd") as i32;
    let mut run = weft_tests::clients::try_run_in(&host_ns, move || {
        clients::clients(
            names,
            extra,
            addrs,
            pki_dir,
            pids,
            etcd,
            etcd_pid,
            etcd_url,
            cert_issue_ms,
        )
    })
    .context("run the clients in the lab")??;
    run.controllers = c;
    let fan: Vec<f64> = run
        .changes
        .iter()
        .flat_map(|c| c.latencies_ms.iter().copied())
        .collect();
    let (f50, f99, _, _) = stats(&fan);
    eprintln!(
        "K={k} C={c}: registered in {:.2} s, snapshots in {:.2} s, fan-out p50 {f50:.0} ms p99 {f99:.0} ms, controller peak RSS {} MB, {} failures, {} retries, {} dropped",
        run.registered_ms / 1000.0,
        run.snapshots_ms / 1000.0,
        run.phases
            .iter()
            .flat_map(|p| p.controllers.iter().map(|c| c.hwm_kb / 1024))
            .max()
            .unwrap_or(0),
        run.failures,
        run.retries,
        run.dropped
    );
    // Stop the controllers the way an operator would (SIGTERM), so tools
    // that report at exit (e.g. a heap profiler wrapped around one via
    // WEFT_BIN_DIR) get to.
    for (_, pid) in &ctl_pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let stop = Instant::now();
    for (_, pid) in &ctl_pids {
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z "))
            && stop.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    anyhow::ensure!(
        run.hosts_in_etcd == k - run.failures,
        "etcd holds {} hosts after {} successful registrations",
        run.hosts_in_etcd,
        k - run.failures
    );
    Ok(run)
}
