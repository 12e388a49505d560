//! Kernel settings of the host namespace the agent runs in. `/proc/sys/net`
//! shows the network namespace of the process that opens it.

use std::io;
use std::path::PathBuf;

use tracing::info;

/// Keys are dotted (`net.ipv4.ip_forward`) or, when a part holds a dot
/// itself (a device called `weft.1`), in slash form.
fn path(key: &str) -> PathBuf {
    if key.contains('/') {
        PathBuf::from("/proc/sys").join(key)
    } else {
        PathBuf::from("/proc/sys").join(key.replace('.', "/"))
    }
}

/// The key of a per-device setting, e.g. `dev_key("ipv4", "weft.1", "rp_filter")`.
pub fn dev_key(family: &str, dev: &str, name: &str) -> String {
    format!("net/{family}/conf/{dev}/{name}")
}

/// Sets `/proc/sys/<key>` to `value` without reading or logging (for per-
/// device settings on hot paths). A kernel without IPv6 has no
/// `net.ipv6` keys; setting one there is not an error.
pub fn set(key: &str, value: &str) -> io::Result<()> {
    match std::fs::write(path(key), value) {
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                && (key.starts_with("net.ipv6.") || key.starts_with("net/ipv6/")) =>
        {
            Ok(())
        }
        r => r.map_err(|e| io::Error::new(e.kind(), format!("set sysctl {key}={value}: {e}"))),
    }
}

/// Sets `/proc/sys/<key>` (dotted form, e.g. `net.ipv4.ip_forward`) to
/// `value` unless it already has it, and logs the change.
pub fn ensure(key: &str, value: &str, why: &str) -> io::Result<()> {
    let path = path(key);
    let current = std::fs::read_to_string(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("read sysctl {key}: {e}")))?;
    if current.trim() == value {
        return Ok(());
    }
    std::fs::write(&path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("set sysctl {key}={value}: {e}")))?;
    info!("sysctl {key}={value} (was {}): {why}", current.trim());
    Ok(())
}
