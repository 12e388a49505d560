//! `weft-bench churn`: does anything grow when namespaces and peers come
//! and go for a long time?
//!
//! One cluster lab (1 controller, 2 hosts, cluster CIDR 10.128.0.0/9, /24
//! subnets); the agents of h1 and h2 run throughout. Two phases, one after
//! the other:
//!
//! - **ns churn**: N cycles of `ns add cK --publish 18080:80/tcp` and
//!   `ns del cK` on h1, each name new, sent straight to the agent's Unix
//!   socket (the JSON-lines protocol of `weft_common::api`, one connection
//!   for the whole phase) instead of spawning `weftctl` twice per cycle.
//!   After each add the namespace must be mounted under h1's netns dir,
//!   after each del gone.
//! - **peer churn**: N cycles of a fake peer `pK` appearing and
//!   disappearing through the real path: its subnet key and host record
//!   are written into the lab's etcd (as `weftctl`/a registration would),
//!   the controller's watch turns them into a delta for both agents; once
//!   both h1 and h2 have the route for its subnet in the kernel (seen by an
//!   `ip -4 monitor route` running in each host namespace) the host is
//!   removed with the controller store's `remove_host` (what `weftctl host
//!   rm` runs), and the cycle ends when both kernels have dropped the route.
//!   `--in-flight W` peers go through this together (added together, then
//!   removed together); every one of them is waited for. Each peer has a
//!   new name, subnet (10.192.0.0/10), public IP (198.19.0.0/16, never sent
//!   to) and VTEP MAC.
//!
//! Every `--every` cycles (between cycles, so nothing is in flight) the
//! benchmark samples the RSS, open fds and threads of both agents and the
//! controller, and counts kernel objects in h1 and h2: links, entries of
//! the agent's netns dir, bind mounts under it, proto-119 routes,
//! neighbours and FDB entries on `weft.1`, nft rules and set/map elements
//! in weft's table, files in the agent's state dir. The counts that weft
//! owns must come back to what they were before the churn (they may take a
//! few seconds: the kernel frees a namespace's devices asynchronously);
//! any that do not are reported as leftovers and fail the run. Memory is
//! reported (start, end, max, slope), not asserted.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ipnetwork::Ipv4Network;
use serde::Serialize;
use weft_common::api::{Request, Response};
use weft_common::cluster::{subnet_key, HostRecord, SubnetRecord};
use weft_common::MacAddr;
use weft_tests::{Host, Lab, LabOpts};

use super::common::{self, host_sh, poll, status_kb};

const CIDR: &str = "10.128.0.0/9";
/// Where the fake peers' subnets come from (inside [`CIDR`], far from the
/// subnets the controller gives h1 and h2).
const FAKE_BASE: Ipv4Addr = Ipv4Addr::new(10, 192, 0, 0);
const FAKE_SUBNETS: usize = 1 << 14;
/// How long one ns add/del, or one batch of peers, may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the kernel may take to come back to the baseline counts.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
const PUBLISH: &str = "18080:80/tcp";

/// Counts of what weft owns (and some it does not) in one host namespace.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
struct Objects {
    links: usize,
    /// Entries of the agent's `--netns-dir`.
    netns_entries: usize,
    /// Mounts under the agent's `--netns-dir` (our mount namespace, which
    /// the agent shares).
    netns_mounts: usize,
    /// Routes with proto 119 (weft's).
    weft_routes: usize,
    neigh_weft: usize,
    fdb_weft: usize,
    nft_rules: usize,
    /// Elements of every set and map in weft's table.
    nft_elems: usize,
    vxlan_peers: usize,
    state_files: usize,
    // Reported only (not weft's alone, or allowed to vary):
    routes_all: usize,
    neigh_all: usize,
    fdb_all: usize,
    state_bytes: u64,
}

