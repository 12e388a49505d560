//! How weftctl prints: tables, JSON documents, durations, and failures
//! (one sentence on stderr and a non-zero exit; with `-o json` also
//! `{"error": "..."}` on stdout).

use std::process::ExitCode;

use serde_json::Value;

/// A failure to report: one sentence, and the exit code.
#[derive(Debug)]
pub struct Failure(pub String, pub u8);

impl Failure {
    /// A usage error: exit 2.
    pub fn usage(why: impl Into<String>) -> Failure {
        Failure(why.into(), 2)
    }

    /// Anything else that failed: exit 1.
    pub fn failed(why: impl Into<String>) -> Failure {
        Failure(why.into(), 1)
    }
}

impl From<weft_common::agent_client::CallError> for Failure {
    fn from(e: weft_common::agent_client::CallError) -> Failure {
        Failure::failed(e.to_string())
    }
}

/// Reports `f` and gives the exit code.
pub fn fail(json: bool, f: &Failure) -> ExitCode {
    let msg = f.0.trim_end_matches('.').to_string();
    eprintln!("weftctl: {msg}");
    if json {
        println!("{}", serde_json::json!({ "error": msg }));
    }
    ExitCode::from(f.1)
}

/// Prints one JSON document.
pub fn json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(v).expect("documents serialize"));
}

/// Prints a JSON array.
pub fn json_array(items: Vec<Value>) {
    println!("{}", Value::Array(items));
}

/// Prints rows under a header, each column as wide as its widest cell.
pub fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths: [usize; N] = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// A duration in the largest whole unit: `45s`, `3m`, `5h`, `2d`.
pub fn span(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// How long ago, as [`span`]: `45s ago`.
pub fn ago(secs: u64) -> String {
    format!("{} ago", span(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(119), "119s");
        assert_eq!(span(120), "2m");
        assert_eq!(span(7199), "119m");
        assert_eq!(span(7200), "2h");
        assert_eq!(span(172_800), "2d");
        assert_eq!(ago(45), "45s ago");
    }
}
