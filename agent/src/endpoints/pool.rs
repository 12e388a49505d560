//! Spare namespaces kept ready (`--ns-pool`), so that `ns add` only names
//! and addresses one: the kernel layer builds them (see
//! `kernel::linux::spares`), this keeps their number.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::Endpoints;
use crate::kernel::SpareSpec;
use crate::model::ops::SpareId;
use crate::model::{BRIDGE, MAX_ENDPOINTS, NS_IFACE};

pub struct Pool {
    /// How many spares to keep ready.
    pub target: usize,
    spares: Mutex<Vec<SpareId>>,
    /// Wakes the refill task.
    pub wake: Notify,
}

impl Pool {
    pub fn new(target: usize) -> Pool {
        Pool {
            target,
            spares: Mutex::new(Vec::with_capacity(target)),
            wake: Notify::new(),
        }
    }

    pub fn take(&self) -> Option<SpareId> {
        self.spares.lock().expect("pool").pop()
    }

    pub fn len(&self) -> usize {
        self.spares.lock().expect("pool").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn put(&self, s: SpareId) {
        self.spares.lock().expect("pool").push(s);
    }
}

impl Endpoints {
    /// Keeps `--ns-pool` spare namespaces ready; woken after every `ns add`.
    /// Spares count against the bridge's port limit, so the pool shrinks
    /// as the host fills up.
    pub async fn keep_spares(&self) {
        let target = self.pool.target;
        if target == 0 {
            return;
        }
        info!("keeping {target} spare namespaces ready for ns add (--ns-pool)");
        let spec = SpareSpec {
            master: BRIDGE.to_string(),
            mtu: self.spec.mtu,
            iface: NS_IFACE.to_string(),
        };
        let mut failures: u32 = 0;
        loop {
            loop {
                let endpoints = self.count().await;
                let have = self.pool.len();
                if have >= target || endpoints + have >= MAX_ENDPOINTS {
                    break;
                }
                match self.kernel.build_spare(&spec).await {
                    Ok(spare) => {
                        debug!("spare namespace ready ({spare:?})");
                        self.pool.put(spare);
                        failures = 0;
                    }
                    Err(e) => {
                        failures += 1;
                        if failures <= 3 || failures.is_power_of_two() {
                            warn!("cannot build a spare namespace ({e}); ns add builds its own meanwhile");
                        }
                        let pause = Duration::from_millis(100).saturating_mul(1 << failures.min(9));
                        tokio::time::sleep(pause).await;
                        break;
                    }
                }
            }
            self.pool.wake.notified().await;
        }
    }
}
