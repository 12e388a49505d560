//! Network policy enforced on this host: the policy the controller sent
//! (or the saved one: fail static) and this host's endpoints, compiled
//! (`model::policy`) and written to the kernel's policy table — the whole
//! table when rules change, set members alone when only they do. Also the
//! per-policy packet counters for the metrics, and what `status` says.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{error, info, warn};
use weft_common::cluster::EndpointEntry;
use weft_common::policy::Policy;

use crate::firewall::policy::fingerprint;
use crate::kernel::{Kernel, OnError};
use crate::model::ops::Op;
use crate::model::policy::{compile, counter_name, diff, PolicyDiff, PolicyTable};
use crate::state::PolicyState;
use crate::telemetry::metrics;

/// Changes arriving within this long of each other are enforced together.
const SETTLE: Duration = Duration::from_millis(20);
/// How often the kernel's counters are read into the metrics, and the
/// table checked for being there.
const COUNTERS: Duration = Duration::from_secs(5);

/// What `status` says about enforcement.
#[derive(Debug, Clone, Default)]
pub struct Enforced {
    /// Local endpoints a policy restricts in some direction.
    pub endpoints: usize,
    /// The last failure to write the table, if the last write failed.
    pub error: Option<String>,
}

pub struct Enforcer {
    kernel: Arc<dyn Kernel>,
    /// The table as last written (`None`: not written by this process).
    applied: tokio::sync::Mutex<Option<PolicyTable>>,
    status: Mutex<Enforced>,
    /// Counter values last read, to turn them into increments.
    counted: Mutex<BTreeMap<String, u64>>,
}

impl Enforcer {
    pub fn new(kernel: Arc<dyn Kernel>) -> Enforcer {
        Enforcer {
            kernel,
            applied: Default::default(),
            status: Default::default(),
            counted: Default::default(),
        }
    }

    pub fn status(&self) -> Enforced {
        self.status.lock().expect("enforcer status").clone()
    }

    /// Writes what `policy` means for `local` to the kernel, if that
    /// differs from what was written last.
    pub async fn enforce(&self, policy: &PolicyState, local: &[EndpointEntry]) {
        let want = compile(&policy.policies, &policy.sets, local);
        let mut applied = self.applied.lock().await;
        if applied.is_none() {
            // At start (or after a failure): a table whose rules are these
            // already (the agent restarted) is kept, only its set members
            // brought in line; a restart changes nothing that is right.
            *applied = self.adoptable(&want).await;
        }
        let ops = match diff(applied.as_ref(), &want) {
            PolicyDiff::Nothing => {
                let mut st = self.status.lock().expect("enforcer status");
                st.endpoints = want.selected_endpoints();
                st.error = None;
                return;
            }
            PolicyDiff::Replace => vec![Op::PolicyReplace(Box::new(want.clone()))],
            PolicyDiff::Sets(edits) => vec![Op::PolicySets(edits)],
        };
        let report = self.kernel.apply(&ops, OnError::Stop).await;
        metrics::applied(report.by_kind(), report.kernel_failures());
        let mut st = self.status.lock().expect("enforcer status");
        match report.into_error() {
            None => {
                info!("network policy at revision {}: {}", policy.revision, ops[0]);
                st.endpoints = want.selected_endpoints();
                st.error = None;
                *applied = Some(want);
            }
            Some(e) => {
                error!(
                    "network policy at revision {}: {e}; the table stays as it was, retrying",
                    policy.revision
                );
                st.error = Some(e.to_string());
                // Unknown now: the next attempt writes the whole table.
                *applied = None;
            }
        }
    }

    /// The kernel's table as the base of a diff, when its rules are
    /// `want`'s (fingerprint) and it has `want`'s sets.
    async fn adoptable(&self, want: &PolicyTable) -> Option<PolicyTable> {
        let view = match self.kernel.observe_policy().await {
            Ok(v) => v?,
            Err(e) => {
                warn!("reading the network policy table: {e}; writing it whole");
                return None;
            }
        };
        if view.fingerprint.as_deref() != Some(fingerprint(want).as_str()) {
            return None;
        }
        let mut have = want.clone();
        for (name, members) in have.sets.iter_mut() {
            *members = view.sets.get(name)?.clone();
        }
        Some(have)
    }

    /// Reads the kernel's counters into the metrics; a table that vanished
    /// (deleted by hand) is written again at the next enforcement.
    async fn count(&self, policies: &[Policy]) {
        match self.kernel.observe_policy().await {
            Ok(Some(view)) => {
                let now = view.counters;
                let mut last = self.counted.lock().expect("counted");
                for p in policies {
                    for accepted in [true, false] {
                        let name = counter_name(accepted, &p.name);
                        let Some(&v) = now.get(&name) else { continue };
                        let before = last.get(&name).copied().unwrap_or(0);
                        // A rewritten table starts its counters at zero.
                        let added = if v >= before { v - before } else { v };
                        if added > 0 {
                            metrics::policy_packets(&p.name, accepted, added);
                        }
                    }
                }
                *last = now;
            }
            Ok(None) => {
                if self.applied.lock().await.take().is_some() {
                    warn!(
                        "the network policy table is gone (deleted outside weft); writing it again"
                    );
                }
            }
            Err(e) => warn!("reading the network policy counters: {e}"),
        }
    }
}

/// Enforces from the start on: at once, then after every change of the
/// policy or of the endpoints, and checks the table and reads its counters
/// every [`COUNTERS`].
pub async fn run(
    enforcer: Arc<Enforcer>,
    mut policy: tokio::sync::watch::Receiver<Arc<PolicyState>>,
    mut directory: crate::endpoints::Directory,
) {
    let mut tick = tokio::time::interval(COUNTERS);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let p = policy.borrow_and_update().clone();
        let local = directory.borrow_and_update().clone();
        enforcer.enforce(&p, &local).await;
        tokio::select! {
            r = policy.changed() => if r.is_err() { return },
            r = directory.changed() => if r.is_err() { return },
            _ = tick.tick() => {
                enforcer.count(&p.policies).await;
                continue;
            }
        }
        tokio::time::sleep(SETTLE).await;
    }
}
