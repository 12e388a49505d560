//! Ethernet MAC addresses.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 48-bit Ethernet address, printed as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A locally administered unicast MAC derived from an IPv4 address
    /// (`0a:58:` followed by the four address bytes, as OVN does). The same
    /// address always gives the same MAC, so neighbours' ARP caches stay
    /// valid when an interface is re-created.
    pub fn from_ipv4(ip: Ipv4Addr) -> Self {
        let o = ip.octets();
        MacAddr([0x0a, 0x58, o[0], o[1], o[2], o[3]])
    }

    /// A random locally administered unicast MAC (for a VTEP, generated
    /// once per host and persisted).
    pub fn random_local() -> Self {
        let mut b: [u8; 6] = rand::random();
        b[0] = (b[0] & 0xfe) | 0x02;
        MacAddr(b)
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not six colon-separated hex bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex bytes like 0a:58:0a:f4:01:02")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let m: MacAddr = "0a:58:0A:f4:01:02".parse().unwrap();
        assert_eq!(m.to_string(), "0a:58:0a:f4:01:02");
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"0a:58:0a:f4:01:02\"");
        assert_eq!(m, MacAddr::from_ipv4(Ipv4Addr::new(10, 244, 1, 2)));
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "0a:58",
            "0a:58:0a:f4:01:02:03",
            "0a:58:0a:f4:01:2",
            "zz:58:0a:f4:01:02",
            "+a:58:0a:f4:01:02",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
