//! Names of namespaces and nodes: 1–63 characters of `[a-z0-9-]`, starting
//! with a letter or digit. The same rule as a DNS label, so a name is always
//! safe as a file name, a key segment in etcd and a hostname.

use thiserror::Error;

/// Longest allowed name (a DNS label).
pub const MAX_NAME_LEN: usize = 63;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("name is empty")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`].
    #[error("name {0:?} is {1} characters long; at most 63 are allowed")]
    TooLong(String, usize),
    /// Contains a character outside `[a-z0-9-]`.
    #[error("name {0:?} contains {1:?}; only lowercase letters, digits and '-' are allowed")]
    BadChar(String, char),
    /// Starts with `-`.
    #[error("name {0:?} must start with a letter or digit")]
    BadStart(String),
}

/// Checks a namespace or node name against the contract.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.to_string(), len));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadChar(name.to_string(), c));
    }
    if name.starts_with('-') {
        return Err(NameError::BadStart(name.to_string()));
    }
    Ok(())
}

/// Host ends of weft's veth pairs start with this; the agent removes any
/// such veth that no namespace owns.
pub const VETH_PREFIX: &str = "wv";

/// Whether `name` has exactly the shape [`host_veth_name`] gives.
pub fn is_weft_veth_name(name: &str) -> bool {
    name.len() == VETH_PREFIX.len() + 12
        && name.starts_with(VETH_PREFIX)
        && name[VETH_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Name of the host end of an endpoint's veth pair: a hash of the endpoint
/// name, because a namespace name (up to 63 bytes) does not fit an interface
/// name (15 bytes).
pub fn host_veth_name(name: &str) -> String {
    // FNV-1a: stable across Rust releases, unlike std's DefaultHasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finalizer: names that differ in one byte differ everywhere.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    format!("{VETH_PREFIX}{:012x}", h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_are_stable() {
        let n = host_veth_name("a");
        assert_eq!(n, "wv".to_string() + &n[2..]);
        assert_eq!(n, host_veth_name("a"));
        assert_ne!(n, host_veth_name("b"));
        assert!(n.len() <= 15 && n.starts_with(VETH_PREFIX), "{n}");
        assert_eq!(host_veth_name(&"x".repeat(63)).len(), 14);
        assert!(is_weft_veth_name(&n));
        for other in [
            "wv",
            "wvlan0",
            "wv0123456789abc",
            "wv0123456789aB",
            "xv0123456789ab",
        ] {
            assert!(!is_weft_veth_name(other), "{other}");
        }
        // Neighbouring names differ in most digits, not just the last.
        let (a, b) = (host_veth_name("web-1"), host_veth_name("web-2"));
        assert!(
            a.bytes().zip(b.bytes()).filter(|(x, y)| x != y).count() >= 6,
            "{a} {b}"
        );
    }
    use proptest::prelude::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "0", "web-1", "a".repeat(63).as_str()] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_paths_and_odd_characters() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert!(matches!(validate_name("-a"), Err(NameError::BadStart(_))));
        assert!(matches!(
            validate_name("a/b"),
            Err(NameError::BadChar(_, '/'))
        ));
        assert!(matches!(
            validate_name(".."),
            Err(NameError::BadChar(_, '.'))
        ));
        assert!(matches!(
            validate_name("Web"),
            Err(NameError::BadChar(_, 'W'))
        ));
        assert!(matches!(
            validate_name("a b"),
            Err(NameError::BadChar(_, ' '))
        ));
        assert!(matches!(
            validate_name(&"a".repeat(64)),
            Err(NameError::TooLong(_, 64))
        ));
        assert!(matches!(
            validate_name("é"),
            Err(NameError::BadChar(_, 'é'))
        ));
    }

    proptest! {
        #[test]
        fn accepted_names_are_safe_path_segments(s in "\\PC{0,80}") {
            if validate_name(&s).is_ok() {
                prop_assert!(!s.is_empty() && s.len() <= 63);
                prop_assert!(!s.contains('/') && s != "." && s != "..");
                prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            }
        }
    }
}
