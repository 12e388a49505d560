//! The running agent: its reconciler (the host and the overlay), its
//! endpoints, and in cluster mode its controllers. The local API, the
//! repair loop and the peer-set loop call into it.

use std::sync::Arc;

use tracing::error;

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
}

impl Agent {
    /// The reconcile at start: everything in line with the state, without
    /// disturbing what already works. `pending`: endpoints whose `ns add`
    /// may have left pieces; their markers are cleared once that is done.
    pub async fn start(&self, pending: &[String]) -> Result<Outcome, ReconcileError> {
        let t = self.endpoints.lock().await;
        let outcome =
            metrics::reconcile(self.reconciler.reconcile(Cause::Start, &t.records, pending))
                .await?;
        for name in pending {
            if let Err(e) = self.endpoints.state().clear_pending(name).await {
                error!("{e}");
            }
        }
        Ok(outcome)
    }

    /// Brings everything back in line (the periodic and event-driven
    /// repair); failures are logged and retried next time.
    pub async fn repair(&self) {
        let t = self.endpoints.lock().await;
        let r = metrics::reconcile(self.reconciler.reconcile(Cause::Repair, &t.records, &[])).await;
        if let Err(e) = r {
            error!("reconcile failed: {e}; retrying later");
        }
    }
}
