//! `weft-bench converge`: how long after a host joins (or is removed) every
//! other agent has programmed its route.
//!
//! One cluster lab of N hosts and one controller, logging JSON. The agents
//! of h1…h(N-1) run throughout. Each round starts the last host's agent as
//! a fresh host (state directory wiped, its devices and nft table removed),
//! then reads the other agents' structured events
//! ([`weft_common::events`]): an agent is done at its first
//! `overlay_programmed` after its `peer_change` with `peer` hN and `change`
//! `joined` (both carry a wall-clock timestamp; same machine clock). Join
//! convergence is from the agent's spawn to the last of these. Then the
//! agent is stopped (SIGTERM), `weftctl host rm hN` runs, and removal
//! convergence is from that command's start to the last `overlay_programmed`
//! after the `peer_change` of hN `left`. The controller's `host_registered`
//! and `peer_update` (`upsert`, `remove`) events of hN time its part.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use weft_common::events::{HOST_REGISTERED, OVERLAY_PROGRAMMED, PEER_CHANGE, PEER_UPDATE};
use weft_common::logging::LogFormat;
use weft_tests::events::{first, Event, EventLog};
use weft_tests::{Lab, LabOpts};

use super::common::{self, now, poll, stats};

/// How long one join or removal may take before the round fails.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Serialize, Default)]
struct Round {
    subnet: String,
    /// Spawn of the joining agent → last other agent programmed.
    join_ms: f64,
    /// Spawn → the joining agent answers on its socket.
    ready_ms: f64,
    /// Spawn → the controller's `host_registered` event.
    registered_ms: f64,
    /// Spawn → the controller broadcast the new peer (`peer_update`
    /// `upsert`, after its 20 ms batch window).
    broadcast_ms: f64,
    /// Spawn → the first other agent programmed.
    join_first_ms: f64,
    /// Per other agent: spawn → its `overlay_programmed` event.
    join_each_ms: Vec<f64>,
    /// Per other agent: its `peer_change` (`joined`) → its
    /// `overlay_programmed`.
    join_program_ms: Vec<f64>,
    /// `weftctl host rm` start → last other agent programmed.
    remove_ms: f64,
    remove_first_ms: f64,
    remove_each_ms: Vec<f64>,
    /// `weftctl host rm` start → the controller broadcast the removal
    /// (`peer_update` `remove`).
    remove_broadcast_ms: f64,
    /// The `weftctl host rm` command alone.
    host_rm_cmd_ms: f64,
}

pub fn run(hosts: usize, rounds: usize, out: Option<&Path>) -> Result<()> {
    weft_tests::require_root();
    if !(3..=200).contains(&hosts) {
        bail!("--hosts must be 3..=200");
    }
    let lab = Lab::try_new(LabOpts {
        log_format: LogFormat::Json,
        ..LabOpts::cluster(hosts, 1)
    })?;
    let others: Vec<usize> = (1..hosts).collect();
    let last = lab.host(hosts);
    eprintln!("starting {} agents…", others.len());
    let mut agents = Vec::new();
    for &i in &others {
        agents.push(lab.host(i).spawn_agent(&[])?);
    }
    for a in &mut agents {
        a.wait_ready(Duration::from_secs(60))?;
    }
    for &i in &others {
        let h = lab.host(i);
        let want = others.len() - 1;
        poll(Duration::from_secs(60), Duration::from_millis(100), || {
            (peer_count(h) == want).then_some(())
        })
        .with_context(|| format!("{} never saw {want} peers", h.name))?;
    }
    let ctl_log = lab.held_log("controller-c1");
    let mut results = Vec::new();
    for r in 0..rounds {
        common::wipe_host(last)?;
        // Settle: the previous round's removal work is over everywhere.
        std::thread::sleep(Duration::from_millis(300));
        let mut logs = agent_logs(&lab, &others);
        let mut ctl = EventLog::from_now(&ctl_log);
        let t0 = now();
        let mut agent = last.spawn_agent(&[])?;
        agent.wait_ready(Duration::from_secs(30))?;
        let ready = now() - t0;
        let subnet = last
            .try_status()
            .map_err(anyhow::Error::msg)
            .context("status of the joining agent")?
            .subnet;
        let name = last.name.clone();
        let joined = wait_all(&mut logs, &name, "joined")
            .with_context(|| format!("round {r}: join of {name} ({subnet})"))?;
        ctl.update();
        let since = |e: &Event| (e.time - t0) * 1e3;
        let registered = first(ctl.events(), 0, HOST_REGISTERED, |e| e.has("host", &name))
            .map(|(_, e)| since(e))
            .with_context(|| {
                format!("round {r}: the controller logged no {HOST_REGISTERED} event of {name}")
            })?;
        let broadcast = first(ctl.events(), 0, PEER_UPDATE, |e| {
            e.has("host", &name) && e.has("change", "upsert")
        })
        .map(|(_, e)| since(e))
        .with_context(|| {
            format!("round {r}: the controller logged no {PEER_UPDATE} upsert of {name}")
        })?;

        agent.stop();
        std::thread::sleep(Duration::from_millis(300));
        let mut logs = agent_logs(&lab, &others);
        let mut ctl = EventLog::from_now(&ctl_log);
        let t1 = now();
        let rm = lab.weftctl_etcd(&["host", "rm", &name]);
        let rm_cmd = now() - t1;
        if !rm.status.success() {
            bail!(
                "weftctl host rm {name}: {}",
                String::from_utf8_lossy(&rm.stderr)
            );
        }
        let removed = wait_all(&mut logs, &name, "left")
            .with_context(|| format!("round {r}: removal of {name} ({subnet})"))?;
        ctl.update();
        let remove_broadcast = first(ctl.events(), 0, PEER_UPDATE, |e| {
            e.has("host", &name) && e.has("change", "remove")
        })
        .map(|(_, e)| (e.time - t1) * 1e3)
        .with_context(|| {
            format!("round {r}: the controller logged no {PEER_UPDATE} remove of {name}")
        })?;

        let each = |v: &[(f64, f64)], t: f64| -> Vec<f64> {
            v.iter().map(|(_, done)| (done - t) * 1e3).collect()
        };
        let je = each(&joined, t0);
        let re = each(&removed, t1);
        let round = Round {
            subnet: subnet.clone(),
            join_ms: je.iter().cloned().fold(f64::MIN, f64::max),
            join_first_ms: je.iter().cloned().fold(f64::MAX, f64::min),
            ready_ms: ready * 1e3,
            registered_ms: registered,
            broadcast_ms: broadcast,
            remove_broadcast_ms: remove_broadcast,
            join_program_ms: joined.iter().map(|(a, b)| (b - a) * 1e3).collect(),
            join_each_ms: je,
            remove_ms: re.iter().cloned().fold(f64::MIN, f64::max),
            remove_first_ms: re.iter().cloned().fold(f64::MAX, f64::min),
            remove_each_ms: re,
            host_rm_cmd_ms: rm_cmd * 1e3,
        };
        eprintln!(
            "round {r}: {subnet} join {:.0} ms (registered {:.0} ms, first {:.0} ms), removal {:.0} ms",
            round.join_ms,
            round.registered_ms,
            round.join_first_ms,
            round.remove_ms
        );
        results.push(round);
    }
    print_table(hosts, &results);
    common::write_raw(
        out,
        "converge",
        &serde_json::json!({ "hosts": hosts, "rounds": results }),
    )
}

