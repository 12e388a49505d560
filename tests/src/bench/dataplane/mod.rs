//! `weft-bench dataplane`: cross-host TCP throughput (iperf3) and ping RTT
//! over three paths of one four-host cluster lab, interleaved per round:
//!
//! - `underlay`: h1's host namespace → h2's underlay address (no weft);
//! - `vxlan`: a namespace on h1 → a namespace on h2 (agents without
//!   `--direct-routing`: VXLAN);
//! - `direct`: a namespace on h3 → a namespace on h4 (both agents with
//!   `--direct-routing`, on one segment: a plain route, no tunnel).
//!
//! Every iperf3 client run and every ping is bounded by a time limit; the
//! servers are killed with the lab.
//!
//! With `WEFT_BENCH_DP_VARIANTS=NAME[,NAME…]` (experiment mode, see the end
//! of this file) every round also measures the three paths with each variant
//! applied by hand to the lab's devices, against the defaults of the same
//! round.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use weft_tests::netns::{command_in, run_with_timeout, SpawnOpts};
use weft_tests::{Host, Lab, LabOpts};

use super::common::{self, median, poll, stats};

const PORT: &str = "5201";
const PINGS: usize = 200;

#[derive(Serialize, Clone)]
struct Path_ {
    mode: &'static str,
    what: String,
    /// Where the client runs.
    from: PathBuf,
    /// Server address.
    to: String,
    /// Where the server runs.
    server_ns: PathBuf,
}

#[derive(Serialize, Default, Clone)]
struct Series {
    mode: &'static str,
    what: String,
    /// Per round, receiver side.
    gbits: Vec<f64>,
    retransmits: Vec<u64>,
    /// Sender's host CPU use as iperf3 reports it (%), per round.
    cpu_sender: Vec<f64>,
    cpu_receiver: Vec<f64>,
    /// Every ping's RTT, all rounds.
    rtt_ms: Vec<f64>,
    ping_lost: usize,
}

