//! What the benchmarks share: the clock, percentiles, a process's memory
//! and CPU, commands in a host's namespace, the machine and command line
//! every figure names, and raw-sample output.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;
use weft_tests::Host;

/// Wall-clock time as Unix seconds (what the daemons' event timestamps use,
/// [`weft_tests::events::Event::time`]).
pub fn wall(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub fn now() -> f64 {
    wall(SystemTime::now())
}

/// Median, p99, min, max (nearest rank).
pub fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let q = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.99), s[0], s[s.len() - 1])
}

pub fn median(v: &[f64]) -> f64 {
    stats(v).0
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A field of `/proc/PID/status` in kB (`VmRSS:`, `VmHWM:`).
pub fn status_kb(pid: i32, key: &str) -> u64 {
    weft_tests::clients::status_kb(pid as u32, key)
}

/// CPU time a process has used so far: (user ms, system ms).
pub fn cpu_ms(pid: i32) -> (f64, f64) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is #3,
    // utime #14, stime #15.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let tick = |i: usize| f.get(i).copied().unwrap_or(0.0) * 1e3 / hz;
    (tick(11), tick(12))
}

/// Runs `cmd` in the host's namespace; its stdout, or an error with stderr.
pub fn host_sh(h: &Host, cmd: &[&str]) -> Result<String> {
    let out = weft_tests::netns::exec_in(&h.netns, cmd)?;
    anyhow::ensure!(
        out.status.success(),
        "`{}` in {} failed: {}",
        cmd.join(" "),
        h.name,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes what an agent left in its host (vxlan device, bridge, nft table)
/// and its state directory, so the next start is a fresh host. Only inside
/// the host's own namespace.
pub fn wipe_host(h: &Host) -> Result<()> {
    for cmd in [
        &["ip", "link", "del", "weft.1"][..],
        &["ip", "link", "del", "weft0"][..],
        &["nft", "delete", "table", "inet", "weft"][..],
    ] {
        // Absent is fine.
        let _ = weft_tests::netns::exec_in(&h.netns, cmd);
    }
    if h.state_dir.exists() {
        fs::remove_dir_all(&h.state_dir)
            .with_context(|| format!("wipe {}", h.state_dir.display()))?;
    }
    fs::create_dir_all(&h.state_dir)?;
    Ok(())
}

/// Polls `f` every `every` until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Writes `{machine, command, ...data}` to `DIR/NAME.json` if a directory
/// was given.
pub fn write_raw<T: Serialize>(out: Option<&Path>, name: &str, data: &T) -> Result<()> {
    let Some(dir) = out else {
        return Ok(());
    };
    fs::create_dir_all(dir)?;
    let file = dir.join(format!("{name}.json"));
    let mut v = serde_json::json!({
        "machine": machine(),
        "command": command_line(),
    });
    if let (Some(m), serde_json::Value::Object(d)) =
        (v.as_object_mut(), serde_json::to_value(data)?)
    {
        m.extend(d);
    }
    fs::write(&file, serde_json::to_vec_pretty(&v)?)
        .with_context(|| format!("write {}", file.display()))?;
    eprintln!("raw samples: {}", file.display());
    Ok(())
}

pub fn header() {
    println!("Machine: {}  ", machine());
    println!("Command: `{}`\n", command_line());
}

/// The machine a figure was measured on: cores, CPU model, kernel.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    if cpu.is_empty() {
        format!("{cores} cores, Linux {}", kernel.trim())
    } else {
        format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
    }
}

/// This run's command line, as a figure names it.
pub fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("weft-bench {}", args.join(" "))
}
