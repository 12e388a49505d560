//! The lab manifest (`<lab dir>/lab.json`): what a later process needs to
//! reattach to a lab that outlives its creator (`weft-lab up`, then
//! `weft-lab status` / `down`), and [`Lab::persist`] / [`Lab::attach`].

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use weft_common::logging::LogFormat;

use super::{Lab, Shared};
use crate::cleanup::proc_start_time;
use crate::host::Host;
use crate::registry::process::Slot;

/// File name of the lab manifest inside the lab directory.
pub const MANIFEST: &str = "lab.json";

/// On-disk description of a lab, so later processes can reattach
/// ([`Lab::attach`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub prefix: String,
    pub dir: PathBuf,
    /// All named lab namespaces (`/run/netns/NAME`).
    pub netns: Vec<String>,
    pub hosts: Vec<ManifestHost>,
    pub procs: Vec<ManifestProc>,
    /// Cluster mode: controller addresses and PKI.
    #[serde(default)]
    pub cluster: Option<crate::registry::ClusterInfo>,
    /// `--log-format` of the lab's daemons.
    #[serde(default)]
    pub log_format: LogFormat,
}

/// A host in the [`Manifest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestHost {
    pub name: String,
    pub ip: Ipv4Addr,
    pub subnet: String,
}

/// A running process in the [`Manifest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestProc {
    /// 1-based host index, if the process belongs to a host.
    pub host: Option<usize>,
    /// `agent` for agents.
    pub label: String,
    pub pid: i32,
    pub start: Option<u64>,
}

impl Lab {
    /// The lab's manifest as of now.
    pub fn manifest(&self) -> Manifest {
        let mut procs = Vec::new();
        for r in self.shared.procs.lock().unwrap().iter() {
            let mut slot = r.slot.lock().unwrap();
            if slot.is_running() {
                if let Some(pid) = slot.pid() {
                    let start = match &*slot {
                        Slot::Foreign(_, s) => *s,
                        _ => proc_start_time(pid),
                    };
                    procs.push(ManifestProc {
                        host: r.host,
                        label: r.label.clone(),
                        pid,
                        start,
                    });
                }
            }
        }
        Manifest {
            prefix: self.prefix.clone(),
            dir: self.dir.clone(),
            netns: self.namespaces(),
            hosts: self
                .hosts()
                .iter()
                .map(|h| ManifestHost {
                    name: h.name.clone(),
                    ip: h.ip,
                    subnet: h.subnet.clone(),
                })
                .collect(),
            procs,
            cluster: self.shared.cluster.lock().unwrap().clone(),
            log_format: self.shared.log_format,
        }
    }

    /// Writes the manifest to `<dir>/lab.json` and turns cleanup off: the
    /// lab and its running processes stay after this value (and this
    /// process) is gone. Reattach with [`Lab::attach`]. Processes survive
    /// the terminal only if the lab was built with `detachable`. A lab with
    /// the default `wt<pid>x<n>` prefix is still swept by the first
    /// [`Lab::new`] after this process has exited; give a custom
    /// [`LabOpts::prefix`](crate::LabOpts::prefix) to keep it for good.
    pub fn persist(&self) -> Result<PathBuf> {
        let path = self.write_manifest()?;
        self.shared.persist.store(true, Ordering::SeqCst);
        Ok(path)
    }

    /// Writes the manifest to `<dir>/lab.json` (atomically) without changing
    /// whether the lab is cleaned up on drop; lets a later `Lab::attach` +
    /// [`Lab::destroy`] clean up even if this process dies before
    /// [`Lab::persist`].
    pub fn write_manifest(&self) -> Result<PathBuf> {
        let path = self.dir.join(MANIFEST);
        let tmp = self.dir.join(format!("{MANIFEST}.tmp"));
        fs::write(&tmp, serde_json::to_vec_pretty(&self.manifest())?)?;
        fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Reattaches to a lab persisted in `dir`. The returned lab is still
    /// persistent (dropping it changes nothing); call [`Lab::destroy`] to
    /// remove it, or [`Lab::persist`] again after starting processes.
    pub fn attach(dir: impl AsRef<Path>) -> Result<Lab> {
        let dir = dir.as_ref();
        let path = dir.join(MANIFEST);
        let m: Manifest = serde_json::from_slice(
            &fs::read(&path).with_context(|| format!("read lab manifest {}", path.display()))?,
        )
        .with_context(|| format!("parse {}", path.display()))?;
        let shared = Arc::new(Shared {
            prefix: m.prefix.clone(),
            dir: m.dir.clone(),
            netns: Mutex::new(m.netns.clone()),
            procs: Mutex::new(Vec::new()),
            persist: AtomicBool::new(true),
            detachable: true,
            counter: AtomicU32::new(0),
            cluster: Mutex::new(m.cluster.clone()),
            log_format: m.log_format,
        });
        for p in &m.procs {
            shared.register(p.host, &p.label, Slot::Foreign(p.pid, p.start));
        }
        let hosts = m
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let mut host = Host::describe(&shared, i + 1, h.ip, h.subnet.clone());
                host.name = h.name.clone();
                host
            })
            .collect();
        Ok(Lab {
            prefix: m.prefix,
            dir: m.dir,
            hosts,
            shared,
            held: Mutex::new(Default::default()),
        })
    }
}