impl Objects {
    /// The counts that must come back to their start values.
    fn strict(&self) -> [(&'static str, usize); 10] {
        [
            ("links", self.links),
            ("netns dir entries", self.netns_entries),
            ("netns mounts", self.netns_mounts),
            ("proto-119 routes", self.weft_routes),
            ("neighbours on weft.1", self.neigh_weft),
            ("fdb entries on weft.1", self.fdb_weft),
            ("nft rules", self.nft_rules),
            ("nft set/map elements", self.nft_elems),
            ("vxlan_peers elements", self.vxlan_peers),
            ("state files", self.state_files),
        ]
    }

    fn diff(&self, base: &Objects) -> Vec<String> {
        self.strict()
            .iter()
            .zip(base.strict())
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, b)| format!("{} {} (was {})", a.0, a.1, b.1))
            .collect()
    }
}

#[derive(Serialize, Clone, Debug, Default)]
struct Proc {
    rss_kb: u64,
    fds: usize,
    threads: u64,
}

fn proc_of(pid: i32) -> Proc {
    Proc {
        rss_kb: status_kb(pid, "VmRSS:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0),
        threads: status_kb(pid, "Threads:"),
    }
}

#[derive(Serialize, Clone, Debug)]
struct Sample {
    phase: &'static str,
    /// Cycles done in this phase.
    cycle: usize,
    /// Seconds since the phase started.
    t_s: f64,
    agent_h1: Proc,
    agent_h2: Proc,
    controller: Proc,
    h1: Objects,
    h2: Objects,
    /// How long the strict counts took to come back to the baseline (ms),
    /// or null if they did not within the time limit.
    settle_ms: Option<f64>,
    /// Strict counts that differ from the baseline, if any.
    leftovers: Vec<String>,
}

impl Sample {
    /// For the progress line: how long the counts took to settle, and what
    /// was left over, if anything.
    fn settle_note(&self) -> String {
        let settle = self
            .settle_ms
            .map(|m| format!("{m:.0} ms"))
            .unwrap_or_else(|| "NEVER".into());
        if self.leftovers.is_empty() {
            settle
        } else {
            format!("{settle}, LEFTOVERS {}", self.leftovers.join(", "))
        }
    }
}

#[derive(Serialize)]
struct Phase {
    name: &'static str,
    cycles: usize,
    duration_s: f64,
    cycles_per_s: f64,
    /// Per-cycle latency (ms): ns add+del, or one batch of peers.
    step_ms: Vec<f64>,
}

/// Everything needed to take a sample, cheap to clone into a thread.
#[derive(Clone)]
struct Probe {
    hosts: [Host; 2],
    pids: [i32; 3],
    base: Option<[Objects; 2]>,
}

impl Probe {
    fn objects(&self) -> Result<[Objects; 2]> {
        Ok([
            count_objects(&self.hosts[0])?,
            count_objects(&self.hosts[1])?,
        ])
    }

    fn sample(&self, phase: &'static str, cycle: usize, t0: Instant) -> Result<Sample> {
        let t_s = t0.elapsed().as_secs_f64();
        let start = Instant::now();
        let mut objs = self.objects()?;
        let mut settle_ms = Some(0.0);
        if let Some(base) = &self.base {
            let same =
                |o: &[Objects; 2]| o[0].diff(&base[0]).is_empty() && o[1].diff(&base[1]).is_empty();
            while !same(&objs) {
                if start.elapsed() > SETTLE_TIMEOUT {
                    settle_ms = None;
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
                objs = self.objects()?;
            }
            if settle_ms.is_some() {
                settle_ms = Some(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        let leftovers = match &self.base {
            Some(base) => {
                let mut l: Vec<String> = objs[0]
                    .diff(&base[0])
                    .into_iter()
                    .map(|d| format!("h1: {d}"))
                    .collect();
                l.extend(
                    objs[1]
                        .diff(&base[1])
                        .into_iter()
                        .map(|d| format!("h2: {d}")),
                );
                l
            }
            None => Vec::new(),
        };
        let [h1, h2] = objs;
        Ok(Sample {
            phase,
            cycle,
            t_s,
            agent_h1: proc_of(self.pids[0]),
            agent_h2: proc_of(self.pids[1]),
            controller: proc_of(self.pids[2]),
            h1,
            h2,
            settle_ms,
            leftovers,
        })
    }
}

fn lines(s: &str) -> usize {
    s.lines().filter(|l| !l.trim().is_empty()).count()
}

fn count_objects(h: &Host) -> Result<Objects> {
    let sh = |cmd: &[&str]| host_sh(h, cmd);
    let links = lines(&sh(&["ip", "-o", "link", "show"])?);
    let routes_all = lines(&sh(&["ip", "-4", "route", "show", "table", "all"])?);
    let weft_routes = lines(&sh(&[
        "ip", "-4", "route", "show", "table", "all", "proto", "119",
    ])?);
    let neigh_all = lines(&sh(&["ip", "neigh", "show"])?);
    let fdb_all = lines(&sh(&["bridge", "fdb", "show"])?);
    let has_vxlan = sh(&["ip", "-o", "link", "show", "dev", "weft.1"]).is_ok();
    let (neigh_weft, fdb_weft) = if has_vxlan {
        (
            lines(&sh(&["ip", "neigh", "show", "dev", "weft.1"])?),
            lines(&sh(&["bridge", "fdb", "show", "dev", "weft.1"])?),
        )
    } else {
        (0, 0)
    };
    let (nft_rules, nft_elems, vxlan_peers) = nft_counts(h)?;
    let netns_entries = std::fs::read_dir(&h.netns_dir)
        .map(|d| d.count())
        .unwrap_or(0);
    let prefix = format!("{}/", h.netns_dir.display());
    let netns_mounts = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(4)
                .is_some_and(|m| m.starts_with(&prefix))
        })
        .count();
    let (state_files, state_bytes) = dir_usage(&h.state_dir);
    Ok(Objects {
        links,
        netns_entries,
        netns_mounts,
        weft_routes,
        neigh_weft,
        fdb_weft,
        nft_rules,
        nft_elems,
        vxlan_peers,
        state_files,
        routes_all,
        neigh_all,
        fdb_all,
        state_bytes,
    })
}

/// Every neighbour and every FDB entry of a host (for the report of what
/// changed).
fn listings(h: &Host) -> Result<(Vec<String>, Vec<String>)> {
    let l = |s: String| s.lines().map(|l| l.trim().to_string()).collect::<Vec<_>>();
    // Without the state (REACHABLE, STALE, …), which comes and goes.
    let neigh = host_sh(h, &["ip", "neigh", "show"])?
        .lines()
        .map(|l| match l.trim().rsplit_once(' ') {
            Some((a, _)) => a.to_string(),
            None => l.trim().to_string(),
        })
        .collect();
    Ok((neigh, l(host_sh(h, &["bridge", "fdb", "show"])?)))
}

/// Rules, set/map elements (all sets and maps), and elements of
/// `vxlan_peers` in weft's table (`inet weft`, or `ip weft`).
fn nft_counts(h: &Host) -> Result<(usize, usize, usize)> {
    let out = host_sh(h, &["nft", "-j", "list", "table", "inet", "weft"])
        .or_else(|_| host_sh(h, &["nft", "-j", "list", "table", "ip", "weft"]))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("nft -j output")?;
    let (mut rules, mut elems, mut peers) = (0, 0, 0);
    for o in v["nftables"].as_array().into_iter().flatten() {
        if o.get("rule").is_some() {
            rules += 1;
        }
        for kind in ["set", "map"] {
            if let Some(s) = o.get(kind) {
                let n = s["elem"].as_array().map_or(0, |a| a.len());
                elems += n;
                if s["name"] == "vxlan_peers" {
                    peers += n;
                }
            }
        }
    }
    Ok((rules, elems, peers))
}

/// Files (recursively) and their total size under `dir`.
fn dir_usage(dir: &Path) -> (usize, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) => {
                    files += 1;
                    bytes += m.len();
                }
                Err(_) => {}
            }
        }
    }
    (files, bytes)
}

