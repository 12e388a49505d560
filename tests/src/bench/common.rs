//! Helpers shared by the `converge`, `peers` and `dataplane` benchmarks:
//! reading the agents' log lines and their timestamps, percentiles, the
//! host namespace's overlay state, raw-sample output.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;
use weft_tests::Host;

/// Wall-clock time as Unix seconds (what the agents' log timestamps use).
pub fn wall(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub fn now() -> f64 {
    wall(SystemTime::now())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The leading RFC 3339 UTC timestamp of a log line
/// (`2025-06-01T10:11:12.123456Z  INFO …`) as Unix seconds.
pub fn line_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let h: i64 = t.next()?.parse().ok()?;
    let mi: i64 = t.next()?.parse().ok()?;
    let s: f64 = t.next()?.parse().ok()?;
    Some((days_from_civil(y, mo, da) * 86400 + h * 3600 + mi * 60) as f64 + s)
}

/// The text appended to a log file since byte `from`.
pub fn log_since(path: &Path, from: u64) -> String {
    let data = fs::read(path).unwrap_or_default();
    let from = (from as usize).min(data.len());
    String::from_utf8_lossy(&data[from..]).into_owned()
}

pub fn log_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// In `text`, the first line containing every one of `first`, then the
/// first line after it containing `then`: the timestamps of both.
pub fn after(text: &str, first: &[&str], then: &str) -> Option<(f64, f64, String)> {
    let mut lines = text.lines();
    let a = lines.find(|l| first.iter().all(|w| l.contains(w)))?;
    let b = lines.find(|l| l.contains(then))?;
    Some((line_time(a)?, line_time(b)?, b.to_string()))
}

/// Timestamp of the first line in `text` containing every one of `words`.
pub fn first_time(text: &str, words: &[&str]) -> Option<f64> {
    text.lines()
        .find(|l| words.iter().all(|w| l.contains(w)))
        .and_then(line_time)
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
        "machine": super::machine(),
        "command": super::command_line(),
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
    println!("Machine: {}  ", super::machine());
    println!("Command: `{}`\n", super::command_line());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_timestamps() {
        let t = line_time("2024-02-29T23:59:58.500000Z  INFO weft_agent: x").unwrap();
        assert!((t - 1_709_251_198.5).abs() < 1e-6, "{t}");
        assert_eq!(line_time("=== weft-tests: starting"), None);
        let t = line_time("1970-01-01T00:00:01Z INFO").unwrap();
        assert!((t - 1.0).abs() < 1e-9);
    }
}
