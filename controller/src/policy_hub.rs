//! The controller's view of network policy and its fan-out to agents.
//!
//! One task watches the policies and the endpoints agents reported, keeps
//! both in memory and resolves the address sets the policies' rules name
//! (`weft_common::policy::sets`). Each change becomes one `policy_delta`
//! frame — policies written or deleted, members that joined or left sets —
//! encoded once and broadcast to every session that takes policy. A
//! session starts from a `policy_snapshot`. Agents thus get the policies
//! and resolved sets, never every endpoint of the cluster. A broken watch
//! lists again and sends the difference, as the host hub does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, RwLock};
use tracing::{debug, info, warn};
use weft_common::policy::explain::Directory;
use weft_common::policy::sets::{self, Sets};
use weft_common::policy::Policy;
use weft_common::wire::{self, ControllerMsg};

use crate::hub::{AbortOnDrop, Frame};
use crate::store::{PolicyInput, PolicyWatchEvent, Store};

/// Deltas buffered per session before a slow one gets a fresh snapshot.
const FANOUT_BUFFER: usize = 1024;
/// Changes arriving within this long of each other go out as one delta.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

#[derive(Default)]
struct View {
    revision: i64,
    policies: BTreeMap<String, Policy>,
    endpoints: Directory,
    sets: Sets,
    ready: bool,
    snapshot: Option<Bytes>,
}

pub struct PolicyHub {
    view: RwLock<View>,
    tx: broadcast::Sender<Arc<Frame>>,
    ready: tokio::sync::Notify,
}

impl Default for PolicyHub {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyHub {
    pub fn new() -> PolicyHub {
        let (tx, _) = broadcast::channel(FANOUT_BUFFER);
        PolicyHub {
            view: RwLock::new(View::default()),
            tx,
            ready: tokio::sync::Notify::new(),
        }
    }

    /// A snapshot frame and a receiver for the deltas after it. Waits
    /// until the view has been loaded once.
    pub async fn subscribe(&self) -> (i64, Bytes, broadcast::Receiver<Arc<Frame>>) {
        loop {
            let notified = self.ready.notified();
            {
                let mut v = self.view.write().await;
                if v.ready {
                    let rx = self.tx.subscribe();
                    let snap = match &v.snapshot {
                        Some(b) => b.clone(),
                        None => {
                            let msg = ControllerMsg::PolicySnapshot {
                                revision: v.revision,
                                policies: v.policies.values().cloned().collect(),
                                sets: v.sets.clone(),
                            };
                            let b = Bytes::from(wire::encode(&msg));
                            v.snapshot = Some(b.clone());
                            b
                        }
                    };
                    return (v.revision, snap, rx);
                }
            }
            notified.await;
        }
    }

    /// Takes changed inputs at `revision` (with `full`, they are all there
    /// is: anything else is gone) and broadcasts what changed.
    async fn apply(&self, revision: i64, inputs: Vec<PolicyInput>, full: bool) {
        let mut v = self.view.write().await;
        let mut policies = if full {
            BTreeMap::new()
        } else {
            v.policies.clone()
        };
        if full {
            v.endpoints.clear();
        }
        for i in inputs {
            match i {
                PolicyInput::Policy(name, Some(p)) if p.name == name => {
                    policies.insert(name, p);
                }
                PolicyInput::Policy(name, Some(p)) => {
                    warn!("skipping policy key {name}: it holds policy {:?}", p.name);
                    policies.remove(&name);
                }
                PolicyInput::Policy(name, None) => {
                    policies.remove(&name);
                }
                PolicyInput::Endpoints(host, Some(list)) => {
                    v.endpoints.insert(host, list);
                }
                PolicyInput::Endpoints(host, None) => {
                    v.endpoints.remove(&host);
                }
            }
        }
        let upsert: Vec<Policy> = policies
            .values()
            .filter(|p| v.policies.get(&p.name) != Some(*p))
            .cloned()
            .collect();
        let remove: Vec<String> = v
            .policies
            .keys()
            .filter(|n| !policies.contains_key(*n))
            .cloned()
            .collect();
        let list: Vec<Policy> = policies.values().cloned().collect();
        let new_sets = sets::resolve(&list, &v.endpoints);
        let changes = sets::diff(&v.sets, &new_sets);
        v.policies = policies;
        v.sets = new_sets;
        let changed = !upsert.is_empty() || !remove.is_empty() || !changes.is_empty();
        // Strictly increasing whenever something changed, even when a
        // listing returns a revision the view already has (its two reads
        // may straddle a change): sessions and agents drop frames that are
        // not newer than what they hold.
        v.revision = if changed && v.ready {
            (v.revision + 1).max(revision)
        } else {
            v.revision.max(revision)
        };
        let was_ready = v.ready;
        v.ready = true;
        if changed {
            v.snapshot = None;
            info!(
                "policy view at revision {revision}: {} policies written, {} deleted, {} address sets changed; {} policies, {} sets, {} hosts with endpoints",
                upsert.len(),
                remove.len(),
                changes.len(),
                v.policies.len(),
                v.sets.len(),
                v.endpoints.len()
            );
            let msg = ControllerMsg::PolicyDelta {
                revision: v.revision,
                upsert,
                remove,
                sets: changes,
            };
            let frame = Arc::new(Frame {
                revision: v.revision,
                bytes: Bytes::from(wire::encode(&msg)),
            });
            let _ = self.tx.send(frame);
        }
        drop(v);
        if !was_ready {
            self.ready.notify_waiters();
        }
    }

    /// Watches the inputs forever; on etcd errors backs off and lists again.
    pub async fn run(self: Arc<Self>, store: Store) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.watch_once(&store).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    warn!("policy watch: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn watch_once(&self, store: &Store) -> anyhow::Result<()> {
        let (rev, inputs) = store.policy_inputs().await?;
        debug!("policy inputs listed: {} at revision {rev}", inputs.len());
        self.apply(rev, inputs, true).await;
        let mut watch = store.watch_policy_inputs(rev + 1).await?;
        // A reader task hands answers over a channel, so batching never
        // cancels a half-read answer.
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let reader = tokio::spawn(async move {
            loop {
                let r = watch.next().await;
                let end = !matches!(r, Ok(Some(_)));
                if tx.send(r).await.is_err() || end {
                    return;
                }
            }
        });
        let _abort = AbortOnDrop(reader);
        loop {
            let Some(first) = rx.recv().await else {
                anyhow::bail!("watch stream ended");
            };
            let mut answers = vec![first];
            while let Ok(Some(r)) = tokio::time::timeout(BATCH_WINDOW, rx.recv()).await {
                answers.push(r);
            }
            let (mut batch, mut rev) = (Vec::new(), 0);
            for r in answers {
                match r? {
                    None => anyhow::bail!("watch stream ended"),
                    Some(PolicyWatchEvent::Cancelled { reason }) => {
                        info!("policy watch cancelled ({reason}); listing again");
                        return Ok(());
                    }
                    Some(PolicyWatchEvent::Changes { revision, inputs }) => {
                        rev = rev.max(revision);
                        batch.extend(inputs);
                    }
                }
            }
            if !batch.is_empty() {
                self.apply(rev, batch, false).await;
            }
        }
    }
}
