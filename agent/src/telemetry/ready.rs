//! The agent's readiness (`/readyz`): the data plane is programmed and,
//! with `--controller`, the first peer snapshot from a controller applied.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};

/// Readiness: the data plane is programmed and, with `--controller`, the
/// first peer snapshot from a controller is applied.
pub struct Ready {
    /// What the agent is doing before its data plane is programmed.
    stage: Mutex<String>,
    data_plane: AtomicBool,
    /// Cluster mode: a snapshot must be applied too.
    cluster: AtomicBool,
    /// A snapshot arrived (set by the controller link).
    snapshot_received: AtomicBool,
    /// The data plane has been programmed from a snapshot.
    snapshot_applied: AtomicBool,
}

static READY: LazyLock<Ready> = LazyLock::new(|| Ready {
    stage: Mutex::new("starting".into()),
    data_plane: AtomicBool::new(false),
    cluster: AtomicBool::new(false),
    snapshot_received: AtomicBool::new(false),
    snapshot_applied: AtomicBool::new(false),
});

pub fn get() -> &'static Ready {
    &READY
}

impl Ready {
    /// What the agent is busy with while not ready.
    pub fn stage(&self, what: impl Into<String>) {
        *self.stage.lock().expect("ready") = what.into();
    }

    pub fn cluster_mode(&self) {
        self.cluster.store(true, Ordering::SeqCst);
    }

    pub fn data_plane_programmed(&self) {
        self.data_plane.store(true, Ordering::SeqCst);
    }

    /// The link took a snapshot into the peer set (call after publishing it).
    pub fn snapshot_received(&self) {
        self.snapshot_received.store(true, Ordering::SeqCst);
    }

    /// Whether a snapshot had been received: read before taking the peer
    /// set that is then programmed, so that set includes it.
    pub fn has_snapshot(&self) -> bool {
        self.snapshot_received.load(Ordering::SeqCst)
    }

    pub fn snapshot_applied(&self) {
        self.snapshot_applied.store(true, Ordering::SeqCst);
    }

    pub fn check(&self) -> Result<(), String> {
        if !self.data_plane.load(Ordering::SeqCst) {
            return Err(self.stage.lock().expect("ready").clone());
        }
        if self.cluster.load(Ordering::SeqCst) && !self.snapshot_applied.load(Ordering::SeqCst) {
            let link = match super::metrics::controller_link() {
                (true, Some(a)) => format!("connected to controller {a}"),
                (false, Some(a)) => format!("no controller connected, trying {a}"),
                (_, None) => "no controller connected".to_string(),
            };
            return Err(format!(
                "no peer snapshot from a controller applied yet ({link}); serving the saved peer set"
            ));
        }
        Ok(())
    }
}
