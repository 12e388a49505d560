//! Running code and commands inside a network namespace.
//!
//! Two mechanisms, both `setns(2)` on a namespace file (a `/run/netns/NAME`
//! entry or any bind mount of an nsfs file):
//!
//! * [`in_netns`] runs a closure on a fresh thread that first joins the
//!   namespace. Sockets created there stay in that namespace for their whole
//!   life, so they can be handed back and used from any thread.
//! * [`command_in`] builds a [`Command`] whose child joins the namespace in a
//!   `pre_exec` hook. Unlike `ip netns exec` this keeps the caller's mount
//!   namespace, so bind mounts the child makes (the agent's endpoint
//!   namespaces) are visible to everyone and outlive the child.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use nix::sched::CloneFlags;

/// Default time limit of [`exec_in`] and the helpers built on it.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Turns a namespace reference into a path: anything containing a `/` is a
/// path already, a bare name means `/run/netns/NAME`.
pub fn ns_path(ns: impl AsRef<Path>) -> PathBuf {
    let ns = ns.as_ref();
    if ns.components().count() > 1 || ns.is_absolute() {
        ns.to_path_buf()
    } else {
        Path::new(NETNS_RUN_DIR).join(ns)
    }
}

/// Opens a namespace file (close-on-exec).
pub fn open_ns(ns: impl AsRef<Path>) -> Result<OwnedFd> {
    let path = ns_path(ns);
    let f = File::open(&path).with_context(|| format!("open namespace {}", path.display()))?;
    Ok(f.into())
}

/// Runs `f` on a new thread that has joined the network namespace `ns`
/// (a path or a `/run/netns` name) and returns its result. A panic in `f` is
/// propagated to the caller.
pub fn in_netns<T, F>(ns: impl AsRef<Path>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = ns_path(ns);
    let fd = open_ns(&path)?;
    let h = thread::Builder::new()
        .name("weft-netns".into())
        .spawn(move || -> Result<T> {
            nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {}", path.display()))?;
            drop(fd);
            Ok(f())
        })
        .context("spawn namespace thread")?;
    match h.join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Writes a sysctl under `/proc/sys/net/` as seen from namespace `ns`, e.g.
/// `write_net_sysctl(ns, "ipv4/ip_forward", "1")`. The `/proc/sys/net` view
/// follows the network namespace of the thread that opens the file.
pub fn write_net_sysctl(ns: impl AsRef<Path>, key: &str, value: &str) -> Result<()> {
    let file = format!("/proc/sys/net/{}", key.trim_start_matches('/'));
    let value = value.to_string();
    let ns = ns_path(ns);
    let shown = ns.display().to_string();
    in_netns(&ns, move || {
        std::fs::write(&file, value).with_context(|| format!("write {file}"))
    })?
    .with_context(|| format!("sysctl in {shown}"))
}

/// Reads a sysctl under `/proc/sys/net/` as seen from namespace `ns`.
pub fn read_net_sysctl(ns: impl AsRef<Path>, key: &str) -> Result<String> {
    let file = format!("/proc/sys/net/{}", key.trim_start_matches('/'));
    in_netns(ns, move || {
        std::fs::read_to_string(&file).with_context(|| format!("read {file}"))
    })?
    .map(|s| s.trim().to_string())
}

/// Options for [`command_in`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SpawnOpts {
    /// Start the child in a new session (`setsid`): it no longer gets the
    /// terminal's Ctrl-C. Used for processes that must outlive the caller.
    pub setsid: bool,
    /// Put the child in its own process group, so a timeout can kill the
    /// whole group (the child and whatever it started).
    pub own_group: bool,
}

/// Builds a command whose child process runs inside network namespace `ns`.
/// The namespace file is opened now (so errors surface here) and joined in
/// the child between `fork` and `exec`. Every `WEFT_*` variable of the
/// caller's environment is removed, since weft binaries read their flags
/// from such variables; `WEFT_LOG` (the log filter, not a flag) is kept.
pub fn command_in(
    ns: impl AsRef<Path>,
    program: impl AsRef<OsStr>,
    opts: SpawnOpts,
) -> Result<Command> {
    let fd = open_ns(ns)?;
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WEFT_") && k != "WEFT_LOG" {
            cmd.env_remove(k);
        }
    }
    if opts.own_group && !opts.setsid {
        cmd.process_group(0);
    }
    let setsid = opts.setsid;
    // SAFETY: the hook only makes async-signal-safe system calls (setns,
    // setsid) on a descriptor opened before fork; `fd` is owned by the
    // closure, which lives inside `cmd`, so it stays open until spawn. It is
    // close-on-exec, so the program never sees it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if setsid && libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Runs `cmd[0]` with arguments `cmd[1..]` inside namespace `ns`, stdin
