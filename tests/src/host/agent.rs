//! The host's `weft-agent` ([`Agent`]): its command line, starting it
//! inside the host's namespace (and waiting until it answers on its
//! socket), stopping and killing it.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use weft_common::agent_client::{AgentClient, CallError};

use super::Host;
use crate::bin_path;
use crate::logfile::log_tail;
use crate::netns::{self, describe_status};
use crate::registry::process::{spawn_logged, Process};

/// How long [`Host::start_agent`] waits for the agent socket.
pub const AGENT_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Agent::stop`] waits after SIGTERM.
pub const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether an agent answers a `status` request on `socket` (any answer
/// counts, even a refusal). A mere connect is not enough: the agent may
/// bind its socket before it has finished starting and still fail.
fn agent_answers(socket: &Path, deadline: Instant) -> bool {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(100), Duration::from_secs(2));
    match AgentClient::new(socket).with_timeout(left).status(false) {
        Ok(_) | Err(CallError::Agent(..)) => true,
        Err(_) => false,
    }
}

/// A running `weft-agent`. Dropping it kills it (unless the lab is
/// persisted). Derefs to its [`Process`].
#[derive(Debug)]
pub struct Agent {
    proc_: Process,
    /// The host's node name.
    pub host: String,
    /// Its API socket, `<run-dir>/agent.sock`.
    pub socket: PathBuf,
}

impl Deref for Agent {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.proc_
    }
}

impl DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.proc_
    }
}

impl Agent {
    /// Waits until the agent answers a `status` request on its socket;
    /// kills it and returns an error with its log tail if it exits first or
    /// does not answer within `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if agent_answers(&self.socket, deadline) {
                return Ok(());
            }
            if let Some(st) = self.proc_.wait_timeout(Duration::ZERO) {
                bail!(
                    "weft-agent on {} exited ({}) before answering on {}; log {}:\n{}",
                    self.host,
                    describe_status(&st),
                    self.socket.display(),
                    self.proc_.log.display(),
                    log_tail(&self.proc_.log, 30)
                );
            }
            if Instant::now() >= deadline {
                self.proc_.kill();
                bail!(
                    "weft-agent on {} did not answer on {} within {timeout:?} (killed); log {}:\n{}",
                    self.host,
                    self.socket.display(),
                    self.proc_.log.display(),
                    log_tail(&self.proc_.log, 30)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap, like a crash.
    pub fn kill(&mut self) {
        self.proc_.kill();
    }

    /// SIGTERM and wait up to [`AGENT_STOP_TIMEOUT`]; panics (after
    /// SIGKILL) if it does not exit in time. Returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        match self.proc_.terminate(AGENT_STOP_TIMEOUT) {
            Ok(st) => st,
            Err(_) => panic!(
                "weft-agent on {} did not exit within {AGENT_STOP_TIMEOUT:?} of SIGTERM (killed); log tail:\n{}",
                self.host,
                log_tail(&self.proc_.log, 30)
            ),
        }
    }
}

impl Host {
    /// The standard agent arguments for this host: `--subnet` (or, in a
    /// cluster lab, `--controller` and `--tls-dir`), `--node-name`,
    /// `--state-dir`, `--run-dir`, `--netns-dir`, `--metrics-listen <host
    /// ip>:7472` and the lab's `--log-format` if it is not the default.
    pub fn agent_args(&self) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        let mode = match &*self.shared.cluster.lock().unwrap() {
            Some(c) => vec![
                "--controller".into(),
                c.controllers.join(","),
                "--tls-dir".into(),
                p(&c.pki.join(&self.name)),
            ],
            None => vec!["--subnet".into(), self.subnet.clone()],
        };
        let mut args: Vec<String> = mode;
        args.extend([
            "--node-name".into(),
            self.name.clone(),
            "--state-dir".into(),
            p(&self.state_dir),
            "--run-dir".into(),
            p(&self.run_dir),
            "--netns-dir".into(),
            p(&self.netns_dir),
            "--metrics-listen".into(),
            self.metrics_addr().to_string(),
        ]);
        args.extend(self.shared.log_format_args());
        args
    }

    /// Starts `weft-agent` inside this host's namespace with
    /// [`Host::agent_args`] plus `extra_args`, and waits until it answers a
    /// `status` request on its socket. Panics (with the log tail) if it does
    /// not within [`AGENT_START_TIMEOUT`] or exits.
    pub fn start_agent(&self, extra_args: &[&str]) -> Agent {
        self.try_start_agent(extra_args)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`Host::start_agent`] but returns an error instead of panicking.
    pub fn try_start_agent(&self, extra_args: &[&str]) -> Result<Agent> {
        let mut a = self.spawn_agent(extra_args)?;
        a.wait_ready(AGENT_START_TIMEOUT)?;
        Ok(a)
    }

    /// Starts `weft-agent` like [`Host::start_agent`] without waiting for it
    /// (to start many at once); see [`Agent::wait_ready`].
    pub fn spawn_agent(&self, extra_args: &[&str]) -> Result<Agent> {
        let bin = bin_path("weft-agent");
        let bin = bin.to_string_lossy();
        let args = self.agent_args();
        let mut cmd: Vec<&str> = vec![&bin];
        cmd.extend(args.iter().map(String::as_str));
        cmd.extend_from_slice(extra_args);
        let proc_ = spawn_logged(
            &self.shared,
            Some(self.index),
            "agent",
            &self.netns,
            &cmd,
            &[],
        )?;
        Ok(Agent {
            proc_,
            host: self.name.clone(),
            socket: self.socket(),
        })
    }

    /// Runs `weft-agent` with [`Host::agent_args`] plus `extra_args` in the
    /// foreground and returns its output once it exits; killed after
    /// `timeout`. For tests of start-up failures (bad flags, bad state).
    pub fn run_agent(&self, extra_args: &[&str], timeout: Duration) -> Output {
        let mut c = self.command("weft-agent");
        c.args(self.agent_args()).args(extra_args);
        netns::run_with_timeout(&mut c, timeout).expect("run weft-agent")
    }

    /// Pid of the agent last started on this host, if it still runs
    /// (also for labs reattached from a manifest).
    pub fn agent_pid(&self) -> Option<i32> {
        let procs = self.shared.procs.lock().unwrap();
        let rec = procs
            .iter()
            .rev()
            .find(|r| r.host == Some(self.index) && r.label == "agent")?;
        let mut s = rec.slot.lock().unwrap();
        if s.is_running() {
            s.pid()
        } else {
            None
        }
    }
}
