//! Following the kernel's route changes in a host namespace: the output
//! of `ip -4 monitor route` (a process of the lab, logging to a file) read
//! as it grows, and waiting until given routes are there or gone.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ipnetwork::Ipv4Network;
use weft_tests::logfile::Follow;

use super::STEP_TIMEOUT;

/// Follows the output of `ip -4 monitor route` in a log file: which
/// subnets' routes exist.
pub(super) struct RouteWatch {
    /// Read from where it was left: the log grows by two lines per cycle.
    log: Follow,
    present: HashSet<Ipv4Network>,
    /// Route additions and deletions seen.
    pub(super) adds: u64,
    pub(super) dels: u64,
}

impl RouteWatch {
    /// Follows `log` from now on.
    pub(super) fn new(log: PathBuf) -> RouteWatch {
        RouteWatch {
            log: Follow::from_now(log),
            present: HashSet::new(),
            adds: 0,
            dels: 0,
        }
    }

    fn update(&mut self) {
        for l in self.log.new_lines() {
            let l = l.as_str();
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

/// Waits until both hosts have (`present`) or no longer have the routes of
/// `nets`.
pub(super) fn wait_routes(
    watch: &mut [RouteWatch; 2],
    nets: &[Ipv4Network],
    present: bool,
) -> Result<()> {
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
