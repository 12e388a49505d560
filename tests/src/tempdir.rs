//! Temporary directories of tests and tools: removed when dropped, also
//! when the test fails, unless `WEFT_KEEP_TMP` is set (then a failing
//! test's directory is kept and its path printed).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Set (to anything) to keep the temporary directory of a failing test.
pub const KEEP_TMP_ENV: &str = "WEFT_KEEP_TMP";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the system's temporary directory
/// (`weft-<tag>-<pid>-<n>`).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates it (empty); panics if it cannot.
    pub fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "weft-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        TempDir(d)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `path()/rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if std::env::var_os(KEEP_TMP_ENV).is_some() {
                eprintln!("kept {} ({KEEP_TMP_ENV} is set)", self.0.display());
                return;
            }
            eprintln!(
                "removing {}; set {KEEP_TMP_ENV}=1 to keep it when a test fails",
                self.0.display()
            );
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
