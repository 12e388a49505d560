//! Running the `nft` binary: JSON in on stdin, JSON out on stdout, and the
//! error text from stderr kept for error messages.
//!
//! The `nftables` crate's own `helper::apply_ruleset*` functions do not pipe
//! the child's stderr (it goes to the agent's stderr and the returned error
//! carries an empty `stderr`), so the process is run here instead; the crate
//! provides the typed schema and its serialization.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// Why an `nft` invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {}: {source}", program.display())]
    Spawn { program: PathBuf, source: io::Error },
    #[error("{} failed ({status}): {stderr}", program.display())]
    Failed {
        program: PathBuf,
        status: ExitStatus,
        stderr: String,
    },
    #[error("cannot encode nft JSON input: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("unexpected output from {}: {reason}", program.display())]
    Output { program: PathBuf, reason: String },
}

impl NftError {
    pub(super) fn output(program: &Path, reason: impl Into<String>) -> Self {
        NftError::Output {
            program: program.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Finds `nft`: first on `PATH`, then in the usual sbin directories (a
/// service's `PATH` often lacks them). Falls back to the bare name so the
/// spawn error names what was looked for.
pub(super) fn find_program() -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let fixed = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    from_path
        .into_iter()
        .chain(fixed)
        .map(|dir| dir.join("nft"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nft"))
}

/// Runs `program args...`, feeding `stdin` if given, and returns stdout.
pub(super) fn run<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    stdin: Option<&str>,
) -> Result<String, NftError> {
    let spawn_err = |source| NftError::Spawn {
        program: program.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // nft reads its whole input before it writes anything, so writing
        // everything before collecting the output cannot deadlock. A write
        // error (nft died early) is reported through its exit status below.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NftError::Failed {
            program: program.to_owned(),
            status: out.status,
            stderr: clean_stderr(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    String::from_utf8(out.stdout).map_err(|e| NftError::output(program, e.to_string()))
}

/// Applies a JSON document in one transaction (`nft -j -f -`).
pub(super) fn apply(program: &Path, doc: &nftables::schema::Nftables) -> Result<(), NftError> {
    let json = serde_json::to_string(doc)?;
    run(program, &["-j", "-f", "-"], Some(&json)).map(drop)
}

/// Makes nft's stderr fit on one line: JSON input errors come as
/// `internal:0:0-0: Error: ...`, often repeated, separated by blank lines.
pub(super) fn clean_stderr(stderr: &str) -> String {
    let mut lines: Vec<&str> = Vec::new();
    for line in stderr.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let line = line.strip_prefix("internal:0:0-0: ").unwrap_or(line);
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    if lines.is_empty() {
        "(no error output)".to_owned()
    } else {
        lines.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_one_deduplicated_line() {
        let raw = "internal:0:0-0: Error: Could not process rule: File exists\n\n\
                   internal:0:0-0: Error: Could not process rule: File exists\n\n";
        assert_eq!(
            clean_stderr(raw),
            "Error: Could not process rule: File exists"
        );
        assert_eq!(clean_stderr(""), "(no error output)");
        let text = "Error: No such file or directory\nlist table inet nope\n                ^^^^\n";
        assert_eq!(
            clean_stderr(text),
            "Error: No such file or directory; list table inet nope; ^^^^"
        );
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run(Path::new("/nonexistent/nft"), &["-v"], None).unwrap_err();
        assert!(matches!(err, NftError::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/nft"), "{err}");
    }

    #[test]
    fn failure_carries_stderr() {
        let err = run(Path::new("/bin/sh"), &["-c", "echo oops >&2; exit 3"], None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("oops") && msg.contains('3'), "{msg}");
    }

    #[test]
    fn stdin_reaches_the_child() {
        let out = run(Path::new("/bin/cat"), &[] as &[&str], Some("hello")).unwrap();
        assert_eq!(out, "hello");
    }
}
