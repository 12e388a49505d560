//! The agent's persisted state under `--state-dir`:
//!
//! - `node.json`: node name and subnet;
//! - `endpoints/<name>.json`: one file per namespace, so adding one writes
//!   one small file, however many exist;
//! - `pending/<name>`: a marker that exists while `ns add` is building that
//!   namespace; one found at start means the agent died half-way, and the
//!   pieces are removed;
//! - `lock`: held (flock) while an agent uses the directory.
//!
//! Every file is replaced atomically (write a temporary file, sync it,
//! rename, sync the directory). A file that cannot be read or decoded stops
//! the agent with an error naming it: starting empty would delete every
//! working endpoint.
//!
//! [`Store`] locks the directory and loads it at start; from then on every
//! write goes through the one [`Writer`] thread (`writer.rs`), off the
//! async runtime: a write and its fsyncs never hold up a worker thread.

mod writer;

pub use writer::{WriteDone, Writer};

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use weft_common::cluster::{HostRecord, NetworkConfig};
use weft_common::name::host_veth_name;
use weft_common::{validate_name, MacAddr};

pub use crate::model::endpoint::EndpointRecord;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {path} is corrupt ({reason}); nothing was changed: restore it from a backup or repair it by hand, then start weft-agent again (deleting it makes weft-agent remove what it describes)")]
    Corrupt { path: PathBuf, reason: String },
    #[error("another weft-agent is already using state directory {0}")]
    Locked(PathBuf),
    #[error("the state writer has stopped")]
    WriterGone,
}

type Result<T> = std::result::Result<T, StateError>;

/// The node's identity, written once and on a subnet change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeState {
    pub node: String,
    pub subnet: Ipv4Network,
    /// MTU of the bridge and veths, kept for starts where it cannot be
    /// detected (no default route yet).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The VXLAN device's MAC: generated once, never changed.
    #[serde(default)]
    pub vtep_mac: Option<MacAddr>,
    /// The cluster's network config as last assigned by a controller (cluster
    /// mode), so a restart without a controller serves as before.
    #[serde(default)]
    pub cluster: Option<NetworkConfig>,
}

/// The peer set as last received from a controller (`peers.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersState {
    pub revision: i64,
    pub peers: Vec<HostRecord>,
}

/// The network policy as last received from a controller
/// (`policy.json`): the policies and the address sets their rules name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyState {
    pub revision: i64,
    pub policies: Vec<weft_common::policy::Policy>,
    pub sets: weft_common::policy::sets::Sets,
}

/// What a cluster agent saved of its controllers' messages.
#[derive(Debug, Default)]
pub struct SavedLink {
    pub peers: Option<PeersState>,
    pub policy: Option<PolicyState>,
}

/// Everything loaded at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub node: Option<NodeState>,
    pub endpoints: BTreeMap<String, EndpointRecord>,
    pub pending: Vec<String>,
}

pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// Opens (creating if needed) the state directory and locks it.
    pub fn open(dir: &Path) -> Result<Store> {
        for sub in ["", "endpoints", "pending"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io_err("create state directory", &d))?;
        }
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock)
            .map_err(|_| StateError::Locked(dir.to_path_buf()))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// Everything in the directory (see [`load`]).
    pub fn load(&self) -> Result<Loaded> {
        load(&self.dir)
    }

    /// The peer set and the policy saved by the writer, if any.
    pub fn load_link(&self) -> Result<SavedLink> {
        Ok(SavedLink {
            peers: self.load_optional("peers.json")?,
            policy: self.load_optional("policy.json")?,
        })
    }

    fn load_optional<T: serde::de::DeserializeOwned>(&self, file: &str) -> Result<Option<T>> {
        let path = self.dir.join(file);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(decode(&path, &bytes)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Node, endpoints and pending markers of a state directory.
pub fn load(dir: &Path) -> Result<Loaded> {
    let mut loaded = Loaded::default();
    let node_path = dir.join("node.json");
    match fs::read(&node_path) {
        Ok(bytes) => loaded.node = Some(decode(&node_path, &bytes)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("read", &node_path)(e)),
    }
    for (name, path) in list(dir, "endpoints")? {
        let Some(name) = name.strip_suffix(".json") else {
            continue;
        };
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        let rec: EndpointRecord = decode(&path, &bytes)?;
        let reason = if rec.name != name {
            Some(format!("it describes {:?}", rec.name))
        } else if let Err(e) = validate_name(&rec.name) {
            Some(e.to_string())
        } else if rec.host_veth != host_veth_name(&rec.name) {
            Some(format!(
                "host_veth {:?} is not weft's name for it",
                rec.host_veth
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(StateError::Corrupt { path, reason });
        }
        loaded.endpoints.insert(rec.name.clone(), rec);
    }
    for (name, path) in list(dir, "pending")? {
        // A marker is only ever created for a valid name; anything else
        // is not ours to act on.
        match validate_name(&name) {
            Ok(()) => loaded.pending.push(name),
            Err(_) => tracing::warn!("ignoring {}: not a namespace name", path.display()),
        }
    }
    Ok(loaded)
}

/// File names in a subdirectory, skipping temporary files.
fn list(dir: &Path, sub: &str) -> Result<Vec<(String, PathBuf)>> {
    let dir = dir.join(sub);
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
        let entry = entry.map_err(io_err("read", &dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).expect("state types always serialize");
    b.push(b'\n');
    b
}

fn decode<T: for<'de> Deserialize<'de>>(path: &Path, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        let mut reason = e.to_string();
        if bytes.is_empty() {
            reason = "the file is empty".into();
        } else if reason.starts_with("unknown field") || reason.starts_with("unknown variant") {
            reason.push_str("; a newer weft-agent may have written it");
        }
        StateError::Corrupt {
            path: path.to_path_buf(),
            reason,
        }
    })
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        // No such file, or no such directory to hold it.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(io_err("remove", path)(e)),
        Ok(()) => Ok(()),
    }
}

/// Replaces `path` with `bytes` so that a reader, a crash or a power loss
/// (the data is synced before the rename, the directory after it) sees
/// either the old or the new content, never a mix or nothing.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.sync_data().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
    sync_dir(path)
}

/// Syncs the directory holding `path`: a rename, a new or a removed file
/// is durable only once its directory entry is.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-state-test-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn round_trip_and_lock() {
        let d = tmpdir("rt");
        let store = Store::open(&d).unwrap();
        assert!(matches!(Store::open(&d), Err(StateError::Locked(_))));
        let w = Writer::start(store).unwrap();
        let node = NodeState {
            node: "h1".into(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            mtu: Some(1450),
            vtep_mac: None,
            cluster: None,
        };
        w.save_node(&node).await.unwrap();
        let rec = EndpointRecord {
            name: "a".into(),
            ip: "10.244.1.2".parse().unwrap(),
            mac: "0a:58:0a:f4:01:02".parse().unwrap(),
            host_veth: host_veth_name("a"),
            publish: vec!["8080:80".parse().unwrap()],
            attachment: None,
            labels: [("app".to_string(), "web".to_string())].into(),
        };
        w.save_endpoint(&rec).await.unwrap();
        w.mark_pending("b").unwrap();
        assert!(w.is_pending("b"));
        let l = load(&d).unwrap();
        assert_eq!(l.node, Some(node));
        assert_eq!(l.endpoints.get("a"), Some(&rec));
        assert_eq!(l.pending, vec!["b".to_string()]);
        w.remove_endpoint("a").await.unwrap();
        w.clear_pending("b").unwrap();
        let l = load(&d).unwrap();
        assert!(l.endpoints.is_empty() && l.pending.is_empty());
        // Peer sets are coalesced: the newest one is what lands.
        for revision in 1..=50 {
            w.save_peers(PeersState {
                revision,
                peers: vec![],
            });
        }
        w.flush().await.unwrap();
        let saved: PeersState =
            serde_json::from_slice(&fs::read(d.join("peers.json")).unwrap()).unwrap();
        assert_eq!(saved.revision, 50);
        // The lock goes with the last writer.
        drop(w);
        assert!(wait_unlocked(&d), "the writer thread kept the lock");
        fs::remove_dir_all(&d).unwrap();
    }

    /// The writer thread ends after its queue: poll for the lock briefly.
    fn wait_unlocked(d: &Path) -> bool {
        for _ in 0..200 {
            if Store::open(d).is_ok() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn corrupt_files_are_refused_by_name() {
        let d = tmpdir("corrupt");
        let store = Store::open(&d).unwrap();
        let bad = d.join("endpoints").join("a.json");
        fs::write(&bad, b"{\"name\":\"a\",\"ip\":").unwrap();
        let e = load(&d).unwrap_err();
        assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
        fs::write(&bad, b"").unwrap();
        assert!(matches!(load(&d), Err(StateError::Corrupt { .. })));
        drop(store);
        fs::remove_dir_all(&d).unwrap();
    }
}
