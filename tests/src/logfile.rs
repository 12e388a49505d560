//! Reading the daemons' log files in tests: what a file gained since an
//! offset, the lines holding given words, and a bounded wait for such a
//! line. (Benchmarks read structured events instead: [`crate::events`].)

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::wait_until;

/// The current length of a file (0 if it does not exist): an offset for
/// [`lines_since`].
pub fn len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The lines a file gained after byte `from`.
pub fn lines_since(path: &Path, from: u64) -> Vec<String> {
    let text = fs::read(path).unwrap_or_default();
    let from = (from as usize).min(text.len());
    String::from_utf8_lossy(&text[from..])
        .lines()
        .map(str::to_string)
        .collect()
}

/// The lines of a file holding every one of `words`.
pub fn lines_with(path: &Path, words: &[&str]) -> Vec<String> {
    lines_since(path, 0)
        .into_iter()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .collect()
}

/// Waits (at most `timeout`) until more than `before` lines of the file hold
/// every one of `words`; returns the newest. Panics with the file's tail
/// otherwise.
pub fn wait_for_line(path: &Path, words: &[&str], before: usize, timeout: Duration) -> String {
    let mut found = Vec::new();
    wait_until(timeout, || {
        found = lines_with(path, words);
        found.len() > before
    });
    match found.pop() {
        Some(line) if found.len() >= before => line,
        _ => panic!(
            "{} has no new line with {words:?} within {timeout:?}; tail:\n{}",
            path.display(),
            log_tail(path, 40)
        ),
    }
}

/// Most bytes read from a file in one [`Follow::new_lines`].
const READ_CHUNK: u64 = 16 << 20;

/// A file read as it grows, whole lines at a time (a line still being
/// written is returned once it is complete).
#[derive(Debug, Clone)]
pub struct Follow {
    path: PathBuf,
    /// Bytes returned so far (up to the end of the last whole line).
    offset: u64,
}

impl Follow {
    /// From the file's beginning.
    pub fn from_start(path: impl Into<PathBuf>) -> Follow {
        Follow {
            path: path.into(),
            offset: 0,
        }
    }

    /// From its current end: only what it gains from now on.
    pub fn from_now(path: impl Into<PathBuf>) -> Follow {
        let path = path.into();
        Follow {
            offset: len(&path),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole lines the file gained since the last call.
    pub fn new_lines(&mut self) -> Vec<String> {
        let mut buf = Vec::new();
        if let Ok(mut f) = fs::File::open(&self.path) {
            if f.seek(SeekFrom::Start(self.offset)).is_ok() {
                let _ = f.take(READ_CHUNK).read_to_end(&mut buf);
            }
        }
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        self.offset += end as u64 + 1;
        String::from_utf8_lossy(&buf[..end])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// The last `n` lines of a log file (for error messages).
pub fn log_tail(path: &Path, n: usize) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
