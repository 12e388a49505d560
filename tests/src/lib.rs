//! The weft test bed: simulated hosts in network namespaces, running the
//! real `weft-agent` and `weftctl` binaries.
//!
//! ```no_run
//! use weft_tests::{Lab, LabOpts, INTERNET_IP};
//!
//! let lab = Lab::new(LabOpts::hosts(1));
//! let h1 = lab.host(1);
//! let _agent = h1.start_agent(&[]);
//! let ep = h1.add_endpoint("a");
//! assert!(lab.ping(&ep.netns, INTERNET_IP));
//! // everything is removed when `lab` goes out of scope, also on panic
//! ```
//!
//! Where things are: the lab itself (building, processes, logs, manifest)
//! in [`lab`]; a simulated host, its agent and the typed view of the
//! agent's API in [`host`]; etcd and controllers in [`cluster`]; reading
//! log files in [`logfile`] and structured events in [`events`];
//! `weftctl`'s output contract in [`cli`]; a CNI runtime of our own
//! (plugins exec'd as a runtime does, results checked) in [`cni`]; the end-of-test health check in
//! [`health`]; hand-made controller clients in [`clients`]; sockets,
//! HTTP and namespaces in [`sock`], [`http`], [`netns`]; removing
//! leftovers in [`cleanup`]; temporary directories in [`tempdir`]; real
//! Podman containers on a CNI network inside a simulated host in [`podman`];
//! what the tests of the deploy files (units, manifests, example and CNI
//! configs) share in [`deploy`].
//!
//! Rules (see DESIGN.md, "Testing on one machine"): nothing here touches the
//! root network namespace; every name carries a unique per-lab prefix; all
//! waits and request loops are bounded.
//!
//! Binaries are looked up in `$WEFT_BIN_DIR`, else next to the running
//! executable (`target/<profile>/`, also from `target/<profile>/deps/`).
//! Build them first with `cargo build --workspace --bins`.

pub mod cleanup;
pub mod cli;
pub mod clients;
pub mod cluster;
pub mod cni;
pub mod deploy;
pub mod events;
pub mod health;
pub mod host;
pub mod http;
pub mod lab;
pub mod logfile;
pub mod netns;
pub mod netpol;
pub mod ping;
pub mod podman;
pub mod registry;
pub mod sock;
pub mod tempdir;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use host::{Agent, EndpointOpts, Host, WAIT};
pub use lab::{
    default_subnet, gateway_of, host_ip, log_tail, Lab, LabOpts, Manifest, Process, CLUSTER_CIDR,
    INTERNET_IP, ROUTER_INTERNET_IP, ROUTER_IP, UNDERLAY_CIDR,
};
pub use netns::{exec_in, in_netns, ns_path};
pub use sock::{
    tcp_peer_server, tcp_request, try_tcp_request, try_udp_request, udp_echo_server,
    udp_peer_server, udp_request, Server,
};
pub use tempdir::TempDir;
pub use weft_common::api::{Endpoint, Peer, Status};

/// Panics with a clear message unless we are root and can create network
/// namespaces and run `ip`. Tests call this (via [`Lab::new`]) so that they
/// fail, never silently skip, where they cannot run.
pub fn require_root() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let r = CHECK.get_or_init(|| {
        if !nix::unistd::geteuid().is_root() {
            return Err(
                "the weft test bed needs root (network namespaces, mounts); \
                        run the tests as root, e.g. `sudo -E cargo test -p weft-tests`"
                    .into(),
            );
        }
        if !std::path::Path::new("/proc/self/ns/net").exists() {
            return Err("this kernel has no network namespaces (/proc/self/ns/net missing)".into());
        }
        // Creating a namespace on a throwaway thread proves it is allowed
        // (no seccomp/container restriction) without touching anything.
        let unshare =
            std::thread::spawn(|| nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET))
                .join()
                .map_err(|_| "namespace probe thread panicked".to_string())?;
        if let Err(e) = unshare {
            return Err(format!(
                "cannot create a network namespace: unshare(CLONE_NEWNET): {e}"
            ));
        }
        match std::process::Command::new("ip").arg("-V").output() {
            Ok(o) if o.status.success() => Ok(()),
            _ => Err("the test bed needs `ip` (iproute2) in PATH".into()),
        }
    });
    if let Err(e) = r {
        panic!("weft test bed unavailable: {e}");
    }
}

/// Directory holding `weft-agent`, `weftctl` and `weft-lab`: `$WEFT_BIN_DIR`
/// if set, else the directory of the running executable, or its parent if
/// that directory is `deps` (where cargo puts integration test binaries).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WEFT_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// Path of binary `name` in [`bin_dir`]; panics if it is missing.
pub fn bin_path(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} not found: run `cargo build --workspace --bins` first (or set WEFT_BIN_DIR)",
        p.display()
    );
    p
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes; returns
/// whether it did.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
