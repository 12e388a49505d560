//! Which hosts' agents are connected, and to which controller:
//! `<prefix>/agents/<node>` = [`AgentPresence`], for `weftctl host list`
//! (the keys themselves are the store's: `crate::store`).
//!
//! Each controller holds one short etcd lease ([`PRESENCE_TTL`], kept alive
//! every third of it) and attaches the keys of its sessions to it, so the
//! keys of a controller that dies vanish within the TTL and its agents show
//! disconnected. A session's key is written when it is assigned a subnet and
//! deleted when it ends — only if it is still this session's (the agent may
//! already be connected to another controller, or again to this one).
//!
//! Writes are batched: the sessions' desired keys are kept in memory and a
//! single writer brings etcd in line with them, many keys per transaction,
//! so a registration storm of thousands of agents costs a few dozen etcd
//! writes, not one per agent. An etcd error is retried; a lost lease (etcd
//! was unreachable past the TTL) is replaced and every key written again.
//!
//! The hub watches `<prefix>/hosts/` only: nothing here reaches agents.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::store::{now, AgentPresence, Store, StoreError};

/// TTL of a controller's presence lease, seconds: how long a crashed
/// controller's agents may still show connected.
pub const PRESENCE_TTL: i64 = 10;
/// Changes gathered this long before one write.
const BATCH_WINDOW: Duration = Duration::from_millis(50);

#[derive(Default)]
struct State {
    /// What etcd should hold for this controller's sessions.
    want: HashMap<String, Vec<u8>>,
    /// What this controller last wrote (and has not deleted).
    written: HashMap<String, Vec<u8>>,
    /// The presence lease; 0 when none is granted (yet, or any more).
    lease: i64,
}

pub struct Presence {
    store: Store,
    st: Mutex<State>,
    dirty: Notify,
}

/// A session's presence; dropping it removes the key (if still its own).
pub struct Session {
    presence: Arc<Presence>,
    node: String,
    value: Vec<u8>,
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut st = self.presence.st.lock().expect("presence");
        if st.want.get(&self.node) == Some(&self.value) {
            st.want.remove(&self.node);
            drop(st);
            self.presence.dirty.notify_one();
        }
    }
}

impl Presence {
    pub fn new(store: Store) -> Arc<Presence> {
        Arc::new(Presence {
            store,
            st: Mutex::new(State::default()),
            dirty: Notify::new(),
        })
    }

    /// Marks `node` connected to this controller until the returned
    /// session is dropped.
    pub fn connected(self: &Arc<Self>, node: &str, controller: String, remote: String) -> Session {
        let rec = AgentPresence {
            controller,
            since: now(),
            remote,
        };
        let value = serde_json::to_vec(&rec).expect("presence serializes");
        self.st
            .lock()
            .expect("presence")
            .want
            .insert(node.to_string(), value.clone());
        self.dirty.notify_one();
        Session {
            presence: self.clone(),
            node: node.to_string(),
            value,
        }
    }

    /// Writes changes and keeps the lease alive, forever.
    pub async fn run(self: Arc<Self>) {
        let keepalive = Duration::from_millis(PRESENCE_TTL as u64 * 1000 / 3);
        let mut tick = tokio::time::interval(keepalive);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = self.dirty.notified() => tokio::time::sleep(BATCH_WINDOW).await,
                _ = tick.tick() => {
                    // A keep-alive stream has no request timeout of its own.
                    match tokio::time::timeout(keepalive, self.keep_alive()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => debug!("presence lease keep-alive: {e}"),
                        Err(_) => debug!("presence lease keep-alive: no answer within {keepalive:?}"),
                    }
                }
            }
            match self.sync().await {
                Ok(()) => {
                    if failures > 0 {
                        info!("presence keys written again after {failures} failed attempts");
                    }
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        let e = match e {
                            StoreError::Etcd(e) => e.to_string(),
                            e => e.to_string(),
                        };
                        warn!("could not write agent presence to etcd ({e}); retrying");
                    }
                    // Retry at the next tick at the latest.
                }
            }
        }
    }

    async fn keep_alive(&self) -> Result<(), StoreError> {
        let lease = self.st.lock().expect("presence").lease;
        if lease == 0 {
            return Ok(());
        }
        let alive = matches!(self.store.keep_lease_alive(lease).await?, Some(ttl) if ttl > 0);
        if !alive {
            warn!("presence lease {lease:x} expired (etcd unreachable for {PRESENCE_TTL} s?); writing every connected agent again");
            let mut st = self.st.lock().expect("presence");
            if st.lease == lease {
                st.lease = 0;
                st.written.clear();
            }
        }
        Ok(())
    }

    /// Brings etcd in line with the sessions: puts of new or changed keys
    /// (on the lease), guarded deletes of ended ones, in few transactions.
    async fn sync(&self) -> Result<(), StoreError> {
        let (lease, puts, dels) = {
            let st = self.st.lock().expect("presence");
            let puts: Vec<(String, Vec<u8>)> = st
                .want
                .iter()
                .filter(|(n, v)| st.written.get(*n) != Some(v))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            let dels: Vec<(String, Vec<u8>)> = st
                .written
                .iter()
                .filter(|(n, _)| !st.want.contains_key(*n))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            (st.lease, puts, dels)
        };
        if puts.is_empty() && dels.is_empty() {
            return Ok(());
        }
        let lease = if lease == 0 && !puts.is_empty() {
            let l = self.store.grant_lease(PRESENCE_TTL).await?;
            self.st.lock().expect("presence").lease = l;
            l
        } else {
            lease
        };
        self.store.write_presence(lease, &puts, &dels).await?;
        let mut st = self.st.lock().expect("presence");
        if st.lease != lease {
            return Ok(());
        }
        for (node, v) in puts {
            st.written.insert(node, v);
        }
        for (node, v) in dels {
            if st.written.get(&node) == Some(&v) {
                st.written.remove(&node);
            }
        }
        Ok(())
    }

    /// On shutdown: revokes the lease, so this controller's agents show
    /// disconnected at once (they reconnect elsewhere and are written
    /// again by that controller).
    pub async fn revoke(&self) {
        let lease = std::mem::take(&mut self.st.lock().expect("presence").lease);
        if lease != 0 {
            let _ = self.store.revoke_lease(lease).await;
        }
    }
}
