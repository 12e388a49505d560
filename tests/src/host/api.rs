//! The host agent's API, typed: `weftctl -o json` run in the host's
//! namespace and decoded into [`weft_common::api`] types ([`Status`],
//! [`Endpoint`], [`Peer`]), and the waits tests need on them.
//!
//! Every call goes through the real `weftctl` binary, so the operator's
//! tool stays what the tests drive, and its JSON is decoded strictly into
//! the API's types on every use. Tests of the JSON itself (the CLI
//! contract) use [`Host::weftctl_json`] and index it by hand.
//!
//! Every wait is bounded by the timeout it is given ([`WAIT`] is the usual
//! one: generous, since the machine may be shared and slow) and panics
//! with the last answer and the agent's log tail.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use weft_common::agent_client::AgentClient;
use weft_common::api::{Endpoint, Peer, Status};

use super::Host;
use crate::logfile::log_tail;
use crate::netns::describe_status;
use crate::wait_until;

/// The usual bound of a wait for the agent's state to change.
pub const WAIT: Duration = Duration::from_secs(20);

/// What `weftctl ns add` is given besides the name: `--ip` and
/// `--publish`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointOpts {
    pub ip: Option<Ipv4Addr>,
    /// `--publish` specs as an operator types them (`8080:80`,
    /// `5353:53/udp`).
    pub publish: Vec<String>,
}

impl EndpointOpts {
    /// `--ip IP`.
    pub fn ip(ip: Ipv4Addr) -> EndpointOpts {
        EndpointOpts {
            ip: Some(ip),
            ..Default::default()
        }
    }

    /// Adds a `--publish SPEC`.
    pub fn publish(mut self, spec: &str) -> EndpointOpts {
        self.publish.push(spec.to_string());
        self
    }

    fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(ip) = self.ip {
            a.extend(["--ip".to_string(), ip.to_string()]);
        }
        for p in &self.publish {
            a.extend(["--publish".to_string(), p.clone()]);
        }
        a
    }
}

impl Host {
    /// A client of this host's agent socket, for tests and tools that talk
    /// to the agent without `weftctl`.
    pub fn client(&self) -> AgentClient {
        AgentClient::new(self.socket())
    }

    /// `weftctl -o json ARGS…` decoded as `T`; the error is weftctl's
    /// stderr (or why its output does not decode).
    pub fn try_weftctl_as<T: DeserializeOwned>(&self, args: &[&str]) -> Result<T, String> {
        let mut a = vec!["-o", "json"];
        a.extend_from_slice(args);
        let out = self.weftctl(&a);
        decode(self, &a, out)
    }