/// from `/dev/null`, capturing stdout and stderr, with time limit
/// [`EXEC_TIMEOUT`].
pub fn exec_in(ns: impl AsRef<Path>, cmd: &[&str]) -> Result<Output> {
    exec_in_timeout(ns, cmd, EXEC_TIMEOUT)
}

/// Like [`exec_in`] with an explicit time limit. On timeout the child's
/// process group is killed and the returned output carries the SIGKILL
/// status and a note at the end of stderr.
pub fn exec_in_timeout(ns: impl AsRef<Path>, cmd: &[&str], timeout: Duration) -> Result<Output> {
    let (prog, args) = cmd.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let mut c = command_in(
        ns,
        prog,
        SpawnOpts {
            own_group: true,
            ..Default::default()
        },
    )?;
    c.args(args);
    run_with_timeout(&mut c, timeout).with_context(|| format!("run {}", cmd.join(" ")))
}

/// Spawns `cmd` with piped output and waits for it at most `timeout`. If the
/// command was set up with its own process group, the whole group is killed
/// on timeout, otherwise the child alone.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    run_with_input(cmd, None, timeout)
}

/// Like [`run_with_timeout`], with `input` written to the child's stdin
/// (then closed); `None`: stdin is `/dev/null`.
pub fn run_with_input(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Output> {
    let stdin = match input {
        Some(_) => Stdio::piped(),
        None => Stdio::null(),
    };
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let (Some(bytes), Some(mut w)) = (input, child.stdin.take()) {
        // A child that exits without reading gets EPIPE here: its answer
        // still counts.
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = io::Write::write_all(&mut w, &bytes);
        });
    }
    let out_rx = reader(child.stdout.take());
    let err_rx = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let (status, timed_out) = wait_deadline(&mut child, deadline)?;
    // Normally the pipes close with the child; a grandchild still holding
    // them must not hang us.
    let grace = Duration::from_secs(2);
    let stdout = out_rx.recv_timeout(grace).unwrap_or_default();
    let mut stderr = err_rx.recv_timeout(grace).unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(
            format!("\n[weft-tests: killed after {timeout:?} time limit]\n").as_bytes(),
        );
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// Waits for `child` until `deadline`; then kills its process group (or the
/// child if it leads none) and reaps it. Returns the status and whether the
/// deadline hit.
///
/// Returns as soon as the child exits (the benchmarks time plugins with
/// it; polling would round every time up to the next poll): this thread
/// blocks in `waitid(WNOWAIT)`, which sees the exit without reaping, while
/// a watchdog thread kills at the deadline. The child is reaped only after
/// the watchdog is done, so its pid cannot have been reused when it kills.
pub(crate) fn wait_deadline(
    child: &mut Child,
    deadline: Instant,
) -> io::Result<(ExitStatus, bool)> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    use nix::unistd::Pid;

    let pid = Pid::from_raw(child.id() as i32);
    let (done, done_rx) = mpsc::channel::<()>();
    let left = deadline.saturating_duration_since(Instant::now());
    let watchdog = thread::spawn(move || {
        if done_rx.recv_timeout(left) != Err(mpsc::RecvTimeoutError::Timeout) {
            return false;
        }
        // Kill the group if the child leads one, then the child itself.
        if nix::unistd::getpgid(Some(pid)).is_ok_and(|g| g == pid) {
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        true
    });
    let exited = loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r,
        }
    };
    drop(done);
    let timed_out = watchdog.join().unwrap_or(false);
    exited.map_err(io::Error::from)?;
    let st = child.wait()?;
    Ok((st, timed_out))
}

/// The stdout of a command that must have succeeded; panics naming
/// `what` (the command and where it ran), with its exit and output,
/// otherwise.
pub fn stdout_of_success(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        describe_status(&out.status),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A short human description of an exit status ("exit 1", "signal 9").
pub fn describe_status(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => format!("{st}"),
    }
}

/// Inode number of a namespace file (what `/proc/PID/ns/net` shows as
/// `net:[INODE]`), if `path` is an nsfs file.
pub fn ns_inode(path: impl AsRef<Path>) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path.as_ref()).ok()?;
    let nsfs_dev = std::fs::metadata("/proc/self/ns/net").ok()?.dev();
    (md.dev() == nsfs_dev).then_some(md.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_waited_for_exactly_and_killed_with_its_group_at_the_deadline() {
        let mut ok = Command::new("sh");
        ok.args(["-c", "read x; echo \"$x\"; exit 3"]);
        let out = run_with_input(&mut ok, Some(b"hi\n"), Duration::from_secs(10)).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"hi\n");

        // A group leader with a child of its own: both go at the deadline.
        let mut slow = Command::new("sh");
        slow.args(["-c", "sleep 30 & wait"]).process_group(0);
        let t = Instant::now();
        let out = run_with_timeout(&mut slow, Duration::from_millis(200)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert_eq!(out.status.signal(), Some(libc::SIGKILL));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("killed after"), "{err}");
    }
}
