//! The simulated network: [`Lab`] builds it and removes it.
//!
//! ```text
//!   <prefix>-h1 eth0 198.18.0.11 ─┐
//!   <prefix>-h2 eth0 198.18.0.12 ─┤ br0 in <prefix>-u (underlay)
//!   ...                           │
//!   <prefix>-r  eth0 198.18.0.1  ─┘
//!   <prefix>-r  eth1 203.0.113.1 ──── eth0 203.0.113.2 <prefix>-i (internet)
//!   <prefix>-r  eth2 198.18.0.241/28 ─┐ br1 in <prefix>-u (routed segment)
//!   <prefix>-hK eth0 198.18.0.242/28 ─┘ (hosts in LabOpts::routed only)
//! ```
//!
//! Hosts on `br0` reach the routed segment through the router (a /28 route
//! more specific than their /24), so to them a routed host is a different
//! L2 segment, as a host in another rack would be.
//!
//! The internet namespace routes 198.18.0.0/24 back via the router but has
//! no route to the cluster CIDR, so traffic from an endpoint namespace only
//! comes back if the agent masqueraded it to its host's address.
//!
//! Where things are: the addressing plan in [`addresses`], the options in
//! [`options`], building the namespaces and links in [`underlay`], the
//! processes a lab starts in [`process`], its logs in [`logs`], the
//! manifest of a persisted lab in [`manifest`]; the simulated hosts in
//! [`crate::host`], etcd and the controllers in [`crate::cluster`].

pub mod addresses;
pub mod logs;
pub mod manifest;
pub mod options;
pub mod underlay;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use anyhow::{bail, Context, Result};

pub use crate::logfile::log_tail;
pub use crate::registry::process::Process;
pub use crate::registry::Shared;
pub use addresses::*;
pub use logs::KEEP_LOGS_ENV;
pub use manifest::{Manifest, ManifestHost, ManifestProc, MANIFEST};
pub use options::LabOpts;

use crate::cleanup::{self, proc_start_time, Leftovers, LAB_ROOT};
use crate::host::Host;
use crate::netns::{self, ns_path};
use crate::registry::process::spawn_logged;
use crate::require_root;

/// A simulated network of hosts, built in fresh network namespaces.
///
/// Dropping the lab (also during a panic) kills every process it started
/// and every process still inside its namespaces, unmounts everything under
/// its directory, deletes its namespaces and removes the directory — unless
/// [`Lab::persist`] was called.
#[derive(Debug)]
pub struct Lab {
    /// Unique name prefix of every namespace of this lab.
    pub prefix: String,
    /// The lab directory (per-host state, run and netns dirs, logs).
    pub dir: PathBuf,
    hosts: Vec<Host>,
    pub(crate) shared: Arc<Shared>,
    /// Long-running processes of the lab itself (etcd, controllers), by label.
    pub(crate) held: Mutex<BTreeMap<String, Process>>,
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEEP_LOCK: Mutex<()> = Mutex::new(());

impl Lab {
    /// Builds a lab; panics (after cleaning up) if that fails. Panics too if
    /// not root or network namespaces are unavailable.
    pub fn new(opts: LabOpts) -> Lab {
        match Lab::try_new(opts) {
            Ok(l) => l,
            Err(e) => panic!("cannot build the weft lab: {e:#}"),
        }
    }