pub fn run(
    ns_cycles: usize,
    peer_cycles: usize,
    every: usize,
    in_flight: usize,
    out: Option<&Path>,
) -> Result<()> {
    weft_tests::require_root();
    ensure!(ns_cycles <= 1_000_000, "--ns-cycles at most 1000000");
    ensure!(peer_cycles <= 1_000_000, "--peer-cycles at most 1000000");
    ensure!(every > 0, "--every must be at least 1");
    ensure!(
        (1..=256).contains(&in_flight),
        "--in-flight must be 1..=256"
    );
    let lab = Lab::try_new(LabOpts {
        cluster_cidr: Some(CIDR.into()),
        subnet_len: Some(24),
        ..LabOpts::cluster(2, 1)
    })?;
    let (h1, h2) = (lab.host(1).clone(), lab.host(2).clone());
    let mut a1 = h1.spawn_agent(&[])?;
    let mut a2 = h2.spawn_agent(&[])?;
    a1.wait_ready(Duration::from_secs(30))?;
    a2.wait_ready(Duration::from_secs(30))?;
    for h in [&h1, &h2] {
        poll(Duration::from_secs(30), Duration::from_millis(100), || {
            let st = h.weftctl(&["-o", "json", "status"]);
            let v: serde_json::Value = serde_json::from_slice(&st.stdout).ok()?;
            (v["peers"].as_array()?.len() == 1
                && v["controller"]["connected"] == serde_json::Value::Bool(true))
            .then_some(())
        })
        .with_context(|| format!("{} never saw its one peer", h.name))?;
    }
    // Route monitors, started before anything churns.
    let mon = [
        lab.spawn(&h1.netns, &["ip", "-4", "monitor", "route"]),
        lab.spawn(&h2.netns, &["ip", "-4", "monitor", "route"]),
    ];
    std::thread::sleep(Duration::from_millis(300));
    let mut probe = Probe {
        hosts: [h1.clone(), h2.clone()],
        pids: [
            a1.pid() as i32,
            a2.pid() as i32,
            lab.held_pid("controller-c1") as i32,
        ],
        base: None,
    };
    let lists = [listings(&h1)?, listings(&h2)?];
    let t_all = Instant::now();
    let first = probe.sample("start", 0, t_all)?;
    probe.base = Some([first.h1.clone(), first.h2.clone()]);
    eprintln!(
        "start: agent h1 RSS {} kB, controller RSS {} kB; h1 {:?}",
        first.agent_h1.rss_kb, first.controller.rss_kb, first.h1
    );
    let mut samples = vec![first];
    let mut phases = Vec::new();

    if ns_cycles > 0 {
        let (phase, s) = ns_churn(&h1, &probe, ns_cycles, every)?;
        samples.extend(s);
        phases.push(phase);
    }
    if peer_cycles > 0 {
        let logs = [mon[0].log.clone(), mon[1].log.clone()];
        let p = probe.clone();
        let r = weft_tests::in_netns(lab.control(), move || {
            peer_churn(&p, &logs, peer_cycles, every, in_flight)
        })?;
        let (phase, s) = r?;
        samples.extend(s);
        phases.push(phase);
    }
    for (m, h) in mon.iter().zip([&h1, &h2]) {
        ensure!(
            m.is_running(),
            "the route monitor in {} exited; its log:\n{}",
            h.name,
            weft_tests::log_tail(&m.log, 20)
        );
    }
    for (a, h) in [(&a1, &h1), (&a2, &h2)] {
        ensure!(
            a.is_running(),
            "the agent of {} exited; log:\n{}",
            h.name,
            weft_tests::log_tail(&h.agent_log(), 30)
        );
    }
    let last = probe.sample("end", 0, t_all)?;
    samples.push(last);
    for (h, before) in [(&h1, &lists[0]), (&h2, &lists[1])] {
        let now = listings(h)?;
        for (what, a, b) in [
            ("neighbour", &before.0, &now.0),
            ("fdb entry", &before.1, &now.1),
        ] {
            for l in b.iter().filter(|l| !a.contains(*l)) {
                eprintln!("{}: {what} not there at the start: {l}", h.name);
            }
            for l in a.iter().filter(|l| !b.contains(*l)) {
                eprintln!("{}: {what} gone since the start: {l}", h.name);
            }
        }
    }
    print_report(&phases, &samples, in_flight);
    common::write_raw(
        out,
        "churn",
        &serde_json::json!({
            "in_flight": in_flight,
            "every": every,
            "phases": phases,
            "samples": samples,
        }),
    )?;
    let bad: Vec<&Sample> = samples.iter().filter(|s| !s.leftovers.is_empty()).collect();
    if !bad.is_empty() {
        let list: Vec<String> = bad
            .iter()
            .map(|s| format!("{} cycle {}: {}", s.phase, s.cycle, s.leftovers.join(", ")))
            .collect();
        bail!(
            "kernel objects did not come back to their start counts within {SETTLE_TIMEOUT:?}:\n{}",
            list.join("\n")
        );
    }
    drop((a1, a2));
    Ok(())
}

