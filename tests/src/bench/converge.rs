//! `weft-bench converge`: how long after a host joins (or is removed) every
//! other agent has programmed its route.
//!
//! One cluster lab of N hosts and one controller. The agents of h1…h(N-1)
//! run throughout. Each round starts the last host's agent as a fresh host
//! (state directory wiped, its devices and nft table removed), then reads
//! the other agents' logs: an agent is done when it has written the first
//! `overlay programmed:` line after its `route add <subnet> …: peer hN
//! joined` line (both carry a wall-clock timestamp; same machine clock).
//! Join convergence is from the agent's spawn to the last of these. Then the
//! agent is stopped (SIGTERM), `weftctl host rm hN` runs, and removal
//! convergence is from that command's start to the last `overlay
//! programmed:` after `route del <subnet> …: peer hN left`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use weft_tests::{Lab, LabOpts};

use super::common::{self, after, first_time, log_len, log_since, now, poll, stats};

/// How long one join or removal may take before the round fails.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Serialize, Default)]
struct Round {
    subnet: String,
    /// Spawn of the joining agent → last other agent programmed.
    join_ms: f64,
    /// Spawn → the joining agent answers on its socket.
    ready_ms: f64,
    /// Spawn → the controller logged the registration.
    registered_ms: Option<f64>,
    /// Spawn → the controller broadcast the new peer (`peer update` line,
    /// after its 20 ms batch window).
    broadcast_ms: Option<f64>,
    /// Spawn → the first other agent programmed.
    join_first_ms: f64,
    /// Per other agent: spawn → its `overlay programmed` line.
    join_each_ms: Vec<f64>,
    /// Per other agent: its `route add` line → its `overlay programmed` line.
    join_program_ms: Vec<f64>,
    /// `weftctl host rm` start → last other agent programmed.
    remove_ms: f64,
    remove_first_ms: f64,
    remove_each_ms: Vec<f64>,
    /// `weftctl host rm` start → the controller broadcast the removal.
    remove_broadcast_ms: Option<f64>,
    /// The `weftctl host rm` command alone.
    host_rm_cmd_ms: f64,
}

pub fn run(hosts: usize, rounds: usize, out: Option<&Path>) -> Result<()> {
    weft_tests::require_root();
    if !(3..=200).contains(&hosts) {
        bail!("--hosts must be 3..=200");
    }
    let lab = Lab::try_new(LabOpts::cluster(hosts, 1))?;
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
        let offsets: Vec<u64> = others
            .iter()
            .map(|&i| log_len(&lab.host(i).agent_log()))
            .collect();
        let ctl_off = log_len(&ctl_log);
        let t0 = now();
        let mut agent = last.spawn_agent(&[])?;
        agent.wait_ready(Duration::from_secs(30))?;
        let ready = now() - t0;
        let status = last.weftctl_json(&["status"]);
        let subnet = status["subnet"]
            .as_str()
            .context("status without a subnet")?
            .to_string();
        let name = last.name.clone();
        let joined = wait_all(&lab, &others, &offsets, |text| {
            after(
                text,
                &[
                    &format!("route add {subnet} "),
                    &format!("peer {name} joined"),
                ],
                "overlay programmed:",
            )
        })
        .with_context(|| format!("round {r}: join of {name} ({subnet})"))?;
        let ctl_text = log_since(&ctl_log, ctl_off);
        let registered =
            first_time(&ctl_text, &[&format!("host {name} registered")]).map(|t| (t - t0) * 1e3);
        let broadcast = first_time(
            &ctl_text,
            &[&format!("peer update: host {name} subnet {subnet} ")],
        )
        .map(|t| (t - t0) * 1e3);

        agent.stop();
        std::thread::sleep(Duration::from_millis(300));
        let offsets: Vec<u64> = others
            .iter()
            .map(|&i| log_len(&lab.host(i).agent_log()))
            .collect();
        let ctl_off = log_len(&ctl_log);
        let t1 = now();
        let rm = lab.weftctl_etcd(&["host", "rm", &name]);
        let rm_cmd = now() - t1;
        if !rm.status.success() {
            bail!(
                "weftctl host rm {name}: {}",
                String::from_utf8_lossy(&rm.stderr)
            );
        }
        let removed = wait_all(&lab, &others, &offsets, |text| {
            after(
                text,
                &[
                    &format!("route del {subnet} "),
                    &format!("peer {name} left"),
                ],
                "overlay programmed:",
            )
        })
        .with_context(|| format!("round {r}: removal of {name} ({subnet})"))?;
        let remove_broadcast = first_time(
            &log_since(&ctl_log, ctl_off),
            &[&format!("peer update: host {name} left")],
        )
        .map(|t| (t - t1) * 1e3);

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
            round.registered_ms.unwrap_or(f64::NAN),
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
    let out = h.weftctl(&["-o", "json", "status"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["peers"].as_array().map(|a| a.len()))
        .unwrap_or(usize::MAX)
}

/// Waits until `find` matches the new log text of every host in `hosts`;
/// returns each one's (first line, done line) timestamps.
fn wait_all(
    lab: &Lab,
    hosts: &[usize],
    offsets: &[u64],
    find: impl Fn(&str) -> Option<(f64, f64, String)>,
) -> Result<Vec<(f64, f64)>> {
    let mut found: Vec<Option<(f64, f64)>> = vec![None; hosts.len()];
    let ok = poll(CONVERGE_TIMEOUT, Duration::from_millis(50), || {
        for (k, &i) in hosts.iter().enumerate() {
            if found[k].is_none() {
                let text = log_since(&lab.host(i).agent_log(), offsets[k]);
                found[k] = find(&text).map(|(a, b, _)| (a, b));
            }
        }
        found.iter().all(Option::is_some).then_some(())
    });
    if ok.is_none() {
        let missing: Vec<String> = hosts
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(i, _)| format!("h{i}"))
            .collect();
        bail!(
            "not converged within {CONVERGE_TIMEOUT:?} on {}",
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
    let reg: Vec<f64> = rounds.iter().filter_map(|r| r.registered_ms).collect();
    if !reg.is_empty() {
        row("join: spawn → controller registered it", reg);
    }
    let bc: Vec<f64> = rounds.iter().filter_map(|r| r.broadcast_ms).collect();
    if !bc.is_empty() {
        row("join: spawn → controller broadcast the peer", bc);
    }
    row(
        "join: spawn → first peer programmed",
        rounds.iter().map(|r| r.join_first_ms).collect(),
    );
    row(
        &format!("**join: spawn → last of {} peers programmed**", hosts - 1),
        rounds.iter().map(|r| r.join_ms).collect(),
    );
    row(
        "join: per agent, `route add` → programmed",
        rounds
            .iter()
            .flat_map(|r| r.join_program_ms.iter().copied())
            .collect(),
    );
    row(
        "removal: `weftctl host rm` (the command)",
        rounds.iter().map(|r| r.host_rm_cmd_ms).collect(),
    );
    let bc: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r.remove_broadcast_ms)
        .collect();
    if !bc.is_empty() {
        row("removal: host rm → controller broadcast it", bc);
    }
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
