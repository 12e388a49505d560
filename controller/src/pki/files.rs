//! Writing the PKI's files safely: private directories, files created
//! complete under a temporary name and moved or linked into place, synced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use weft_common::tls::io_msg;

/// Writes `files` into `stage`, then moves them to `node_dir`: by renaming
/// the whole directory if `node_dir` does not exist yet (atomic), otherwise
/// file by file (each file atomically; key before certificate). `keep`: a
/// file of `node_dir` that is not replaced (refused if it exists).
pub(super) fn stage_and_install(
    stage: &Path,
    node_dir: &Path,
    files: &[(&str, &[u8], u32)],
    keep: Option<&str>,
) -> anyhow::Result<()> {
    set_mode(stage, 0o700)?;
    for (file, contents, mode) in files {
        write_file(&stage.join(file), contents, *mode)?;
    }
    sync_dir(stage);

    match node_dir.symlink_metadata() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::rename(stage, node_dir).with_context(|| {
                format!("cannot move {} to {}", stage.display(), node_dir.display())
            })?;
        }
        Err(e) => bail!("cannot inspect {}: {}", node_dir.display(), io_msg(&e)),
        Ok(meta) => {
            if !meta.is_dir() {
                bail!("{} exists and is not a directory", node_dir.display());
            }
            if let Some(kept) = keep.map(|f| node_dir.join(f)) {
                if kept.symlink_metadata().is_ok() {
                    bail!(
                        "{} already exists; pass --force to replace it",
                        kept.display()
                    );
                }
            }
            set_mode(node_dir, 0o700)?;
            for (file, _, _) in files {
                let (from, to) = (stage.join(file), node_dir.join(file));
                fs::rename(&from, &to).with_context(|| {
                    format!("cannot move {} to {}", from.display(), to.display())
                })?;
            }
            sync_dir(node_dir);
        }
    }
    Ok(())
}

/// `mkdir -p` with mode 0700 for every directory it creates.
pub(super) fn create_private_dir_all(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow!("cannot create {}: {}", dir.display(), io_msg(&e)))?;
    // The umask may have removed bits; make the mode exact.
    set_mode(dir, 0o700)
}

pub(super) fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| anyhow!("cannot chmod {}: {}", path.display(), io_msg(&e)))
}

/// Creates `path` (must not exist) with `mode` and `contents`, synced.
pub(super) fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| anyhow!("cannot create {}: {}", path.display(), io_msg(&e)))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| f.write_all(contents))
        .and_then(|()| f.sync_all())
        .map_err(|e| anyhow!("cannot write {}: {}", path.display(), io_msg(&e)))
}

/// Writes `path` completely under a temporary name, then links it into place;
/// fails without touching anything if `path` appears meanwhile.
pub(super) fn write_new(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        unique_suffix()
    ));
    let result = write_file(&tmp, contents, mode).and_then(|()| {
        fs::hard_link(&tmp, path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                anyhow!(
                    "{} already exists; refusing to overwrite the cluster CA",
                    path.display()
                )
            } else {
                anyhow!("cannot create {}: {}", path.display(), io_msg(&e))
            }
        })
    });
    let _ = fs::remove_file(&tmp);
    result
}

pub(super) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

pub(super) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}
