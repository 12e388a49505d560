//! The host agent's `--metrics-listen` endpoint (`/metrics`, `/readyz`),
//! scraped from inside the host's namespace.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Host;
use crate::http;

/// Bound of one request to the agent's metrics listener.
const REQUEST: Duration = Duration::from_secs(5);

/// The kinds of `weft_agent_changes_applied_total`: every kernel change
/// the agent makes is counted under one of them.
pub const CHANGE_KINDS: [&str; 8] = [
    "route", "neigh", "fdb", "link", "address", "sysctl", "netns", "nft",
];

impl Host {
    /// The value of sample `name_with_labels` in the agent's `/metrics`
    /// (e.g. `weft_agent_peers{mode="vxlan"}`); panics if it is missing.
    pub fn agent_metric(&self, name_with_labels: &str) -> f64 {
        http::metric_in(&self.netns, self.metrics_addr(), name_with_labels, REQUEST)
            .unwrap_or_else(|e| panic!("{}: {e:#}", self.name))
    }

    /// Kernel changes the running agent has applied since it started, by
    /// kind (`weft_agent_changes_applied_total`).
    pub fn agent_changes(&self) -> BTreeMap<&'static str, f64> {
        CHANGE_KINDS
            .iter()
            .map(|k| {
                let name = format!("weft_agent_changes_applied_total{{kind=\"{k}\"}}");
                (*k, self.agent_metric(&name))
            })
            .collect()
    }

    /// [`Host::agent_changes`], all kinds together.
    pub fn agent_changes_applied(&self) -> f64 {
        self.agent_changes().values().sum()
    }

    /// Waits until the agent's `/readyz` answers 200: its data plane is
    /// programmed and (in a cluster) its first peer snapshot applied.
    pub fn wait_agent_ready(&self, timeout: Duration) {
        http::wait_ready_in(&self.netns, self.metrics_addr(), timeout)
            .unwrap_or_else(|e| panic!("{}: {e:#}", self.name));
    }
}
