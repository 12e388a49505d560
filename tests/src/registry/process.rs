//! The processes a lab starts in its namespaces ([`Process`]): spawned with
//! their output appended to a log file in the lab directory, recorded in
//! the lab's registry (so the manifest and teardown know them), killed when
//! dropped or when the lab goes.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::Shared;
use crate::cleanup::{self, proc_alive};
use crate::netns::{command_in, describe_status, SpawnOpts};

/// State of a started process.
#[derive(Debug)]
pub(crate) enum Slot {
    Running(Child),
    Exited(ExitStatus),
    /// Not our child (reattached from a manifest): pid and start time.
    Foreign(i32, Option<u64>),
}

impl Slot {
    pub(crate) fn pid(&self) -> Option<i32> {
        match self {
            Slot::Running(c) => Some(c.id() as i32),
            Slot::Foreign(p, _) => Some(*p),
            Slot::Exited(_) => None,
        }
    }

    pub(crate) fn is_running(&mut self) -> bool {
        match self {
            Slot::Running(c) => match c.try_wait() {
                Ok(Some(st)) => {
                    *self = Slot::Exited(st);
                    false
                }
                _ => true,
            },
            Slot::Foreign(p, s) => proc_alive(*p, *s),
            Slot::Exited(_) => false,
        }
    }

    /// SIGKILL and reap; returns the exit status when we have one.
    pub(crate) fn kill(&mut self) -> Option<ExitStatus> {
        match self {
            Slot::Running(c) => {
                let _ = c.kill();
                let st = c.wait().unwrap_or_else(|_| ExitStatus::from_raw(9));
                *self = Slot::Exited(st);
                Some(st)
            }
            Slot::Exited(st) => Some(*st),
            Slot::Foreign(p, s) => {
                cleanup::kill_foreign(*p, *s);
                None
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct ProcRec {
    pub(crate) host: Option<usize>,
    pub(crate) label: String,
    pub(crate) slot: Arc<Mutex<Slot>>,
}

pub(crate) fn spawn_logged(
    shared: &Arc<Shared>,
    host: Option<usize>,
    label: &str,
    ns: &Path,
    cmd: &[&str],
    env: &[(&str, &str)],
) -> Result<Process> {
    let (prog, args) = cmd.split_first().context("empty command")?;
    let log = match host {
        Some(i) => shared
            .dir
            .join(format!("h{i}"))
            .join(format!("{label}.log")),
        None => {
            let d = shared.dir.join("logs");
            fs::create_dir_all(&d)?;
            d.join(format!("{label}-{}.log", shared.next()))
        }
    };
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("open {}", log.display()))?;
    writeln!(f, "=== weft-tests: starting {} ===", cmd.join(" "))?;
    let mut c = command_in(
        ns,
        prog,
        SpawnOpts {
            setsid: shared.detachable,
            own_group: false,
        },
    )?;
    c.args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .env("RUST_BACKTRACE", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.spawn().with_context(|| format!("spawn {prog}"))?;
    let pid = child.id();
    let slot = shared.register(host, label, Slot::Running(child));
    Ok(Process {
        pid,
        slot,
        shared: shared.clone(),
        log,
    })
}

/// A background process started by the lab. Dropping it kills it (unless
/// the lab is persisted).
#[derive(Debug)]
pub struct Process {
    pid: u32,
    slot: Arc<Mutex<Slot>>,
    shared: Arc<Shared>,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Process {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it still runs (reaps it if it exited).
    pub fn is_running(&self) -> bool {
        self.slot.lock().unwrap().is_running()
    }

    /// SIGKILL, then reap. Returns the exit status (None for a process
    /// reattached from a manifest, which is not our child).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.slot.lock().unwrap().kill()
    }

    /// Sends `sig` if it still runs.
    pub fn signal(&self, sig: Signal) {
        let mut s = self.slot.lock().unwrap();
        if s.is_running() {
            if let Some(p) = s.pid() {
                let _ = kill(Pid::from_raw(p), sig);
            }
        }
    }

    /// Waits at most `timeout` for it to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut s = self.slot.lock().unwrap();
                if !s.is_running() {
                    return match &*s {
                        Slot::Exited(st) => Some(*st),
                        _ => None,
                    };
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then wait at most `timeout`; SIGKILL if it is still there.
    /// Returns `Ok(status)` if it exited by itself, `Err(status)` if it had
    /// to be killed.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, ExitStatus> {
        self.signal(Signal::SIGTERM);
        match self.wait_timeout(timeout) {
            Some(st) => Ok(st),
            None => Err(self.kill().unwrap_or_else(|| ExitStatus::from_raw(9))),
        }
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.shared.persisting() {
            if let Ok(mut s) = self.slot.lock() {
                s.kill();
            }
        }
    }
}

/// Kills every process recorded in `shared`; returns one line per process
/// saying how it ended.
pub(crate) fn kill_all(shared: &Shared) -> Vec<String> {
    let recs: Vec<(Option<usize>, String, Arc<Mutex<Slot>>)> = shared
        .procs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|r| (r.host, r.label.clone(), r.slot.clone()))
        .collect();
    let mut lines = Vec::new();
    for (host, label, slot) in recs {
        let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
        let pid = s.pid();
        let was_running = s.is_running();
        let st = s.kill();
        let how = match (was_running, st) {
            (true, _) => "was running: killed at teardown".to_string(),
            (false, Some(st)) => format!("had exited by itself ({})", describe_status(&st)),
            (false, None) => "had exited".to_string(),
        };
        let who = host.map(|h| format!("h{h} ")).unwrap_or_default();
        lines.push(format!(
            "{who}{label} pid {}: {how}",
            pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
        ));
    }
    lines
}
