//! Network namespaces: create them bind-mounted at `<netns-dir>/<name>` (as
//! `ip netns add` does, so `ip netns exec` works on them), open netlink
//! sockets inside them, and delete them.
//!
//! `setns`/`unshare` change only the calling thread. Tokio moves tasks
//! between worker threads, so a task must never switch namespaces. Instead a
//! short-lived dedicated thread enters the namespace, opens a netlink socket
//! there and exits; the socket stays bound to that namespace for its whole
//! life and is then used from any thread (netavark does the same).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::linux::Netlink;
use super::KernelError;
use crate::model::observed::NetnsPresence;

fn err(what: &str, path: &Path, e: io::Error) -> KernelError {
    KernelError::io(format!("{what} {}", path.display()), e)
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> KernelError + 'a {
    move |e| err(what, path, e.into())
}

/// Makes `dir` a mount point with shared propagation, as `ip netns` does for
/// `/run/netns`: namespaces bind-mounted under it then propagate to the mount
/// namespaces that share it (e.g. a container given the directory with
/// bidirectional mount propagation).
pub fn prepare_netns_dir(dir: &Path) -> Result<(), KernelError> {
    std::fs::create_dir_all(dir).map_err(|e| err("create", dir, e))?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) if is_mount_point(dir) => Ok(()),
        // Not a mount point (EINVAL) or a mount of a parent: bind it onto itself first.
        _ => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(io_err("bind-mount netns dir", dir))?;
            shared().map_err(io_err("make netns dir shared", dir))
        }
    }
}

/// The agent's bind mounts keep namespaces alive only where they are seen:
/// in a private mount namespace (systemd's ProtectSystem, a container without
/// bidirectional propagation) they are invisible to the host and die with
/// the agent. Warns when the agent is not in the host's mount namespace.
pub fn warn_if_private_mounts(dir: &Path) {
    let own = std::fs::read_link("/proc/self/ns/mnt");
    let init = std::fs::read_link("/proc/1/ns/mnt");
    if let (Ok(own), Ok(init)) = (own, init) {
        if own != init {
            tracing::warn!(
                "weft-agent runs in its own mount namespace: namespaces under {} are seen by the host only if that directory is shared with it (bidirectional mount propagation)",
                dir.display()
            );
        }
    }
}

fn is_mount_point(dir: &Path) -> bool {
    let Ok(canon) = dir.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mount_path(mp) == canon.as_os_str().to_string_lossy())
    })
}

fn unescape_mount_path(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Whether `path` is a bind-mounted network namespace.
pub fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// What is at `path`: a namespace, something else, or nothing.
pub fn presence(path: &Path) -> NetnsPresence {
    if is_netns(path) {
        NetnsPresence::Mounted
    } else if path.symlink_metadata().is_ok() {
        NetnsPresence::Other
    } else {
        NetnsPresence::Absent
    }
}

/// A namespace this agent has open: its file descriptor and a netlink
/// handle bound inside it.
pub struct Namespace {
    pub fd: OwnedFd,
    pub netlink: Netlink,
}

/// Creates a new network namespace bind-mounted at `path` and returns it with
/// a netlink handle inside it. On error nothing is left behind.
pub async fn create(path: &Path) -> Result<Namespace, KernelError> {
    if path.symlink_metadata().is_ok() {
        return Err(exists(path));
    }
    let ns = create_anonymous().await?;
    attach(&ns, path)?;
    Ok(ns)
}

/// Creates a new network namespace that has no name yet: it lives as long
/// as its file descriptor or a socket inside it is open, so a process that
/// dies takes it (and the devices in it) along.
pub async fn create_anonymous() -> Result<Namespace, KernelError> {
    let label = PathBuf::from("(new namespace)");
    let (fd, netlink) = on_fresh_thread(
        &label.clone(),
        move |rt| -> Result<(OwnedFd, Netlink), KernelError> {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(io_err("unshare network namespace for", &label))?;
            // weft routes IPv4 only. With IPv6 on, every new eth0 sends DAD,
            // MLD and router solicitations that the bridge floods to every
            // port: work that grows with the number of namespaces. Devices
            // created in this namespace from now on (eth0) get none; lo
            // keeps ::1.
            super::sysctl::set("net.ipv6.conf.default.disable_ipv6", "1")
                .map_err(|e| err("disable IPv6 on new devices in", &label, e))?;
            let fd = File::open("/proc/thread-self/ns/net")
                .map_err(|e| err("open namespace", &label, e))?;
            let _guard = rt.enter();
            let netlink =
                Netlink::connect().map_err(|e| err("open netlink socket in", &label, e))?;
            Ok((fd.into(), netlink))
        },
    )
    .await?;
    Ok(Namespace { fd, netlink })
}

/// Names a namespace: bind-mounts it at `path` (a new file, as `ip netns
/// add` makes). On error nothing is left at `path`.
pub fn attach(ns: &Namespace, path: &Path) -> Result<(), KernelError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => exists(path),
            _ => err("create namespace file", path, e),
        })?;
    let source = format!("/proc/self/fd/{}", ns.fd.as_raw_fd());
    if let Err(e) = mount(
        Some(source.as_str()),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = std::fs::remove_file(path);
        return Err(io_err("bind-mount namespace at", path)(e));
    }
    Ok(())
}

/// Opens an existing namespace and a netlink handle inside it.
pub async fn open(path: &Path) -> Result<Namespace, KernelError> {
    let fd: OwnedFd = File::open(path)
        .map_err(|e| err("open namespace", path, e))?
        .into();
    let thread_fd = fd
        .try_clone()
        .map_err(|e| err("dup namespace fd", path, e))?;
    let owned = path.to_path_buf();
    let netlink = on_fresh_thread(path, move |rt| -> Result<Netlink, KernelError> {
        setns(thread_fd.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(io_err("enter namespace", &owned))?;
        let _guard = rt.enter();
        Netlink::connect().map_err(|e| err("open netlink socket in", &owned, e))
    })
    .await?;
    Ok(Namespace { fd, netlink })
}

/// Runs `f` on a new OS thread (never a pooled one: `f` may leave the
/// thread in another namespace) and awaits its result.
async fn on_fresh_thread<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce(&tokio::runtime::Handle) -> Result<T, KernelError> + Send + 'static,
) -> Result<T, KernelError> {
    let rt = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("weft-netns".into())
        .spawn(move || {
            let _ = tx.send(f(&rt));
        })
        .map_err(|e| err("spawn namespace thread for", path, e))?;
    rx.await.map_err(|_| {
        KernelError::other(
            format!("enter namespace {}", path.display()),
            "the helper thread panicked",
        )
    })?
}

/// Unmounts and removes the namespace file. Processes still inside the
/// namespace keep it alive (as with `ip netns del`). Absent is not an error.
pub fn delete(path: &Path) -> Result<(), KernelError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(io_err("unmount namespace", path)(e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err("remove namespace file", path, e)),
    }
}

/// The namespace file already exists (another tool's namespace, or ours).
fn exists(path: &Path) -> KernelError {
    KernelError::new(
        format!("create namespace {}", path.display()),
        super::Cause::Refused {
            errno: libc::EEXIST,
            message: Some("the namespace path already exists".into()),
        },
    )
}