/// One JSON-lines connection to an agent's API socket.
struct Api {
    rd: BufReader<UnixStream>,
    wr: UnixStream,
}

impl Api {
    fn connect(path: &Path) -> Result<Api> {
        let s = UnixStream::connect(path).with_context(|| format!("connect {}", path.display()))?;
        s.set_read_timeout(Some(STEP_TIMEOUT))?;
        s.set_write_timeout(Some(STEP_TIMEOUT))?;
        Ok(Api {
            rd: BufReader::new(s.try_clone()?),
            wr: s,
        })
    }

    fn call(&mut self, req: &Request) -> Result<serde_json::Value> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        self.wr.write_all(&line).context("send to the agent")?;
        let mut reply = String::new();
        self.rd
            .read_line(&mut reply)
            .context("read the agent's reply")?;
        ensure!(!reply.is_empty(), "the agent closed the connection");
        match serde_json::from_str::<Response>(&reply).context("agent reply")? {
            Response::Ok(v) => Ok(v),
            Response::Error(e) => bail!("{e}"),
        }
    }
}

fn ns_churn(h1: &Host, probe: &Probe, cycles: usize, every: usize) -> Result<(Phase, Vec<Sample>)> {
    let mut conn = Some(Api::connect(&h1.socket())?);
    let publish = vec![PUBLISH.parse()?];
    let mut samples = Vec::new();
    let mut step_ms = Vec::with_capacity(cycles);
    let t0 = Instant::now();
    let mut paused = Duration::ZERO;
    for i in 0..cycles {
        let name = format!("c{i}");
        let t = Instant::now();
        let api = conn.as_mut().context("connection closed")?;
        api.call(&Request::NsAdd {
            name: name.clone(),
            ip: None,
            publish: publish.clone(),
        })
        .with_context(|| format!("ns add {name} (cycle {i})"))?;
        ensure!(
            h1.endpoint(&name).exists(),
            "ns add {name} answered but {} does not exist",
            h1.endpoint(&name).display()
        );
        api.call(&Request::NsDel { name: name.clone() })
            .with_context(|| format!("ns del {name} (cycle {i})"))?;
        ensure!(
            !h1.endpoint(&name).exists(),
            "ns del {name} answered but {} still exists",
            h1.endpoint(&name).display()
        );
        step_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if i + 1 == cycles {
            // Our connection is one of the agent's fds: close it before the
            // last sample, so the fd count compares with the start.
            conn = None;
        }
        if (i + 1) % every == 0 || i + 1 == cycles {
            let ts = Instant::now();
            let s = probe.sample("ns", i + 1, t0)?;
            eprintln!(
                "ns {}/{cycles}: {:.1} cycles/s, agent RSS {} kB, fds {}, settle {}",
                i + 1,
                (i + 1) as f64 / (t0.elapsed() - paused).as_secs_f64(),
                s.agent_h1.rss_kb,
                s.agent_h1.fds,
                s.settle_note()
            );
            samples.push(s);
            paused += ts.elapsed();
        }
    }
    let duration = (t0.elapsed() - paused).as_secs_f64();
    Ok((
        Phase {
            name: "ns",
            cycles,
            duration_s: duration,
            cycles_per_s: cycles as f64 / duration,
            step_ms,
        },
        samples,
    ))
}