    /// Builds a lab, sweeping leftovers of dead earlier labs first.
    pub fn try_new(opts: LabOpts) -> Result<Lab> {
        require_root();
        if opts.hosts == 0 || opts.hosts > 200 {
            bail!("hosts must be 1..=200, not {}", opts.hosts);
        }
        if opts.routed.len() > 13 || opts.routed.iter().any(|&r| r == 0 || r > opts.hosts) {
            bail!(
                "routed hosts {:?}: at most 13, each 1..={}",
                opts.routed,
                opts.hosts
            );
        }
        {
            let _g = SWEEP_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            cleanup::sweep_stale();
        }
        let temp = opts.prefix.is_none();
        let prefix = opts.prefix.clone().unwrap_or_else(|| {
            format!(
                "wt{}x{}",
                std::process::id(),
                LAB_COUNTER.fetch_add(1, Ordering::SeqCst)
            )
        });
        if prefix.is_empty()
            || prefix.len() > 40
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            bail!("lab prefix {prefix:?} must be 1-40 characters of [a-z0-9]");
        }
        let dir = opts
            .dir
            .clone()
            .unwrap_or_else(|| Path::new(LAB_ROOT).join(&prefix));
        let dir = if dir.is_absolute() {
            dir
        } else {
            std::env::current_dir()?.join(dir)
        };
        if dir.exists() && fs::read_dir(&dir)?.next().is_some() {
            bail!("lab directory {} exists and is not empty", dir.display());
        }
        if Path::new(netns::NETNS_RUN_DIR)
            .join(format!("{prefix}-u"))
            .exists()
        {
            bail!(
                "namespace {prefix}-u exists already: is another lab running with prefix {prefix}?"
            );
        }
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        if temp {
            let me = std::process::id() as i32;
            let start = proc_start_time(me).unwrap_or(0);
            fs::write(dir.join("owner"), format!("{me} {start}\n"))?;
        }
        let shared = Arc::new(Shared {
            prefix: prefix.clone(),
            dir: dir.clone(),
            netns: Mutex::new(Vec::new()),
            procs: Mutex::new(Vec::new()),
            persist: AtomicBool::new(false),
            detachable: opts.detachable,
            counter: AtomicU32::new(0),
            cluster: Mutex::new(None),
            log_format: opts.log_format,
        });
        let hosts = (1..=opts.hosts)
            .map(|i| {
                let subnet = opts
                    .subnets
                    .get(i - 1)
                    .cloned()
                    .unwrap_or_else(|| default_subnet(i));
                let ip = match opts.routed.iter().position(|&r| r == i) {
                    Some(k) => routed_host_ip(k),
                    None => host_ip(i),
                };
                Host::describe(&shared, i, ip, subnet)
            })
            .collect();
        // From here on, Drop cleans up whatever was built.
        let lab = Lab {
            prefix,
            dir,
            hosts,
            shared,
            held: Mutex::new(Default::default()),
        };
        // Record every name before creating anything, and write the
        // manifest, so a failure or a kill half-way can be cleaned up.
        let mut short = vec!["u", "r", "i"];
        if opts.controllers > 0 {
            short.push("c");
        }
        let mut names: Vec<String> = short
            .iter()
            .map(|s| format!("{}-{s}", lab.prefix))
            .collect();
        names.extend(lab.hosts().iter().map(|h| h.ns_name.clone()));
        lab.shared.netns.lock().unwrap().extend(names);
        lab.write_manifest()?;
        lab.build(&opts.routed).context("build the lab network")?;
        if opts.controllers > 0 {
            lab.build_cluster(&opts)
                .context("start the lab's cluster")?;
        }
        Ok(lab)
    }

    /// Host `i` (1-based). Panics if there is no such host.
    pub fn host(&self, i: usize) -> &Host {
        assert!(
            i >= 1 && i <= self.hosts.len(),
            "no host {i} in a lab of {} hosts (hosts are numbered from 1)",
            self.hosts.len()
        );
        &self.hosts[i - 1]
    }

    /// All hosts, h1 first.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Path of the underlay namespace (holds bridge `br0`).
    pub fn underlay(&self) -> PathBuf {
        ns_path(format!("{}-u", self.prefix))
    }

    /// Path of the router namespace.
    pub fn router(&self) -> PathBuf {
        ns_path(format!("{}-r", self.prefix))
    }

    /// Path of the internet namespace (203.0.113.2).
    pub fn internet(&self) -> PathBuf {
        ns_path(format!("{}-i", self.prefix))
    }

    /// Names of all lab namespaces in `/run/netns` (not the agents'
    /// endpoint namespaces).
    pub fn namespaces(&self) -> Vec<String> {
        self.shared.netns.lock().unwrap().clone()
    }

    /// Resolves a namespace reference: a path (contains `/`), a short lab
    /// name (`u`, `r`, `i`, `h1`, …), or a name in `/run/netns`.
    pub fn ns(&self, ns: impl AsRef<Path>) -> PathBuf {
        let ns = ns.as_ref();
        let s = ns.to_string_lossy();
        if !s.contains('/') {
            let full = format!("{}-{s}", self.prefix);
            if self.shared.netns.lock().unwrap().contains(&full) {
                return ns_path(full);
            }
        }
        ns_path(ns)
    }

