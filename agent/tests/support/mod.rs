//! Scratch network namespaces for the tests that need root: each entered
//! by a dedicated thread (`setns` changes only the calling thread), so
//! `nft` children forked from it and sockets made on it belong to it.
//! Namespaces left by a run that was killed (named `fwt-<pid>-<n>` after a
//! process that is gone) are removed first.
#![allow(dead_code)]

use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{setns, CloneFlags};

/// A scratch network namespace, deleted on drop (also when a test panics).
pub struct Netns {
    pub name: String,
}

/// Removes the scratch namespaces of earlier runs whose process is gone
/// (killed before their `Drop` ran). Once per test process.
fn sweep_stale() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        for name in run_cmd("ip", &["netns", "list"])
            .lines()
            .filter_map(|l| l.split_whitespace().next())
        {
            let Some(pid) = name
                .strip_prefix("fwt-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip").args(["netns", "delete", name]).status();
            }
        }
    });
}

impl Netns {
    pub fn new() -> Self {
        sweep_stale();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "fwt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        run_cmd("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_cmd("ip", &all);
    }

    /// Writes a sysctl of this namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        run_cmd(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "sh",
                "-c",
                &format!("echo {value} > {path}"),
            ],
        );
    }

    /// Runs `f` on a new thread that has entered this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

pub fn run_cmd(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
