//! What the tests of the deploy files share (`tests/tests/deploy_*.rs`):
//! the deploy files are what operators run, so they are tested like code,
//! without root. Paths into the repository, reading files and running
//! programs here; the binaries' acceptance of an invocation (`--help`,
//! `--check-config`) in [`invocation`]; the Kubernetes manifests read as
//! JSON values in [`manifests`]; systemd's unit and environment files in
//! [`systemd`].

pub mod invocation;
pub mod manifests;
pub mod systemd;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `--metrics-listen` ports of the examples and manifests (README).
pub const AGENT_METRICS_PORT: u16 = 7472;
pub const CONTROLLER_METRICS_PORT: u16 = 7471;

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `deploy/<rel>` in the workspace.
pub fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

/// The contents of `p`; panics (naming it) if it cannot be read.
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Whether this runs under CI (`CI=true` or `CI=1`).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Runs `program` with `args` and exactly the `WEFT_*` variables in `env`.
pub fn run(program: &Path, args: &[String], env: &BTreeMap<String, String>) -> Output {
    let mut c = Command::new(program);
    c.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WEFT_") {
            c.env_remove(k);
        }
    }
    c.envs(env);
    c.output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

/// A program's output as text (invalid UTF-8 replaced).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `tool` in a directory of `$PATH`, if it is there.
pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}
