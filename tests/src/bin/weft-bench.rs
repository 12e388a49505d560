//! weft-bench: measures weft against its peers, side by side, interleaved,
//! on simulated hosts built by the test bed (the root namespace is never
//! touched).
//!
//! `weft-bench attach`: time to create-and-attach a namespace (and to delete
//! it) with `weftctl ns add` vs the CNI reference plugins (`bridge` with
//! `host-local` IPAM, Debian `containernetworking-plugins`), each creating
//! the namespace itself, at several counts of existing endpoints.
//!
//! `weft-bench register`: N in-process agents registering at once.
//!
//! `weft-bench converge`: time until every agent has programmed a host that
//! joins, or is removed (`tests/src/bench/converge.rs`).
//!
//! `weft-bench peers`: one agent programming P peers from cold, and its
//! memory (`tests/src/bench/peers.rs`).
//!
//! `weft-bench dataplane`: TCP throughput and RTT across hosts: underlay vs
//! VXLAN vs direct routing (`tests/src/bench/dataplane.rs`).
//!
//! `weft-bench all --quick`: every one of them as a smoke run.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;
use weft_tests::netns::{command_in, SpawnOpts};
use weft_tests::{bin_path, require_root, Host, Lab, LabOpts};

#[path = "../bench/common.rs"]
mod common;
#[path = "../bench/converge.rs"]
mod converge;
#[path = "../bench/dataplane.rs"]
mod dataplane;
#[path = "../bench/peers.rs"]
mod peers;

const CNI_DIR: &str = "/usr/lib/cni";

#[derive(Parser)]
#[command(
    name = "weft-bench",
    about = "Measure weft against its peers, side by side"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Namespace create-and-attach (and delete): weftctl ns add vs CNI bridge+host-local.
    Attach {
        /// Existing endpoints at which to measure (ascending).
        #[arg(long, value_delimiter = ',', default_value = "1,100,300")]
        counts: Vec<usize>,
        /// Measurements per tool and count.
        #[arg(long, default_value_t = 25)]
        samples: usize,
        /// Where the raw samples (JSON) go.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// Pause between samples, so the kernel's asynchronous cleanup of the
        /// namespaces just deleted does not land on the next measurement.
        #[arg(long, default_value_t = 100)]
        settle_ms: u64,
        /// A smoke run: counts 1,10 and 5 samples.
        #[arg(long)]
        quick: bool,
    },
    /// Registration: N in-process agents (real QUIC, real certificates, no
    /// kernel work) register at once through one controller backed by etcd.
    Register {
        /// Numbers of agents, one run each (a fresh cluster per run).
        #[arg(long, value_delimiter = ',', default_value = "100,1000")]
        agents: Vec<usize>,
        /// Where the raw samples (JSON) go.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// A smoke run: 20 agents.
        #[arg(long)]
        quick: bool,
    },
    /// Convergence: a host joins (fresh) or is removed; time until every
    /// other agent has programmed it.
    Converge {
        /// Hosts in the lab; the last one joins and leaves.
        #[arg(long, default_value_t = 10)]
        hosts: usize,
        /// Join/removal rounds.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Where the raw samples (JSON) go, if anywhere.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A smoke run: 4 hosts, 3 rounds.
        #[arg(long)]
        quick: bool,
    },
    /// Scale of one agent: programming P peers from cold, and its RSS.
    Peers {
        /// Numbers of peers, each measured on a fresh lab.
        #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
        peers: Vec<usize>,
        /// Samples per count (counts interleaved).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Where the raw samples (JSON) go, if anywhere.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A smoke run: 100 and 500 peers, 1 round.
        #[arg(long)]
        quick: bool,
    },
    /// Data plane: TCP throughput (iperf3) and ping RTT, underlay vs VXLAN
    /// vs direct routing, interleaved.
    Dataplane {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Length of each iperf3 run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Where the raw samples (JSON) go, if anywhere.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A smoke run: 1 round of 1 s.
        #[arg(long)]
        quick: bool,
    },
    /// Every benchmark in turn (with --quick: each one's smoke run).
    All {
        /// Where the raw samples (JSON) go.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        #[arg(long)]
        quick: bool,
    },
}

