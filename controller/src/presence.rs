//! Which hosts' agents are connected, and to which controller:
//! `<prefix>/agents/<node>` = [`AgentPresence`], for `weftctl host list`.
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

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{debug, info, warn};
use weft_common::cluster::HostRecord;

use crate::store::{now, Store, StoreError};

/// TTL of a controller's presence lease, seconds: how long a crashed
/// controller's agents may still show connected.
pub const PRESENCE_TTL: i64 = 10;
/// Changes gathered this long before one write.
const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Operations per etcd transaction (etcd's default limit is 128).
const OPS_PER_TXN: usize = 100;

/// `<prefix>/agents/<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPresence {
    /// The controller the agent is connected to (the address it dialled).
    pub controller: String,
    /// Unix seconds when the session was assigned.
    pub since: u64,
    /// The agent's address as the controller sees it.
    pub remote: String,
}

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
                        warn!("could not write agent presence to etcd ({e}); retrying");
                    }
                    // Retry at the next tick at the latest.
                }
            }
        }
    }

    async fn keep_alive(&self) -> Result<(), etcd_client::Error> {
        let lease = self.st.lock().expect("presence").lease;
        if lease == 0 {
            return Ok(());
        }
        let mut c = self.store.client();
        let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
        keeper.keep_alive().await?;
        let alive = matches!(stream.message().await?, Some(r) if r.ttl() > 0);
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
    async fn sync(&self) -> Result<(), etcd_client::Error> {
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
            let l = self
                .store
                .client()
                .lease_grant(PRESENCE_TTL, None)
                .await?
                .id();
            self.st.lock().expect("presence").lease = l;
            l
        } else {
            lease
        };
        let mut ops = Vec::with_capacity(puts.len() + dels.len());
        for (node, v) in &puts {
            ops.push(TxnOp::put(
                self.store.agent_key(node),
                v.clone(),
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        for (node, v) in &dels {
            // Only if the key is still what this controller wrote.
            let key = self.store.agent_key(node);
            ops.push(TxnOp::txn(
                Txn::new()
                    .when([Compare::value(key.as_str(), CompareOp::Equal, v.clone())])
                    .and_then([TxnOp::delete(key.as_str(), None)]),
            ));
        }
        let mut client = self.store.client();
        let mut done = 0;
        for chunk in ops.chunks(OPS_PER_TXN) {
            let txn = Txn::new().and_then(chunk.to_vec());
            if let Err(e) = client.txn(txn).await {
                // What went through is rewritten harmlessly next time.
                if done > 0 {
                    debug!("presence: {done} operations written before the failure");
                }
                return Err(e);
            }
            done += chunk.len();
        }
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
            let _ = self.store.client().lease_revoke(lease).await;
        }
    }
}

/// Every `<prefix>/agents/` key: which hosts are connected, where.
pub async fn list(store: &Store) -> Result<HashMap<String, AgentPresence>, StoreError> {
    let prefix = store.agents_prefix();
    let mut r = store
        .client()
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut out = HashMap::new();
    for kv in r.take_kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let Some(node) = key.strip_prefix(prefix.as_str()) else {
            continue;
        };
        match serde_json::from_slice::<AgentPresence>(kv.value()) {
            Ok(p) => {
                out.insert(node.to_string(), p);
            }
            Err(e) => warn!("skipping unreadable presence key {key}: {e}"),
        }
    }
    Ok(out)
}

/// After a session ends: sets the host record's `last_seen` to now, keeping
/// its lease. Guarded by the record's revision (a registration in between
/// has written a fresh record anyway). The hub compares tunnel fields only,
/// so this reaches no agent. Best effort.
pub async fn touch_last_seen(store: &Store, node: &str) {
    let key = store.host_key(node);
    let res: Result<(), etcd_client::Error> = async {
        let mut c = store.client();
        let Some(kv) = c
            .get(key.as_str(), None)
            .await?
            .take_kvs()
            .into_iter()
            .next()
        else {
            return Ok(());
        };
        let Ok(mut rec) = serde_json::from_slice::<HostRecord>(kv.value()) else {
            return Ok(());
        };
        rec.last_seen = now();
        let opts = (kv.lease() != 0).then(|| PutOptions::new().with_lease(kv.lease()));
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([TxnOp::put(
                key.as_str(),
                serde_json::to_vec(&rec).expect("record serializes"),
                opts,
            )]);
        c.txn(txn).await?;
        Ok(())
    }
    .await;
    if let Err(e) = res {
        debug!("update last_seen of host {node}: {e}");
    }
}