    /// Runs `cmd` inside namespace `ns` (see [`Lab::ns`]) and returns its
    /// output (time limit [`netns::EXEC_TIMEOUT`]). Panics only if it
    /// cannot be started.
    pub fn exec(&self, ns: impl AsRef<Path>, cmd: &[&str]) -> Output {
        let path = self.ns(ns);
        netns::exec_in(&path, cmd).unwrap_or_else(|e| panic!("in {}: {e:#}", path.display()))
    }

    /// Like [`Lab::exec`] but panics unless the command exits 0; returns
    /// its stdout.
    pub fn exec_ok(&self, ns: impl AsRef<Path>, cmd: &[&str]) -> String {
        let path = self.ns(ns);
        let what = format!("`{}` in {}", cmd.join(" "), path.display());
        netns::stdout_of_success(&what, &self.exec(&path, cmd))
    }

    /// Pings `ip` from namespace `ns` until one reply comes, for at most
    /// 3 s (a probe every 200 ms, so a lost first packet or a slow ARP
    /// under load does not fail a test); true if answered. To show that
    /// something does NOT answer, [`Lab::ping_once`] is quicker.
    pub fn ping(&self, ns: impl AsRef<Path>, ip: impl std::fmt::Display) -> bool {
        let ip = ip.to_string();
        self.exec(
            ns,
            &["ping", "-n", "-q", "-c", "1", "-i", "0.2", "-w", "3", &ip],
        )
        .status
        .success()
    }

    /// One `ping -c 1 -W 1 ip` from namespace `ns`; true if answered.
    pub fn ping_once(&self, ns: impl AsRef<Path>, ip: impl std::fmt::Display) -> bool {
        let ip = ip.to_string();
        self.exec(ns, &["ping", "-n", "-q", "-c", "1", "-W", "1", &ip])
            .status
            .success()
    }

    /// Starts `cmd` in the background inside namespace `ns`, output to a log
    /// file in the lab directory. Killed at the latest when the lab goes.
    pub fn spawn(&self, ns: impl AsRef<Path>, cmd: &[&str]) -> Process {
        let path = self.ns(ns);
        spawn_logged(&self.shared, None, "proc", &path, cmd, &[])
            .unwrap_or_else(|e| panic!("spawn `{}` in {}: {e:#}", cmd.join(" "), path.display()))
    }

    /// Creates a bare namespace `/run/netns/<prefix>-<short>` (as a
    /// container runtime makes one), removed with the lab; its path.
    pub fn add_netns(&self, short: &str) -> PathBuf {
        let full = format!("{}-{short}", self.prefix);
        let out = std::process::Command::new("ip")
            .args(["netns", "add", &full])
            .output()
            .unwrap_or_else(|e| panic!("ip netns add {full}: {e}"));
        assert!(
            out.status.success(),
            "ip netns add {full}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.shared.netns.lock().unwrap().push(full.clone());
        ns_path(full)
    }

    /// Deletes a namespace made by [`Lab::add_netns`] (as a runtime does
    /// when its container goes).
    pub fn del_netns(&self, short: &str) {
        let full = format!("{}-{short}", self.prefix);
        let out = std::process::Command::new("ip")
            .args(["netns", "del", &full])
            .output()
            .unwrap_or_else(|e| panic!("ip netns del {full}: {e}"));
        assert!(
            out.status.success(),
            "ip netns del {full}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.shared.netns.lock().unwrap().retain(|n| *n != full);
    }

    /// Removes the lab now, persistent or not (what Drop does for a
    /// non-persistent lab).
    pub fn destroy(self) {
        self.shared.persist.store(false, Ordering::SeqCst);
        drop(self);
    }

    fn teardown(&self) {
        crate::registry::process::kill_all(&self.shared);
        self.remove_rest();
    }

    fn remove_rest(&self) {
        let netns = self
            .shared
            .netns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        cleanup::teardown(&Leftovers {
            netns,
            dir: Some(self.dir.clone()),
            procs: Vec::new(),
            remove_dir: true,
        });
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.shared.persisting() {
            return;
        }
        if thread::panicking() {
            // Stop everything first, so the logs are complete.
            let ended = crate::registry::process::kill_all(&self.shared);
            eprintln!("----- weft lab {} processes -----", self.prefix);
            for l in ended {
                eprintln!("{l}");
            }
            self.dump_logs();
        } else if std::env::var_os(KEEP_LOGS_ENV).is_some() {
            crate::registry::process::kill_all(&self.shared);
            self.keep_logs();
        }
        self.teardown();
    }
}
