//! `weft-bench register`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use weft_common::client::Session;
use weft_common::wire::AgentMsg;
use weft_common::MacAddr;
use weft_controller::pki::{self, Role};
use weft_tests::{Lab, LabOpts};

#[derive(Serialize)]
struct Run {
    agents: usize,
    /// From the first connect to the last assignment.
    total_ms: f64,
    /// Per agent: connect + register until `assigned`.
    latencies_ms: Vec<f64>,
    /// Until every agent has also received its peer snapshot.
    snapshots_ms: f64,
    controller_peak_rss_kb: u64,
    controller_rss_kb: u64,
    failures: usize,
    /// Attempts that timed out or were refused and were retried.
    retries: usize,
}

fn rand_frac() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (n % 1000) as f64 / 1000.0
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn run(counts: &[usize], out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let mut runs = Vec::new();
    for &n in counts {
        runs.push(one(n)?);
    }
    println!("Machine: {}  ", super::machine());
    println!("Command: `{}`\n", super::command_line());
    println!("| agents | all registered | rate | latency median | latency p99 | min–max | all snapshots | controller peak RSS | retries | failures |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &runs {
        let (p50, p99, min, max) = super::stats(&r.latencies_ms);
        println!(
            "| {} | {:.2} s | {:.0}/s | {:.1} ms | {:.1} ms | {:.1}–{:.1} ms | {:.2} s | {:.1} MB | {} | {} |",
            r.agents,
            r.total_ms / 1000.0,
            r.agents as f64 / (r.total_ms / 1000.0),
            p50,
            p99,
            min,
            max,
            r.snapshots_ms / 1000.0,
            r.controller_peak_rss_kb as f64 / 1024.0,
            r.retries,
            r.failures
        );
    }
    let file = out.join("register.json");
    std::fs::write(
        &file,
        serde_json::to_vec_pretty(&serde_json::json!({
            "machine": super::machine(), "command": super::command_line(), "runs": runs
        }))?,
    )?;
    eprintln!("raw samples: {}", file.display());
    Ok(())
}

