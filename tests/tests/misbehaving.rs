//! Misbehaving clients against one real controller (real etcd, real QUIC
//! with mutual TLS): half-open connections, connections whose socket goes
//! silent, 1,000 connections that never register, a peer stream of ~1,000
//! deltas per second, and a storm of 2,000 agents registering at once.
//!
//! Throughout, a watchdog polls the controller's `/healthz` every 100 ms
//! (each must answer 200 within the watchdog's bound,
//! [`weft_tests::clients::HEALTH_TIMEOUT`]) and samples its RSS (must stay
//! below [`RSS_LIMIT_KB`]); after each phase a real agent still registers
//! and endpoints on two hosts ping each other. Each phase prints what it
//! measured (max health-check latency, peak RSS, registration time, delta
//! rate) on stderr: the figures are weft-bench's to judge, not this test's.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use tokio::time::timeout;
use weft_common::client;
use weft_common::cluster::HostRecord;
use weft_common::wire::{ControllerMsg, PeerChange};
use weft_common::MacAddr;
use weft_controller::server::REGISTER_WAIT;
use weft_controller::store::Store;
use weft_tests::clients::{connect, issue_agents, register_msg, run_in, Health, Watchdog};
use weft_tests::cluster::{
    controller_addr, controller_ip, controller_metrics_addr, controller_sockaddr, etcd_url,
};
use weft_tests::{log_tail, wait_until, Lab, LabOpts};

/// The controller's RSS must stay below this (a debug build, 2,000
/// sessions with their send windows, and a snapshot of 2,000 hosts).
const RSS_LIMIT_KB: u64 = 512 << 10;
/// Simulated agents in the registration storm.
const STORM: usize = 2000;
/// Connections that never register.
const SILENT: usize = 1000;
/// Deltas per second in the peer-stream phase, and for how long.
const DELTA_RATE: usize = 1000;
const DELTA_FOR: Duration = Duration::from_secs(10);

/// Checks and prints what the watchdog saw during `phase`.
fn check(phase: &str, h: &Health) {
    eprintln!(
        "misbehaving {phase}: {} health checks, max latency {:.0} ms, {} failed, controller peak RSS {:.1} MiB",
        h.checks,
        h.max_latency.as_secs_f64() * 1e3,
        h.failures.len(),
        h.peak_rss_kb as f64 / 1024.0
    );
    assert!(h.checks > 0, "{phase}: no health check ran");
    assert!(
        h.failures.is_empty(),
        "{phase}: health checks failed or did not answer within {:?}: {:?}",
        weft_tests::clients::HEALTH_TIMEOUT,
        &h.failures[..h.failures.len().min(5)]
    );
    assert!(
        h.peak_rss_kb > 0 && h.peak_rss_kb < RSS_LIMIT_KB,
        "{phase}: controller RSS {} KiB (limit {RSS_LIMIT_KB} KiB)",
        h.peak_rss_kb
    );
}

/// A TLS client config for agent `name` of the lab PKI.
fn tls_of(pki: &std::path::Path, name: &str) -> quinn::ClientConfig {
    weft_common::tls::client_config(&pki.join(name)).expect("agent TLS config")
}

/// How the half-open and never-registering connections ended.
#[derive(Debug, Default)]
struct Ends {
    /// Closed by the controller in time.
    closed: usize,
    /// Still open at the deadline.
    open: usize,
    /// Handshake failed or was refused.
    refused: usize,
}

impl Ends {
    /// Tallies connection tasks: `None` refused, `Some(closed in time)`.
    async fn of(tasks: Vec<tokio::task::JoinHandle<Option<bool>>>) -> Ends {
        let mut ends = Ends::default();
        for t in tasks {
            match t.await.expect("connection task") {
                None => ends.refused += 1,
                Some(true) => ends.closed += 1,
                Some(false) => ends.open += 1,
            }
        }
        ends
    }
}