pub fn run(rounds: usize, seconds: u64, out: Option<&Path>) -> Result<()> {
    weft_tests::require_root();
    ensure!(rounds > 0 && seconds > 0, "nothing to measure");
    let lab = Lab::try_new(LabOpts::cluster(4, 1))?;
    let mut agents = Vec::new();
    for i in 1..=4 {
        let extra: &[&str] = if i >= 3 { &["--direct-routing"] } else { &[] };
        agents.push(lab.host(i).spawn_agent(extra)?);
    }
    for a in &mut agents {
        a.wait_ready(Duration::from_secs(30))?;
    }
    // The mesh, and the modes this benchmark relies on.
    let mode_of = |h: &Host, peer: &str| -> Option<String> {
        let st = h.try_status().ok()?;
        if st.peers.len() != 3 {
            return None;
        }
        st.peers
            .into_iter()
            .find(|p| p.name == peer)
            .map(|p| p.mode)
    };
    for (a, b, want) in [
        (1, 2, "vxlan"),
        (2, 1, "vxlan"),
        (3, 4, "direct"),
        (4, 3, "direct"),
    ] {
        let (ha, name) = (lab.host(a), format!("h{b}"));
        let got = poll(Duration::from_secs(30), Duration::from_millis(100), || {
            mode_of(ha, &name)
        })
        .with_context(|| format!("h{a} never saw all 3 peers"))?;
        ensure!(got == want, "h{a} sees h{b} as {got}, expected {want}");
    }
    let ep = |h: usize, name: &str| -> Result<(PathBuf, String)> {
        let e: weft_tests::Endpoint = lab
            .host(h)
            .try_weftctl_as(&["ns", "add", name])
            .map_err(anyhow::Error::msg)?;
        Ok((e.netns.into(), e.ip.to_string()))
    };
    let (a, b, c, d) = (
        ep(1, "bench-a")?,
        ep(2, "bench-b")?,
        ep(3, "bench-c")?,
        ep(4, "bench-d")?,
    );
    let paths = [
        Path_ {
            mode: "underlay",
            what: "h1 → h2, host to host on the underlay (no weft)".into(),
            from: lab.host(1).netns.clone(),
            to: lab.host(2).ip.to_string(),
            server_ns: lab.host(2).netns.clone(),
        },
        Path_ {
            mode: "vxlan",
            what: "namespace on h1 → namespace on h2, VXLAN".into(),
            from: a.0.clone(),
            to: b.1.clone(),
            server_ns: b.0.clone(),
        },
        Path_ {
            mode: "direct",
            what: "namespace on h3 → namespace on h4, direct routing".into(),
            from: c.0.clone(),
            to: d.1.clone(),
            server_ns: d.0.clone(),
        },
    ];
    let mut servers = Vec::new();
    for p in &paths {
        ensure!(
            lab.ping(&p.from, &p.to),
            "{}: {} does not answer ping",
            p.mode,
            p.to
        );
        servers.push(lab.spawn(&p.server_ns, &["iperf3", "-s", "-B", &p.to, "-p", PORT]));
        poll(Duration::from_secs(10), Duration::from_millis(50), || {
            let o = lab.exec(&p.server_ns, &["ss", "-Hltn", &format!("sport = :{PORT}")]);
            (!String::from_utf8_lossy(&o.stdout).trim().is_empty()).then_some(())
        })
        .with_context(|| format!("iperf3 server for {} did not listen", p.mode))?;
    }
    let variants = variants_from_env()?;
    let knobs = Knobs {
        lab: &lab,
        endpoints: [a.0.clone(), b.0.clone(), c.0.clone(), d.0.clone()],
        check: (a.0.clone(), b.1.clone()),
    };
    // One block per configuration: the defaults, then each variant (applied
    // before its block, reverted after it).
    let configs: Vec<Option<&Variant>> = std::iter::once(None)
        .chain(variants.iter().map(Some))
        .collect();
    let mut series: Vec<Vec<Series>> = configs
        .iter()
        .map(|_| {
            paths
                .iter()
                .map(|p| Series {
                    mode: p.mode,
                    what: p.what.clone(),
                    ..Default::default()
                })
                .collect()
        })
        .collect();
    for r in 0..rounds {
        // Rotate which configuration goes first, and which path.
        for kc in 0..configs.len() {
            let ci = (r + kc) % configs.len();
            let label = configs[ci].map_or("default", |v| v.name.as_str());
            if let Some(v) = configs[ci] {
                knobs
                    .set(v, v.value)
                    .with_context(|| format!("apply variant {}", v.name))?;
            }
            let measured = measure_block(&paths, &mut series[ci], r, seconds, label);
            if let Some(v) = configs[ci] {
                knobs
                    .set(v, !v.value)
                    .with_context(|| format!("revert variant {}", v.name))?;
            }
            measured?;
        }
    }
    drop(servers);
    print_table(rounds, seconds, &series[0]);
    if configs.len() > 1 {
        print_variants(&configs, &series);
    }
    let raw: Vec<serde_json::Value> = configs
        .iter()
        .zip(&series)
        .map(|(c, s)| {
            serde_json::json!({
                "variant": c.map_or("default", |v| v.name.as_str()),
                "series": s,
            })
        })
        .collect();
    common::write_raw(
        out,
        "dataplane",
        &serde_json::json!({
            "seconds": seconds,
            "rounds": rounds,
            "series": series[0],
            "variants": if configs.len() > 1 { Some(raw) } else { None },
        }),
    )
}

/// One round of one configuration: every path's iperf3 run, then its pings.
fn measure_block(
    paths: &[Path_],
    series: &mut [Series],
    r: usize,
    seconds: u64,
    label: &str,
) -> Result<()> {
    for k in 0..paths.len() {
        let i = (r + k) % paths.len();
        let res = iperf(&paths[i], seconds)
            .with_context(|| format!("round {r}, {label}, {}", paths[i].mode))?;
        eprintln!(
            "round {r}: {label:<14} {:<8} {:6.2} Gbit/s, {} retransmits",
            paths[i].mode, res.0, res.1
        );
        let s = &mut series[i];
        s.gbits.push(res.0);
        s.retransmits.push(res.1);
        s.cpu_sender.push(res.2);
        s.cpu_receiver.push(res.3);
    }
    for k in 0..paths.len() {
        let i = (r + k) % paths.len();
        let (rtts, lost) = ping(&paths[i])?;
        series[i].rtt_ms.extend(rtts);
        series[i].ping_lost += lost;
    }
    Ok(())
}

