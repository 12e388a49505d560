//! Kernel settings of the host namespace the agent runs in. `/proc/sys/net`
//! shows the network namespace of the process that opens it.

use std::io;
use std::path::PathBuf;

use tracing::info;

/// Sets `/proc/sys/<key>` (dotted form, e.g. `net.ipv4.ip_forward`) to
/// `value` unless it already has it, and logs the change.
pub fn ensure(key: &str, value: &str, why: &str) -> io::Result<()> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
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
