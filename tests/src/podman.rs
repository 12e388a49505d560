//! Real Podman containers on a CNI network inside a simulated host.
//!
//! [`Podman`] drives Debian's `podman` 4.3 with the CNI network backend from
//! inside a network namespace the test made (the simulated host), so CNI
//! plugins (`weft-cni`, or the reference `bridge`) create their host-side
//! devices there. Containers run from a busybox root file system built in the
//! instance's temporary directory (`--rootfs`), so no image is pulled.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::path::{Path, PathBuf};
//! use weft_tests::podman::{Podman, DEBIAN_CNI_PLUGIN_DIR};
//!
//! // `cni` holds the test's conflist (network "weft"); the host namespace
//! // is a simulated host's.
//! let (host_ns, cni) = (Path::new("/run/netns/h1"), Path::new("/tmp/cni"));
//! let pm = Podman::new(host_ns, cni, &[weft_tests::bin_dir(), DEBIAN_CNI_PLUGIN_DIR.into()])?;
//! let web = pm.run_detached("web", "weft", &["8080:80"], &["httpd", "-f", "-p", "80"])?;
//! let out = pm.exec("web", &["ip", "-4", "addr", "show", "eth0"])?;
//! println!("{} {:?} {}", web.id, pm.ip_of("web")?, String::from_utf8_lossy(&out.stdout));
//! pm.rm_force("web")?;
//! // The remaining containers, their namespaces and processes go on drop.
//! // Declare the Podman after the Lab, so it is dropped first: its clean-up
//! // runs podman inside the simulated host (it falls back to killing and
//! // unmounting if that namespace is already gone).
//! # Ok(())
//! # }
//! ```
//!
//! Isolation: everything podman keeps lives in the instance's directory:
//! `containers.conf` (via `CONTAINERS_CONF`, so no system file is read),
//! `storage.conf` (`CONTAINERS_STORAGE_CONF`; `vfs` driver, no overlay
//! mounts), `--root`/`--runroot`/`--tmpdir`, file locks instead of the
//! `/dev/shm/libpod_lock` segment, events in a file, runc's state, and a
//! cgroup parent of its own (`/sys/fs/cgroup/*/weft-podman-…`, removed on
//! drop). What stays global: the containers' namespace files
//! `/run/netns/netns-*` (podman's, removed by podman, and by drop if it
//! could not) and libcni's result cache `/var/lib/cni/results/<net>-<id>-*`
//! (removed by the CNI DEL of every container removal; drop removes leftovers
//! of known containers). Podman also writes `cni.lock` into the CNI config
//! directory. Podman never runs `iptables` for the CNI backend; published
//! ports are only handed to plugins declaring `portMappings`, and podman
//! reserves each published host port by having `conmon` listen on it in the
//! host namespace (`enable_port_reservation`), so two containers of one host
//! cannot publish the same port.
//!
//! Pitfalls, found the hard way: never run a bare `podman` (even
//! `network ls`) on a test machine: it initialises `/var/lib/containers`,
//! `/run/libpod`, `/run/containers` and `/dev/shm/libpod_lock`. Containers'
//! PID 1 (`sleep`, `httpd`) ignores SIGTERM, hence `rm -f -t 0`. busybox
//! 1.35's `wget -T` segfaults; bound waits from outside instead. Podman
//! takes a name it does not know as an id prefix: once `b` is removed,
//! `exec b` runs in whichever container's id starts with `b`, so give
//! containers names with a letter beyond `f`. A CNI plugin's ADD result
//! must give the container interface a `mac`, else podman fails with
//! "invalid MAC address".

use std::collections::HashSet;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::cleanup::{kill_foreign, kill_in_namespaces, proc_start_time, unmount_under};
use crate::netns::{command_in, describe_status, ns_inode, run_with_timeout, SpawnOpts};
use crate::tempdir::TempDir;

/// Where Debian's `containernetworking-plugins` puts `bridge`, `host-local`, ….
pub const DEBIAN_CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

/// Time limit of one podman command (run, rm, inspect, …). A `podman run`
/// takes about 0.1–0.2 s here; the first one of an instance also creates its
/// store.
pub const PODMAN_TIMEOUT: Duration = Duration::from_secs(60);

