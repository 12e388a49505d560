//! The running agent: its reconciler (the host and the overlay), its
//! endpoints, and in cluster mode its controllers; and when reconciles
//! run: a repair on every kernel event that touches what weft owns (after
//! [`SETTLE`], so a burst costs one) and every [`PERIOD`] regardless.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tracing::{error, warn};

use crate::control::Controllers;
use crate::endpoints::Endpoints;
use crate::model::diff::Cause;
use crate::reconcile::{Outcome, ReconcileError, Reconciler};
use crate::telemetry::metrics;

pub struct Agent {
    pub node: String,
    pub reconciler: Reconciler,
    pub endpoints: Endpoints,
    /// Cluster mode: the controller link.
    pub controllers: Option<Arc<Controllers>>,
    /// Cluster mode: network policy enforcement.
    pub enforcer: Option<Arc<crate::enforce::Enforcer>>,
}

impl Agent {
    /// The reconcile at start: everything in line with the state, without
    /// disturbing what already works. `pending`: endpoints whose `ns add`
    /// may have left pieces; their markers are cleared once that is done.
    pub async fn start(&self, pending: &[String]) -> Result<Outcome, ReconcileError> {
        let mut t = self.endpoints.lock().await;
        let outcome =
            metrics::reconcile(self.reconciler.reconcile(Cause::Start, &t.records, pending))
                .await?;
        self.endpoints.release_gone(&mut t, &outcome.gone).await;
        for name in pending {
            if let Err(e) = self.endpoints.state().clear_pending(name) {
                error!("{e}");
            }
        }
        Ok(outcome)
    }

    /// Cluster mode: writes network policy for the endpoints as they are
    /// now, at once (not after the enforcement loop's settle time). `ns
    /// add`, CNI ADD and `ns label` call it before they answer, so that a
    /// workload a policy selects never starts unrestricted.
    pub async fn enforce_now(&self) {
        if let (Some(c), Some(e)) = (&self.controllers, &self.enforcer) {
            let policy = c.policy_watch().borrow().clone();
            let local = self.endpoints.directory().borrow().clone();
            e.enforce(&policy, &local).await;
        }
    }

    /// Brings everything back in line (the periodic and event-driven
    /// repair); failures are logged and retried next time.
    pub async fn repair(&self) {
        let mut t = self.endpoints.lock().await;
        let r = metrics::reconcile(self.reconciler.reconcile(Cause::Repair, &t.records, &[])).await;
        match r {
            Ok(outcome) => self.endpoints.release_gone(&mut t, &outcome.gone).await,
            Err(e) => error!("reconcile failed: {e}; retrying later"),
        }
    }
}

/// A full reconcile at least this often, whatever the events said.
pub const PERIOD: Duration = Duration::from_secs(30);
/// Events are gathered this long before one reconcile handles them all.
const SETTLE: Duration = Duration::from_millis(100);

/// Runs the repair loop forever.
pub async fn repair_loop(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = agent.reconciler.woken() => tokio::time::sleep(SETTLE).await,
            _ = tick.tick() => {}
        }
        // Events until now are handled by this repair: a wake-up they left
        // behind is taken, so a burst costs one repair, not two.
        let _ = agent.reconciler.woken().now_or_never();
        agent.repair().await;
    }
}

/// Starts the kernel event listener; without it repairs happen only every
/// [`PERIOD`] (logged).
pub fn watch_kernel(agent: Arc<Agent>) {
    let a = agent.clone();
    let r = crate::kernel::watch::spawn(
        move |ev| a.reconciler.event(&ev),
        || warn!("netlink event stream ended; repairs now only every {PERIOD:?}"),
    );
    if let Err(e) = r {
        warn!("cannot watch netlink for changes ({e}); repairs only every {PERIOD:?}");
    }
}