#[derive(Serialize)]
struct Series {
    tool: &'static str,
    op: &'static str,
    existing: usize,
    samples_ms: Vec<f64>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Converge {
            hosts,
            rounds,
            out,
            quick,
        } => {
            let (hosts, rounds) = if quick { (4, 3) } else { (hosts, rounds) };
            converge::run(hosts, rounds, out.as_deref())
        }
        Cmd::Peers {
            peers: counts,
            rounds,
            out,
            quick,
        } => {
            let (counts, rounds) = if quick {
                (vec![100, 500], 1)
            } else {
                (counts, rounds)
            };
            peers::run(&counts, rounds, out.as_deref())
        }
        Cmd::Dataplane {
            rounds,
            seconds,
            out,
            quick,
        } => {
            let (rounds, seconds) = if quick { (1, 1) } else { (rounds, seconds) };
            dataplane::run(rounds, seconds, out.as_deref())
        }
        Cmd::All { out, quick } => {
            let (counts, samples) = if quick {
                (vec![1, 10], 5)
            } else {
                (vec![1, 100, 300], 25)
            };
            attach(&counts, samples, Duration::from_millis(100), &out)?;
            println!();
            register::run(if quick { &[20] } else { &[100, 1000] }, &out)?;
            println!();
            if quick {
                converge::run(4, 3, Some(&out))?;
            } else {
                converge::run(10, 20, Some(&out))?;
            }
            println!();
            if quick {
                peers::run(&[100, 500], 1, Some(&out))?;
            } else {
                peers::run(&[100, 1000, 5000], 3, Some(&out))?;
            }
            println!();
            if quick {
                dataplane::run(1, 1, Some(&out))
            } else {
                dataplane::run(5, 5, Some(&out))
            }
        }
        Cmd::Register { agents, out, quick } => {
            let agents = if quick { vec![20] } else { agents };
            register::run(&agents, &out)
        }
        Cmd::Attach {
            counts,
            samples,
            out,
            settle_ms,
            quick,
        } => {
            let (counts, samples) = if quick {
                (vec![1, 10], 5)
            } else {
                (counts, samples)
            };
            attach(&counts, samples, Duration::from_millis(settle_ms), &out)
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs a command to completion, failing with its stderr.
fn run(mut c: Command, what: &str) -> Result<Duration> {
    let t = Instant::now();
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {what}"))?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(took)
}

struct Weft<'a> {
    host: &'a Host,
}

impl Weft<'_> {
    fn add(&self, name: &str) -> Result<Duration> {
        let mut c = Command::new(bin_path("weftctl"));
        c.arg("--agent-socket")
            .arg(self.host.socket())
            .args(["ns", "add", name])
            .stdout(Stdio::null());
        run(c, &format!("weftctl ns add {name}"))
    }
    fn del(&self, name: &str) -> Result<Duration> {
        let mut c = Command::new(bin_path("weftctl"));
        c.arg("--agent-socket")
            .arg(self.host.socket())
            .args(["ns", "del", name])
            .stdout(Stdio::null());
        run(c, &format!("weftctl ns del {name}"))
    }
}

/// The CNI reference path: create a namespace (`unshare --net=FILE`, the
/// same bind-mount `ip netns add` makes), then `bridge` ADD with
/// `host-local` IPAM; delete is `bridge` DEL, then unmount.
struct Cni<'a> {
    host: &'a Host,
    netns_dir: PathBuf,
    conf: String,
}

impl<'a> Cni<'a> {
    fn new(host: &'a Host, dir: &Path) -> Result<Self> {
        let netns_dir = dir.join("cni-netns");
        fs::create_dir_all(&netns_dir)?;
        let conf = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "weftbench",
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "host-local",
                "subnet": "10.88.0.0/16",
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": dir.join("cni-ipam"),
            }
        })
        .to_string();
        Ok(Cni {
            host,
            netns_dir,
            conf,
        })
    }

    fn plugin(&self, command: &str, name: &str) -> Result<Command> {
        let mut c = command_in(
            &self.host.netns,
            Path::new(CNI_DIR).join("bridge"),
            SpawnOpts::default(),
        )?;
        c.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", name)
            .env("CNI_NETNS", self.netns_dir.join(name))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_DIR);
        Ok(c)
    }

    fn call(&self, command: &str, name: &str) -> Result<()> {
        let mut child = self
            .plugin(command, name)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(self.conf.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "CNI bridge {command} {name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn add(&self, name: &str) -> Result<Duration> {
        let path = self.netns_dir.join(name);
        let t = Instant::now();
        fs::File::create(&path)?;
        let mut c = Command::new("unshare");
        c.arg(format!("--net={}", path.display())).arg("true");
        run(c, "unshare --net")?;
        self.call("ADD", name)?;
        Ok(t.elapsed())
    }

    fn del(&self, name: &str) -> Result<Duration> {
        let path = self.netns_dir.join(name);
        let t = Instant::now();
        self.call("DEL", name)?;
        nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH)?;
        fs::remove_file(&path)?;
        Ok(t.elapsed())
    }
}