/// Time limit of [`Podman::exec`].
pub const EXEC_TIMEOUT: Duration = crate::netns::EXEC_TIMEOUT;

/// Where libcni caches each attachment's result (not configurable in podman
/// 4.3).
const CNI_CACHE: &str = "/var/lib/cni/results";

/// A container started by [`Podman::run_detached`]. Plain data: the
/// [`Podman`] it came from removes it (on [`Podman::rm_force`] or on drop).
#[derive(Debug, Clone, Default)]
pub struct Container {
    pub name: String,
    /// Full container id.
    pub id: String,
    /// The container's network namespace file, `/run/netns/netns-<uuid>`
    /// (usable with [`crate::netns::exec_in`] and friends).
    pub netns: PathBuf,
    /// `conmon`'s pid and start time (it is not our child: podman
    /// daemonizes it).
    pub conmon: Option<(i32, Option<u64>)>,
}

/// One private podman installation driven inside a simulated host's network
/// namespace. Dropping it removes every container it knows (bounded in
/// time), their namespaces and processes, its cgroups and its directory.
#[derive(Debug)]
pub struct Podman {
    host_netns: PathBuf,
    cni_config_dir: PathBuf,
    /// `/weft-podman-<pid>-<n>`: the containers' and conmons' cgroup parent.
    cgroup_parent: String,
    /// Containers started through us, for the clean-up on drop.
    started: Mutex<Vec<Container>>,
    dir: TempDir,
}

impl Podman {
    /// Sets up a private podman for the simulated host whose network
    /// namespace file is `host_netns`: writes `containers.conf`,
    /// `storage.conf`, the runtime wrapper and the busybox root file system
    /// into a new temporary directory. `cni_config_dir` holds the test's
    /// conflists; `plugin_dirs` are searched for CNI plugins in order (e.g.
    /// [`crate::bin_dir`] for `weft-cni`, then [`DEBIAN_CNI_PLUGIN_DIR`]).
    pub fn new(
        host_netns: &Path,
        cni_config_dir: &Path,
        plugin_dirs: &[PathBuf],
    ) -> Result<Podman> {
        crate::require_root();
        let runc = find_program(&["/usr/sbin/runc", "/usr/bin/runc"], "runc")?;
        find_program(&["/usr/bin/podman"], "podman")?;
        let busybox = find_program(&["/bin/busybox", "/usr/bin/busybox"], "busybox-static")?;
        ns_inode(host_netns)
            .ok_or_else(|| anyhow!("{} is not a namespace file", host_netns.display()))?;
        let dir = TempDir::new("podman");
        let name = dir.path().file_name().unwrap_or_default().to_string_lossy();
        let pm = Podman {
            host_netns: host_netns.to_path_buf(),
            cni_config_dir: cni_config_dir.to_path_buf(),
            cgroup_parent: format!("/{name}"),
            started: Mutex::new(Vec::new()),
            dir,
        };
        for sub in ["storage", "run", "tmp", "bin", "runc"] {
            fs::create_dir_all(pm.dir.join(sub))?;
        }
        fs::write(pm.containers_conf(), pm.containers_conf_text(plugin_dirs))?;
        fs::write(pm.storage_conf(), pm.storage_conf_text())?;
        write_executable(&pm.runtime(), &runtime_wrapper(&runc, &pm.dir.join("runc")))?;
        build_rootfs(&busybox, &pm.rootfs())?;
        Ok(pm)
    }

    /// The instance's directory (configuration, store, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The busybox root file system every container runs from. It is shared
    /// and writable: files put here (say `www/index.html`) are seen by all
    /// containers.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Podman's event log (`podman events` reads it too).
    pub fn events_log(&self) -> PathBuf {
        self.dir.join("events.log")
    }

    fn containers_conf(&self) -> PathBuf {
        self.dir.join("containers.conf")
    }

    fn storage_conf(&self) -> PathBuf {
        self.dir.join("storage.conf")
    }

    /// The OCI runtime wrapper (named `runc` so podman treats it as runc).
    fn runtime(&self) -> PathBuf {
        self.dir.join("bin/runc")
    }

