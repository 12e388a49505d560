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

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use weft_common::client::Session;
use weft_common::wire::{AgentMsg, ControllerMsg, PeerChange};
use weft_common::MacAddr;
use weft_controller::store::Store;
use weft_tests::{Lab, LabOpts};

use super::common::{cpu_ms, header, ms, stats, status_kb, write_raw};

/// Clients per UDP socket: a real agent has its own, and one socket for
/// thousands of handshakes would measure this process's receive buffer.
const PER_SOCKET: usize = 25;
/// How long every client may take to see one change.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the whole registration storm may take.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(180);
/// Agents' heartbeat period (the controller drops a session silent 60 s).
const HEARTBEAT: Duration = Duration::from_secs(10);

#[derive(Serialize, Clone, Default)]
struct Proc {
    controller: String,
    rss_kb: u64,
    hwm_kb: u64,
    /// CPU time (user + system) since the controller started.
    cpu_ms: f64,
}

#[derive(Serialize, Clone, Default)]
struct Phase {
    name: String,
    /// Wall time of the phase.
    wall_ms: f64,
    /// Per controller, at the end of the phase.
    controllers: Vec<Proc>,
    /// CPU used by each controller during the phase.
    cpu_ms: Vec<f64>,
    /// etcd counters: increase during the phase.
    etcd: BTreeMap<String, f64>,
    /// This process (the K clients), at the end of the phase.
    bench_rss_kb: u64,
    /// CPU used by etcd and by this process (the clients) during the phase.
    etcd_cpu_ms: f64,
    bench_cpu_ms: f64,
}

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

/// Where each of `n` controllers is tried first by an agent of this name:
/// the same hash `weft-agent` uses (agent/src/main.rs).
fn first_controller(name: &str, n: usize) -> usize {
    weft_common::name::host_veth_name(name)
        .bytes()
        .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize))
        % n
}

fn jitter() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    0.8 + (n % 1000) as f64 / 1000.0 * 0.4
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