/// Follows the output of `ip -4 monitor route` in a log file: which
/// subnets' routes exist.
struct RouteWatch {
    log: PathBuf,
    off: u64,
    present: HashSet<Ipv4Network>,
    adds: u64,
    dels: u64,
}

impl RouteWatch {
    fn new(log: PathBuf) -> RouteWatch {
        RouteWatch {
            off: common::log_len(&log),
            log,
            present: HashSet::new(),
            adds: 0,
            dels: 0,
        }
    }

    fn update(&mut self) {
        // Read from the offset only: the log grows by two lines per cycle.
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            use std::io::{Read, Seek, SeekFrom};
            if f.seek(SeekFrom::Start(self.off)).is_ok() {
                let _ = f.take(1 << 20).read_to_string(&mut text);
            }
        }
        // Only whole lines; the rest next time.
        let Some(end) = text.rfind('\n') else { return };
        self.off += end as u64 + 1;
        for l in text[..end].lines() {
            let (del, rest) = match l.strip_prefix("Deleted ") {
                Some(r) => (true, r),
                None => (false, l),
            };
            if !rest.contains("proto 119") {
                continue;
            }
            let Some(net) = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<Ipv4Network>().ok())
            else {
                continue;
            };
            if del {
                self.present.remove(&net);
                self.dels += 1;
            } else {
                self.present.insert(net);
                self.adds += 1;
            }
        }
    }
}

