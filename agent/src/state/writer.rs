//! The one thread that writes the state directory. Writes are queued and
//! done in order, each synced to disk; a caller that must know its write
//! is durable (an endpoint's record before `ns add` answers) awaits the
//! returned [`WriteDone`], and may do other work meanwhile. The peer set
//! (`peers.json`, rewritten on every change from the controller) is
//! coalesced: only the newest one waiting is written.

use std::fs::OpenOptions;
use std::future::Future;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::{
    io_err, remove_if_exists, sync_dir, to_json, write_atomic, EndpointRecord, NodeState,
    PeersState, PolicyState, Result, StateError, Store,
};

enum Job {
    Write(PathBuf, Vec<u8>),
    /// Removed, and the removal made durable.
    Remove(PathBuf),
    /// The newest peer set waiting in the slot.
    Peers,
}

type Reply = oneshot::Sender<Result<()>>;

/// A queued write; resolves once it is on disk.
pub struct WriteDone(oneshot::Receiver<Result<()>>);

impl Future for WriteDone {
    type Output = Result<()>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StateError::WriterGone)))
    }
}

/// The writer of one state directory (it holds the directory's lock).
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<(Job, Option<Reply>)>,
    dir: PathBuf,
    peers: Arc<Mutex<Option<PeersState>>>,
}

impl Writer {
    /// Starts the thread; it ends when every `Writer` is dropped, after
    /// the writes queued before.
    pub fn start(store: Store) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<(Job, Option<Reply>)>();
        let dir = store.dir().to_path_buf();
        let peers: Arc<Mutex<Option<PeersState>>> = Arc::default();
        let slot = peers.clone();
        let peers_path = dir.join("peers.json");
        std::thread::Builder::new()
            .name("weft-state".into())
            .spawn(move || {
                let _lock = store;
                for (job, reply) in rx {
                    let r = match job {
                        Job::Write(path, bytes) => write_atomic(&path, &bytes),
                        Job::Remove(path) => remove_if_exists(&path).and_then(|()| sync_dir(&path)),
                        Job::Peers => match slot.lock().expect("peers slot").take() {
                            Some(p) => write_atomic(&peers_path, &to_json(&p)),
                            None => Ok(()),
                        },
                    };
                    match reply {
                        Some(reply) => {
                            let _ = reply.send(r);
                        }
                        None => {
                            if let Err(e) = r {
                                tracing::warn!("{e}");
                            }
                        }
                    }
                }
            })?;
        Ok(Writer { tx, dir, peers })
    }

    fn submit(&self, job: Job) -> WriteDone {
        let (tx, rx) = oneshot::channel();
        // A send fails only when the thread is gone: the receiver then
        // reports WriterGone.
        let _ = self.tx.send((job, Some(tx)));
        WriteDone(rx)
    }

    fn endpoint_path(&self, name: &str) -> PathBuf {
        self.dir.join("endpoints").join(format!("{name}.json"))
    }

    fn pending_path(&self, name: &str) -> PathBuf {
        self.dir.join("pending").join(name)
    }

    pub fn save_node(&self, node: &NodeState) -> WriteDone {
        self.submit(Job::Write(self.dir.join("node.json"), to_json(node)))
    }

    pub fn save_endpoint(&self, rec: &EndpointRecord) -> WriteDone {
        self.submit(Job::Write(self.endpoint_path(&rec.name), to_json(rec)))
    }

    pub fn remove_endpoint(&self, name: &str) -> WriteDone {
        self.submit(Job::Remove(self.endpoint_path(name)))
    }

    /// The marker that `ns add` of `name` is under way: one found at start
    /// means the agent died half-way, and the pieces are removed. It is
    /// made here, at once, not by the writer thread, and not synced to
    /// disk: what it guards are kernel objects, and none of them outlive a
    /// power loss that would lose the marker (an agent that dies leaves it
    /// in the file system). A sync, or a round trip to the writer, would
    /// add to every `ns add` for nothing.
    pub fn mark_pending(&self, name: &str) -> Result<()> {
        touch(&self.pending_path(name))
    }

    /// Removes the marker (at once and not synced, as [`Writer::mark_pending`]).
    pub fn clear_pending(&self, name: &str) -> Result<()> {
        remove_if_exists(&self.pending_path(name))
    }

    /// Whether the marker of `name` exists.
    pub fn is_pending(&self, name: &str) -> bool {
        self.pending_path(name).exists()
    }

    /// Queues the peer set; a newer one queued before this is written
    /// replaces it. Failures are logged.
    pub fn save_peers(&self, peers: PeersState) {
        *self.peers.lock().expect("peers slot") = Some(peers);
        let _ = self.tx.send((Job::Peers, None));
    }

    /// Queues the network policy (`policy.json`); failures are logged.
    pub fn save_policy(&self, policy: &PolicyState) {
        let _ = self.tx.send((
            Job::Write(self.dir.join("policy.json"), to_json(policy)),
            None,
        ));
    }

    /// Resolves once every write queued before it is done.
    pub fn flush(&self) -> WriteDone {
        self.submit(Job::Peers)
    }
}

fn touch(path: &std::path::Path) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(io_err("create", path))
}
