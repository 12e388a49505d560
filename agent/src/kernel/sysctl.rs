//! Kernel settings of the namespace the agent runs in: `/proc/sys/net`
//! shows the network namespace of the process that opens it.

use std::io;
use std::path::PathBuf;

/// Keys are dotted (`net.ipv4.ip_forward`) or, when a part holds a dot
/// itself (a device called `weft.1`), in slash form.
fn path(key: &str) -> PathBuf {
    if key.contains('/') {
        PathBuf::from("/proc/sys").join(key)
    } else {
        PathBuf::from("/proc/sys").join(key.replace('.', "/"))
    }
}

fn is_ipv6(key: &str) -> bool {
    key.starts_with("net.ipv6.") || key.starts_with("net/ipv6/")
}

/// The value of `/proc/sys/<key>`, trimmed; `None` when the kernel has no
/// such key (its device does not exist, or no IPv6).
pub fn read(key: &str) -> Option<String> {
    std::fs::read_to_string(path(key))
        .ok()
        .map(|v| v.trim().to_string())
}

/// Sets `/proc/sys/<key>` to `value`. A kernel without IPv6 has no
/// `net.ipv6` keys; setting one there is not an error.
pub fn set(key: &str, value: &str) -> io::Result<()> {
    match std::fs::write(path(key), value) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && is_ipv6(key) => Ok(()),
        r => r,
    }
}

/// Whether the kernel has IPv6 (it may be booted without: `ipv6.disable=1`).
pub fn has_ipv6() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

/// Whether bridged frames can pass the IP netfilter hooks here (the
/// `br_netfilter` module is loaded or built in): network policy sees
/// traffic between two namespaces of this host only then.
pub fn has_bridge_netfilter() -> bool {
    std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_paths() {
        assert_eq!(
            path("net.ipv4.ip_forward"),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            path("net/ipv4/conf/weft.1/rp_filter"),
            PathBuf::from("/proc/sys/net/ipv4/conf/weft.1/rp_filter")
        );
        assert!(is_ipv6("net/ipv6/conf/weft.1/disable_ipv6"));
        assert_eq!(read("net/ipv4/conf/no-such-device-weft/rp_filter"), None);
    }
}
