//! A connection between its first packet and its assignment, counted
//! (`super::MAX_PENDING` bounds them) until dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::telemetry::metrics;

/// One pending connection until dropped.
pub(super) struct Pending(Arc<AtomicUsize>);

impl Pending {
    /// Counts one more pending connection in `count`.
    pub fn new(count: Arc<AtomicUsize>) -> Pending {
        count.fetch_add(1, Ordering::Relaxed);
        metrics::get().pending.inc();
        Pending(count)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        metrics::get().pending.dec();
    }
}
