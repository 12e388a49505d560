//! A simulated host ([`Host`]): a network namespace with `eth0` on the
//! underlay, the directories of its agent, and ways to run commands and
//! `weftctl` in it. Its agent process is in [`agent`]; the typed view of
//! the agent's API (status, endpoints, waits) in [`api`]; the agent's
//! metrics and readiness in [`metrics`].

pub mod agent;
pub mod api;
pub mod metrics;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

pub use agent::{Agent, AGENT_START_TIMEOUT, AGENT_STOP_TIMEOUT};
pub use api::{EndpointOpts, WAIT};

use crate::bin_path;
use crate::netns::{self, command_in, describe_status, ns_path, SpawnOpts};
use crate::registry::Shared;

/// One simulated host: a network namespace with `eth0` on the underlay.
#[derive(Debug, Clone)]
pub struct Host {
    /// 1-based index.
    pub index: usize,
    /// Node name, `h<index>`.
    pub name: String,
    /// Name of its namespace in `/run/netns`: `<prefix>-h<index>`.
    pub ns_name: String,
    /// Path of its namespace: `/run/netns/<prefix>-h<index>`.
    pub netns: PathBuf,
    /// Underlay address of `eth0`.
    pub ip: Ipv4Addr,
    /// Subnet given to the agent with `--subnet`.
    pub subnet: String,
    /// `<lab dir>/h<index>`.
    pub dir: PathBuf,
    /// `--state-dir` of its agent.
    pub state_dir: PathBuf,
    /// `--run-dir` of its agent (holds `agent.sock`).
    pub run_dir: PathBuf,
    /// `--netns-dir` of its agent (endpoint namespaces are mounted here).
    pub netns_dir: PathBuf,
    shared: Arc<Shared>,
}

impl Host {
    pub(crate) fn describe(
        shared: &Arc<Shared>,
        index: usize,
        ip: Ipv4Addr,
        subnet: String,
    ) -> Host {
        let name = format!("h{index}");
        let ns_name = format!("{}-{name}", shared.prefix);
        let dir = shared.dir.join(&name);
        Host {
            index,
            netns: ns_path(&ns_name),
            ns_name,
            ip,
            subnet,
            state_dir: dir.join("state"),
            run_dir: dir.join("run"),
            netns_dir: dir.join("netns"),
            dir,
            name,
            shared: shared.clone(),
        }
    }

    /// The agent's API socket, `<run-dir>/agent.sock`.
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("agent.sock")
    }

    /// The agent's log file (stdout and stderr of every start, appended).
    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// Where the agent mounts endpoint namespace `name`
    /// (`<netns-dir>/NAME`).
    pub fn endpoint_netns(&self, name: &str) -> PathBuf {
        self.netns_dir.join(name)
    }

    /// Where this host's agent serves `/metrics`, `/healthz` and `/readyz`
    /// (`--metrics-listen`, always given by [`Host::agent_args`]).
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        (self.ip, crate::http::AGENT_METRICS_PORT).into()
    }

    /// Runs `weftctl --agent-socket <run-dir>/agent.sock ARGS…` (inside this
    /// host's namespace) and returns its output. Time limit
    /// [`netns::EXEC_TIMEOUT`].
    ///
    /// `weftctl status` does not probe the peers here (`WEFT_NO_PROBE=1`):
    /// every lab on the machine shares the kernel's one ARP table (1,024
    /// entries), and probing a large lab's every peer from every host
    /// fills it, so that other labs' packets wait for ARP. Tests of the
    /// probe use [`Host::weftctl_probing`].
    pub fn weftctl(&self, args: &[&str]) -> Output {
        self.weftctl_with(args, "1")
    }

    /// [`Host::weftctl`] with `weftctl status` probing the peers.
    pub fn weftctl_probing(&self, args: &[&str]) -> Output {
        self.weftctl_with(args, "0")
    }

    /// A command running weft's binary `name` inside this host's
    /// namespace, in a process group of its own (so a time limit ends it
    /// and whatever it started).
    pub(crate) fn command(&self, name: &str) -> Command {
        command_in(
            &self.netns,
            bin_path(name),
            SpawnOpts {
                own_group: true,
                ..Default::default()
            },
        )
        .expect("host namespace")
    }

    fn weftctl_with(&self, args: &[&str], no_probe: &str) -> Output {
        let mut c = self.command("weftctl");
        c.env("WEFT_NO_PROBE", no_probe)
            .arg("--agent-socket")
            .arg(self.socket())
            .args(args);
        netns::run_with_timeout(&mut c, netns::EXEC_TIMEOUT).expect("run weftctl")
    }

    /// `weftctl -o json ARGS…`; panics (showing stderr and stdout) unless it
    /// exits 0 with one JSON document on stdout.
    pub fn weftctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["-o", "json"];
        a.extend_from_slice(args);
        let out = self.weftctl(&a);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "weftctl {} on {} failed ({}):\nstderr: {stderr}\nstdout: {stdout}",
            a.join(" "),
            self.name,
            describe_status(&out.status)
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "weftctl {} on {}: stdout is not one JSON document ({e}):\n{stdout}\nstderr: {stderr}",
                a.join(" "),
                self.name
            )
        })
    }

    /// Runs `weftctl ARGS…` expecting failure; panics if it exits 0 or dies
    /// from a signal. Returns (exit code, stderr, stdout).
    pub fn weftctl_err(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.weftctl(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        match out.status.code() {
            Some(c) if c != 0 => (c, stderr, stdout),
            _ => panic!(
                "weftctl {} on {} was expected to fail but {}:\nstdout: {stdout}\nstderr: {stderr}",
                args.join(" "),
                self.name,
                describe_status(&out.status)
            ),
        }
    }

    /// Runs `cmd` inside this host's namespace.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        netns::exec_in(&self.netns, cmd)
            .unwrap_or_else(|e| panic!("in {}: {e:#}", self.netns.display()))
    }

    /// [`Host::exec`], panicking (with its output) unless `cmd` exits 0;
    /// its stdout.
    pub fn exec_ok(&self, cmd: &[&str]) -> String {
        let what = format!("`{}` on {}", cmd.join(" "), self.name);
        netns::stdout_of_success(&what, &self.exec(cmd))
    }

    /// Runs `cmd` inside endpoint namespace `name` of this host
    /// (`<netns-dir>/NAME`), without going through weftctl.
    pub fn exec_endpoint(&self, name: &str, cmd: &[&str]) -> Output {
        let p = self.endpoint_netns(name);
        netns::exec_in(&p, cmd).unwrap_or_else(|e| panic!("in {}: {e:#}", p.display()))
    }

    /// [`Host::exec_endpoint`], panicking (with its output) unless `cmd`
    /// exits 0; its stdout.
    pub fn exec_endpoint_ok(&self, name: &str, cmd: &[&str]) -> String {
        let what = format!("`{}` in {name} on {}", cmd.join(" "), self.name);
        netns::stdout_of_success(&what, &self.exec_endpoint(name, cmd))
    }
}