    fn containers_conf_text(&self, plugin_dirs: &[PathBuf]) -> String {
        let dirs: Vec<String> = plugin_dirs.iter().map(toml_str).collect();
        let env = [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            format!("CONTAINERS_CONF={}", self.containers_conf().display()),
            format!("CONTAINERS_STORAGE_CONF={}", self.storage_conf().display()),
        ];
        let env: Vec<String> = env.iter().map(toml_str).collect();
        format!(
            "# Written by weft-tests (tests/src/podman.rs). CONTAINERS_CONF names this\n\
             # file, so podman reads no system containers.conf.\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [{dirs}]\n\
             network_config_dir = {cni}\n\
             \n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             events_logfile_path = {events}\n\
             tmp_dir = {tmp}\n\
             volume_path = {volumes}\n\
             # Locks as files in tmp_dir, not the machine-wide /dev/shm/libpod_lock.\n\
             lock_type = \"file\"\n\
             # conmon runs `podman container cleanup` when a container exits; the\n\
             # flags podman passes it do not carry everything above.\n\
             conmon_env_vars = [{env}]\n",
            dirs = dirs.join(", "),
            cni = toml_str(&self.cni_config_dir),
            events = toml_str(self.events_log()),
            tmp = toml_str(self.dir.join("tmp")),
            volumes = toml_str(self.dir.join("storage/volumes")),
            env = env.join(", "),
        )
    }

