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
//! With `WEFT_BENCH_DP_VARIANTS=NAME[,NAME…]` (experiment mode,
//! [`variants`]) every round also measures the three paths with each
//! variant applied by hand to the lab's devices, against the defaults of
//! the same round.

mod variants;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use weft_tests::netns::{command_in, run_with_timeout, SpawnOpts};
use weft_tests::{Host, Lab, LabOpts};

use super::common::{self, median, poll, stats};
use variants::{print_variants, variants_from_env, Knobs, Variant};

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
