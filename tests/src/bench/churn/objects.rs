//! What the churn benchmark samples: counts of kernel objects and state
//! files in a host namespace ([`Objects`]), the memory, fds and threads of
//! a process ([`Proc`]), and a [`Probe`] that takes both and waits for the
//! counts weft owns to come back to their start values.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use weft_tests::Host;

use super::SETTLE_TIMEOUT;
use crate::bench::common::{host_sh, status_kb};

/// Counts of what weft owns (and some it does not) in one host namespace.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Objects {
    pub(super) links: usize,
    /// Entries of the agent's `--netns-dir`.
    pub(super) netns_entries: usize,
    /// Mounts under the agent's `--netns-dir` (our mount namespace, which
    /// the agent shares).
    pub(super) netns_mounts: usize,
    /// Routes with proto 119 (weft's).
    pub(super) weft_routes: usize,
    pub(super) neigh_weft: usize,
    pub(super) fdb_weft: usize,
    pub(super) nft_rules: usize,
    /// Elements of every set and map in weft's table.
    pub(super) nft_elems: usize,
    pub(super) vxlan_peers: usize,
    pub(super) state_files: usize,
    // Reported only (not weft's alone, or allowed to vary):
    pub(super) routes_all: usize,
    pub(super) neigh_all: usize,
    pub(super) fdb_all: usize,
    pub(super) state_bytes: u64,
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

    pub(super) fn diff(&self, base: &Objects) -> Vec<String> {
        self.strict()
            .iter()
            .zip(base.strict())
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, b)| format!("{} {} (was {})", a.0, a.1, b.1))
            .collect()
    }
}

#[derive(Serialize, Clone, Debug, Default)]
pub(super) struct Proc {
    pub(super) rss_kb: u64,
    pub(super) fds: usize,
    pub(super) threads: u64,
}

pub(super) fn proc_of(pid: i32) -> Proc {
    Proc {
        rss_kb: status_kb(pid, "VmRSS:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0),
        threads: status_kb(pid, "Threads:"),
    }
}

#[derive(Serialize, Clone, Debug)]
pub(super) struct Sample {
    pub(super) phase: &'static str,
    /// Cycles done in this phase.
    pub(super) cycle: usize,
    /// Seconds since the phase started.
    pub(super) t_s: f64,
    pub(super) agent_h1: Proc,
    pub(super) agent_h2: Proc,
    pub(super) controller: Proc,
    pub(super) h1: Objects,
    pub(super) h2: Objects,
    /// How long the strict counts took to come back to the baseline (ms),
    /// or null if they did not within the time limit.
    pub(super) settle_ms: Option<f64>,
    /// Strict counts that differ from the baseline, if any.
    pub(super) leftovers: Vec<String>,
}

impl Sample {
    /// For the progress line: how long the counts took to settle, and what
    /// was left over, if anything.
    pub(super) fn settle_note(&self) -> String {
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
pub(super) struct Phase {
    pub(super) name: &'static str,
    pub(super) cycles: usize,
    pub(super) duration_s: f64,
    pub(super) cycles_per_s: f64,
    /// Per-cycle latency (ms): ns add+del, or one batch of peers.
    pub(super) step_ms: Vec<f64>,
}

/// Everything needed to take a sample, cheap to clone into a thread.
#[derive(Clone)]
pub(super) struct Probe {
    pub(super) hosts: [Host; 2],
    pub(super) pids: [i32; 3],
    pub(super) base: Option<[Objects; 2]>,
}

impl Probe {
    fn objects(&self) -> Result<[Objects; 2]> {
        Ok([
            count_objects(&self.hosts[0])?,
            count_objects(&self.hosts[1])?,
        ])
    }

    pub(super) fn sample(&self, phase: &'static str, cycle: usize, t0: Instant) -> Result<Sample> {
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
pub(super) fn listings(h: &Host) -> Result<(Vec<String>, Vec<String>)> {
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