fn fake_peer(k: usize) -> Result<HostRecord> {
    let j = k % FAKE_SUBNETS;
    Ok(HostRecord {
        name: format!("p{k}"),
        public_ip: Ipv4Addr::new(198, 19, ((k / 250) % 256) as u8, (k % 250) as u8 + 1),
        vtep_mac: MacAddr::random_local(),
        subnet: Ipv4Network::new(Ipv4Addr::from(u32::from(FAKE_BASE) + ((j as u32) << 8)), 24)?,
        last_seen: weft_controller::store::now(),
    })
}

/// Runs inside the control namespace (etcd is reachable from there).
fn peer_churn(
    probe: &Probe,
    logs: &[PathBuf; 2],
    cycles: usize,
    every: usize,
    in_flight: usize,
) -> Result<(Phase, Vec<Sample>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let store = rt.block_on(weft_controller::store::Store::connect(
        &[weft_tests::cluster::etcd_url()],
        "/weft",
        Duration::from_secs(10),
    ))?;
    let etcd = rt.block_on(weft_tests::cluster::raw_etcd())?;
    let mut watch = [
        RouteWatch::new(logs[0].clone()),
        RouteWatch::new(logs[1].clone()),
    ];
    let mut samples = Vec::new();
    let mut step_ms = Vec::new();
    let t0 = Instant::now();
    let mut paused = Duration::ZERO;
    let mut done = 0;
    let mut next_sample = every;
    while done < cycles {
        let n = in_flight.min(cycles - done);
        let batch: Vec<HostRecord> = (done..done + n).map(fake_peer).collect::<Result<_>>()?;
        let nets: Vec<Ipv4Network> = batch.iter().map(|h| h.subnet).collect();
        let t = Instant::now();
        rt.block_on(async {
            let mut c = etcd.clone();
            for h in &batch {
                let srec = SubnetRecord {
                    host: Some(h.name.clone()),
                    reserved: false,
                };
                c.put(
                    format!("/weft/subnets/{}", subnet_key(h.subnet)),
                    serde_json::to_vec(&srec)?,
                    None,
                )
                .await?;
                c.put(
                    format!("/weft/hosts/{}", h.name),
                    serde_json::to_vec(h)?,
                    None,
                )
                .await?;
            }
            Ok::<_, anyhow::Error>(())
        })
        .with_context(|| format!("write peers {done}..{}", done + n))?;
        wait_routes(&mut watch, &nets, true)
            .with_context(|| format!("add of peers p{done}..p{}", done + n - 1))?;
        rt.block_on(async {
            for h in &batch {
                store.remove_host(&h.name).await?;
            }
            Ok::<_, anyhow::Error>(())
        })
        .with_context(|| format!("remove peers {done}..{}", done + n))?;
        wait_routes(&mut watch, &nets, false)
            .with_context(|| format!("removal of peers p{done}..p{}", done + n - 1))?;
        step_ms.push(t.elapsed().as_secs_f64() * 1e3);
        done += n;
        if done >= next_sample || done == cycles {
            next_sample = done + every;
            let ts = Instant::now();
            let s = probe.sample("peers", done, t0)?;
            eprintln!(
                "peers {done}/{cycles}: {:.1} cycles/s, agent RSS h1 {} kB h2 {} kB, controller RSS {} kB fds {}, route events h1 +{}/-{}, settle {}",
                done as f64 / (t0.elapsed() - paused).as_secs_f64(),
                s.agent_h1.rss_kb,
                s.agent_h2.rss_kb,
                s.controller.rss_kb,
                s.controller.fds,
                watch[0].adds,
                watch[0].dels,
                s.settle_note()
            );
            samples.push(s);
            paused += ts.elapsed();
        }
    }
    let duration = (t0.elapsed() - paused).as_secs_f64();
    for (w, h) in watch.iter().zip(["h1", "h2"]) {
        ensure!(
            w.adds >= cycles as u64 && w.dels >= cycles as u64,
            "{h}: the route monitor saw {} adds and {} deletions for {cycles} peers",
            w.adds,
            w.dels
        );
    }
    Ok((
        Phase {
            name: "peers",
            cycles,
            duration_s: duration,
            cycles_per_s: cycles as f64 / duration,
            step_ms,
        },
        samples,
    ))
}

