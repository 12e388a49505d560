//! Each verb as one call to the local agent, and the answer to print.
//! [`run`] is the whole plugin, given its environment and stdin, so the
//! protocol is tested without exec'ing anything.

use std::time::Duration;

use serde_json::{json, Value};
use weft_api::agent_client::{AgentClient, CallError};
use weft_api::api::{Endpoint, Request};

use crate::config::{version_of, Config};
use crate::env::{Command, Env};
use crate::error::{code_of, CniError, INTERNAL, NOT_AVAILABLE, TRY_AGAIN_LATER};
use crate::result::add_result;
use crate::version::{LATEST, SUPPORTED};

/// How long one call to the agent may take: an ADD waits behind a running
/// reconcile at worst.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the plugin prints on stdout and its exit code.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub stdout: Option<Value>,
    pub exit_code: i32,
}

/// The plugin: `get` reads the environment, `input` is stdin.
pub fn run(get: impl Fn(&str) -> Option<String>, input: &[u8]) -> Outcome {
    let version = version_of(input).unwrap_or_else(|| LATEST.to_string());
    match verb(get, input) {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => Outcome {
            stdout: Some(e.to_json(&version)),
            exit_code: 1,
        },
    }
}

fn verb(get: impl Fn(&str) -> Option<String>, input: &[u8]) -> Result<Option<Value>, CniError> {
    let env = Env::read(get)?;
    if env.command == Command::Version {
        let asked = version_of(input).unwrap_or_else(|| LATEST.to_string());
        return Ok(Some(json!({
            "cniVersion": asked,
            "supportedVersions": SUPPORTED,
        })));
    }
    let cfg = Config::parse(input)?;
    cfg.version.allows(env.command.as_str())?;
    let mut agent = AgentClient::new(&cfg.agent_socket).with_timeout(AGENT_TIMEOUT);
    let call = |agent: &mut AgentClient, req: &Request| {
        agent
            .call(req)
            .map_err(|e| agent_error(env.command, &cfg.agent_socket, e))
    };
    let container_id = env.container_id.clone().unwrap_or_default();
    let ifname = env.ifname.clone().unwrap_or_default();
    let netns = env.netns.clone().unwrap_or_default();
    match env.command {
        Command::Add => {
            let v = call(
                &mut agent,
                &Request::CniAdd {
                    container_id,
                    ifname,
                    netns: netns.clone(),
                    network: cfg.name.clone(),
                    publish: cfg.publish.clone(),
                    labels: cfg.labels.clone(),
                },
            )?;
            let ep: Endpoint = serde_json::from_value(v).map_err(|e| {
                CniError::new(INTERNAL, format!("unreadable answer from weft-agent: {e}"))
            })?;
            Ok(Some(add_result(
                cfg.version,
                &ep,
                &netns,
                cfg.dns.as_ref(),
                cfg.prev_result.as_ref(),
            )))
        }
        Command::Del => {
            call(
                &mut agent,
                &Request::CniDel {
                    container_id,
                    ifname,
                },
            )?;
            Ok(None)
        }
        Command::Check => {
            call(
                &mut agent,
                &Request::CniCheck {
                    container_id,
                    ifname,
                    netns,
                },
            )?;
            Ok(None)
        }
        Command::Gc => {
            call(
                &mut agent,
                &Request::CniGc {
                    network: cfg.name.clone(),
                    keep: cfg.valid_attachments.clone(),
                },
            )?;
            Ok(None)
        }
        Command::Status => {
            call(&mut agent, &Request::CniStatus)?;
            Ok(None)
        }
        Command::Version => unreachable!("answered above"),
    }
}

/// A failed call to the agent as a CNI error: not reaching it means "try
/// again later" (it is down or still starting: it serves its socket once
/// it has a subnet), or for STATUS "not available".
fn agent_error(command: Command, socket: &str, e: CallError) -> CniError {
    let unavailable = if command == Command::Status {
        NOT_AVAILABLE
    } else {
        TRY_AGAIN_LATER
    };
    match e {
        CallError::Agent(msg, code) => {
            let code = if command == Command::Status {
                NOT_AVAILABLE
            } else {
                code_of(code)
            };
            CniError::new(code, msg)
        }
        CallError::Unreachable { source, .. } => CniError::new(
            unavailable,
            format!("weft-agent is not reachable at {socket}: {source} (not running, or still waiting for its subnet)"),
        ),
        CallError::PermissionDenied { .. } => CniError::new(
            unavailable,
            format!("permission denied on {socket}: weft-cni must run as root, as the runtime does"),
        ),
        e @ (CallError::Io { .. } | CallError::Closed { .. }) => {
            CniError::new(unavailable, e.to_string())
        }
        e @ CallError::Unreadable { .. } => CniError::new(INTERNAL, e.to_string()),
    }
}
