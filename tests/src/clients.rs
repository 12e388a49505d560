//! Hand-made controller clients for tests: async client code run inside a
//! simulated host's namespace, simulated agents (real QUIC and certificates,
//! no kernel work), and a watchdog that polls a controller's `/healthz` and
//! RSS while clients misbehave.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weft_common::client::{ClientError, Session};
use weft_common::wire::AgentMsg;
use weft_common::MacAddr;

use crate::netns::in_netns;

/// Runs the async client code `f` inside network namespace `ns`, on a fresh
/// thread that joins it and drives a runtime there (two workers), so every
/// socket it opens lives in that namespace.
pub fn run_in<T, F, Fut>(ns: &Path, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    try_run_in(ns, f).expect("run in the namespace")
}

/// [`run_in`], with an error where the namespace cannot be joined or the
/// runtime cannot be built.
pub fn try_run_in<T, F, Fut>(ns: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    in_netns(ns, move || -> Result<T> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("tokio runtime")?;
        let out = rt.block_on(f());
        // Tasks still running (sessions the test left open) are dropped
        // without a word on the wire: their sockets just go silent.
        rt.shutdown_background();
        Ok(out)
    })
    .with_context(|| format!("join namespace {}", ns.display()))?
}

/// A registration for simulated agent `name` (the `i`-th): a public IP and
/// VTEP MAC of its own, outside the lab's real hosts.
pub fn register_msg(name: &str, i: usize) -> AgentMsg {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i as u32);
    AgentMsg::Register {
        node: name.into(),
        public_ip: ip,
        vtep_mac: MacAddr::from_ipv4(ip),
        subnet: None,
        version: "simulated".into(),
    }
}

/// Issues agent certificates for `names` in `pki` (a few threads at once).
pub fn issue_agents<S: AsRef<str> + Sync>(pki: &Path, names: &[S]) -> Result<()> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8);
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = names
            .chunks(names.len().div_ceil(threads).max(1))
            .map(|chunk| {
                s.spawn(move || -> Result<()> {
                    for n in chunk {
                        weft_controller::pki::issue(
                            pki,
                            n.as_ref(),
                            weft_controller::pki::Role::Agent,
                            &[],
                            false,
                        )?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join()
                .map_err(|_| anyhow::anyhow!("issuing thread panicked"))??;
        }
        Ok(())
    })
}

/// Opens a session like `weft-agent` does, retrying (with backoff) a
/// controller that refuses or times out, for at most `within`. Returns the
/// session and how many attempts failed before it.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    controller: &str,
    tls: &quinn::ClientConfig,
    reg: &AgentMsg,
    within: Duration,
) -> Result<(Session, usize), ClientError> {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(200);
    let mut failed = 0;
    loop {
        match Session::open(endpoint, controller, tls.clone(), reg).await {
            Ok(s) => return Ok((s, failed)),
            Err(e) if start.elapsed() < within && !matches!(e, ClientError::Refused { .. }) => {
                failed += 1;
                // Spread the retries: all of them at once is the storm again.
                let jitter = 0.5 + (start.elapsed().subsec_nanos() % 1000) as f64 / 1000.0;
                tokio::time::sleep(backoff.mul_f64(jitter)).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// `VmRSS` or another `/proc/PID/status` field, in KiB (0 if unreadable).
pub fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Bound of one `/healthz` request of a [`Watchdog`]: an answer later than
/// this (or none) is a failure.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a [`Watchdog`] saw.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// `/healthz` requests made.
    pub checks: usize,
    /// The slowest answer (or failure).
    pub max_latency: Duration,
    /// Requests that failed, timed out ([`HEALTH_TIMEOUT`]) or answered
    /// other than 200, with why.
    pub failures: Vec<String>,
    /// Highest VmRSS seen, KiB.
    pub peak_rss_kb: u64,
}

/// Polls `GET /healthz` on `addr` from namespace `ns` every `period` and
/// samples the RSS of `pid`, until stopped.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Health>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(ns: PathBuf, addr: SocketAddr, pid: u32, period: Duration) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Health::default()));
        let (s, h) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = crate::http::get_in(&ns, addr, "/healthz", HEALTH_TIMEOUT);
                let took = t.elapsed();
                let rss = status_kb(pid, "VmRSS:");
                {
                    let mut h = h.lock().expect("health");
                    h.checks += 1;
                    h.max_latency = h.max_latency.max(took);
                    h.peak_rss_kb = h.peak_rss_kb.max(rss);
                    match r {
                        Ok((200, _)) => {}
                        Ok((code, body)) => h.failures.push(format!("{code}: {body}")),
                        Err(e) => h.failures.push(format!("{e:#}")),
                    }
                }
                std::thread::sleep(period.saturating_sub(took));
            }
        });
        Watchdog {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// What it saw so far.
    pub fn health(&self) -> Health {
        self.seen.lock().expect("health").clone()
    }

    /// Stops polling and returns what it saw.
    pub fn finish(mut self) -> Health {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.health()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
