//! When reconciles run: a repair on every wake-up (after [`SETTLE`], so a
//! burst of kernel events costs one) and every [`PERIOD`] regardless; and
//! the kernel event listener that wakes it.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::agent::Agent;

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
        agent.repair().await;
    }
}

/// Starts the kernel event listener; without it repairs happen only every
/// [`PERIOD`] (logged).
pub fn watch(agent: Arc<Agent>) {
    let a = agent.clone();
    let r = crate::kernel::watch::spawn(
        move |ev| a.reconciler.event(&ev),
        || warn!("netlink event stream ended; repairs now only every {PERIOD:?}"),
    );
    if let Err(e) = r {
        warn!("cannot watch netlink for changes ({e}); repairs only every {PERIOD:?}");
    }
}