    fn storage_conf_text(&self) -> String {
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {}\nrunroot = {}\n",
            toml_str(self.dir.join("storage")),
            toml_str(self.dir.join("run")),
        )
    }

    /// A `podman` command with this instance's environment and global flags,
    /// whose process joins the host namespace (setns between fork and exec,
    /// like `nsenter --net`; never `ip netns exec`, which would also switch
    /// mount namespaces and hide `/run/netns/netns-*` from us).
    pub fn command(&self, args: &[&str]) -> Result<Command> {
        let mut c = command_in(
            &self.host_netns,
            "podman",
            SpawnOpts {
                own_group: true,
                ..Default::default()
            },
        )?;
        // A remote podman would ignore all of this.
        for k in [
            "CONTAINER_HOST",
            "CONTAINER_CONNECTION",
            "CONTAINERS_REGISTRIES_CONF",
        ] {
            c.env_remove(k);
        }
        c.env("CONTAINERS_CONF", self.containers_conf())
            .env("CONTAINERS_STORAGE_CONF", self.storage_conf())
            .env("TMPDIR", self.dir.join("tmp"));
        let d = |s: &str| self.dir.join(s);
        c.arg("--root")
            .arg(d("storage"))
            .arg("--runroot")
            .arg(d("run"))
            .arg("--tmpdir")
            .arg(d("tmp"))
            .arg("--network-config-dir") // `--cni-config-dir` is its hidden old name
            .arg(&self.cni_config_dir)
            .arg("--runtime")
            .arg(self.runtime())
            .args(["--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file"])
            .args(["--storage-driver", "vfs"])
            .args(args);
        Ok(c)
    }

    /// Runs `podman ARGS` with time limit `timeout`, returning its output
    /// whatever the exit status.
    pub fn run_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut c = self.command(args)?;
        run_with_timeout(&mut c, timeout).with_context(|| format!("podman {}", args.join(" ")))
    }

    /// Runs `podman ARGS` (time limit [`PODMAN_TIMEOUT`]) and returns its
    /// stdout; an error carrying its status and output if it failed.
    pub fn podman(&self, args: &[&str]) -> Result<String> {
        let out = self.run_timeout(args, PODMAN_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "podman {} failed ({}): {} {}",
                args.join(" "),
                describe_status(&out.status),
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `podman run -d --name NAME --network NETWORK [-p P]… --rootfs ROOTFS
    /// CMD…`. `publish` entries are podman's (`"8080:80"`,
    /// `"8053:53/udp"`).
    pub fn run_detached(
        &self,
        name: &str,
        network: &str,
        publish: &[&str],
        cmd: &[&str],
    ) -> Result<Container> {
        let mut extra = vec!["--network", network];
        for p in publish {
            extra.extend(["--publish", p]);
        }
        self.run_detached_with(name, &extra, cmd)
    }

    /// Like [`Podman::run_detached`] with any `podman run` options (`extra`,
    /// e.g. `["--network", "weft", "--ip", "10.1.0.9"]`) before `--rootfs`.
    pub fn run_detached_with(&self, name: &str, extra: &[&str], cmd: &[&str]) -> Result<Container> {
        if cmd.is_empty() {
            bail!("podman run {name}: empty command");
        }
        let rootfs = self.rootfs();
        let rootfs = rootfs.to_string_lossy();
        let mut args = vec!["run", "--detach", "--name", name];
        args.extend(["--cgroup-parent", &self.cgroup_parent]);
        args.extend(extra);
        args.extend(["--rootfs", &rootfs]);
        args.extend(cmd);
        // Remember the name before starting: a failed run may leave a
        // created container behind, which drop removes.
        self.remember(Container {
            name: name.to_string(),
            ..Default::default()
        });
        self.podman(&args)?;
        let c = self.container(name)?;
        self.remember(c.clone());
        Ok(c)
    }

    fn remember(&self, c: Container) {
        let mut v = self.started.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|o| o.name != c.name);
        v.push(c);
    }

    /// `podman inspect NAME` (the first and only element).
    pub fn inspect(&self, name: &str) -> Result<serde_json::Value> {
        let out = self.podman(&["inspect", "--type", "container", name])?;
        let mut v: Vec<serde_json::Value> =
            serde_json::from_str(&out).with_context(|| format!("podman inspect {name}: {out}"))?;
        v.pop()
            .ok_or_else(|| anyhow!("podman inspect {name}: empty"))
    }

    /// What we need to find a container's remains: id, namespace, conmon.
    pub fn container(&self, name: &str) -> Result<Container> {
        container_of(&self.inspect(name)?)
    }

    /// The container's IPv4 address: from `podman inspect` (the first
    /// network with one), else from `ip -4 addr show eth0` inside it.
    pub fn ip_of(&self, name: &str) -> Result<Ipv4Addr> {
        let v = self.inspect(name)?;
        if let Some(nets) = v["NetworkSettings"]["Networks"].as_object() {
            for n in nets.values() {
                if let Some(ip) = n["IPAddress"].as_str().and_then(|s| s.parse().ok()) {
                    return Ok(ip);
                }
            }
        }
        let out = self.exec(name, &["ip", "-4", "-o", "addr", "show", "eth0"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next()?.parse().ok())
            .ok_or_else(|| anyhow!("no IPv4 address for container {name}: {text}"))
    }

    /// `podman exec NAME CMD…` with time limit [`EXEC_TIMEOUT`]; the output
    /// whatever the exit status.
    pub fn exec(&self, name: &str, cmd: &[&str]) -> Result<Output> {
        self.exec_timeout(name, cmd, EXEC_TIMEOUT)
    }

    /// [`Podman::exec`] with an explicit time limit.
    pub fn exec_timeout(&self, name: &str, cmd: &[&str], timeout: Duration) -> Result<Output> {
        let mut args = vec!["exec", name];
        args.extend(cmd);
        self.run_timeout(&args, timeout)
    }

    /// `podman stop -t SECS NAME`: SIGTERM, SIGKILL after `secs` (busybox
    /// `sleep` and `httpd` as PID 1 ignore SIGTERM). Its network is torn
    /// down by conmon's `podman container cleanup`, shortly after.
    pub fn stop(&self, name: &str, secs: u32) -> Result<()> {
        self.podman(&["stop", "-t", &secs.to_string(), name])
            .map(drop)
    }

    /// `podman rm -f -t 0 NAME` (SIGKILL, CNI DEL, removal), then removes
    /// its namespace file and libcni cache entry should podman have left
    /// them. A missing container is fine.
    pub fn rm_force(&self, name: &str) -> Result<()> {
        let known = self.container(name).ok();
        self.podman(&["rm", "--force", "--ignore", "--time", "0", name])?;
        let mut v = self.started.lock().unwrap_or_else(|e| e.into_inner());
        let remembered = v.iter().position(|c| c.name == name).map(|i| v.remove(i));
        drop(v);
        for c in known.into_iter().chain(remembered) {
            remove_remains(&c);
        }
        Ok(())
    }

    /// Names of all containers of this instance, running or not.
    pub fn containers(&self) -> Result<Vec<String>> {
        let out = self.podman(&["ps", "--all", "--format", "{{.Names}}"])?;
        Ok(out
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect())
    }
}

impl Drop for Podman {
    /// Removes every container (bounded: a `podman ps` and an `inspect` of
    /// at most 20 s each, one `podman rm` of at most [`PODMAN_TIMEOUT`]),
    /// then whatever podman could not: processes,
    /// namespace files, libcni cache entries, mounts under the directory,
    /// cgroups. Never panics.
    fn drop(&mut self) {
        let mut known: Vec<Container> =
            std::mem::take(&mut *self.started.lock().unwrap_or_else(|e| e.into_inner()));
        // Containers made with raw commands are ours too (one inspect).
        let quick = Duration::from_secs(20);
        if let Ok(out) = self.run_timeout(&["ps", "--all", "--quiet", "--no-trunc"], quick) {
            let ids = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut args = vec!["inspect", "--type", "container"];
            args.extend(ids.split_whitespace());
            if args.len() > 3 {
                if let Ok(out) = self.run_timeout(&args, quick) {
                    let all: Vec<serde_json::Value> =
                        serde_json::from_slice(&out.stdout).unwrap_or_default();
                    known.extend(all.iter().filter_map(|v| container_of(v).ok()));
                }
            }
        }
        let _ = self.run_timeout(&["rm", "--all", "--force", "--time", "0"], PODMAN_TIMEOUT);
        for c in &known {
            remove_remains(c);
        }
        // vfs makes no mounts, but each container's /dev/shm is one.
        unmount_under(self.dir.path());
        remove_cgroups(&self.cgroup_parent);
        // `self.dir` (a TempDir) removes the directory after this.
    }
}

/// Reads a [`Container`] out of `podman inspect`'s JSON.
fn container_of(v: &serde_json::Value) -> Result<Container> {
    let id = v["Id"]
        .as_str()
        .ok_or_else(|| anyhow!("podman inspect: no Id in {v}"))?;
    let conmon = v["State"]["ConmonPid"]
        .as_i64()
        .filter(|&p| p > 0)
        .map(|p| (p as i32, proc_start_time(p as i32)));
    Ok(Container {
        name: v["Name"].as_str().unwrap_or_default().to_string(),
        id: id.to_string(),
        netns: v["NetworkSettings"]["SandboxKey"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_default(),
        conmon,
    })
}

/// What podman normally removes itself: kills the container's conmon and
/// every process in its namespace, unmounts and deletes the namespace file
/// (only a `/run/netns/netns-*` one), removes libcni's cached result.
fn remove_remains(c: &Container) {
    if let Some((pid, start)) = c.conmon {
        kill_foreign(pid, start);
    }
    let ns = &c.netns;
    let podmans = ns.parent() == Some(Path::new(crate::netns::NETNS_RUN_DIR))
        && ns
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("netns-"));
    if podmans {
        if let Some(ino) = ns_inode(ns) {
            kill_in_namespaces(&HashSet::from([ino]));
        }
        for _ in 0..4 {
            if nix::mount::umount2(ns, nix::mount::MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
        let _ = fs::remove_file(ns);
    }
    if !c.id.is_empty() {
        if let Ok(rd) = fs::read_dir(CNI_CACHE) {
            let tag = format!("-{}-", c.id);
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().contains(&tag) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Removes cgroup `parent` (and its children: `conmon`, `libpod-<id>`) from
/// every hierarchy: `/sys/fs/cgroup/<parent>` (cgroup v2) and
/// `/sys/fs/cgroup/<controller>/<parent>` (v1). A cgroup goes only once its
/// processes are gone, so this retries briefly.
fn remove_cgroups(parent: &str) {
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(rel)];
    if let Ok(rd) = fs::read_dir(root) {
        dirs.extend(rd.flatten().map(|e| e.path().join(rel)));
    }
    for _ in 0..50 {
        dirs.retain(|d| d.is_dir() && !rmdir_tree(d));
        if dirs.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// rmdir of a cgroup directory, children first (cgroup directories hold
/// only control files, which rmdir takes along). Whether it is gone.
fn rmdir_tree(d: &Path) -> bool {
    if let Ok(rd) = fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    fs::remove_dir(d).is_ok() || !d.exists()
}

/// The OCI runtime podman runs (via conmon) instead of runc. This sandbox
/// lacks CAP_SYS_RESOURCE, so runc cannot apply the rlimits podman puts in
/// `process.rlimits` (RLIMIT_NOFILE 1048576, RLIMIT_NPROC): the wrapper
/// deletes them from the bundle's `config.json` (`create`/`run
/// --bundle`) and from the process file of `exec --process`, then runs the
/// real runc with its state directory (`--root`, else the machine-wide
/// `/run/runc`) in ours. The JSON podman writes is compact and an rlimit
/// entry holds no `]`, so `sed` can cut the array.
fn runtime_wrapper(runc: &Path, state: &Path) -> String {
    format!(
        r#"#!/bin/sh
# OCI runtime wrapper written by weft-tests (tests/src/podman.rs): no
# CAP_SYS_RESOURCE here, so drop process.rlimits before runc applies them.
bundle= process= prev=
for a in "$@"; do
  case "$prev" in --bundle|-b) bundle=$a ;; --process|-p) process=$a ;; esac
  case "$a" in --bundle=*) bundle=${{a#*=}} ;; --process=*) process=${{a#*=}} ;; esac
  prev=$a
done
strip() {{
  if [ -f "$1" ]; then
    sed -z -E -i 's/,[[:space:]]*"rlimits":[[:space:]]*\[[^]]*\]//; s/"rlimits":[[:space:]]*\[[^]]*\][[:space:]]*,?//' "$1" || exit 1
  fi
}}
[ -z "$bundle" ] || strip "$bundle/config.json"
[ -z "$process" ] || strip "$process"
exec {runc} --root {state} "$@"
"#,
        runc = sh_quote(runc),
        state = sh_quote(state),
    )
}

/// A root file system of busybox applets: `bin/busybox` (static, copied),
/// a symlink per applet in `bin/`, minimal `/etc` files, and the mount
/// points podman expects.
fn build_rootfs(busybox: &Path, root: &Path) -> Result<()> {
    // A dynamically linked busybox (package `busybox`) would not run there.
    let head = fs::read(busybox).with_context(|| format!("read {}", busybox.display()))?;
    if head.windows(8).take(4096).any(|w| w == b"ld-linux") {
        bail!(
            "{} is dynamically linked; install busybox-static (deploy/install-deps.sh)",
            busybox.display()
        );
    }
    for d in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "run", "root", "www",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy(busybox, root.join("bin/busybox"))?;
    let out = run_with_timeout(Command::new(busybox).arg("--list"), Duration::from_secs(10))?;
    if !out.status.success() {
        bail!("{} --list failed", busybox.display());
    }
    // The list names `busybox` itself: linking it would replace the binary.
    for applet in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    // podman bind-mounts /etc/hosts, /etc/resolv.conf and /etc/hostname.
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    fs::write(root.join("etc/nsswitch.conf"), "hosts: files dns\n")?;
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

fn find_program(candidates: &[&str], package: &str) -> Result<PathBuf> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "{} not found: install {package} (deploy/install-deps.sh)",
                candidates.join(" or ")
            )
        })
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// A TOML basic string (JSON's escaping is valid TOML).
fn toml_str(s: impl AsRef<std::ffi::OsStr>) -> String {
    serde_json::to_string(&s.as_ref().to_string_lossy()).unwrap_or_default()
}

/// A single-quoted shell word.
fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.to_string_lossy().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(toml_str("/a\"b"), r#""/a\"b""#);
        assert_eq!(sh_quote(Path::new("/a'b")), r"'/a'\''b'");
    }

    #[test]
    fn inspect_fields() {
        let v = serde_json::json!({
            "Id": "abc", "Name": "c1",
            "State": {"ConmonPid": 0},
            "NetworkSettings": {"SandboxKey": "/run/netns/netns-1"}
        });
        let c = container_of(&v).unwrap();
        assert_eq!((c.id.as_str(), c.name.as_str()), ("abc", "c1"));
        assert_eq!(c.netns, Path::new("/run/netns/netns-1"));
        assert!(c.conmon.is_none());
    }
}