    /// [`Host::try_weftctl_as`], panicking on an error.
    pub fn weftctl_as<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        self.try_weftctl_as(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `weftctl status`, without probing the peers.
    pub fn status(&self) -> Status {
        self.weftctl_as(&["status"])
    }

    /// [`Host::status`], or why there is none (no agent, not yet serving).
    pub fn try_status(&self) -> Result<Status, String> {
        self.try_weftctl_as(&["status"])
    }

    /// `weftctl status` with the peers probed through the tunnel
    /// (`reachable`, `rtt_ms` filled in).
    pub fn status_probed(&self) -> Status {
        self.try_status_probed().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Host::status_probed`], or why there is none.
    pub fn try_status_probed(&self) -> Result<Status, String> {
        let a = ["-o", "json", "status"];
        decode(self, &a, self.weftctl_probing(&a))
    }

    /// `weftctl ns add NAME`: the new endpoint.
    pub fn add_endpoint(&self, name: &str) -> Endpoint {
        self.add_endpoint_with(name, &EndpointOpts::default())
    }

    /// `weftctl ns add NAME --ip … --publish …`: the new endpoint.
    pub fn add_endpoint_with(&self, name: &str, opts: &EndpointOpts) -> Endpoint {
        let extra = opts.args();
        let mut a = vec!["ns", "add", name];
        a.extend(extra.iter().map(String::as_str));
        self.weftctl_as(&a)
    }

    /// `weftctl ns del NAME`: the endpoint removed.
    pub fn del_endpoint(&self, name: &str) -> Endpoint {
        self.weftctl_as(&["ns", "del", name])
    }

    /// `weftctl ns show NAME`.
    pub fn show_endpoint(&self, name: &str) -> Endpoint {
        self.weftctl_as(&["ns", "show", name])
    }

    /// `weftctl ns list`.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.weftctl_as(&["ns", "list"])
    }

    /// [`Host::endpoints`], or why there are none.
    pub fn try_endpoints(&self) -> Result<Vec<Endpoint>, String> {
        self.try_weftctl_as(&["ns", "list"])
    }

    /// The peers this agent knows: name → subnet.
    pub fn peer_subnets(&self) -> BTreeMap<String, String> {
        subnets(&self.status())
    }

    /// Polls [`Host::status`] until `ok` holds, for at most `timeout`;
    /// returns that status. Panics naming `what`, with the last status (or
    /// error) and the agent's log tail, if it never does.
    pub fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        ok: impl FnMut(&Status) -> bool,
    ) -> Status {
        self.wait_status_from(Host::try_status, timeout, what, ok)
    }

    /// [`Host::wait_status`] with the peers probed each time.
    pub fn wait_status_probed(
        &self,
        timeout: Duration,
        what: &str,
        ok: impl FnMut(&Status) -> bool,
    ) -> Status {
        self.wait_status_from(Host::try_status_probed, timeout, what, ok)
    }

    fn wait_status_from(
        &self,
        ask: fn(&Host) -> Result<Status, String>,
        timeout: Duration,
        what: &str,
        mut ok: impl FnMut(&Status) -> bool,
    ) -> Status {
        let mut last = Err("not asked yet".to_string());
        let done = wait_until(timeout, || {
            last = ask(self);
            last.as_ref().is_ok_and(&mut ok)
        });
        match last {
            Ok(s) if done => s,
            other => panic!(
                "{}: {what} not seen within {timeout:?}; last status: {other:#?}\nagent log {}:\n{}",
                self.name,
                self.agent_log().display(),
                log_tail(&self.agent_log(), 30)
            ),
        }
    }

    /// Waits until the agent is connected to a controller; its status then.
    pub fn wait_connected(&self, timeout: Duration) -> Status {
        self.wait_status(timeout, "a controller connection", |s| {
            s.controller.connected
        })
    }

    /// Waits until the agent has `name` among its peers; that peer.
    pub fn wait_peer(&self, name: &str, timeout: Duration) -> Peer {
        let s = self.wait_status(timeout, &format!("peer {name}"), |s| {
            s.peers.iter().any(|p| p.name == name)
        });
        s.peers
            .into_iter()
            .find(|p| p.name == name)
            .expect("the peer waited for")
    }

    /// Waits until the agent's peers are exactly `want` (name → subnet).
    pub fn wait_peers(&self, want: &BTreeMap<String, String>, timeout: Duration) -> Status {
        self.wait_status(timeout, &format!("exactly the peers {want:?}"), |s| {
            &subnets(s) == want
        })
    }
}

/// The peer `name` of a status; panics (showing the status) if there is
/// none.
pub fn peer<'a>(s: &'a Status, name: &str) -> &'a Peer {
    s.peers
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no peer {name} in {s:#?}"))
}

/// Name → subnet of a status's peers.
pub fn subnets(s: &Status) -> BTreeMap<String, String> {
    s.peers
        .iter()
        .map(|p| (p.name.clone(), p.subnet.clone()))
        .collect()
}

fn decode<T: DeserializeOwned>(
    h: &Host,
    args: &[&str],
    out: std::process::Output,
) -> Result<T, String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "weftctl {} on {} failed ({}): {}",
            args.join(" "),
            h.name,
            describe_status(&out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_str(&stdout).map_err(|e| {
        format!(
            "weftctl {} on {}: the output is not a {} ({e}): {stdout}",
            args.join(" "),
            h.name,
            std::any::type_name::<T>()
        )
    })
}