/// etcd's counters that say how much it was asked to write (and read).
fn etcd_metrics(url_host: &str) -> Result<BTreeMap<String, f64>> {
    let mut s = std::net::TcpStream::connect(url_host).context("connect to etcd /metrics")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {url_host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
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

fn diff(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

/// Sampling of the controllers and etcd around a phase.
struct Probe {
    pids: Vec<(String, i32)>,
    etcd: String,
    etcd_pid: i32,
    cpu: Vec<f64>,
    /// etcd's and this process's CPU at the start of the phase.
    other_cpu: (f64, f64),
    counters: BTreeMap<String, f64>,
    start: Instant,
}

impl Probe {
    fn new(pids: Vec<(String, i32)>, etcd: String, etcd_pid: i32) -> Probe {
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

    fn begin(&mut self) {
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

    fn others(&self) -> (f64, f64) {
        let (u, s) = cpu_ms(self.etcd_pid);
        let (bu, bs) = cpu_ms(std::process::id() as i32);
        (u + s, bu + bs)
    }

    /// Ends a phase (and begins the next).
    fn end(&mut self, name: &str) -> Phase {
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

/// What the clients saw: per (upsert?, host name) of every change naming an
/// `x…` host, when each client received it.
type Seen = Arc<Mutex<std::collections::HashMap<(bool, String), Vec<Instant>>>>;

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
        clients(
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

fn register_msg(name: &str, i: usize) -> AgentMsg {
    AgentMsg::Register {
        node: name.to_string(),
        public_ip: std::net::Ipv4Addr::new(198, 18, 1 + (i / 250) as u8, (i % 250) as u8 + 1),
        vtep_mac: MacAddr::random_local(),
        subnet: None,
        version: "bench".into(),
    }
}

/// Retries by cause.
type Causes = Mutex<BTreeMap<String, usize>>;

/// A retry's cause, without the parts that differ per attempt.
fn cause(e: &weft_common::client::ClientError) -> String {
    use weft_common::client::ClientError as E;
    let s = match e {
        E::Timeout(_, d) => format!("timeout after {d:?}"),
        E::Connect(_, m) => format!("connect: {m}"),
        E::Refused(_, m) => format!("refused: {m}"),
        E::Protocol(_, m) => format!("protocol: {m}"),
        other => other.to_string(),
    };
    s.chars()
        .filter(|c| !c.is_ascii_digit())
        .take(100)
        .collect()
}

/// Registers like an agent: starts at the controller its name hashes to,
/// goes round the list on failure, backs off (from 200 ms, doubling,
/// jittered) after each full round.
async fn connect(
    endpoint: &quinn::Endpoint,
    addrs: &[String],
    tls: &quinn::ClientConfig,
    reg: &AgentMsg,
    name: &str,
    retries: &AtomicUsize,
    causes: &Causes,
) -> Result<(Session, usize)> {
    let start = Instant::now();
    let mut next = first_controller(name, addrs.len());
    let mut backoff = Duration::from_millis(200);
    let mut tried = 0;
    loop {
        match Session::open(endpoint, &addrs[next], tls.clone(), reg).await {
            Ok(s) => return Ok((s, next)),
            Err(e) if start.elapsed() < Duration::from_secs(120) => {
                if retries.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("retrying after: {e}");
                }
                *causes.lock().expect("causes").entry(cause(&e)).or_default() += 1;
                next = (next + 1) % addrs.len();
                tried += 1;
                if tried % addrs.len() == 0 {
                    tokio::time::sleep(backoff.mul_f64(jitter())).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads the session like an agent (heartbeats included) and notes when
/// each change naming an `x…` host arrives.
fn drain(
    mut s: Session,
    seen: Seen,
    snap_tx: tokio::sync::mpsc::UnboundedSender<()>,
    dropped: Arc<AtomicUsize>,
) {
    tokio::spawn(async move {
        let mut first = true;
        let mut hb = tokio::time::interval_at(
            tokio::time::Instant::now() + HEARTBEAT.mul_f64(jitter()),
            HEARTBEAT,
        );
        loop {
            tokio::select! {
                // Raw frames: only a delta naming an `x…` host is decoded,
                // so the K clients cost this process little next to the
                // controller they share two cores with.
                m = s.recv.read_frame() => match m {
                    Ok(Some(body)) => {
                        if first {
                            let _ = snap_tx.send(());
                            first = false;
                        }
                        let at = Instant::now();
                        if !body.windows(9).any(|w| w == b"\"name\":\"x") {
                            continue;
                        }
                        if let Ok(ControllerMsg::Delta { changes, .. }) =
                            weft_common::wire::decode::<ControllerMsg>(&body)
                        {
                            let mut seen = seen.lock().expect("seen");
                            for ch in changes {
                                let (up, name) = match ch {
                                    PeerChange::Upsert { host } => (true, host.name),
                                    PeerChange::Remove { name } => (false, name),
                                };
                                if name.starts_with('x') {
                                    seen.entry((up, name)).or_default().push(at);
                                }
                            }
                        }
                    }
                    _ => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                },
                _ = hb.tick() => {
                    if s.heartbeat().await.is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
async fn clients(
    names: Vec<String>,
    extra: Vec<String>,
    addrs: Vec<String>,
    pki_dir: PathBuf,
    pids: Vec<(String, i32)>,
    etcd: String,
    etcd_pid: i32,
    etcd_url: String,
    cert_issue_ms: f64,
) -> Result<Run> {
    let k = names.len();
    let mut tls = Vec::with_capacity(k);
    for name in &names {
        tls.push(weft_common::tls::client_config(&pki_dir.join(name))?);
    }
    let endpoints: Vec<quinn::Endpoint> = (0..k.div_ceil(PER_SOCKET))
        .map(|_| weft_common::client::endpoint())
        .collect::<std::io::Result<_>>()?;
    let mut probe = Probe::new(pids.clone(), etcd.clone(), etcd_pid);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut phases = vec![probe.end("idle")];
    eprintln!(
        "{k} agents registering at once over {} controller(s)…",
        addrs.len()
    );
    let addrs = Arc::new(addrs);
    let seen: Seen = Arc::new(Mutex::new(Default::default()));
    let dropped = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let causes: Arc<Causes> = Arc::default();
    let (snap_tx, mut snap_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(k);
    for (i, (name, tls)) in names.into_iter().zip(tls).enumerate() {
        let endpoint = endpoints[i / PER_SOCKET].clone();
        let addrs = addrs.clone();
        let retries = retries.clone();
        let causes = causes.clone();
        let seen = seen.clone();
        let snap_tx = snap_tx.clone();
        let dropped = dropped.clone();
        tasks.push(tokio::spawn(async move {
            let reg = register_msg(&name, i);
            let start = Instant::now();
            let (s, ctl) = connect(&endpoint, &addrs, &tls, &reg, &name, &retries, &causes).await?;
            let took = start.elapsed();
            let done = t0.elapsed();
            drain(s, seen, snap_tx, dropped);
            Ok::<_, anyhow::Error>((took, done, ctl))
        }));
    }
    drop(snap_tx);
    let mut lat = Vec::new();
    let mut last = Duration::ZERO;
    let mut failures = 0;
    let mut per_controller = vec![0; addrs.len()];
    let deadline = tokio::time::Instant::now() + REGISTER_TIMEOUT;
    for t in tasks {
        match tokio::time::timeout_at(deadline, t).await {
            Ok(Ok(Ok((took, done, ctl)))) => {
                lat.push(ms(took));
                last = last.max(done);
                per_controller[ctl] += 1;
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
        match tokio::time::timeout_at(deadline, snap_rx.recv()).await {
            Ok(Some(())) => snaps += 1,
            _ => break,
        }
    }
    let all_snap = t0.elapsed();
    eprintln!(
        "registered {ok} in {:.2} s, snapshots in {:.2} s ({failures} failed, {} retries)",
        last.as_secs_f64(),
        all_snap.as_secs_f64(),
        retries.load(Ordering::Relaxed)
    );
    for (why, n) in causes.lock().expect("causes").iter() {
        eprintln!("retries: {n} × {why}");
    }
    // Let the fan-out of the last joins settle before reading memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    phases.push(probe.end("register"));

    // Fan-out: one change at a time.
    let store = Store::connect(
        std::slice::from_ref(&etcd_url),
        weft_controller::store::DEFAULT_PREFIX,
        Duration::from_secs(10),
    )
    .await?;
    let x_endpoint = weft_common::client::endpoint()?;
    let mut changes = Vec::new();
    let wait_all = |name: String, up: bool, start: Instant| {
        let seen = seen.clone();
        async move {
            let deadline = Instant::now() + CHANGE_TIMEOUT;
            loop {
                let n = seen
                    .lock()
                    .expect("seen")
                    .get(&(up, name.clone()))
                    .map_or(0, |v| v.len());
                if n >= ok || Instant::now() > deadline {
                    return seen
                        .lock()
                        .expect("seen")
                        .get(&(up, name.clone()))
                        .map(|v| {
                            v.iter()
                                .map(|at| ms(at.saturating_duration_since(start)))
                                .collect()
                        })
                        .unwrap_or_default();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    eprintln!("fan-out: {} joins and removals…", extra.len());
    for (r, name) in extra.iter().enumerate() {
        let tls = weft_common::tls::client_config(&pki_dir.join(name))?;
        let reg = register_msg(name, 60_000 + r);
        let start = Instant::now();
        let (s, _) = connect(&x_endpoint, &addrs, &tls, &reg, name, &retries, &causes).await?;
        let register_ms = ms(start.elapsed());
        let got: Vec<f64> = wait_all(name.clone(), true, start).await;
        changes.push(Change {
            kind: "join".into(),
            host: name.clone(),
            missing: ok.saturating_sub(got.len()),
            latencies_ms: got,
            register_ms: Some(register_ms),
        });
        // The agent goes away, then the operator removes the host.
        s.conn.close(0u32.into(), b"bench");
        drop(s);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        store.remove_host(name).await?;
        let got: Vec<f64> = wait_all(name.clone(), false, start).await;
        changes.push(Change {
            kind: "remove".into(),
            host: name.clone(),
            missing: ok.saturating_sub(got.len()),
            latencies_ms: got,
            register_ms: None,
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    phases.push(probe.end("fan-out"));
    let hosts_in_etcd = store.hosts().await?.1.len();
    Ok(Run {
        agents: k,
        controllers: addrs.len(),
        per_controller,
        cert_issue_ms,
        registered_ms: ms(last),
        snapshots_ms: ms(all_snap),
        register_latencies_ms: lat,
        failures,
        retries: retries.load(Ordering::Relaxed),
        changes,
        dropped: dropped.load(Ordering::Relaxed),
        phases,
        hosts_in_etcd,
    })
}
