//! `weft-bench peers`: one agent programming P peers from cold, and its
//! memory then.
//!
//! A fresh one-host cluster lab per sample (cluster CIDR 10.128.0.0/9, /24
//! subnets). P fake host records (subnets from the start of the CIDR, public
//! IPs in 198.19.0.0/16 — no packet is ever sent to them —, random local
//! VTEP MACs) and their subnet keys are written straight into etcd before
//! the agent starts, so the controller allocates the agent a subnet outside
//! them (once its `peer_update` events show it has all P). Then h1's agent
//! starts as a fresh host; the sample ends at the agent's structured event
//! ([`weft_common::events`]; the lab logs JSON) saying it has programmed
//! all P peers: `overlay_programmed` with `peers` P, or, if the snapshot
//! arrived before the agent had built its devices, the `host_ready` of its
//! first reconcile with `peers` P. Its `subnet_assigned` and
//! `peer_snapshot` events time the steps before. Afterwards the host
//! namespace must hold exactly P proto-119 routes, P neighbours and P FDB
//! entries on weft.1, and P elements in the nft set `vxlan_peers`;
//! otherwise the benchmark fails.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ipnetwork::Ipv4Network;
use serde::Serialize;
use weft_common::cluster::{subnet_key, HostRecord, SubnetRecord};
use weft_common::events::{
    HOST_READY, OVERLAY_PROGRAMMED, PEER_SNAPSHOT, PEER_UPDATE, SUBNET_ASSIGNED,
};
use weft_common::logging::LogFormat;
use weft_common::MacAddr;
use weft_tests::events::{first, EventLog};
use weft_tests::{Host, Lab, LabOpts};

use super::common::{self, host_sh, now, stats, status_kb};

const CIDR: &str = "10.128.0.0/9";
const DONE_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Serialize, Clone)]
struct Sample {
    peers: usize,
    round: usize,
    /// Writing the fake records into etcd (setup, not measured).
    etcd_write_ms: f64,
    /// Agent spawn → all P peers programmed (its event).
    total_ms: f64,
    /// Spawn → the agent has its subnet (`subnet_assigned`).
    assigned_ms: Option<f64>,
    /// Spawn → the agent took the peer snapshot (`peer_snapshot`).
    snapshot_ms: Option<f64>,
    /// What `overlay_programmed` says the batch took (`ms`: kernel
    /// changes only), if the peers came through that path.
    programmed_line_ms: Option<f64>,
    /// Which event marked the end: `overlay_programmed` or `host_ready`.
    path: String,
    /// That event's fields.
    event: serde_json::Map<String, serde_json::Value>,
    rss_kb: u64,
    hwm_kb: u64,
    /// CPU time of the agent process until then (clock ticks, 10 ms).
    cpu_user_ms: f64,
    cpu_sys_ms: f64,
    agent_subnet: String,
}

pub fn run(counts: &[usize], rounds: usize, out: Option<&Path>) -> Result<()> {
    weft_tests::require_root();
    ensure!(!counts.is_empty() && rounds > 0, "nothing to measure");
    ensure!(
        counts.iter().all(|&p| (1..=30_000).contains(&p)),
        "--peers must be 1..=30000 each"
    );
    let mut samples = Vec::new();
    for round in 0..rounds {
        // Alternate the order, so no count always runs on a warm machine.
        let mut order: Vec<usize> = counts.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        for p in order {
            let s = one(p, round)?;
            eprintln!(
                "round {round}: {p} peers in {:.0} ms (snapshot at {:.0} ms, the agent says {}), RSS {:.1} MB, peak {:.1} MB",
                s.total_ms,
                s.snapshot_ms.unwrap_or(f64::NAN),
                s.programmed_line_ms
                    .map(|m| format!("{m:.0} ms"))
                    .unwrap_or_else(|| "-".into()),
                s.rss_kb as f64 / 1024.0,
                s.hwm_kb as f64 / 1024.0
            );
            samples.push(s);
        }
    }
    print_table(counts, &samples);
    common::write_raw(out, "peers", &serde_json::json!({ "samples": samples }))
}

