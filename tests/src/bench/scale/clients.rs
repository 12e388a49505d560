//! The scale benchmark's K in-process agents: they register the way
//! `weft-agent` does (first controller by a hash of the name, failover
//! round the list, backoff), read their sessions like agents (heartbeats
//! included), and time each change of an `x…` host they receive; then the
//! fan-out phase, one change at a time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use weft_common::client::Session;
use weft_common::wire::{AgentMsg, ControllerMsg, PeerChange};
use weft_common::MacAddr;
use weft_controller::store::Store;

use super::probe::Probe;
use super::{Change, Run};
use crate::bench::common::ms;

/// Clients per UDP socket: a real agent has its own, and one socket for
/// thousands of handshakes would measure this process's receive buffer.
const PER_SOCKET: usize = 25;
/// How long every client may take to see one change.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the whole registration storm may take.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(180);
/// Agents' heartbeat period (the controller drops a session silent 60 s).
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Where each of `n` controllers is tried first by an agent of this name:
/// the same hash `weft-agent` uses (agent/src/main.rs).
pub(super) fn first_controller(name: &str, n: usize) -> usize {
    weft_common::name::host_veth_name(name)
        .bytes()
        .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize))
        % n
}

pub(super) fn jitter() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    0.8 + (n % 1000) as f64 / 1000.0 * 0.4
}

/// What the clients saw: per (upsert?, host name) of every change naming an
/// `x…` host, when each client received it.
pub(super) type Seen = Arc<Mutex<std::collections::HashMap<(bool, String), Vec<Instant>>>>;

pub(super) fn register_msg(name: &str, i: usize) -> AgentMsg {
    AgentMsg::Register {
        node: name.to_string(),
        public_ip: std::net::Ipv4Addr::new(198, 18, 1 + (i / 250) as u8, (i % 250) as u8 + 1),
        vtep_mac: MacAddr::random_local(),
        subnet: None,
        version: "bench".into(),
    }
}

/// Retries by cause.
pub(super) type Causes = Mutex<BTreeMap<String, usize>>;

/// A retry's cause, without the parts that differ per attempt.
pub(super) fn cause(e: &weft_common::client::ClientError) -> String {
    use weft_common::client::ClientError as E;
    let s = match e {
        E::Timeout(_, d) => format!("timeout after {d:?}"),
        E::Connect { message: m, .. } => format!("connect: {m}"),
        E::Refused { message: m, .. } => format!("refused: {m}"),
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
pub(super) async fn connect(
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
pub(super) fn drain(
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
pub(super) async fn clients(
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
