//! Certificate rotation: reload a `--tls-dir` on SIGHUP or when its files
//! change, without a restart.
//!
//! The directory is polled every [`POLL`] (size, mtime and inode of
//! `ca.pem`, `cert.pem`, `key.pem`, following symlinks, so a Kubernetes
//! secret swapped through `..data` is seen too). A change is taken only once
//! the files have stopped changing for [`SETTLE`], and only if the whole set
//! passes [`check_dir`]: certificate and key belong together, the
//! certificate chains to `ca.pem`, is valid now and fits the role. Anything
//! else keeps the configuration in use and logs one error line; the next
//! change is tried again.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tracing::{error, info, warn};

use crate::tls::{check_dir, CertSummary, Side, TlsError, CA_FILE, CERT_FILE, KEY_FILE};

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_secs(2);
/// How long the files must be unchanged before a change is taken.
pub const SETTLE: Duration = Duration::from_millis(300);

/// Size, mtime and inode of each file (None if unreadable).
type Stamp = Vec<Option<(u64, SystemTime, u64)>>;

fn stamp(dir: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    [CA_FILE, CERT_FILE, KEY_FILE]
        .iter()
        .map(|f| {
            let m = std::fs::metadata(dir.join(f)).ok()?;
            Some((m.len(), m.modified().ok()?, m.ino()))
        })
        .collect()
}

/// Builds a configuration from a directory that passed [`check_dir`], and
/// returns it with the certificate's summary.
pub fn load<T>(
    dir: &Path,
    side: Side,
    build: &impl Fn(&Path) -> Result<T, TlsError>,
) -> Result<(T, CertSummary), TlsError> {
    let summary = check_dir(dir, side)?;
    let config = build(dir)?;
    Ok((config, summary))
}

/// Logs the certificate a process starts with: info if it is usable, a
/// warning naming the problem if not (the process still starts: an agent
/// with an expired certificate keeps its data plane and waits for a new
/// one). Returns the summary if the certificate could be read.
pub fn log_startup(dir: &Path, side: Side) -> Option<CertSummary> {
    match check_dir(dir, side) {
        Ok(s) => {
            info!(
                "TLS from {}: certificate {} valid until {} (serial {})",
                dir.display(),
                s.name,
                s.valid_until(),
                s.serial
            );
            Some(s)
        }
        Err(e) => {
            warn!("TLS from {}: {e}", dir.display());
            crate::tls::load_certs(&dir.join(CERT_FILE))
                .ok()
                .and_then(|c| CertSummary::of(&c[0]))
        }
    }
}

/// Watches `dir` (and SIGHUP) for the life of the process; each valid new
/// set is built with `build` and handed to `apply`. Needs a tokio runtime.
/// Installing the SIGHUP handler also stops SIGHUP from ending the process.
pub fn spawn<T, B, A>(dir: PathBuf, side: Side, build: B, apply: A) -> tokio::task::JoinHandle<()>
where
    T: Send + 'static,
    B: Fn(&Path) -> Result<T, TlsError> + Send + 'static,
    A: Fn(T, &CertSummary) + Send + 'static,
{
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(
                "cannot handle SIGHUP ({e}); {} is reloaded only when its files change",
                dir.display()
            );
            None
        }
    };
    tokio::spawn(async move {
        let mut seen = stamp(&dir);
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
                _ = tick.tick() => {
                    if stamp(&dir) == seen {
                        continue;
                    }
                    "files changed"
                }
            };
            // Wait until the files stop changing (bounded: a writer that
            // never stops is read after 20 rounds anyway).
            let mut now = stamp(&dir);
            for _ in 0..20 {
                tokio::time::sleep(SETTLE).await;
                let again = stamp(&dir);
                if again == now {
                    break;
                }
                now = again;
            }
            seen = now;
            match load(&dir, side, &build) {
                Ok((config, summary)) => {
                    apply(config, &summary);
                    info!(
                        "reloaded TLS from {} ({why}): certificate {} valid until {} (serial {})",
                        dir.display(),
                        summary.name,
                        summary.valid_until(),
                        summary.serial
                    );
                }
                Err(e) => error!(
                    "not reloading TLS from {} ({why}): {e}; keeping the certificate in use",
                    dir.display()
                ),
            }
        }
    })
}