fn one(n: usize) -> Result<Run> {
    // One simulated host carries every client; the controller and etcd
    // run in the control namespace as in any lab.
    let lab = Lab::try_new(LabOpts {
        cluster_cidr: Some("10.128.0.0/9".into()),
        ..LabOpts::cluster(1, 1)
    })?;
    let pki = lab.cluster_info().pki;
    let names: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
    eprintln!("issuing {n} certificates…");
    for name in &names {
        pki::issue(&pki, name, Role::Agent, &[], false)?;
    }
    let ctl_pid = lab.held_pid("controller-c1");
    let addr = weft_tests::cluster::controller_addr(1);
    let base_rss = status_kb(ctl_pid, "VmRSS:");
    eprintln!("{n} agents registering at once (controller RSS before: {base_rss} kB)…");
    let host_ns = lab.host(1).netns.clone();
    let result = weft_tests::netns::in_netns(
        &host_ns,
        move || -> Result<(f64, f64, Vec<f64>, usize, usize)> {
            let n = names.len();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                // One UDP socket per 25 agents: a real agent has its
                // own, and one socket for a thousand handshakes would
                // measure this process's receive buffer.
                let endpoints: Vec<quinn::Endpoint> = (0..n.div_ceil(25))
                    .map(|_| weft_common::client::endpoint())
                    .collect::<std::io::Result<_>>()?;
                let t0 = Instant::now();
                let (snap_tx, mut snap_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
                let retries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let mut tasks = Vec::new();
                for (i, name) in names.into_iter().enumerate() {
                    let tls = weft_common::tls::client_config(&pki.join(&name))?;
                    let endpoint = endpoints[i / 25].clone();
                    let addr = addr.clone();
                    let snap_tx = snap_tx.clone();
                    let retries = retries.clone();
                    tasks.push(tokio::spawn(async move {
                        let reg = AgentMsg::Register {
                            node: name,
                            public_ip: std::net::Ipv4Addr::new(
                                198,
                                18,
                                1 + (i / 250) as u8,
                                (i % 250) as u8 + 1,
                            ),
                            vtep_mac: MacAddr::random_local(),
                            subnet: None,
                            version: "bench".into(),
                        };
                        // Retry like an agent does (backoff from 200 ms,
                        // doubling, jittered), so a storm is measured the way
                        // it plays out, not as failures.
                        let start = Instant::now();
                        let mut backoff = Duration::from_millis(200);
                        let mut s = loop {
                            match Session::open(&endpoint, &addr, tls.clone(), &reg).await {
                                Ok(s) => break s,
                                Err(e) if start.elapsed() < Duration::from_secs(60) => {
                                    retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    if retries.load(std::sync::atomic::Ordering::Relaxed) < 5 {
                                        eprintln!("retrying after: {e}");
                                    }
                                    let f = 0.8 + rand_frac() * 0.4;
                                    tokio::time::sleep(backoff.mul_f64(f)).await;
                                    backoff = (backoff * 2).min(Duration::from_secs(10));
                                }
                                Err(e) => return Err(e.into()),
                            }
                        };
                        let took = start.elapsed();
                        let done = t0.elapsed();
                        // Drain the stream (snapshot, then deltas) like an
                        // agent, so the controller is never blocked on us.
                        tokio::spawn(async move {
                            let mut first = true;
                            while let Ok(Some(_)) = s.next().await {
                                if first {
                                    let _ = snap_tx.send(());
                                    first = false;
                                }
                            }
                        });
                        Ok::<_, anyhow::Error>((took, done))
                    }));
                }
                drop(snap_tx);
                let mut lat = Vec::new();
                let mut last = Duration::ZERO;
                let mut failures = 0;
                for t in tasks {
                    match tokio::time::timeout(Duration::from_secs(120), t).await {
                        Ok(Ok(Ok((took, done)))) => {
                            lat.push(super::ms(took));
                            last = last.max(done);
                        }
                        Ok(Ok(Err(e))) => {
                            failures += 1;
                            eprintln!("registration failed: {e:#}");
                        }
                        _ => failures += 1,
                    }
                }
                let ok = lat.len();
                let mut snaps = 0;
                while snaps < ok {
                    match tokio::time::timeout(Duration::from_secs(60), snap_rx.recv()).await {
                        Ok(Some(())) => snaps += 1,
                        _ => break,
                    }
                }
                let all_snap = t0.elapsed();
                Ok((
                    super::ms(last),
                    super::ms(all_snap),
                    lat,
                    failures,
                    retries.load(std::sync::atomic::Ordering::Relaxed),
                ))
            })
        },
    )
    .context("run the clients in the lab")??;
    let (total, snaps, lat, failures, retries) = result;
    // Let the fan-out of the last joins settle before reading memory.
    std::thread::sleep(Duration::from_secs(2));
    let run = Run {
        agents: n,
        total_ms: total,
        latencies_ms: lat,
        snapshots_ms: snaps,
        controller_peak_rss_kb: status_kb(ctl_pid, "VmHWM:"),
        controller_rss_kb: status_kb(ctl_pid, "VmRSS:"),
        failures,
        retries,
    };
    let hosts = lab
        .weftctl_etcd_json(&["host", "list"])
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    // Stop the controller the way an operator would (SIGTERM), so tools
    // that report at exit (e.g. a heap profiler wrapped around it via
    // WEFT_BIN_DIR) get to.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ctl_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let stop = Instant::now();
    while std::path::Path::new(&format!("/proc/{ctl_pid}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{ctl_pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
        && stop.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::ensure!(
        hosts == n - failures,
        "etcd holds {hosts} hosts after {} successful registrations",
        n - failures
    );
    Ok(run)
}
