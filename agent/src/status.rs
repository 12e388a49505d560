//! `weftctl status`: the node, its subnet, the controller link and the
//! peers as programmed, each peer's gateway optionally pinged through the
//! tunnel (`probe.rs`).

use std::net::Ipv4Addr;

use tracing::warn;
use weft_common::api::{ControllerLink, Peer, Status, PROBE_TIMEOUT_MS};

use crate::agent::Agent;
use crate::model::ipam::gateway;
use crate::model::BRIDGE;

/// The agent's status. With `probe`, every peer's gateway is pinged
/// (concurrently, at most [`PROBE_TIMEOUT_MS`]); no lock is held meanwhile,
/// so other requests go on.
pub async fn status(agent: &Agent, probe: bool) -> Status {
    let spec = agent.reconciler.spec();
    let paths = agent.reconciler.paths().await;
    let mut status = Status {
        node: agent.node.clone(),
        subnet: spec.subnet.to_string(),
        gateway: spec.gateway(),
        bridge: BRIDGE.to_string(),
        mtu: spec.mtu,
        endpoints: agent.endpoints.count().await,
        controller: match &agent.controllers {
            Some(c) => c.controller_link(),
            None => ControllerLink {
                connected: false,
                address: None,
                since: None,
            },
        },
        peers: paths
            .values()
            .map(|p| Peer {
                name: p.name.clone(),
                subnet: p.subnet.to_string(),
                public_ip: p.public_ip,
                mode: p.mode.as_str().into(),
                reachable: None,
                rtt_ms: None,
            })
            .collect(),
        policy: agent.controllers.as_ref().map(|c| {
            let mut p = c.policy_status();
            if let Some(e) = &agent.enforcer {
                let st = e.status();
                p.enforced = st.endpoints;
                p.error = st.error;
            }
            p.same_host = crate::kernel::sysctl::has_bridge_netfilter();
            p
        }),
    };
    if probe && !status.peers.is_empty() {
        let targets: Vec<Ipv4Addr> = paths.values().map(|p| gateway(p.subnet)).collect();
        let timeout = std::time::Duration::from_millis(PROBE_TIMEOUT_MS);
        let res = tokio::task::spawn_blocking(move || crate::probe::probe(&targets, timeout))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
        match res {
            Ok(rtts) => {
                for (p, rtt) in status.peers.iter_mut().zip(rtts) {
                    p.reachable = Some(rtt.is_some());
                    p.rtt_ms = rtt.map(|d| d.as_secs_f64() * 1e3);
                }
            }
            // Reported as not probed (null), not as unreachable.
            Err(e) => warn!("peer probe failed: {e}"),
        }
    }
    status
}