/// Starts a QUIC connection to controller c1 (handshake only).
fn connect_c1(ep: &quinn::Endpoint, tls: quinn::ClientConfig) -> quinn::Connecting {
    ep.connect_with(tls, controller_sockaddr(1), &controller_ip(1).to_string())
        .expect("start connecting")
}

#[test]
fn controller_survives_misbehaving_clients() {
    // A /9 in /24s: room for the storm's 2,000 hosts.
    let lab = Lab::new(LabOpts {
        cluster_cidr: Some("10.128.0.0/9".into()),
        ..LabOpts::cluster(2, 1)
    });
    let info = lab.cluster_info();
    let pki = info.pki.clone();
    let ctl_pid = lab.held_pid("controller-c1");
    let host_ns = lab.host(1).netns.clone();

    // Certificates first (not part of any phase).
    let t = Instant::now();
    let sims: Vec<String> = (0..STORM).map(|i| format!("s{i}")).collect();
    let extra: Vec<String> = ["silent0", "silent1", "silent2", "silent3", "deltas"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    issue_agents(&pki, &sims).unwrap();
    issue_agents(&pki, &extra).unwrap();
    eprintln!(
        "misbehaving: {} certificates issued in {:.1} s",
        sims.len() + extra.len(),
        t.elapsed().as_secs_f64()
    );

    let h1 = lab.host(1).start_agent(&[]);
    let watchdog = || {
        Watchdog::start(
            lab.control(),
            controller_metrics_addr(1),
            ctl_pid,
            Duration::from_millis(100),
        )
    };
    let log = lab.held_log("controller-c1");

    // (a) Half-open connections: handshake done and then nothing, a stream
    // opened with half a length header, a frame announced but never
    // finished; and registered agents whose socket goes silent (no close).
    let dog = watchdog();
    let pki2 = pki.clone();
    let ends = run_in(&host_ns, move || async move {
        let tls = tls_of(&pki2, "silent0");
        let ep = client::endpoint().unwrap();
        let mut tasks = Vec::new();
        for i in 0..60 {
            let (ep, tls) = (ep.clone(), tls.clone());
            tasks.push(tokio::spawn(async move {
                let conn = match connect_c1(&ep, tls).await {
                    Ok(c) => c,
                    Err(_) => return None,
                };
                let mut keep = None;
                match i % 3 {
                    0 => {}
                    1 => {
                        let (mut s, r) = conn.open_bi().await.ok()?;
                        s.write_all(&[0, 0]).await.ok()?;
                        keep = Some((s, r));
                    }
                    _ => {
                        let (mut s, r) = conn.open_bi().await.ok()?;
                        s.write_all(&1000u32.to_be_bytes()).await.ok()?;
                        s.write_all(b"{\"type\":\"reg").await.ok()?;
                        keep = Some((s, r));
                    }
                }
                let ended = timeout(REGISTER_WAIT + Duration::from_secs(10), conn.closed()).await;
                drop(keep);
                Some(ended.is_ok())
            }));
        }
        // Registered agents that then vanish without a close: their
        // runtime is dropped with the sessions open (see `run_in`).
        let silent = async {
            let ep2 = client::endpoint().unwrap();
            let mut held = Vec::new();
            for i in 0..4 {
                let name = format!("silent{i}");
                let reg = register_msg(&name, 4000 + i);
                let (s, _) = connect(
                    &ep2,
                    &controller_addr(1),
                    &tls_of(&pki2, &name),
                    &reg,
                    Duration::from_secs(30),
                )
                .await
                .expect("silent agent registers");
                held.push(s);
            }
            // Never dropped normally: the endpoint and sessions die with
            // the runtime, without a CONNECTION_CLOSE.
            std::mem::forget(ep2);
            std::mem::forget(held);
        };
        silent.await;
        let ends = Ends::of(tasks).await;
        ends
    });
    eprintln!("misbehaving half-open: {ends:?}");
    assert_eq!(
        ends.closed, 60,
        "half-open connections the controller did not close: {ends:?}"
    );
    check("half-open", &dog.finish());

    // (b) 1,000 connections that never register (handshake only), while a
    // simulated agent registers among them.
    let dog = watchdog();
    let pki2 = pki.clone();
    let (ends, joined) = run_in(&host_ns, move || async move {
        let tls = tls_of(&pki2, "deltas");
        let eps: Vec<quinn::Endpoint> = (0..SILENT.div_ceil(50))
            .map(|_| client::endpoint().unwrap())
            .collect();
        let mut tasks = Vec::new();
        let opened = Arc::new(AtomicUsize::new(0));
        for i in 0..SILENT {
            let (ep, tls, opened) = (eps[i / 50].clone(), tls.clone(), opened.clone());
            tasks.push(tokio::spawn(async move {
                let conn = match timeout(Duration::from_secs(30), connect_c1(&ep, tls)).await {
                    Ok(Ok(c)) => c,
                    _ => return None,
                };
                opened.fetch_add(1, Ordering::Relaxed);
                let ended = timeout(REGISTER_WAIT + Duration::from_secs(20), conn.closed()).await;
                Some(ended.is_ok())
            }));
        }
        // Once most are open, a real registration still goes through.
        let t = Instant::now();
        while opened.load(Ordering::Relaxed) < SILENT * 9 / 10
            && t.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ep = client::endpoint().unwrap();
        let t = Instant::now();
        let joined = connect(
            &ep,
            &controller_addr(1),
            &tls_of(&pki2, "s0"),
            &register_msg("s0", 0),
            Duration::from_secs(20),
        )
        .await
        .map(|(s, retries)| {
            drop(s);
            (t.elapsed(), retries)
        })
        .map_err(|e| e.to_string());
        let ends = Ends::of(tasks).await;
        (ends, joined)
    });
    eprintln!("misbehaving never-register: {ends:?}; an agent registered meanwhile: {joined:?}");
    // `connect` gives up after 20 s: the bound of this registration.
    joined.expect("an agent registers while 1,000 connections idle");
    assert_eq!(
        ends.open, 0,
        "connections the controller never closed: {ends:?}"
    );
    assert!(ends.closed >= SILENT * 9 / 10, "{ends:?}");
    check("never-register", &dog.finish());
    // The silent registered sessions of (a) are gone by now (idle timeout).
    assert!(
        wait_until(
            weft_common::tls::SERVER_IDLE_TIMEOUT + Duration::from_secs(15),
            || {
                let l = std::fs::read_to_string(&log).unwrap_or_default();
                (0..4).all(|i| {
                    l.lines().any(|x| {
                        x.contains(&format!("host silent{i} ("))
                            && (x.contains("ended session") || x.contains("closed"))
                    })
                })
            }
        ),
        "the controller kept sessions whose socket went silent:\n{}",
        log_tail(&log, 30)
    );

    // (c) A peer stream at ~1,000 deltas/s: hosts join and leave in etcd
    // while a simulated agent and the real agent on h1 follow.
    let dog = watchdog();
    let pki2 = pki.clone();
    let (written, rate, behind) = run_in(&host_ns, move || async move {
        let store = Store::connect(&[etcd_url()], "/weft", Duration::from_secs(5))
            .await
            .expect("etcd");
        let ep = client::endpoint().unwrap();
        let (mut s, _) = connect(
            &ep,
            &controller_addr(1),
            &tls_of(&pki2, "deltas"),
            &register_msg("deltas", 3000),
            Duration::from_secs(20),
        )
        .await
        .expect("the delta reader registers");
        // The reader: applies snapshots and deltas like an agent.
        let view = Arc::new(std::sync::Mutex::new(BTreeMap::<String, HostRecord>::new()));
        let frames = Arc::new(AtomicUsize::new(0));
        let (v2, f2) = (view.clone(), frames.clone());
        let reader = tokio::spawn(async move {
            let mut hb = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    m = s.next() => match m {
                        Ok(Some(ControllerMsg::Snapshot { peers, .. })) => {
                            *v2.lock().unwrap() = peers.into_iter().map(|h| (h.name.clone(), h)).collect();
                            f2.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Some(ControllerMsg::Delta { changes, .. })) => {
                            let mut v = v2.lock().unwrap();
                            for c in changes {
                                match c {
                                    PeerChange::Upsert { host } => { v.insert(host.name.clone(), host); }
                                    PeerChange::Remove { name } => { v.remove(&name); }
                                }
                            }
                            f2.fetch_add(1, Ordering::Relaxed);
                        }
                        other => return format!("session ended: {:?}", other.map(|m| m.map(|m| client::kind(&m)))),
                    },
                    _ = hb.tick() => { if s.heartbeat().await.is_err() { return "heartbeat failed".to_string(); } }
                }
            }
        });
        // The writer: DELTA_RATE changes/s (puts and deletes of hosts
        // d0..d99), 32 in flight.
        // Subnets no host holds, so that the joining hosts conflict with none.
        let used: Vec<Ipv4Network> = store
            .hosts()
            .await
            .unwrap()
            .1
            .values()
            .map(|h| h.subnet)
            .collect();
        let free: Arc<Vec<Ipv4Network>> = Arc::new(
            (0..=255u8)
                .map(|o| Ipv4Network::new(Ipv4Addr::new(10, 244, o, 0), 24).unwrap())
                .filter(|n| !used.contains(n))
                .take(100)
                .collect(),
        );
        let client = weft_tests::cluster::raw_etcd().await.expect("etcd");
        let t0 = Instant::now();
        let total = DELTA_RATE * DELTA_FOR.as_secs() as usize;
        let done = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for w in 0..32 {
            let (mut client, done, free) = (client.clone(), done.clone(), free.clone());
            workers.push(tokio::spawn(async move {
                let mut i = w;
                while i < total {
                    let due = t0 + Duration::from_secs_f64(i as f64 / DELTA_RATE as f64);
                    tokio::time::sleep_until(due.into()).await;
                    let n = i % 100;
                    let key = format!("/weft/hosts/d{n}");
                    if (i / 100) % 2 == 0 {
                        let ip = Ipv4Addr::new(198, 18, 200, n as u8);
                        let rec = HostRecord {
                            name: format!("d{n}"),
                            public_ip: ip,
                            vtep_mac: MacAddr::from_ipv4(ip),
                            subnet: free[n],
                            last_seen: i as u64,
                        };
                        client
                            .put(key, serde_json::to_vec(&rec).unwrap(), None)
                            .await
                            .expect("etcd put");
                    } else {
                        client.delete(key, None).await.expect("etcd delete");
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 32;
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
        let written = done.load(Ordering::Relaxed);
        let rate = written as f64 / t0.elapsed().as_secs_f64();
        // Leave none of them behind.
        let mut c = client.clone();
        for n in 0..100 {
            c.delete(format!("/weft/hosts/d{n}"), None)
                .await
                .expect("etcd delete");
        }
        // The reader catches up with etcd.
        let want: Vec<String> = store.hosts().await.unwrap().1.into_keys().collect();
        let t = Instant::now();
        let behind = loop {
            let have: Vec<String> = view.lock().unwrap().keys().cloned().collect();
            if have == want {
                break None;
            }
            if reader.is_finished() {
                break Some(reader.await.unwrap());
            }
            if t.elapsed() > Duration::from_secs(30) {
                break Some(format!("view {} hosts, etcd {}", have.len(), want.len()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        eprintln!(
            "misbehaving deltas: {} frames received",
            frames.load(Ordering::Relaxed)
        );
        (written, rate, behind)
    });
    eprintln!("misbehaving deltas: {written} changes at {rate:.0}/s; reader {behind:?}");
    let total = DELTA_RATE * DELTA_FOR.as_secs() as usize;
    assert_eq!(written, total, "the writer did not write every change");
    assert_eq!(behind, None, "the connected agent did not keep up");
    // The real agent followed too: a route to every other host in etcd,
    // and to no host that left.
    let want: std::collections::BTreeSet<String> = lab
        .host_list()
        .into_iter()
        .filter(|h| h.name != "h1")
        .map(|h| h.subnet.to_string())
        .collect();
    let routes = || -> std::collections::BTreeSet<String> {
        String::from_utf8_lossy(
            &lab.host(1)
                .exec(&["ip", "-4", "route", "show", "dev", "weft.1"])
                .stdout,
        )
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.ends_with("/24"))
        .map(str::to_string)
        .collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || routes() == want),
        "h1's tunnel routes {:?} differ from the hosts in etcd {want:?}",
        routes()
    );
    assert!(
        h1.is_running(),
        "the real agent died:\n{}",
        log_tail(&lab.host(1).agent_log(), 30)
    );
    check("deltas", &dog.finish());

    // (d) A storm: 2,000 simulated agents register at once.
    let dog = watchdog();
    let pki2 = pki.clone();
    let storm = run_in(&host_ns, move || async move {
        let eps: Vec<quinn::Endpoint> = (0..STORM.div_ceil(25))
            .map(|_| client::endpoint().unwrap())
            .collect();
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..STORM {
            let ep = eps[i / 25].clone();
            let name = format!("s{i}");
            let tls = tls_of(&pki2, &name);
            tasks.push(tokio::spawn(async move {
                let reg = register_msg(&name, i);
                let (mut s, retries) = connect(
                    &ep,
                    &controller_addr(1),
                    &tls,
                    &reg,
                    Duration::from_secs(150),
                )
                .await
                .map_err(|e| e.to_string())?;
                let assigned = t0.elapsed();
                // Read until the snapshot, like an agent.
                match timeout(Duration::from_secs(120), s.next()).await {
                    Ok(Ok(Some(ControllerMsg::Snapshot { .. }))) => {}
                    other => {
                        return Err(format!(
                            "{name}: no snapshot: {:?}",
                            other.map(|r| r.map(|m| m.map(|m| client::kind(&m))))
                        ))
                    }
                }
                Ok::<_, String>((assigned, t0.elapsed(), retries, s))
            }));
        }
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => ok.push(r),
                Err(e) => failed.push(e),
            }
        }
        let assigned = ok.iter().map(|r| r.0).max().unwrap_or_default();
        let snapshots = ok.iter().map(|r| r.1).max().unwrap_or_default();
        let retries: usize = ok.iter().map(|r| r.2).sum();
        for (_, _, _, s) in ok.iter() {
            s.conn.close(0u32.into(), b"done");
        }
        (ok.len(), failed, assigned, snapshots, retries)
    });
    let (n, failed, assigned, snapshots, retries) = storm;
    eprintln!(
        "misbehaving storm: {n} of {STORM} registered, all assigned in {:.1} s, all snapshots in {:.1} s, {retries} retries, {} failed {:?}",
        assigned.as_secs_f64(),
        snapshots.as_secs_f64(),
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(
        n,
        STORM,
        "agents that did not register: {:?}",
        &failed[..failed.len().min(5)]
    );
    check("storm", &dog.finish());

    // Afterwards: a real agent registers and the two hosts' endpoints ping.
    let dog = watchdog();
    let _h2 = lab.host(2).start_agent(&[]);
    let a = lab.host(1).add_endpoint("a");
    let b = lab.host(2).add_endpoint("b");
    assert!(
        wait_until(Duration::from_secs(20), || lab.ping_once(&a.netns, b.ip)),
        "h1's a cannot reach h2's b after the storm"
    );
    check("after", &dog.finish());
}