/// Puts P fake hosts (and their subnet keys) into the lab's etcd.
fn write_fake_hosts(lab: &Lab, p: usize) -> Result<()> {
    let cidr: Ipv4Network = CIDR.parse()?;
    let base = u32::from(cidr.network());
    let mut kvs = Vec::with_capacity(2 * p);
    let last_seen = weft_controller::store::now();
    for i in 0..p {
        let subnet = Ipv4Network::new(Ipv4Addr::from(base + ((i as u32) << 8)), 24)?;
        let name = format!("f{i}");
        let rec = HostRecord {
            name: name.clone(),
            public_ip: Ipv4Addr::new(198, 19, (i / 250) as u8, (i % 250) as u8 + 1),
            vtep_mac: MacAddr::random_local(),
            subnet,
            last_seen,
        };
        let srec = SubnetRecord {
            host: Some(name.clone()),
            reserved: false,
        };
        kvs.push((
            format!("/weft/subnets/{}", subnet_key(subnet)),
            serde_json::to_vec(&srec)?,
        ));
        kvs.push((format!("/weft/hosts/{name}"), serde_json::to_vec(&rec)?));
    }
    weft_tests::in_netns(lab.control(), move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let etcd = weft_tests::cluster::raw_etcd().await?;
            // Subnet keys first: the agent must never be given one of them.
            let (subnets, hosts): (Vec<_>, Vec<_>) =
                kvs.into_iter().partition(|(k, _)| k.contains("/subnets/"));
            for batch in [subnets, hosts] {
                let mut set = tokio::task::JoinSet::new();
                for chunk in batch.chunks(batch.len().div_ceil(16).max(1)) {
                    let chunk = chunk.to_vec();
                    let mut c = etcd.clone();
                    set.spawn(async move {
                        for (k, v) in chunk {
                            c.put(k, v, None).await?;
                        }
                        Ok::<_, anyhow::Error>(())
                    });
                }
                while let Some(r) = set.join_next().await {
                    r??;
                }
            }
            Ok(())
        })
    })?
}

fn one(p: usize, round: usize) -> Result<Sample> {
    let lab = Lab::try_new(LabOpts {
        cluster_cidr: Some(CIDR.into()),
        subnet_len: Some(24),
        log_format: LogFormat::Json,
        ..LabOpts::cluster(1, 1)
    })?;
    let h = lab.host(1);
    let t = Instant::now();
    write_fake_hosts(&lab, p)?;
    let etcd_write_ms = t.elapsed().as_secs_f64() * 1e3;
    // The controller's view must hold every fake host before the agent
    // connects, so that the agent gets them in one snapshot.
    let mut ctl = EventLog::from_start(lab.held_log("controller-c1"));
    let mut fakes = std::collections::HashSet::new();
    let mut read = 0;
    ctl.wait(Duration::from_secs(120), |events| {
        for e in &events[read..] {
            if e.is(PEER_UPDATE) && e.has("change", "upsert") {
                if let Some(h) = e.str("host").filter(|h| h.starts_with('f')) {
                    fakes.insert(h);
                }
            }
        }
        read = events.len();
        (fakes.len() >= p).then_some(())
    })
    .with_context(|| {
        format!(
            "the controller's {PEER_UPDATE} events name {} of the {p} fake hosts",
            fakes.len()
        )
    })?;
    std::thread::sleep(Duration::from_millis(500));

    let mut log = EventLog::from_now(h.agent_log());
    let t0 = now();
    let agent = h.spawn_agent(&[])?;
    let pid = agent.pid() as i32;
    let all = |e: &weft_tests::events::Event| {
        (e.is(OVERLAY_PROGRAMMED) || e.is(HOST_READY)) && e.u64("peers") == Some(p as u64)
    };
    let done = log
        .wait(DONE_TIMEOUT, |events| {
            events.iter().find(|e| all(e)).cloned()
        })
        .with_context(|| {
            format!(
                "agent did not log {OVERLAY_PROGRAMMED} or {HOST_READY} with {p} peers within {DONE_TIMEOUT:?}; log:\n{}",
                weft_tests::log_tail(&h.agent_log(), 20)
            )
        })?;
    let rss_kb = status_kb(pid, "VmRSS:");
    let hwm_kb = status_kb(pid, "VmHWM:");
    let (cpu_user_ms, cpu_sys_ms) = common::cpu_ms(pid);
    let since =
        |name: &str| first(log.events(), 0, name, |_| true).map(|(_, e)| (e.time - t0) * 1e3);
    let programmed_line_ms = done
        .is(OVERLAY_PROGRAMMED)
        .then(|| done.f64("ms"))
        .flatten();
    verify(h, p)?;
    let agent_subnet = h.try_status().map_err(anyhow::Error::msg)?.subnet;
    let subnet: Ipv4Network = agent_subnet.parse().context("agent subnet")?;
    ensure!(
        u32::from(subnet.network()) >= u32::from(Ipv4Addr::new(10, 128, 0, 0)) + ((p as u32) << 8),
        "the agent got {subnet}, one of the fake hosts' subnets"
    );
    drop(agent);
    Ok(Sample {
        peers: p,
        round,
        etcd_write_ms,
        total_ms: (done.time - t0) * 1e3,
        assigned_ms: since(SUBNET_ASSIGNED),
        snapshot_ms: since(PEER_SNAPSHOT),
        programmed_line_ms,
        path: done.name.clone(),
        event: done.fields.clone(),
        rss_kb,
        hwm_kb,
        cpu_user_ms,
        cpu_sys_ms,
        agent_subnet,
    })
}