/// Waits until both hosts have (`present`) or no longer have the routes of
/// `nets`.
fn wait_routes(watch: &mut [RouteWatch; 2], nets: &[Ipv4Network], present: bool) -> Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let mut missing = Vec::new();
        for (w, h) in watch.iter_mut().zip(["h1", "h2"]) {
            w.update();
            for n in nets {
                if w.present.contains(n) != present {
                    missing.push(format!("{h} {n}"));
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "after {STEP_TIMEOUT:?} the route {} still {}: {}",
                if present { "add" } else { "removal" },
                if present { "missing" } else { "there" },
                missing.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Least-squares slope of `y` over `x`, per 1000 units of `x`.
fn slope(pts: &[(f64, f64)]) -> f64 {
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return f64::NAN;
    }
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return f64::NAN;
    }
    sxy / sxx * 1000.0
}

fn print_report(phases: &[Phase], samples: &[Sample], in_flight: usize) {
    common::header();
    let start = &samples[0];
    let end = &samples[samples.len() - 1];
    println!(
        "A step is one ns add + del, or one batch of {in_flight} peers added, then removed.\n"
    );
    println!("| phase | cycles | duration | cycles/s | step median / p99 |");
    println!("|---|---:|---:|---:|---:|");
    for p in phases {
        let (p50, p99, _, _) = common::stats(&p.step_ms);
        println!(
            "| {} | {} | {:.1} s | {:.1} | {p50:.1} / {p99:.1} ms |",
            if p.name == "ns" {
                "ns add + ns del (h1)".to_string()
            } else {
                format!("peer add + remove (h1, h2), {in_flight} at a time")
            },
            p.cycles,
            p.duration_s,
            p.cycles_per_s,
        );
    }
    println!();
    println!("Memory (VmRSS) and fds; slope = least-squares fit over the phase's samples after its first 10% of cycles, per 1000 cycles.\n");
    println!("| process | phase | RSS start | RSS end | RSS max | slope | fds start → end | threads start → end |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    type Get = fn(&Sample) -> &Proc;
    let procs: [(&str, Get); 3] = [
        ("agent h1", |s| &s.agent_h1),
        ("agent h2", |s| &s.agent_h2),
        ("controller", |s| &s.controller),
    ];
    for p in phases {
        let ss: Vec<&Sample> = samples.iter().filter(|s| s.phase == p.name).collect();
        let Some(last) = ss.last() else { continue };
        // The sample before the phase: the last of the previous phase, or the start.
        let first_idx = samples.iter().position(|s| s.phase == p.name).unwrap_or(1);
        let before = &samples[first_idx - 1];
        for (name, get) in procs {
            let all: Vec<&Proc> = std::iter::once(get(before))
                .chain(ss.iter().map(|s| get(s)))
                .collect();
            let max = all.iter().map(|x| x.rss_kb).max().unwrap_or(0);
            let pts: Vec<(f64, f64)> = ss
                .iter()
                .filter(|s| s.cycle * 10 > p.cycles)
                .map(|s| (s.cycle as f64, get(s).rss_kb as f64))
                .collect();
            println!(
                "| {name} | {} | {:.1} MB | {:.1} MB | {:.1} MB | {:+.1} kB | {} → {} | {} → {} |",
                p.name,
                get(before).rss_kb as f64 / 1024.0,
                get(last).rss_kb as f64 / 1024.0,
                max as f64 / 1024.0,
                slope(&pts),
                get(before).fds,
                get(last).fds,
                get(before).threads,
                get(last).threads,
            );
        }
    }
    println!();
    println!("Kernel objects and state, start → end (strict counts must come back; the others are shown for information).\n");
    println!("| object | h1 start | h1 max | h1 end | h2 start | h2 max | h2 end |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    type Count = fn(&Objects) -> u64;
    let rows: [(&str, Count); 14] = [
        ("links", |o| o.links as u64),
        ("netns dir entries", |o| o.netns_entries as u64),
        ("netns mounts", |o| o.netns_mounts as u64),
        ("proto-119 routes", |o| o.weft_routes as u64),
        ("neighbours on weft.1", |o| o.neigh_weft as u64),
        ("fdb entries on weft.1", |o| o.fdb_weft as u64),
        ("nft rules", |o| o.nft_rules as u64),
        ("nft set/map elements", |o| o.nft_elems as u64),
        ("vxlan_peers elements", |o| o.vxlan_peers as u64),
        ("state files", |o| o.state_files as u64),
        ("(info) IPv4 routes, all tables", |o| o.routes_all as u64),
        ("(info) neighbours, all", |o| o.neigh_all as u64),
        ("(info) fdb entries, all", |o| o.fdb_all as u64),
        ("(info) state bytes", |o| o.state_bytes),
    ];
    for (what, f) in rows {
        let max1 = samples.iter().map(|s| f(&s.h1)).max().unwrap_or(0);
        let max2 = samples.iter().map(|s| f(&s.h2)).max().unwrap_or(0);
        println!(
            "| {what} | {} | {max1} | {} | {} | {max2} | {} |",
            f(&start.h1),
            f(&end.h1),
            f(&start.h2),
            f(&end.h2)
        );
    }
    let settle: Vec<f64> = samples.iter().filter_map(|s| s.settle_ms).collect();
    let never = samples.iter().filter(|s| s.settle_ms.is_none()).count();
    println!(
        "\n{} samples; the kernel came back to the start counts within {:.0} ms at most{}.",
        samples.len(),
        settle.iter().cloned().fold(0.0, f64::max),
        if never > 0 {
            format!(", and **did not** at {never} samples (leftovers)")
        } else {
            String::new()
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_reported() {
        let base = Objects {
            links: 8,
            weft_routes: 1,
            ..Default::default()
        };
        let same = Objects {
            neigh_all: 5,
            state_bytes: 9,
            ..base.clone()
        };
        assert!(same.diff(&base).is_empty(), "informational counts vary");
        let more = Objects {
            links: 9,
            netns_mounts: 1,
            ..base.clone()
        };
        assert_eq!(
            more.diff(&base),
            vec!["links 9 (was 8)", "netns mounts 1 (was 0)"]
        );
    }

    #[test]
    fn slope_per_thousand() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64 * 500.0, 100.0 + i as f64 * 10.0))
            .collect();
        assert!((slope(&pts) - 20.0).abs() < 1e-9);
        assert!(slope(&pts[..1]).is_nan());
    }
}