fn attach(counts: &[usize], samples: usize, settle: Duration, out: &Path) -> Result<()> {
    require_root();
    if !Path::new(CNI_DIR).join("bridge").exists() {
        bail!("{CNI_DIR}/bridge not found: install containernetworking-plugins (deploy/install-deps.sh)");
    }
    if counts.windows(2).any(|w| w[0] > w[1]) {
        bail!("--counts must be ascending");
    }
    // Two simulated hosts: weft on h1, CNI on h2, so neither sees the other's
    // devices or rules.
    let lab = Lab::new(LabOpts::hosts(2).subnet(1, "10.244.0.0/20"));
    let (h1, h2) = (lab.host(1), lab.host(2));
    let _agent = h1.start_agent(&[]);
    let weft = Weft { host: h1 };
    let cni = Cni::new(h2, &lab.dir)?;
    let mut series = Vec::new();
    let mut existing = 0;
    for &n in counts {
        eprintln!("filling to {n} existing endpoints each…");
        while existing < n {
            weft.add(&format!("fill{existing}"))?;
            cni.add(&format!("fill{existing}"))?;
            existing += 1;
        }
        let mut s = [(); 4].map(|_| Vec::with_capacity(samples));
        for i in 0..samples {
            std::thread::sleep(settle);
            let name = format!("bench{i}");
            // Interleaved, alternating who goes first.
            if i % 2 == 0 {
                s[0].push(ms(weft.add(&name)?));
                s[1].push(ms(cni.add(&name)?));
                s[2].push(ms(weft.del(&name)?));
                s[3].push(ms(cni.del(&name)?));
            } else {
                s[1].push(ms(cni.add(&name)?));
                s[0].push(ms(weft.add(&name)?));
                s[3].push(ms(cni.del(&name)?));
                s[2].push(ms(weft.del(&name)?));
            }
        }
        let [wa, ca, wd, cd] = s;
        for (tool, op, v) in [
            ("weft", "add", wa),
            ("cni-bridge", "add", ca),
            ("weft", "del", wd),
            ("cni-bridge", "del", cd),
        ] {
            series.push(Series {
                tool,
                op,
                existing: n,
                samples_ms: v,
            });
        }
    }
    fs::create_dir_all(out)?;
    let file = out.join("attach.json");
    fs::write(
        &file,
        serde_json::to_vec_pretty(
            &serde_json::json!({ "machine": machine(), "command": command_line(), "series": series }),
        )?,
    )?;
    print_table(&series, counts);
    eprintln!("raw samples: {}", file.display());
    Ok(())
}

mod register {
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
}

fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let q = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.99), s[0], s[s.len() - 1])
}

fn print_table(series: &[Series], counts: &[usize]) {
    println!("Machine: {}  ", machine());
    println!("Command: `{}`\n", command_line());
    println!("| op | existing | weft median | weft p99 | weft min–max | CNI median | CNI p99 | CNI min–max | CNI / weft (median) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for op in ["add", "del"] {
        for &n in counts {
            let get = |tool: &str| {
                series
                    .iter()
                    .find(|s| s.tool == tool && s.op == op && s.existing == n)
                    .map(|s| stats(&s.samples_ms))
            };
            if let (Some(w), Some(c)) = (get("weft"), get("cni-bridge")) {
                println!(
                    "| {op} | {n} | {:.2} ms | {:.2} ms | {:.2}–{:.2} ms | {:.2} ms | {:.2} ms | {:.2}–{:.2} ms | {:.1}× |",
                    w.0, w.1, w.2, w.3, c.0, c.1, c.2, c.3, c.0 / w.0
                );
            }
        }
    }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, Linux {}", kernel.trim())
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("weft-bench {}", args.join(" "))
}
