//! `weft-bench churn`: does anything grow when namespaces and peers come
//! and go for a long time?
//!
//! One cluster lab (1 controller, 2 hosts, cluster CIDR 10.128.0.0/9, /24
//! subnets); the agents of h1 and h2 run throughout. Two phases, one after
//! the other:
//!
//! - **ns churn**: N cycles of `ns add cK --publish 18080:80/tcp` and
//!   `ns del cK` on h1, each name new, sent straight to the agent's Unix
//!   socket (`weft_common::agent_client`, one connection for the whole
//!   phase) instead of spawning `weftctl` twice per cycle.
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

mod objects;
mod report;
mod routes;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ipnetwork::Ipv4Network;
use weft_common::cluster::{subnet_key, HostRecord, SubnetRecord};
use weft_common::{MacAddr, PortMapping};
use weft_tests::{Host, Lab, LabOpts};

use super::common::{self, poll};
use objects::{listings, Phase, Probe, Sample};
use routes::{wait_routes, RouteWatch};

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
            let st = h.try_status().ok()?;
            (st.peers.len() == 1 && st.controller.connected).then_some(())
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
    report::print_report(&phases, &samples, in_flight);
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

fn ns_churn(h1: &Host, probe: &Probe, cycles: usize, every: usize) -> Result<(Phase, Vec<Sample>)> {
    let mut conn = Some(h1.client().with_timeout(STEP_TIMEOUT));
    let publish: Vec<PortMapping> = vec![PUBLISH.parse()?];
    let mut samples = Vec::new();
    let mut step_ms = Vec::with_capacity(cycles);
    let t0 = Instant::now();
    let mut paused = Duration::ZERO;
    for i in 0..cycles {
        let name = format!("c{i}");
        let t = Instant::now();
        let api = conn.as_mut().context("connection closed")?;
        api.ns_add(&name, None, publish.clone())
            .with_context(|| format!("ns add {name} (cycle {i})"))?;
        ensure!(
            h1.endpoint_netns(&name).exists(),
            "ns add {name} answered but {} does not exist",
            h1.endpoint_netns(&name).display()
        );
        api.ns_del(&name)
            .with_context(|| format!("ns del {name} (cycle {i})"))?;
        ensure!(
            !h1.endpoint_netns(&name).exists(),
            "ns del {name} answered but {} still exists",
            h1.endpoint_netns(&name).display()
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