/// One iperf3 run: (Gbit/s received, retransmits, sender CPU %, receiver CPU %).
fn iperf(p: &Path_, seconds: u64) -> Result<(f64, u64, f64, f64)> {
    let mut c = command_in(
        &p.from,
        "iperf3",
        SpawnOpts {
            own_group: true,
            ..Default::default()
        },
    )?;
    c.args([
        "-c",
        &p.to,
        "-p",
        PORT,
        "-J",
        "--connect-timeout",
        "3000",
        "-t",
    ])
    .arg(seconds.to_string());
    let out = run_with_timeout(&mut c, Duration::from_secs(seconds + 20))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 output is not JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    ensure!(out.status.success(), "iperf3 failed: {v}");
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no sum_received in iperf3 output")?;
    Ok((
        bps / 1e9,
        end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        end["cpu_utilization_percent"]["host_total"]
            .as_f64()
            .unwrap_or(f64::NAN),
        end["cpu_utilization_percent"]["remote_total"]
            .as_f64()
            .unwrap_or(f64::NAN),
    ))
}

/// `PINGS` pings 10 ms apart: each reply's RTT, and how many were lost.
fn ping(p: &Path_) -> Result<(Vec<f64>, usize)> {
    let n = PINGS.to_string();
    let out = weft_tests::netns::exec_in_timeout(
        &p.from,
        &["ping", "-n", "-i", "0.01", "-W", "1", "-c", &n, &p.to],
        Duration::from_secs(30),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    ensure!(!rtts.is_empty(), "{}: no ping replies:\n{text}", p.mode);
    Ok((rtts.clone(), PINGS.saturating_sub(rtts.len())))
}

fn print_table(rounds: usize, seconds: u64, series: &[Series]) {
    common::header();
    println!(
        "{rounds} rounds of {seconds} s per path (one TCP stream, iperf3 defaults), paths interleaved; {PINGS} pings per path and round at 10 ms.\n"
    );
    println!("| path | mode | throughput median | min–max | / underlay (median of rounds) | retransmits (median) | sender CPU | receiver CPU | ping RTT p50 | ping RTT p99 | lost |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let base = &series[0].gbits;
    for s in series {
        let (p50, _, min, max) = stats(&s.gbits);
        let ratios: Vec<f64> = s.gbits.iter().zip(base).map(|(x, b)| x / b).collect();
        let (r50, r99, _, _) = stats(&s.rtt_ms);
        let retr: Vec<f64> = s.retransmits.iter().map(|&r| r as f64).collect();
        println!(
            "| {} | {} | {p50:.2} Gbit/s | {min:.2}–{max:.2} | {:.2} | {:.0} | {:.0} % | {:.0} % | {r50:.3} ms | {r99:.3} ms | {} |",
            s.what,
            s.mode,
            median(&ratios),
            median(&retr),
            median(&s.cpu_sender),
            median(&s.cpu_receiver),
            s.ping_lost
        );
    }
}

// ---------------------------------------------------------------------------
// Experiment mode: `WEFT_BENCH_DP_VARIANTS=veth-gro,no-udpcsum,…` measures,
// in every round, the paths with the agents' settings as they are
// ("default") and then with each variant applied by hand inside the
// simulated hosts (and reverted right after its block), so every variant is
// compared with the defaults of the same round.
//
// The lab's underlay is itself a veth pair per host on a bridge in one
// namespace, all sharing the same CPUs: a GSO packet of 64 KB crosses every
// hop whole (veth and bridges never segment, they pass skbs), so what these
// variants change is the per-packet CPU cost on that path, not wire or NIC
// behaviour (no checksum is ever computed on a veth; NIC offloads do not
// exist here).

/// The environment variable naming the variants to measure.
pub const VARIANTS_ENV: &str = "WEFT_BENCH_DP_VARIANTS";

/// What a variant changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Knob {
    /// `ethtool -K gro` on both ends of every endpoint veth (on a veth,
    /// GRO on also turns on its NAPI receive path).
    VethGro,
    /// GRO as above plus threaded NAPI (`/sys/class/net/DEV/threaded`):
    /// the veth's receive work runs in a kernel thread, on any CPU.
    VethGroThreaded,
    /// The vxlan device with or without outer UDP checksums (can't be
    /// changed in place: re-created by hand, the agent re-adds its entries).
    UdpCsum,
    /// Direct hosts (h3, h4): the namespaces, host veths and bridge at the
    /// underlay MTU (1500) instead of the overlay MTU; the agents are paused
    /// meanwhile, or they would correct it.
    UnderlayMtu,
}

#[derive(Debug, Clone)]
pub struct Variant {
    name: String,
    knob: Knob,
    /// What the variant sets the knob to (the revert sets the opposite).
    value: bool,
}

fn variants_from_env() -> Result<Vec<Variant>> {
    let Ok(list) = std::env::var(VARIANTS_ENV) else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let (value, base) = match name.strip_prefix("no-") {
                Some(b) => (false, b),
                None => (true, name),
            };
            let knob = match base {
                "veth-gro" => Knob::VethGro,
                "veth-gro-threaded" => Knob::VethGroThreaded,
                "udpcsum" => Knob::UdpCsum,
                "underlay-mtu" => Knob::UnderlayMtu,
                other => bail!(
                    "{VARIANTS_ENV}: unknown variant {other:?} (known: veth-gro, veth-gro-threaded, udpcsum, underlay-mtu, each also as no-…)"
                ),
            };
            Ok(Variant {
                name: name.to_string(),
                knob,
                value,
            })
        })
        .collect()
}

