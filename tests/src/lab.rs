//! The simulated network: [`Lab`], its [`Host`]s, and the processes started
//! in it ([`Agent`], [`Process`]).
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

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::cleanup::{self, proc_alive, proc_start_time, Leftovers, LAB_ROOT};
use crate::netns::{self, command_in, describe_status, ns_path, SpawnOpts};
use crate::{bin_path, require_root};

/// Underlay address of the router (the hosts' default gateway).
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Router address on the internet side.
pub const ROUTER_INTERNET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The "internet" host.
pub const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The underlay network of the simulated hosts.
pub const UNDERLAY_CIDR: &str = "198.18.0.0/24";
/// The segment behind the router ([`LabOpts::routed`] hosts).
pub const ROUTED_CIDR: &str = "198.18.0.240/28";
/// The router's address on the routed segment.
pub const ROUTED_ROUTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 241);
/// The cluster CIDR the default host subnets come from.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// File name of the lab manifest inside the lab directory.
pub const MANIFEST: &str = "lab.json";

/// How long [`Host::start_agent`] waits for the agent socket.
pub const AGENT_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Agent::stop`] waits after SIGTERM.
pub const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Underlay address of host `i` (1-based): 198.18.0.(10+i).
pub fn host_ip(i: usize) -> Ipv4Addr {
    assert!(
        (1..=200).contains(&i),
        "host index {i} out of range 1..=200"
    );
    Ipv4Addr::new(198, 18, 0, 10 + i as u8)
}

/// Default subnet of host `i` (1-based): 10.244.i.0/24.
pub fn default_subnet(i: usize) -> String {
    format!("10.244.{i}.0/24")
}

/// First host address of an IPv4 CIDR: the gateway of a host subnet.
pub fn gateway_of(cidr: &str) -> Option<Ipv4Addr> {
    let (a, l) = cidr.split_once('/')?;
    let a: Ipv4Addr = a.parse().ok()?;
    let l: u32 = l.parse().ok()?;
    if l > 30 {
        return None;
    }
    let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
    Some(Ipv4Addr::from((u32::from(a) & mask) + 1))
}

/// How to build a [`Lab`].
#[derive(Debug, Clone)]
pub struct LabOpts {
    /// Number of simulated hosts (1..=200). Default 1.
    pub hosts: usize,
    /// Per-host subnet overrides: `subnets[0]` is for h1, and so on. Hosts
    /// without an entry get [`default_subnet`].
    pub subnets: Vec<String>,
    /// Lab directory. Default `/tmp/weft-lab/<prefix>`. Must not exist or be
    /// empty; it is removed on teardown.
    pub dir: Option<PathBuf>,
    /// Name prefix. Default `wt<pid>x<counter>`, which [`Lab::new`] of later
    /// runs recognises and sweeps once that pid is gone. Give a custom one
    /// (not of that form) for labs that must outlive this process.
    pub prefix: Option<String>,
    /// Start processes in their own session, so they survive this process
    /// and its terminal; needed before [`Lab::persist`].
    pub detachable: bool,
    /// Cluster mode: with `controllers > 0` the lab also runs etcd and that
    /// many controllers in a control namespace (`<prefix>-c`), creates the
    /// PKI and the cluster config, and agents register with the
    /// controllers instead of getting `--subnet`.
    pub controllers: usize,
    /// `--lease-ttl` of the controllers (seconds); default theirs (24 h).
    pub lease_ttl: Option<u64>,
    /// `weftctl cluster init --cidr`; default [`CLUSTER_CIDR`].
    pub cluster_cidr: Option<String>,
    /// `weftctl cluster init --subnet-len`; default 24.
    pub subnet_len: Option<u8>,
    /// Hosts (1-based) placed on a second segment behind the router
    /// ([`ROUTED_CIDR`]) instead of on the shared underlay; at most 13.
    pub routed: Vec<usize>,
    /// Cluster mode: members of the etcd cluster (1 or 3, see
    /// [`crate::etcd`]); default 1.
    pub etcd_members: usize,
    /// Cluster mode: etcd over TLS with client-certificate auth and etcd
    /// users ([`crate::etcd_tls`]); single member only.
    pub etcd_tls: bool,
}

impl Default for LabOpts {
    fn default() -> Self {
        LabOpts {
            hosts: 1,
            subnets: Vec::new(),
            dir: None,
            prefix: None,
            detachable: false,
            controllers: 0,
            lease_ttl: None,
            cluster_cidr: None,
            subnet_len: None,
            routed: Vec::new(),
            etcd_members: 1,
            etcd_tls: false,
        }
    }
}

impl LabOpts {
    /// A lab of `n` hosts, everything else default.
    pub fn hosts(n: usize) -> Self {
        LabOpts {
            hosts: n,
            ..Default::default()
        }
    }

    /// A cluster lab: `hosts` hosts whose agents register with
    /// `controllers` controllers (and etcd) in the control namespace.
    pub fn cluster(hosts: usize, controllers: usize) -> Self {
        LabOpts {
            hosts,
            controllers,
            ..Default::default()
        }
    }

    /// Sets the subnet of host `i` (1-based).
    pub fn subnet(mut self, i: usize, cidr: &str) -> Self {
        assert!(i >= 1, "hosts are numbered from 1");
        while self.subnets.len() < i {
            let n = self.subnets.len() + 1;
            self.subnets.push(default_subnet(n));
        }
        self.subnets[i - 1] = cidr.to_string();
        self
    }
}

/// State of a started process.
#[derive(Debug)]
enum Slot {
    Running(Child),
    Exited(ExitStatus),
    /// Not our child (reattached from a manifest): pid and start time.
    Foreign(i32, Option<u64>),
}

impl Slot {
    fn pid(&self) -> Option<i32> {
        match self {
            Slot::Running(c) => Some(c.id() as i32),
            Slot::Foreign(p, _) => Some(*p),
            Slot::Exited(_) => None,
        }
    }

    fn is_running(&mut self) -> bool {
        match self {
            Slot::Running(c) => match c.try_wait() {
                Ok(Some(st)) => {
                    *self = Slot::Exited(st);
                    false
                }
                _ => true,
            },
            Slot::Foreign(p, s) => proc_alive(*p, *s),
            Slot::Exited(_) => false,
        }
    }

    /// SIGKILL and reap; returns the exit status when we have one.
    fn kill(&mut self) -> Option<ExitStatus> {
        match self {
            Slot::Running(c) => {
                let _ = c.kill();
                let st = c.wait().unwrap_or_else(|_| ExitStatus::from_raw(9));
                *self = Slot::Exited(st);
                Some(st)
            }
            Slot::Exited(st) => Some(*st),
            Slot::Foreign(p, s) => {
                cleanup::kill_foreign(*p, *s);
                None
            }
        }
    }
}

#[derive(Debug)]
struct ProcRec {
    host: Option<usize>,
    label: String,
    slot: Arc<Mutex<Slot>>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    prefix: String,
    dir: PathBuf,
    netns: Mutex<Vec<String>>,
    procs: Mutex<Vec<ProcRec>>,
    persist: AtomicBool,
    detachable: bool,
    counter: AtomicU32,
    pub(crate) cluster: Mutex<Option<crate::cluster::ClusterInfo>>,
}

impl Shared {
    fn register(&self, host: Option<usize>, label: &str, slot: Slot) -> Arc<Mutex<Slot>> {
        let slot = Arc::new(Mutex::new(slot));
        self.procs.lock().unwrap().push(ProcRec {
            host,
            label: label.to_string(),
            slot: slot.clone(),
        });
        slot
    }

    fn persisting(&self) -> bool {
        self.persist.load(Ordering::SeqCst)
    }

    fn next(&self) -> u32 {
        self.counter.fetch_add(1, Ordering::SeqCst)
    }
}

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
    pub cluster: Option<crate::cluster::ClusterInfo>,
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
    pub(crate) held: Mutex<std::collections::BTreeMap<String, Process>>,
}

/// One simulated host: a network namespace with `eth0` on the underlay.
#[derive(Debug, Clone)]
pub struct Host {
    /// 1-based index.
    pub index: usize,
    /// Node name, `h<index>`.
    pub name: String,
    /// Name of its namespace in `/run/netns`: `<prefix>-h<index>`.
    pub ns_name: String,
    /// Path of its namespace: `/run/netns/<prefix>-h<index>`.
    pub netns: PathBuf,
    /// Underlay address of `eth0`.
    pub ip: Ipv4Addr,
    /// Subnet given to the agent with `--subnet`.
    pub subnet: String,
    /// `<lab dir>/h<index>`.
    pub dir: PathBuf,
    /// `--state-dir` of its agent.
    pub state_dir: PathBuf,
    /// `--run-dir` of its agent (holds `agent.sock`).
    pub run_dir: PathBuf,
    /// `--netns-dir` of its agent (endpoint namespaces are mounted here).
    pub netns_dir: PathBuf,
    shared: Arc<Shared>,
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
        });
        let hosts = (1..=opts.hosts)
            .map(|i| {
                let subnet = opts
                    .subnets
                    .get(i - 1)
                    .cloned()
                    .unwrap_or_else(|| default_subnet(i));
                let ip = match opts.routed.iter().position(|&r| r == i) {
                    Some(k) => Ipv4Addr::new(198, 18, 0, 242 + k as u8),
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
        names.extend(lab.hosts.iter().map(|h| h.ns_name.clone()));
        lab.shared.netns.lock().unwrap().extend(names);
        lab.write_manifest()?;
        lab.build(&opts.routed).context("build the lab network")?;
        if opts.controllers > 0 {
            lab.build_cluster(&opts)
                .context("start the lab's cluster")?;
        }
        Ok(lab)
    }

    fn build(&self, routed: &[usize]) -> Result<()> {
        let p = &self.prefix;
        let (u, r, i) = (format!("{p}-u"), format!("{p}-r"), format!("{p}-i"));
        let names = self.namespaces();
        let add: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
        ip_batch(None, &add)?;

        let mut ub = String::from(
            "link set lo up\nlink add br0 type bridge\nlink set br0 up\nlink add br1 type bridge\nlink set br1 up\n",
        );
        for h in &self.hosts {
            let port = &h.name;
            let br = if routed.contains(&h.index) {
                "br1"
            } else {
                "br0"
            };
            ub += &format!(
                "link add {port} type veth peer name eth0 netns {}\nlink set {port} master {br}\nlink set {port} up\n",
                h.ns_name
            );
        }
        ub += &format!(
            "link add r type veth peer name eth0 netns {r}\nlink set r master br0\nlink set r up\n\
             link add r2 type veth peer name eth2 netns {r}\nlink set r2 master br1\nlink set r2 up\n"
        );
        ip_batch(Some(&u), &ub)?;

        ip_batch(
            Some(&r),
            &format!(
                "link set lo up\naddr add {ROUTER_IP}/24 dev eth0\nlink set eth0 up\n\
                 link add eth1 type veth peer name eth0 netns {i}\n\
                 addr add {ROUTER_INTERNET_IP}/24 dev eth1\nlink set eth1 up\n\
                 addr add {ROUTED_ROUTER_IP}/28 dev eth2\nlink set eth2 up\n"
            ),
        )?;
        netns::write_net_sysctl(&r, "ipv4/ip_forward", "1")?;
        ip_batch(
            Some(&i),
            &format!(
                "link set lo up\naddr add {INTERNET_IP}/24 dev eth0\nlink set eth0 up\n\
                 route add {UNDERLAY_CIDR} via {ROUTER_INTERNET_IP}\n"
            ),
        )?;
        for h in &self.hosts {
            let script = if routed.contains(&h.index) {
                format!(
                    "link set lo up\naddr add {}/28 dev eth0\nlink set eth0 up\n\
                     route add default via {ROUTED_ROUTER_IP}\n",
                    h.ip
                )
            } else {
                format!(
                    "link set lo up\naddr add {}/24 dev eth0\nlink set eth0 up\n\
                     route add default via {ROUTER_IP}\nroute add {ROUTED_CIDR} via {ROUTER_IP}\n",
                    h.ip
                )
            };
            ip_batch(Some(&h.ns_name), &script)?;
            for d in [&h.state_dir, &h.run_dir, &h.netns_dir] {
                fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            }
        }
        Ok(())
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
        let out = self.exec(&path, cmd);
        assert!(
            out.status.success(),
            "`{}` in {} failed ({}):\nstdout: {}\nstderr: {}",
            cmd.join(" "),
            path.display(),
            describe_status(&out.status),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
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
                .hosts
                .iter()
                .map(|h| ManifestHost {
                    name: h.name.clone(),
                    ip: h.ip,
                    subnet: h.subnet.clone(),
                })
                .collect(),
            procs,
            cluster: self.shared.cluster.lock().unwrap().clone(),
        }
    }

    /// Writes the manifest to `<dir>/lab.json` and turns cleanup off: the
    /// lab and its running processes stay after this value (and this
    /// process) is gone. Reattach with [`Lab::attach`]. Processes survive
    /// the terminal only if the lab was built with `detachable`. A lab with
    /// the default `wt<pid>x<n>` prefix is still swept by the first
    /// [`Lab::new`] after this process has exited; give a custom
    /// [`LabOpts::prefix`] to keep it for good.
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

    /// Removes the lab now, persistent or not (what Drop does for a
    /// non-persistent lab).
    pub fn destroy(self) {
        self.shared.persist.store(false, Ordering::SeqCst);
        drop(self);
    }

    /// Kills every process the lab started; returns one line per process
    /// saying how it ended.
    fn kill_all(&self) -> Vec<String> {
        let recs: Vec<(Option<usize>, String, Arc<Mutex<Slot>>)> = self
            .shared
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| (r.host, r.label.clone(), r.slot.clone()))
            .collect();
        let mut lines = Vec::new();
        for (host, label, slot) in recs {
            let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
            let pid = s.pid();
            let was_running = s.is_running();
            let st = s.kill();
            let how = match (was_running, st) {
                (true, _) => "was running: killed at teardown".to_string(),
                (false, Some(st)) => format!("had exited by itself ({})", describe_status(&st)),
                (false, None) => "had exited".to_string(),
            };
            let who = host.map(|h| format!("h{h} ")).unwrap_or_default();
            lines.push(format!(
                "{who}{label} pid {}: {how}",
                pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
            ));
        }
        lines
    }

    fn teardown(&self) {
        self.kill_all();
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
            let ended = self.kill_all();
            eprintln!("----- weft lab {} processes -----", self.prefix);
            for l in ended {
                eprintln!("{l}");
            }
            self.dump_logs();
        } else if std::env::var_os("WEFT_KEEP_LOGS").is_some() {
            self.kill_all();
            self.keep_logs();
        }
        self.teardown();
    }
}

impl Lab {
    /// Prints the tail of every log file of the lab (agents, background
    /// processes) to stderr; done automatically when a test panics, since
    /// the files are removed with the lab. If `WEFT_KEEP_LOGS=DIR` is set,
    /// the log files are also copied to `DIR/<prefix>/` (also when the lab
    /// ends without a panic).
    pub fn dump_logs(&self) {
        for l in self.log_files() {
            eprintln!(
                "----- {} (last 60 lines) -----\n{}",
                l.display(),
                log_tail(&l, 60)
            );
        }
        self.keep_logs();
    }

    /// With `WEFT_KEEP_LOGS=DIR`, copies every log file of the lab to
    /// `DIR/<prefix>/` (a lab that ends well keeps them too).
    fn keep_logs(&self) {
        let Some(keep) =
            std::env::var_os("WEFT_KEEP_LOGS").map(|d| PathBuf::from(d).join(&self.prefix))
        else {
            return;
        };
        for l in self.log_files() {
            let rel = l.strip_prefix(&self.dir).unwrap_or(&l);
            let dst = keep.join(rel);
            if let Some(parent) = dst.parent() {
                let _ = fs::create_dir_all(parent);
            }
            let _ = fs::copy(&l, &dst);
        }
    }

    fn log_files(&self) -> Vec<PathBuf> {
        let mut logs = Vec::new();
        for h in &self.hosts {
            if let Ok(rd) = fs::read_dir(&h.dir) {
                logs.extend(rd.flatten().map(|e| e.path()));
            }
        }
        if let Ok(rd) = fs::read_dir(self.dir.join("logs")) {
            logs.extend(rd.flatten().map(|e| e.path()));
        }
        logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        logs
    }
}

pub(crate) fn ip_batch(ns: Option<&str>, script: &str) -> Result<()> {
    use std::process::Command;
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("run ip (iproute2)")?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip {}-batch failed: {}\nscript:\n{script}",
            ns.map(|n| format!("-n {n} ")).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The last `n` lines of a log file (for error messages).
pub fn log_tail(path: &Path, n: usize) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub(crate) fn spawn_logged(
    shared: &Arc<Shared>,
    host: Option<usize>,
    label: &str,
    ns: &Path,
    cmd: &[&str],
    env: &[(&str, &str)],
) -> Result<Process> {
    let (prog, args) = cmd.split_first().context("empty command")?;
    let log = match host {
        Some(i) => shared
            .dir
            .join(format!("h{i}"))
            .join(format!("{label}.log")),
        None => {
            let d = shared.dir.join("logs");
            fs::create_dir_all(&d)?;
            d.join(format!("{label}-{}.log", shared.next()))
        }
    };
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("open {}", log.display()))?;
    writeln!(f, "=== weft-tests: starting {} ===", cmd.join(" "))?;
    let mut c = command_in(
        ns,
        prog,
        SpawnOpts {
            setsid: shared.detachable,
            own_group: false,
        },
    )?;
    c.args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .env("RUST_BACKTRACE", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.spawn().with_context(|| format!("spawn {prog}"))?;
    let pid = child.id();
    let slot = shared.register(host, label, Slot::Running(child));
    Ok(Process {
        pid,
        slot,
        shared: shared.clone(),
        log,
    })
}

/// A background process started by the lab. Dropping it kills it (unless
/// the lab is persisted).
#[derive(Debug)]
pub struct Process {
    pid: u32,
    slot: Arc<Mutex<Slot>>,
    shared: Arc<Shared>,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Process {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it still runs (reaps it if it exited).
    pub fn is_running(&self) -> bool {
        self.slot.lock().unwrap().is_running()
    }

    /// SIGKILL, then reap. Returns the exit status (None for a process
    /// reattached from a manifest, which is not our child).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.slot.lock().unwrap().kill()
    }

    /// Sends `sig` if it still runs.
    pub fn signal(&self, sig: Signal) {
        let mut s = self.slot.lock().unwrap();
        if s.is_running() {
            if let Some(p) = s.pid() {
                let _ = kill(Pid::from_raw(p), sig);
            }
        }
    }

    /// Waits at most `timeout` for it to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut s = self.slot.lock().unwrap();
                if !s.is_running() {
                    return match &*s {
                        Slot::Exited(st) => Some(*st),
                        _ => None,
                    };
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then wait at most `timeout`; SIGKILL if it is still there.
    /// Returns `Ok(status)` if it exited by itself, `Err(status)` if it had
    /// to be killed.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, ExitStatus> {
        self.signal(Signal::SIGTERM);
        match self.wait_timeout(timeout) {
            Some(st) => Ok(st),
            None => Err(self.kill().unwrap_or_else(|| ExitStatus::from_raw(9))),
        }
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.shared.persisting() {
            if let Ok(mut s) = self.slot.lock() {
                s.kill();
            }
        }
    }
}

/// Whether an agent answers a `status` request on `socket` (one JSON line
/// each way; any JSON answer counts, even an error). A mere connect is not
/// enough: the agent may bind its socket before it has finished starting
/// and still fail.
fn agent_answers(socket: &Path, deadline: Instant) -> bool {
    use std::io::{BufRead, BufReader};
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(100), Duration::from_secs(2));
    let _ = s.set_read_timeout(Some(left));
    let _ = s.set_write_timeout(Some(left));
    let req = serde_json::to_string(&weft_common::api::Request::Status { probe: false })
        .expect("encode request");
    if s.write_all(format!("{req}\n").as_bytes()).is_err() {
        return false;
    }
    let mut line = String::new();
    match BufReader::new(s).read_line(&mut line) {
        Ok(n) if n > 0 => serde_json::from_str::<serde_json::Value>(&line).is_ok(),
        _ => false,
    }
}

/// A running `weft-agent`. Dropping it kills it (unless the lab is
/// persisted). Derefs to its [`Process`].
#[derive(Debug)]
pub struct Agent {
    proc_: Process,
    /// The host's node name.
    pub host: String,
    /// Its API socket, `<run-dir>/agent.sock`.
    pub socket: PathBuf,
}

impl std::ops::Deref for Agent {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.proc_
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.proc_
    }
}

impl Agent {
    /// Waits until the agent answers a `status` request on its socket;
    /// kills it and returns an error with its log tail if it exits first or
    /// does not answer within `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if agent_answers(&self.socket, deadline) {
                return Ok(());
            }
            if let Some(st) = self.proc_.wait_timeout(Duration::ZERO) {
                bail!(
                    "weft-agent on {} exited ({}) before answering on {}; log {}:\n{}",
                    self.host,
                    describe_status(&st),
                    self.socket.display(),
                    self.proc_.log.display(),
                    log_tail(&self.proc_.log, 30)
                );
            }
            if Instant::now() >= deadline {
                self.proc_.kill();
                bail!(
                    "weft-agent on {} did not answer on {} within {timeout:?} (killed); log {}:\n{}",
                    self.host,
                    self.socket.display(),
                    self.proc_.log.display(),
                    log_tail(&self.proc_.log, 30)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap, like a crash.
    pub fn kill(&mut self) {
        self.proc_.kill();
    }

    /// SIGTERM and wait up to [`AGENT_STOP_TIMEOUT`]; panics (after
    /// SIGKILL) if it does not exit in time. Returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        match self.proc_.terminate(AGENT_STOP_TIMEOUT) {
            Ok(st) => st,
            Err(_) => panic!(
                "weft-agent on {} did not exit within {AGENT_STOP_TIMEOUT:?} of SIGTERM (killed); log tail:\n{}",
                self.host,
                log_tail(&self.proc_.log, 30)
            ),
        }
    }
}

