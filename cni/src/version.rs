//! The CNI versions weft-cni speaks, and which verbs each has.

use crate::error::{CniError, INCOMPATIBLE_VERSION};

/// Every version weft-cni accepts in a config, oldest first.
pub const SUPPORTED: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest: what an answer says when the config's version is unknown.
pub const LATEST: &str = "1.1.0";

/// A version weft-cni speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub fn parse(s: &str) -> Result<Version, CniError> {
        Ok(match s {
            "0.3.1" => Version::V0_3_1,
            "0.4.0" => Version::V0_4_0,
            "1.0.0" => Version::V1_0_0,
            "1.1.0" => Version::V1_1_0,
            _ => {
                return Err(CniError::new(
                    INCOMPATIBLE_VERSION,
                    format!(
                        "cniVersion {s:?} is not supported: weft-cni speaks {}",
                        SUPPORTED.join(", ")
                    ),
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        SUPPORTED[self as usize]
    }

    /// Before 1.0.0 every IP of a result names its version ("4").
    pub fn ips_carry_version(self) -> bool {
        self < Version::V1_0_0
    }

    /// The verb `verb` exists in this version (CHECK from 0.4.0, GC and
    /// STATUS from 1.1.0).
    pub fn allows(self, verb: &str) -> Result<(), CniError> {
        let since = match verb {
            "CHECK" => Version::V0_4_0,
            "GC" | "STATUS" => Version::V1_1_0,
            _ => return Ok(()),
        };
        if self < since {
            return Err(CniError::new(
                INCOMPATIBLE_VERSION,
                format!(
                    "{verb} needs cniVersion {} or later; the config says {}",
                    since.as_str(),
                    self.as_str()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_and_gate_verbs() {
        for s in SUPPORTED {
            assert_eq!(Version::parse(s).unwrap().as_str(), s);
        }
        let e = Version::parse("0.2.0").unwrap_err();
        assert_eq!(e.code, INCOMPATIBLE_VERSION);
        assert!(e.msg.contains("\"0.2.0\""), "{}", e.msg);
        assert!(Version::V0_3_1.allows("CHECK").is_err());
        assert!(Version::V0_4_0.allows("CHECK").is_ok());
        assert!(Version::V1_0_0.allows("GC").is_err());
        assert!(Version::V1_1_0.allows("STATUS").is_ok());
        assert!(Version::V0_3_1.allows("ADD").is_ok());
        assert!(Version::V0_4_0.ips_carry_version());
        assert!(!Version::V1_0_0.ips_carry_version());
    }
}