fn peer_count(h: &weft_tests::Host) -> usize {
    h.try_status().map_or(usize::MAX, |s| s.peers.len())
}

/// The event logs of the agents of `hosts`, from now on.
fn agent_logs(lab: &Lab, hosts: &[usize]) -> Vec<(usize, EventLog)> {
    hosts
        .iter()
        .map(|&i| (i, EventLog::from_now(lab.host(i).agent_log())))
        .collect()
}

/// In one agent's events: its `peer_change` of `peer` with `change`, then
/// its first `overlay_programmed` after it; the times of both.
fn programmed(events: &[Event], peer: &str, change: &str) -> Option<(f64, f64)> {
    let (i, c) = first(events, 0, PEER_CHANGE, |e| {
        e.has("peer", peer) && e.has("change", change)
    })?;
    let (_, done) = first(events, i + 1, OVERLAY_PROGRAMMED, |_| true)?;
    Some((c.time, done.time))
}

/// Waits until every agent in `logs` has programmed the `change` of
/// `peer`; returns each one's (peer_change, overlay_programmed) times.
fn wait_all(logs: &mut [(usize, EventLog)], peer: &str, change: &str) -> Result<Vec<(f64, f64)>> {
    let mut found: Vec<Option<(f64, f64)>> = vec![None; logs.len()];
    let ok = poll(CONVERGE_TIMEOUT, Duration::from_millis(50), || {
        for (k, (_, log)) in logs.iter_mut().enumerate() {
            if found[k].is_none() {
                found[k] = programmed(log.update(), peer, change);
            }
        }
        found.iter().all(Option::is_some).then_some(())
    });
    if ok.is_none() {
        let missing: Vec<String> = logs
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|((i, _), _)| format!("h{i}"))
            .collect();
        bail!(
            "not converged within {CONVERGE_TIMEOUT:?} on {} (no {PEER_CHANGE} {change} of {peer} followed by {OVERLAY_PROGRAMMED})",
            missing.join(", ")
        );
    }
    Ok(found.into_iter().flatten().collect())
}

fn print_table(hosts: usize, rounds: &[Round]) {
    common::header();
    println!(
        "{} rounds; {} agents running, host h{hosts} joins (fresh) and is removed each round.\n",
        rounds.len(),
        hosts - 1
    );
    println!("| phase | median | p99 | min–max |");
    println!("|---|---:|---:|---:|");
    let row = |what: &str, v: Vec<f64>| {
        let (p50, p99, min, max) = stats(&v);
        println!("| {what} | {p50:.0} ms | {p99:.0} ms | {min:.0}–{max:.0} ms |");
    };
    row(
        "join: spawn → joining agent ready",
        rounds.iter().map(|r| r.ready_ms).collect(),
    );
    row(
        "join: spawn → controller registered it",
        rounds.iter().map(|r| r.registered_ms).collect(),
    );
    row(
        "join: spawn → controller broadcast the peer",
        rounds.iter().map(|r| r.broadcast_ms).collect(),
    );
    row(
        "join: spawn → first peer programmed",
        rounds.iter().map(|r| r.join_first_ms).collect(),
    );
    row(
        &format!("**join: spawn → last of {} peers programmed**", hosts - 1),
        rounds.iter().map(|r| r.join_ms).collect(),
    );
    row(
        "join: per agent, `peer_change` → `overlay_programmed`",
        rounds
            .iter()
            .flat_map(|r| r.join_program_ms.iter().copied())
            .collect(),
    );
    row(
        "removal: `weftctl host rm` (the command)",
        rounds.iter().map(|r| r.host_rm_cmd_ms).collect(),
    );
    row(
        "removal: host rm → controller broadcast it",
        rounds.iter().map(|r| r.remove_broadcast_ms).collect(),
    );
    row(
        "removal: host rm → first peer programmed",
        rounds.iter().map(|r| r.remove_first_ms).collect(),
    );
    row(
        &format!(
            "**removal: host rm → last of {} peers programmed**",
            hosts - 1
        ),
        rounds.iter().map(|r| r.remove_ms).collect(),
    );
}
