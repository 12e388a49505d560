//! CNI attachments as data: a container's namespace, made and owned by a
//! container runtime, that `weft-cni` attached to the bridge. weft owns the
//! veth pair, the address and the published ports, never the namespace.
//! An attachment is keyed by the runtime's `(container ID, interface)`;
//! here are its record, its endpoint name, and the checks of what the
//! runtime sent (untrusted: it comes through a plugin's environment).

use serde::{Deserialize, Serialize};
use thiserror::Error;
use weft_common::api::{Attachment, AttachmentKey};
use weft_common::name::host_veth_name;

/// Longest container ID accepted (runtimes use 64 hex digits).
pub const MAX_CONTAINER_ID: usize = 256;
/// Longest namespace path accepted.
pub const MAX_NETNS_PATH: usize = 4096;
/// Longest CNI network name accepted.
pub const MAX_NETWORK_NAME: usize = 256;
/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// What the agent keeps of an attachment (in its endpoint's record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentRecord {
    pub container_id: String,
    pub ifname: String,
    /// The runtime's namespace path (`CNI_NETNS`).
    pub netns: String,
    /// The CNI network name (`GC` removes only this network's).
    pub network: String,
}

impl AttachmentRecord {
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }

    pub fn api(&self) -> Attachment {
        Attachment {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
            network: self.network.clone(),
        }
    }
}

/// The endpoint name of an attachment: `cni-` and a hash of its key, so
/// it is a valid endpoint name (and file name) whatever the runtime's
/// container ID, and the same for the same key.
pub fn endpoint_name(key: &AttachmentKey) -> String {
    let h = host_veth_name(&format!("{}/{}", key.container_id, key.ifname));
    format!("cni-{}", &h[weft_common::name::VETH_PREFIX.len()..])
}

/// A value from the runtime that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AttachmentInvalid {
    #[error("container ID {0:?} is invalid: it must start with a letter or digit and hold only letters, digits, '_', '.' and '-'")]
    ContainerId(String),
    #[error("container ID is {0} characters long; at most {MAX_CONTAINER_ID} are accepted")]
    ContainerIdLength(usize),
    #[error("interface name {0:?} is invalid: 1 to {MAX_IFNAME} bytes, no '/', ':' or whitespace, not '.' or '..'")]
    Ifname(String),
    #[error("network namespace path {0:?} is invalid: it must be an absolute path")]
    Netns(String),
    #[error("network name {0:?} is invalid: 1 to {MAX_NETWORK_NAME} printable characters")]
    Network(String),
}

/// Checks the key of an attachment.
pub fn check_key(key: &AttachmentKey) -> Result<(), AttachmentInvalid> {
    let id = &key.container_id;
    if id.len() > MAX_CONTAINER_ID {
        return Err(AttachmentInvalid::ContainerIdLength(id.len()));
    }
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(AttachmentInvalid::ContainerId(id.clone()));
    }
    let n = &key.ifname;
    if n.is_empty()
        || n.len() > MAX_IFNAME
        || n == "."
        || n == ".."
        || n.chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(AttachmentInvalid::Ifname(n.clone()));
    }
    Ok(())
}

/// Checks the namespace path of an attachment.
pub fn check_netns(path: &str) -> Result<(), AttachmentInvalid> {
    if !path.starts_with('/')
        || path.len() > MAX_NETNS_PATH
        || path.contains('\0')
        || path.split('/').any(|c| c == "..")
    {
        return Err(AttachmentInvalid::Netns(path.to_string()));
    }
    Ok(())
}

/// Checks a CNI network name.
pub fn check_network(name: &str) -> Result<(), AttachmentInvalid> {
    if name.is_empty()
        || name.chars().count() > MAX_NETWORK_NAME
        || name.chars().any(|c| c.is_control())
    {
        return Err(AttachmentInvalid::Network(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(id: &str, ifname: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: id.into(),
            ifname: ifname.into(),
        }
    }

    #[test]
    fn names_are_stable_valid_and_distinct() {
        let a = endpoint_name(&key("abc123", "eth0"));
        assert_eq!(a, endpoint_name(&key("abc123", "eth0")));
        assert_ne!(a, endpoint_name(&key("abc123", "eth1")));
        assert_ne!(a, endpoint_name(&key("abc124", "eth0")));
        assert!(a.starts_with("cni-") && a.len() == 16, "{a}");
        weft_common::validate_name(&a).unwrap();
    }

    #[test]
    fn keys_paths_and_networks_are_checked() {
        assert_eq!(check_key(&key("c0ffee_1.x-y", "eth0")), Ok(()));
        assert_eq!(
            check_key(&key("-c", "eth0")),
            Err(AttachmentInvalid::ContainerId("-c".into()))
        );
        assert_eq!(
            check_key(&key("", "eth0")),
            Err(AttachmentInvalid::ContainerId(String::new()))
        );
        assert_eq!(
            check_key(&key("a/b", "eth0")),
            Err(AttachmentInvalid::ContainerId("a/b".into()))
        );
        assert_eq!(
            check_key(&key(&"a".repeat(300), "eth0")),
            Err(AttachmentInvalid::ContainerIdLength(300))
        );
        for bad in ["", ".", "..", "a/b", "a b", "sixteen-chars-xx", "a:1"] {
            assert_eq!(
                check_key(&key("c", bad)),
                Err(AttachmentInvalid::Ifname(bad.into())),
                "{bad:?}"
            );
        }
        assert_eq!(check_netns("/run/netns/cni-1"), Ok(()));
        assert_eq!(check_netns("/proc/42/ns/net"), Ok(()));
        for bad in ["", "run/netns/x", "/run/../etc/passwd"] {
            assert!(check_netns(bad).is_err(), "{bad:?}");
        }
        let e = check_netns("netns").unwrap_err().to_string();
        assert!(e.contains("\"netns\""), "names the value: {e}");
        assert_eq!(check_network("weft"), Ok(()));
        assert!(check_network("").is_err());
        assert!(check_network("a\nb").is_err());
    }

    proptest! {
        /// A key that passes the checks always gives a valid endpoint name.
        #[test]
        fn accepted_keys_give_valid_names(id in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,80}", ifname in "[a-z0-9]{1,15}") {
            let k = key(&id, &ifname);
            prop_assert!(check_key(&k).is_ok());
            prop_assert!(weft_common::validate_name(&endpoint_name(&k)).is_ok());
        }

        #[test]
        fn arbitrary_input_never_panics(id in ".{0,300}", ifname in ".{0,20}", netns in ".{0,50}") {
            let _ = check_key(&key(&id, &ifname));
            let _ = check_netns(&netns);
            let _ = check_network(&id);
        }
    }
}