impl Host {
    fn describe(shared: &Arc<Shared>, index: usize, ip: Ipv4Addr, subnet: String) -> Host {
        let name = format!("h{index}");
        let ns_name = format!("{}-{name}", shared.prefix);
        let dir = shared.dir.join(&name);
        Host {
            index,
            netns: ns_path(&ns_name),
            ns_name,
            ip,
            subnet,
            state_dir: dir.join("state"),
            run_dir: dir.join("run"),
            netns_dir: dir.join("netns"),
            dir,
            name,
            shared: shared.clone(),
        }
    }

    /// The agent's API socket, `<run-dir>/agent.sock`.
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("agent.sock")
    }

    /// The agent's log file (stdout and stderr of every start, appended).
    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// Where the agent mounts endpoint namespace `name`.
    pub fn endpoint(&self, name: &str) -> PathBuf {
        self.netns_dir.join(name)
    }

    /// The standard agent arguments for this host: `--subnet`,
    /// `--node-name`, `--state-dir`, `--run-dir`, `--netns-dir`,
    /// `--metrics-listen <host ip>:7472`.
    pub fn agent_args(&self) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        let mode = match &*self.shared.cluster.lock().unwrap() {
            Some(c) => vec![
                "--controller".into(),
                c.controllers.join(","),
                "--tls-dir".into(),
                p(&c.pki.join(&self.name)),
            ],
            None => vec!["--subnet".into(), self.subnet.clone()],
        };
        let mut args: Vec<String> = mode;
        args.extend([
            "--node-name".into(),
            self.name.clone(),
            "--state-dir".into(),
            p(&self.state_dir),
            "--run-dir".into(),
            p(&self.run_dir),
            "--netns-dir".into(),
            p(&self.netns_dir),
            "--metrics-listen".into(),
            self.metrics_addr().to_string(),
        ]);
        args
    }

    /// Where this host's agent serves `/metrics`, `/healthz` and `/readyz`
    /// (`--metrics-listen`, always given by [`Host::agent_args`]).
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        (self.ip, crate::http::AGENT_METRICS_PORT).into()
    }

    /// Starts `weft-agent` inside this host's namespace with
    /// [`Host::agent_args`] plus `extra_args`, and waits until it answers a
    /// `status` request on its socket. Panics (with the log tail) if it does
    /// not within [`AGENT_START_TIMEOUT`] or exits.
    pub fn start_agent(&self, extra_args: &[&str]) -> Agent {
        self.try_start_agent(extra_args)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`Host::start_agent`] but returns an error instead of panicking.
    pub fn try_start_agent(&self, extra_args: &[&str]) -> Result<Agent> {
        let mut a = self.spawn_agent(extra_args)?;
        a.wait_ready(AGENT_START_TIMEOUT)?;
        Ok(a)
    }

    /// Starts `weft-agent` like [`Host::start_agent`] without waiting for it
    /// (to start many at once); see [`Agent::wait_ready`].
    pub fn spawn_agent(&self, extra_args: &[&str]) -> Result<Agent> {
        let bin = bin_path("weft-agent");
        let bin = bin.to_string_lossy();
        let args = self.agent_args();
        let mut cmd: Vec<&str> = vec![&bin];
        cmd.extend(args.iter().map(String::as_str));
        cmd.extend_from_slice(extra_args);
        let proc_ = spawn_logged(
            &self.shared,
            Some(self.index),
            "agent",
            &self.netns,
            &cmd,
            &[],
        )?;
        Ok(Agent {
            proc_,
            host: self.name.clone(),
            socket: self.socket(),
        })
    }

    /// Runs `weft-agent` with [`Host::agent_args`] plus `extra_args` in the
    /// foreground and returns its output once it exits; killed after
    /// `timeout`. For tests of start-up failures (bad flags, bad state).
    pub fn run_agent(&self, extra_args: &[&str], timeout: Duration) -> Output {
        let bin = bin_path("weft-agent");
        let mut c = command_in(
            &self.netns,
            &bin,
            SpawnOpts {
                own_group: true,
                ..Default::default()
            },
        )
        .expect("host namespace");
        c.args(self.agent_args()).args(extra_args);
        netns::run_with_timeout(&mut c, timeout).expect("run weft-agent")
    }

    /// Pid of the agent last started on this host, if it still runs
    /// (also for labs reattached from a manifest).
    pub fn agent_pid(&self) -> Option<i32> {
        let procs = self.shared.procs.lock().unwrap();
        let rec = procs
            .iter()
            .rev()
            .find(|r| r.host == Some(self.index) && r.label == "agent")?;
        let mut s = rec.slot.lock().unwrap();
        if s.is_running() {
            s.pid()
        } else {
            None
        }
    }

    /// Runs `weftctl --agent-socket <run-dir>/agent.sock ARGS…` (inside this
    /// host's namespace) and returns its output. Time limit
    /// [`netns::EXEC_TIMEOUT`].
    ///
    /// `weftctl status` does not probe the peers here (`WEFT_NO_PROBE=1`):
    /// every lab on the machine shares the kernel's one ARP table (1,024
    /// entries), and probing a large lab's every peer from every host
    /// fills it, so that other labs' packets wait for ARP. Tests of the
    /// probe use [`Host::weftctl_probing`].
    pub fn weftctl(&self, args: &[&str]) -> Output {
        self.weftctl_with(args, "1")
    }

    /// [`Host::weftctl`] with `weftctl status` probing the peers.
    pub fn weftctl_probing(&self, args: &[&str]) -> Output {
        self.weftctl_with(args, "0")
    }

    fn weftctl_with(&self, args: &[&str], no_probe: &str) -> Output {
        let bin = bin_path("weftctl");
        let mut c = command_in(
            &self.netns,
            &bin,
            SpawnOpts {
                own_group: true,
                ..Default::default()
            },
        )
        .expect("host namespace");
        c.env("WEFT_NO_PROBE", no_probe)
            .arg("--agent-socket")
            .arg(self.socket())
            .args(args);
        netns::run_with_timeout(&mut c, netns::EXEC_TIMEOUT).expect("run weftctl")
    }

    /// `weftctl -o json ARGS…`; panics (showing stderr and stdout) unless it
    /// exits 0 with one JSON document on stdout.
    pub fn weftctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["-o", "json"];
        a.extend_from_slice(args);
        let out = self.weftctl(&a);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "weftctl {} on {} failed ({}):\nstderr: {stderr}\nstdout: {stdout}",
            a.join(" "),
            self.name,
            describe_status(&out.status)
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "weftctl {} on {}: stdout is not one JSON document ({e}):\n{stdout}\nstderr: {stderr}",
                a.join(" "),
                self.name
            )
        })
    }

    /// Runs `weftctl ARGS…` expecting failure; panics if it exits 0 or dies
    /// from a signal. Returns (exit code, stderr, stdout).
    pub fn weftctl_err(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.weftctl(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        match out.status.code() {
            Some(c) if c != 0 => (c, stderr, stdout),
            _ => panic!(
                "weftctl {} on {} was expected to fail but {}:\nstdout: {stdout}\nstderr: {stderr}",
                args.join(" "),
                self.name,
                describe_status(&out.status)
            ),
        }
    }

    /// `weftctl -o json ns add NAME EXTRA…`: the new endpoint as JSON.
    pub fn ns_add(&self, name: &str, extra: &[&str]) -> serde_json::Value {
        let mut a = vec!["ns", "add", name];
        a.extend_from_slice(extra);
        self.weftctl_json(&a)
    }

    /// Runs `cmd` inside this host's namespace.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        netns::exec_in(&self.netns, cmd)
            .unwrap_or_else(|e| panic!("in {}: {e:#}", self.netns.display()))
    }

    /// Runs `cmd` inside endpoint namespace `name` of this host
    /// (`<netns-dir>/NAME`), without going through weftctl.
    pub fn exec_endpoint(&self, name: &str, cmd: &[&str]) -> Output {
        let p = self.endpoint(name);
        netns::exec_in(&p, cmd).unwrap_or_else(|e| panic!("in {}: {e:#}", p.display()))
    }
}
