//! Keeps the etcd leases of connected hosts alive: one task for all of
//! them, rather than one gRPC stream per agent held open for the life of its
//! session (which costs memory on both the controller and etcd per host).
//!
//! Each round sends one keep-alive per held lease, a bounded number at a
//! time. A lease that etcd no longer knows (it expired, or `weftctl host rm`
//! revoked it) is reported to its sessions, which end so the agent
//! registers again. etcd errors are logged and retried in the next round;
//! nothing is ever deleted because of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::store::{Store, StoreError};
use crate::telemetry::metrics;

/// Keep-alives in flight at once.
const CONCURRENCY: usize = 32;

struct Entry {
    holders: usize,
    gone: watch::Sender<bool>,
}

pub struct Leases {
    store: Store,
    interval: Duration,
    held: Mutex<HashMap<i64, Entry>>,
}

/// A session's hold on a lease; dropping it stops keeping the lease alive
/// (once no other session holds it).
pub struct Hold {
    leases: Arc<Leases>,
    id: i64,
    /// Becomes `true` when the lease no longer exists.
    pub gone: watch::Receiver<bool>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut held = self.leases.held.lock().expect("leases");
        if let Some(e) = held.get_mut(&self.id) {
            e.holders -= 1;
            if e.holders == 0 {
                held.remove(&self.id);
            }
        }
    }
}

impl Leases {
    /// Keep-alives go out every third of the TTL (between 0.3 s and 60 s).
    pub fn new(store: Store, ttl: i64) -> Arc<Leases> {
        let interval = Duration::from_millis((ttl.max(1) as u64 * 1000 / 3).clamp(300, 60_000));
        Arc::new(Leases {
            store,
            interval,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// Starts keeping `id` alive. With `refresh_now` it is refreshed at once
    /// (a host that comes back late in its TTL must not lose it before the
    /// next round); a lease granted just now needs no refresh.
    pub fn hold(self: &Arc<Self>, id: i64, refresh_now: bool) -> Hold {
        let gone = {
            let mut held = self.held.lock().expect("leases");
            let e = held.entry(id).or_insert_with(|| Entry {
                holders: 0,
                gone: watch::channel(false).0,
            });
            e.holders += 1;
            e.gone.subscribe()
        };
        if refresh_now {
            let me = self.clone();
            tokio::spawn(async move { me.refresh(id).await });
        }
        Hold {
            leases: self.clone(),
            id,
            gone,
        }
    }

    /// One keep-alive for `id`; marks it gone if etcd no longer has it.
    async fn refresh(&self, id: i64) -> Result<(), StoreError> {
        let Some(ttl) = self.store.keep_lease_alive(id).await? else {
            return Ok(());
        };
        if ttl <= 0 {
            debug!("lease {id:x} is gone");
            metrics::get().lease_expiries.inc();
            if let Some(e) = self.held.lock().expect("leases").get(&id) {
                e.gone.send_replace(true);
            }
        }
        Ok(())
    }

    /// Runs the rounds forever.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let ids: Vec<i64> = self.held.lock().expect("leases").keys().copied().collect();
            let me = &self;
            let failed = stream::iter(ids)
                // A keep-alive stream has no request timeout of its own:
                // one that hangs must not stall the whole round.
                .map(|id| async move {
                    match tokio::time::timeout(me.interval, me.refresh(id)).await {
                        Ok(Ok(())) => None,
                        Ok(Err(StoreError::Etcd(e))) => Some(e.to_string()),
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(_) => Some(format!("no answer within {:?}", me.interval)),
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .filter_map(|e| async move { e })
                .collect::<Vec<_>>()
                .await;
            if let Some(e) = failed.first() {
                warn!(
                    "could not refresh {} host leases (etcd: {e}); retrying in {:?}",
                    failed.len(),
                    self.interval
                );
            }
        }
    }
}