/// The kernel and nft state of the host must hold exactly `p` peers.
fn verify(h: &Host, p: usize) -> Result<()> {
    let routes = host_sh(h, &["ip", "-4", "route", "show", "proto", "119"])?;
    let neigh = host_sh(h, &["ip", "-4", "neigh", "show", "dev", "weft.1"])?;
    let fdb = host_sh(h, &["bridge", "fdb", "show", "dev", "weft.1"])?;
    let set = host_sh(
        h,
        &["nft", "-j", "list", "set", "inet", "weft", "vxlan_peers"],
    )?;
    let set: serde_json::Value = serde_json::from_str(&set).context("nft -j output")?;
    let elems = set["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|o| o["set"]["elem"].as_array().map(|a| a.len()))
        .unwrap_or(0);
    let n_routes = routes.lines().filter(|l| l.contains("dev weft.1")).count();
    let n_neigh = neigh.lines().filter(|l| l.contains("PERMANENT")).count();
    let n_fdb = fdb.lines().filter(|l| l.contains(" dst 198.19.")).count();
    let got = [
        (
            "routes (proto 119 via weft.1)",
            n_routes,
            routes.lines().count(),
        ),
        (
            "permanent neighbours on weft.1",
            n_neigh,
            neigh.lines().count(),
        ),
        ("fdb entries on weft.1", n_fdb, fdb.lines().count()),
        ("vxlan_peers elements", elems, elems),
    ];
    for (what, n, all) in got {
        if n != p || all != p {
            bail!(
                "{} has {n} {what} ({all} lines in all), expected {p}",
                h.name
            );
        }
    }
    Ok(())
}

fn print_table(counts: &[usize], samples: &[Sample]) {
    common::header();
    let rounds = samples.iter().filter(|s| s.peers == counts[0]).count();
    println!(
        "{rounds} rounds per count, a fresh lab each; medians, with min–max over the rounds.\n"
    );
    println!("| peers | spawn → all programmed | min–max | spawn → snapshot received | snapshot → programmed | `overlay_programmed` says | agent CPU user / system | agent RSS | agent peak RSS (VmHWM) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &p in counts {
        let s: Vec<&Sample> = samples.iter().filter(|s| s.peers == p).collect();
        let col = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<f64> {
            s.iter().filter_map(|x| f(x)).collect()
        };
        let total = stats(&col(&|x| Some(x.total_ms)));
        let snap = col(&|x| x.snapshot_ms);
        let after_snap = col(&|x| x.snapshot_ms.map(|sn| x.total_ms - sn));
        let line = col(&|x| x.programmed_line_ms);
        let mb = |v: Vec<f64>| format!("{:.1} MB", common::median(&v) / 1024.0);
        let opt = |v: &[f64]| {
            if v.is_empty() {
                "–".to_string()
            } else {
                format!("{:.0} ms", common::median(v))
            }
        };
        println!(
            "| {p} | {:.0} ms | {:.0}–{:.0} ms | {} | {} | {} | {:.0} / {:.0} ms | {} | {} |",
            total.0,
            total.2,
            total.3,
            opt(&snap),
            opt(&after_snap),
            opt(&line),
            common::median(&col(&|x| Some(x.cpu_user_ms))),
            common::median(&col(&|x| Some(x.cpu_sys_ms))),
            mb(col(&|x| Some(x.rss_kb as f64))),
            mb(col(&|x| Some(x.hwm_kb as f64))),
        );
    }
}
