//! Tearing down what a lab leaves: processes inside its namespaces, mounts
//! under its directory, its named namespaces, its directory. Also the sweep
//! of leftovers from labs whose owning process died without cleaning up.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns::{ns_inode, NETNS_RUN_DIR};

/// Root of the per-test lab directories (`/tmp/weft-lab/<prefix>/`).
pub const LAB_ROOT: &str = "/tmp/weft-lab";

/// Start time of a process (field 22 of `/proc/PID/stat`, in clock ticks
/// since boot); together with the pid it names one process for good.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything.
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts with " STATE PPID ..." = field 3 onwards.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` exists, is not a zombie, and (if given) has start
/// time `start`.
pub fn proc_alive(pid: i32, start: Option<u64>) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(i) = stat.rfind(')') else {
        return false;
    };
    let mut f = stat[i + 1..].split_whitespace();
    if f.next() == Some("Z") {
        return false;
    }
    match start {
        None => true,
        Some(s) => f.nth(18).and_then(|v| v.parse::<u64>().ok()) == Some(s),
    }
}

/// Sends SIGKILL to `pid` if it still is the process started at `start`,
/// then waits (bounded) until it is gone. For processes that are not our
/// children (we cannot reap them; init does).
pub fn kill_foreign(pid: i32, start: Option<u64>) {
    if pid <= 1 || pid == std::process::id() as i32 || !proc_alive(pid, start) {
        return;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    wait_gone(&[(pid, start)], Duration::from_secs(5));
}

fn wait_gone(procs: &[(i32, Option<u64>)], limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && procs.iter().any(|&(p, s)| proc_alive(p, s)) {
        thread::sleep(Duration::from_millis(10));
    }
}

/// Kills every process (other than ourselves) whose network namespace, or
/// any thread's, is one of `inodes`, and waits (bounded) for them to go.
pub fn kill_in_namespaces(inodes: &HashSet<u64>) {
    if inodes.is_empty() {
        return;
    }
    let me = std::process::id() as i32;
    for _round in 0..3 {
        let mut victims = Vec::new();
        let Ok(rd) = fs::read_dir("/proc") else {
            return;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid == me || pid <= 1 {
                continue;
            }
            if proc_in_namespaces(pid, inodes) {
                let start = proc_start_time(pid);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                victims.push((pid, start));
            }
        }
        if victims.is_empty() {
            return;
        }
        wait_gone(&victims, Duration::from_secs(5));
    }
}

fn proc_in_namespaces(pid: i32, inodes: &HashSet<u64>) -> bool {
    let check = |p: PathBuf| {
        fs::read_link(p)
            .ok()
            .and_then(|l| {
                let s = l.to_string_lossy().into_owned();
                s.strip_prefix("net:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            })
            .is_some_and(|ino| inodes.contains(&ino))
    };
    if check(PathBuf::from(format!("/proc/{pid}/ns/net"))) {
        return true;
    }
    // Threads may sit in another namespace than the leader.
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            if check(t.path().join("ns/net")) {
                return true;
            }
        }
    }
    false
}

/// Mount points of our mount namespace, decoded, in mount order.
pub fn mount_points() -> Vec<PathBuf> {
    let Ok(s) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    s.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lazily unmounts every mount at or below `dir`, deepest first, repeating
/// (bounded) for stacked mounts such as a directory bind-mounted onto
/// itself.
pub fn unmount_under(dir: &Path) {
    for _pass in 0..16 {
        let mut mps: Vec<PathBuf> = mount_points()
            .into_iter()
            .filter(|m| m.starts_with(dir))
            .collect();
        if mps.is_empty() {
            return;
        }
        // Deepest first; among equal paths, the most recent mount first.
        mps.reverse();
        mps.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        let mut any = false;
        for m in &mps {
            if umount2(m, MntFlags::MNT_DETACH).is_ok() {
                any = true;
            }
        }
        if !any {
            return;
        }
    }
}

/// Inodes of the namespaces found as nsfs files directly in `dir` (e.g. an
/// agent's `--netns-dir`).
pub fn ns_inodes_in_dir(dir: &Path) -> HashSet<u64> {
    let mut set = HashSet::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if let Some(i) = ns_inode(e.path()) {
                set.insert(i);
            }
        }
    }
    set
}

/// Deletes the named namespace `/run/netns/NAME` like `ip netns del`: lazy
/// unmount, then unlink. Missing namespaces are fine.
pub fn delete_netns(name: &str) {
    let p = Path::new(NETNS_RUN_DIR).join(name);
    // A namespace file may be mounted more than once (mount propagation).
    for _ in 0..4 {
        if umount2(&p, MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
    let _ = fs::remove_file(&p);
}

/// Everything a lab owns on the machine, for [`teardown`].
#[derive(Debug, Clone, Default)]
pub struct Leftovers {
    /// Names in `/run/netns`.
    pub netns: Vec<String>,
    /// The lab directory (mounts under it are removed, then the tree).
    pub dir: Option<PathBuf>,
    /// Further processes to kill: pid and start time.
    pub procs: Vec<(i32, Option<u64>)>,
    /// Whether to remove `dir` itself after emptying it of mounts.
    pub remove_dir: bool,
}

/// Removes a lab's remains: kills the given processes and every process
/// inside one of its namespaces (named, or nsfs files anywhere under its
/// directory up to two levels down, i.e. `<dir>/<host>/netns/<ns>`), then
/// unmounts everything under the directory, deletes the named namespaces and
/// removes the directory. Best effort; never panics.
pub fn teardown(l: &Leftovers) {
    for &(pid, start) in &l.procs {
        kill_foreign(pid, start);
    }
    let mut inodes = HashSet::new();
    for n in &l.netns {
        if let Some(i) = ns_inode(Path::new(NETNS_RUN_DIR).join(n)) {
            inodes.insert(i);
        }
    }
    if let Some(dir) = &l.dir {
        for p in ns_dirs_under(dir) {
            inodes.extend(ns_inodes_in_dir(&p));
        }
    }
    kill_in_namespaces(&inodes);
    if let Some(dir) = &l.dir {
        unmount_under(dir);
    }
    for n in &l.netns {
        delete_netns(n);
    }
    if let Some(dir) = &l.dir {
        if l.remove_dir {
            // Only if nothing is mounted below any more: never recurse into
            // a mount we failed to remove.
            if !mount_points().iter().any(|m| m.starts_with(dir)) {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }
}

/// Directories that may hold namespace files: `dir` and its subdirectories
/// two levels down.
fn ns_dirs_under(dir: &Path) -> Vec<PathBuf> {
    let mut v = vec![dir.to_path_buf()];
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let p = e.path();
                v.push(p.clone());
                if let Ok(rd2) = fs::read_dir(&p) {
                    for e2 in rd2.flatten() {
                        if e2.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            v.push(e2.path());
                        }
                    }
                }
            }
        }
    }
    v
}

/// Parses a temporary lab prefix `wt<pid>x<n>` and returns the pid.
pub fn prefix_pid(prefix: &str) -> Option<i32> {
    let rest = prefix.strip_prefix("wt")?;
    let (pid, n) = rest.split_once('x')?;
    if pid.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// The owner record a temporary lab keeps in `<dir>/owner`: "PID START".
pub fn read_owner(dir: &Path) -> Option<(i32, u64)> {
    let s = fs::read_to_string(dir.join("owner")).ok()?;
    let mut it = s.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Whether the temporary lab `prefix` belongs to a process that is gone.
/// Conservative: a live pid without an owner record counts as alive.
fn prefix_stale(prefix: &str) -> bool {
    let Some(pid) = prefix_pid(prefix) else {
        return false;
    };
    if !proc_alive(pid, None) {
        return true;
    }
    match read_owner(&Path::new(LAB_ROOT).join(prefix)) {
        Some((p, start)) if p == pid => !proc_alive(pid, Some(start)),
        _ => false,
    }
}

/// Removes leftovers of temporary labs (`wt<pid>x<n>` prefixes) whose
/// owning process no longer exists: processes in their namespaces, mounts
/// under their directories, their namespaces and directories.
pub fn sweep_stale() {
    let mut prefixes: HashSet<String> = HashSet::new();
    if let Ok(rd) = fs::read_dir(NETNS_RUN_DIR) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((p, _)) = name.split_once('-') {
                if prefix_pid(p).is_some() {
                    prefixes.insert(p.to_string());
                }
            }
        }
    }
    if let Ok(rd) = fs::read_dir(LAB_ROOT) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if prefix_pid(&name).is_some() {
                prefixes.insert(name);
            }
        }
    }
    // Mounts of a lab whose directory is already gone.
    for m in mount_points() {
        if let Ok(rest) = m.strip_prefix(LAB_ROOT) {
            if let Some(first) = rest.components().next() {
                let name = first.as_os_str().to_string_lossy().into_owned();
                if prefix_pid(&name).is_some() {
                    prefixes.insert(name);
                }
            }
        }
    }
    for prefix in prefixes {
        if !prefix_stale(&prefix) {
            continue;
        }
        let mut netns = Vec::new();
        if let Ok(rd) = fs::read_dir(NETNS_RUN_DIR) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.split_once('-').map(|(p, _)| p) == Some(prefix.as_str()) {
                    netns.push(name);
                }
            }
        }
        teardown(&Leftovers {
            netns,
            dir: Some(Path::new(LAB_ROOT).join(&prefix)),
            procs: Vec::new(),
            remove_dir: true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(prefix_pid("wt123x0"), Some(123));
        assert_eq!(prefix_pid("wt123x"), None);
        assert_eq!(prefix_pid("wtx1"), None);
        assert_eq!(prefix_pid("wl123x1"), None);
        assert_eq!(prefix_pid("lab"), None);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/a\\"), r"/a\\");
    }

    #[test]
    fn own_start_time() {
        let me = std::process::id() as i32;
        let st = proc_start_time(me).unwrap();
        assert!(proc_alive(me, Some(st)));
        assert!(!proc_alive(me, Some(st + 1)));
    }
}
