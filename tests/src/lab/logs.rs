//! A lab's log files (agents, controllers, etcd, background processes):
//! their tails are printed when a test fails, and with `WEFT_KEEP_LOGS=DIR`
//! they are copied out before the lab directory is removed.

use std::fs;
use std::path::PathBuf;

use super::Lab;
use crate::logfile::log_tail;

/// The variable naming a directory to copy every lab's logs into.
pub const KEEP_LOGS_ENV: &str = "WEFT_KEEP_LOGS";

impl Lab {
    /// Prints the tail of every log file of the lab (agents, background
    /// processes) to stderr; done automatically when a test panics, since
    /// the files are removed with the lab. If `WEFT_KEEP_LOGS=DIR` is set,
    /// the log files are also copied to `DIR/<prefix>/` (also when the lab
    /// ends without a panic); if not, the output says how to keep them.
    pub fn dump_logs(&self) {
        for l in self.log_files() {
            eprintln!(
                "----- {} (last 60 lines) -----\n{}",
                l.display(),
                log_tail(&l, 60)
            );
        }
        if std::env::var_os(KEEP_LOGS_ENV).is_none() {
            eprintln!(
                "----- the lab directory {} is removed now; set {KEEP_LOGS_ENV}=DIR to keep its logs -----",
                self.dir.display()
            );
        }
        self.keep_logs();
    }

    /// With `WEFT_KEEP_LOGS=DIR`, copies every log file of the lab to
    /// `DIR/<prefix>/` (a lab that ends well keeps them too).
    pub(crate) fn keep_logs(&self) {
        let Some(keep) =
            std::env::var_os(KEEP_LOGS_ENV).map(|d| PathBuf::from(d).join(&self.prefix))
        else {
            return;
        };
        eprintln!("weft lab {}: logs kept in {}", self.prefix, keep.display());
        for l in self.log_files() {
            let rel = l.strip_prefix(&self.dir).unwrap_or(&l);
            let dst = keep.join(rel);
            if let Some(parent) = dst.parent() {
                let _ = fs::create_dir_all(parent);
            }
            let _ = fs::copy(&l, &dst);
        }
    }

    fn log_files(&self) -> Vec<PathBuf> {
        let mut logs = Vec::new();
        for h in self.hosts() {
            if let Ok(rd) = fs::read_dir(&h.dir) {
                logs.extend(rd.flatten().map(|e| e.path()));
            }
        }
        if let Ok(rd) = fs::read_dir(self.dir.join("logs")) {
            logs.extend(rd.flatten().map(|e| e.path()));
        }
        logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        logs
    }
}