/// Where the variants act.
struct Knobs<'a> {
    lab: &'a Lab,
    /// The endpoint namespaces on h1..h4.
    endpoints: [PathBuf; 4],
    /// A path that must answer ping after the vxlan device was re-created
    /// (namespace on h1, address on h2).
    check: (PathBuf, String),
}

/// Runs `sh -c SCRIPT` in `ns`; an error with its stderr if it fails.
fn sh(ns: &Path, script: &str) -> Result<String> {
    let out =
        weft_tests::netns::exec_in_timeout(ns, &["sh", "-c", script], Duration::from_secs(20))?;
    ensure!(
        out.status.success(),
        "`{script}` in {} failed: {}",
        ns.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of the endpoint veths (host side) in a host namespace.
fn host_veths(ns: &Path) -> Result<Vec<String>> {
    Ok(sh(ns, "ip -o link show type veth")?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("wv"))
        .collect())
}

fn pause_agent(h: &Host, pause: bool) -> Result<()> {
    let pid = h.agent_pid().context("agent not running")?;
    let sig = if pause {
        nix::sys::signal::Signal::SIGSTOP
    } else {
        nix::sys::signal::Signal::SIGCONT
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)?;
    Ok(())
}

impl Knobs<'_> {
    /// Every namespace holding an end of an endpoint veth, with that end's
    /// names: (namespace, devices) for hosts in `hosts` (1-based).
    fn veth_ends(&self, hosts: &[usize]) -> Result<Vec<(PathBuf, Vec<String>)>> {
        let mut v = Vec::new();
        for &i in hosts {
            let h = self.lab.host(i);
            v.push((h.netns.clone(), host_veths(&h.netns)?));
            v.push((self.endpoints[i - 1].clone(), vec!["eth0".to_string()]));
        }
        Ok(v)
    }

    fn set(&self, v: &Variant, on: bool) -> Result<()> {
        let all = [1, 2, 3, 4];
        match v.knob {
            Knob::VethGro | Knob::VethGroThreaded => {
                let threaded = v.knob == Knob::VethGroThreaded;
                let gro = if on { "on" } else { "off" };
                for (ns, devs) in self.veth_ends(&all)? {
                    for d in devs {
                        let mut script = String::new();
                        if threaded && !on {
                            script += &format!("echo 0 > /sys/class/net/{d}/threaded; ");
                        }
                        script += &format!("ethtool -K {d} gro {gro}");
                        if threaded && on {
                            script += &format!("; echo 1 > /sys/class/net/{d}/threaded");
                        }
                        // sysfs shows the namespace of whoever mounts it.
                        let script = format!(
                            "unshare -m sh -c 'mount -t sysfs sysfs /sys && {{ {script}; }}'"
                        );
                        sh(&ns, &script)?;
                    }
                }
            }
            Knob::UdpCsum => {
                for i in [1, 2] {
                    let h = self.lab.host(i);
                    // Paused, the agent can neither re-create the device
                    // between the two commands nor (if it wants udpcsum)
                    // correct the variant; it stays paused while the device
                    // lacks udpcsum and resumes once it has it again.
                    pause_agent(h, true)?;
                    sh(&h.netns, &recreate_vxlan_script(h, on)?)?;
                    if on {
                        pause_agent(h, false)?;
                    }
                }
                let (from, to) = &self.check;
                poll(Duration::from_secs(20), Duration::from_millis(100), || {
                    self.lab.ping_once(from, to).then_some(())
                })
                .context("the vxlan path did not come back after re-creating the device")?;
            }
            Knob::UnderlayMtu => {
                let mtu = if on { 1500 } else { 1450 };
                let hosts = [3, 4];
                if on {
                    for i in hosts {
                        pause_agent(self.lab.host(i), true)?;
                    }
                }
                for (ns, mut devs) in self.veth_ends(&hosts)? {
                    if devs.first().is_some_and(|d| d.starts_with("wv")) {
                        devs.push("weft0".into());
                    }
                    for d in devs {
                        sh(&ns, &format!("ip link set dev {d} mtu {mtu}"))?;
                    }
                }
                if !on {
                    for i in hosts {
                        pause_agent(self.lab.host(i), false)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A script that re-creates the host's vxlan device with the same
/// parameters, MAC, MTU, address and entries (neighbours, FDB entries,
/// routes), with or without outer UDP checksums.
fn recreate_vxlan_script(h: &Host, csum: bool) -> Result<String> {
    let j: serde_json::Value = serde_json::from_str(&sh(&h.netns, "ip -j link show weft.1")?)?;
    let mac = j[0]["address"].as_str().context("vxlan mac")?.to_string();
    let mtu = j[0]["mtu"].as_u64().context("vxlan mtu")?;
    let csum = if csum { "udpcsum" } else { "noudpcsum" };
    let mut script = format!(
        "ip link del weft.1 && ip link add weft.1 address {mac} mtu {mtu} type vxlan id 1 local {} dev eth0 dstport 4789 nolearning {csum} && ip link set weft.1 up",
        h.ip
    );
    for l in sh(&h.netns, "ip -o -4 addr show dev weft.1")?.lines() {
        if let Some(a) = l.split_whitespace().skip_while(|w| *w != "inet").nth(1) {
            script += &format!(" && ip addr add {a} dev weft.1");
        }
    }
    for l in sh(&h.netns, "ip neigh show dev weft.1 nud permanent")?.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let [ip, "lladdr", lladdr, ..] = w[..] {
            script +=
                &format!(" && ip neigh replace {ip} lladdr {lladdr} dev weft.1 nud permanent");
        }
    }
    for l in sh(&h.netns, "bridge fdb show dev weft.1")?.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let [m, "dst", dst, ..] = w[..] {
            script += &format!(" && bridge fdb append {m} dev weft.1 dst {dst} self permanent");
        }
    }
    for l in sh(&h.netns, "ip -4 route show dev weft.1 proto 119")?.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let [dst, "via", gw, ..] = w[..] {
            script += &format!(" && ip route replace {dst} via {gw} dev weft.1 proto 119 onlink");
        }
    }
    Ok(script)
}

/// Per variant: ratios to the underlay of the same block, and the change
/// against the defaults of the same round.
fn print_variants(configs: &[Option<&Variant>], series: &[Vec<Series>]) {
    let rounds = series[0][0].gbits.len();
    println!("\nVariants (applied by hand inside the lab's hosts; ratios are medians over rounds of each block's path / the same block's underlay; Δ is the median over rounds of variant ratio − default ratio of the same round, with its min–max).\n");
    println!("| variant | underlay Gbit/s | vxlan / underlay | vxlan Δ (min–max) | direct / underlay | direct Δ (min–max) | RTT p50 underlay / vxlan / direct |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let ratios = |s: &[Series], i: usize| -> Vec<f64> {
        s[i].gbits
            .iter()
            .zip(&s[0].gbits)
            .map(|(x, b)| x / b)
            .collect()
    };
    for (c, s) in configs.iter().zip(series) {
        let mut cells = vec![
            c.map_or("default".to_string(), |v| v.name.clone()),
            format!("{:.2}", median(&s[0].gbits)),
        ];
        for i in 1..s.len() {
            let r = ratios(s, i);
            let base = ratios(&series[0], i);
            let delta: Vec<f64> = r.iter().zip(&base).map(|(x, b)| x - b).collect();
            let (d50, _, dmin, dmax) = stats(&delta);
            cells.push(format!("{:.3}", median(&r)));
            cells.push(if c.is_some() {
                format!("{d50:+.3} ({dmin:+.3}…{dmax:+.3})")
            } else {
                "—".to_string()
            });
        }
        let rtt: Vec<String> = s
            .iter()
            .map(|x| format!("{:.0}", stats(&x.rtt_ms).0 * 1e3))
            .collect();
        cells.push(format!("{} µs", rtt.join(" / ")));
        println!("| {} |", cells.join(" | "));
    }
    println!("\n{rounds} rounds.");
}
