//! What a lab's parts share, below all of them: the lab's registry of
//! namespaces and processes ([`Shared`]), the processes themselves
//! ([`process`]), and what agents need to join its cluster
//! ([`ClusterInfo`]). The lab (`crate::lab`), its hosts (`crate::host`)
//! and its cluster (`crate::cluster`) use it; it uses none of them.

pub mod process;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use weft_common::logging::LogFormat;

use process::{ProcRec, Slot};

/// What a lab shares with its hosts and processes: names, directory, the
/// registry of started processes, whether it is persisted.
#[derive(Debug)]
pub struct Shared {
    pub(crate) prefix: String,
    pub(crate) dir: PathBuf,
    pub(crate) netns: Mutex<Vec<String>>,
    pub(crate) procs: Mutex<Vec<ProcRec>>,
    pub(crate) persist: AtomicBool,
    pub(crate) detachable: bool,
    pub(crate) counter: AtomicU32,
    pub(crate) cluster: Mutex<Option<ClusterInfo>>,
    /// `--log-format` of the agents and controllers.
    pub(crate) log_format: LogFormat,
}

impl Shared {
    pub(crate) fn register(
        &self,
        host: Option<usize>,
        label: &str,
        slot: Slot,
    ) -> Arc<Mutex<Slot>> {
        let slot = Arc::new(Mutex::new(slot));
        self.procs.lock().unwrap().push(ProcRec {
            host,
            label: label.to_string(),
            slot: slot.clone(),
        });
        slot
    }

    pub(crate) fn persisting(&self) -> bool {
        self.persist.load(Ordering::SeqCst)
    }

    pub(crate) fn next(&self) -> u32 {
        self.counter.fetch_add(1, Ordering::SeqCst)
    }

    /// `--log-format FORMAT` for a daemon's command line; nothing for the
    /// daemons' default (so a test may still give its own).
    pub(crate) fn log_format_args(&self) -> Vec<String> {
        match self.log_format {
            LogFormat::Text => Vec::new(),
            f => vec!["--log-format".into(), f.to_string()],
        }
    }
}

/// What agents need to join (kept in the manifest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// `--controller` addresses, c1 first.
    pub controllers: Vec<String>,
    /// The PKI directory: `ca.pem`, and `NAME/` per node.
    pub pki: PathBuf,
    /// `--lease-ttl` given to controllers.
    pub lease_ttl: Option<u64>,
    pub etcd_data: PathBuf,
    /// etcd members (`crate::cluster::etcd`); 0 in old manifests means 1.
    #[serde(default)]
    pub etcd_members: usize,
    /// A TLS etcd with users (`crate::cluster::etcd_tls`), if any.
    #[serde(default)]
    pub etcd_tls: Option<EtcdTls>,
}

/// Where a TLS etcd's material lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdTls {
    /// `<lab>/etcd-pki`.
    pub dir: PathBuf,
}
