//! The controller's view of the host registry and the fan-out of its
//! changes to connected agents.
//!
//! One task watches `<prefix>/hosts/` and keeps an in-memory copy with the
//! etcd revision it reflects. Each change becomes a `delta` frame, encoded
//! once and broadcast as shared bytes to every session. A session starts from
//! a snapshot of the copy and then forwards the deltas newer than it. When
//! the watch breaks (etcd outage, compaction) the task lists the hosts again,
//! sends the difference as one delta and watches from the new revision, so
//! agents never miss a change and never need to reconnect for it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, RwLock};
use tracing::{debug, info, warn};
use weft_common::cluster::HostRecord;
use weft_common::events;
use weft_common::wire::{self, ControllerMsg, PeerChange};

use crate::store::{Store, WatchEvent};
use crate::telemetry::metrics;

/// Deltas buffered per session before a slow session is resynced with a
/// snapshot instead.
const FANOUT_BUFFER: usize = 4096;

/// Changes are gathered into one delta until none has arrived for this
/// long (a lone change goes out after this delay)…
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// …or until the first of them has waited this long. A registration storm
/// then costs each session one frame per this period instead of one per
/// host or per quiet gap: with thousands of sessions, frames (packets and
/// their acks), not bytes, are what the controller's CPU goes on.
const BATCH_MAX: Duration = Duration::from_millis(250);

/// A delta, ready to write. The bytes are shared by every session.
#[derive(Debug)]
pub struct Frame {
    pub revision: i64,
    pub bytes: Bytes,
}

#[derive(Default)]
struct View {
    revision: i64,
    hosts: BTreeMap<String, HostRecord>,
    /// Whether the view has been loaded from etcd at least once.
    ready: bool,
    /// The snapshot frame of this revision, encoded once for every session
    /// that subscribes before the next change.
    snapshot: Option<Bytes>,
}

pub struct Hub {
    view: RwLock<View>,
    tx: broadcast::Sender<Arc<Frame>>,
    ready: tokio::sync::Notify,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        let (tx, _) = broadcast::channel(FANOUT_BUFFER);
        Hub {
            view: RwLock::new(View::default()),
            tx,
            ready: tokio::sync::Notify::new(),
        }
    }

    /// Deltas buffered for the slowest session (the fan-out backlog).
    pub fn queue_depth(&self) -> usize {
        self.tx.len()
    }

    /// A snapshot frame (every host) and a receiver for the deltas after it.
    /// Waits until the view has been loaded once.
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
                            let msg = ControllerMsg::Snapshot {
                                revision: v.revision,
                                peers: v.hosts.values().cloned().collect(),
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

    /// Applies changes at `revision` to the view and broadcasts them.
    async fn apply(&self, revision: i64, changes: Vec<PeerChange>) {
        let mut v = self.view.write().await;
        let mut effective = Vec::new();
        for c in changes {
            match c {
                PeerChange::Upsert { host } => {
                    let same = v
                        .hosts
                        .get(&host.name)
                        .is_some_and(|o| o.same_tunnel(&host));
                    v.hosts.insert(host.name.clone(), host.clone());
                    if !same {
                        effective.push(PeerChange::Upsert { host });
                    }
                }
                PeerChange::Remove { name } => {
                    if v.hosts.remove(&name).is_some() {
                        effective.push(PeerChange::Remove { name });
                    }
                }
            }
        }
        v.revision = v.revision.max(revision);
        v.snapshot = None;
        let was_ready = v.ready;
        v.ready = true;
        if !effective.is_empty() {
            for c in &effective {
                match c {
                    PeerChange::Upsert { host } => info!(
                        event = events::PEER_UPDATE,
                        host = %host.name,
                        change = "upsert",
                        revision,
                        "peer update: host {} subnet {} at {} (revision {revision})",
                        host.name,
                        host.subnet,
                        host.public_ip
                    ),
                    PeerChange::Remove { name } => info!(
                        event = events::PEER_UPDATE,
                        host = %name,
                        change = "remove",
                        revision,
                        "peer update: host {name} left (revision {revision})"
                    ),
                }
            }
            let msg = ControllerMsg::Delta {
                revision,
                changes: effective,
            };
            let frame = Arc::new(Frame {
                revision,
                bytes: Bytes::from(wire::encode(&msg)),
            });
            // No receivers is fine: nobody is connected.
            let _ = self.tx.send(frame);
            metrics::get().delta_frames.inc();
            metrics::get().fanout_queue.set(self.tx.len() as i64);
        }
        drop(v);
        if !was_ready {
            self.ready.notify_waiters();
        }
    }

    /// Replaces the view with a full listing, broadcasting the difference.
    async fn resync(&self, revision: i64, hosts: BTreeMap<String, HostRecord>) {
        // `apply` broadcasts only what differs in tunnel terms.
        let mut changes: Vec<PeerChange> = self
            .view
            .read()
            .await
            .hosts
            .keys()
            .filter(|n| !hosts.contains_key(*n))
            .map(|name| PeerChange::Remove { name: name.clone() })
            .collect();
        changes.extend(hosts.into_values().map(|host| PeerChange::Upsert { host }));
        self.apply(revision, changes).await;
    }

    /// Watches the hosts prefix forever. Never exits on etcd errors: backs
    /// off and starts over with a fresh listing.
    pub async fn run(self: Arc<Self>, store: Store) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.watch_once(&store).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    warn!("host watch: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn watch_once(&self, store: &Store) -> anyhow::Result<()> {
        let (rev, hosts) = store.hosts().await?;
        let n = hosts.len();
        self.resync(rev, hosts).await;
        debug!("host list loaded: {n} hosts at revision {rev}");
        let mut watch = store.watch_hosts(rev + 1).await?;
        // A reader task hands answers over a channel, so batching never
        // cancels a half-read answer.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
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
            let mut batch = vec![first];
            // Gather what else arrives until a quiet gap of BATCH_WINDOW,
            // at most BATCH_MAX after the first.
            let last = tokio::time::Instant::now() + BATCH_MAX;
            while batch.len() < 1024 {
                let until = (tokio::time::Instant::now() + BATCH_WINDOW).min(last);
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(r)) => batch.push(r),
                    Ok(None) | Err(_) => break,
                }
            }
            let mut changes = Vec::new();
            let mut rev = 0;
            for r in batch {
                match r? {
                    None => anyhow::bail!("watch stream ended"),
                    Some(WatchEvent::Cancelled {
                        compact_revision,
                        reason,
                    }) => {
                        info!(
                            "host watch cancelled (compacted at {compact_revision}: {reason}); listing again"
                        );
                        if !changes.is_empty() {
                            self.apply(rev, changes).await;
                        }
                        return Ok(());
                    }
                    Some(WatchEvent::Changes {
                        revision,
                        changes: c,
                    }) => {
                        rev = rev.max(revision);
                        changes.extend(c);
                    }
                }
            }
            if !changes.is_empty() {
                self.apply(rev, changes).await;
            }
        }
    }
}

/// Aborts a task when dropped (the watch reader dies with its watch).
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
