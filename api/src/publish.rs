//! Published ports: `[HOSTIP:]HOSTPORT:PORT[/tcp|/udp]`, as `docker run -p`
//! spells them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One published port: traffic to `host_ip:host_port` (any local address
/// when `host_ip` is `None`) is forwarded to `port` in the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortMapping {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub port: u16,
    pub proto: Proto,
}

impl PortMapping {
    /// Whether two mappings would claim the same traffic on the host.
    pub fn conflicts_with(&self, other: &PortMapping) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// Why a `--publish` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PublishError {
    #[error("invalid --publish {0:?}: expected [HOSTIP:]HOSTPORT:PORT[/tcp|/udp]")]
    Shape(String),
    #[error("invalid --publish {0:?}: protocol {1:?} is not tcp or udp")]
    Proto(String, String),
    #[error("invalid --publish {0:?}: {1:?} is not a port number in 1-65535")]
    Port(String, String),
    #[error("invalid --publish {0:?}: {1:?} is not an IPv4 address")]
    HostIp(String, String),
}

impl FromStr for PortMapping {
    type Err = PublishError;
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (ports, proto) = match spec.rsplit_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some((_, other)) => return Err(PublishError::Proto(spec.into(), other.into())),
            None => (spec, Proto::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (host_ip, host_port, port) = match parts.as_slice() {
            [hp, p] => (None, *hp, *p),
            [ip, hp, p] => {
                let ip = ip
                    .parse::<Ipv4Addr>()
                    .map_err(|_| PublishError::HostIp(spec.into(), ip.to_string()))?;
                (Some(ip), *hp, *p)
            }
            _ => return Err(PublishError::Shape(spec.into())),
        };
        let port_num = |s: &str| -> Result<u16, PublishError> {
            // Digits only: u16::from_str would accept a leading '+'.
            match s.parse::<u16>() {
                Ok(n) if n != 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
                _ => Err(PublishError::Port(spec.into(), s.into())),
            }
        };
        if host_ip.is_some_and(|ip| ip.is_multicast() || ip.is_broadcast()) {
            return Err(PublishError::HostIp(spec.into(), parts[0].into()));
        }
        Ok(PortMapping {
            host_ip: host_ip.filter(|ip| !ip.is_unspecified()),
            host_port: port_num(host_port)?,
            port: port_num(port)?,
            proto,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(f, "{}:{}/{}", self.host_port, self.port, self.proto)
    }
}

impl Serialize for PortMapping {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortMapping {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_docker_forms() {
        let m: PortMapping = "8080:80".parse().unwrap();
        assert_eq!(
            (m.host_ip, m.host_port, m.port, m.proto),
            (None, 8080, 80, Proto::Tcp)
        );
        let m: PortMapping = "198.18.0.10:5353:53/udp".parse().unwrap();
        assert_eq!(m.host_ip, Some(Ipv4Addr::new(198, 18, 0, 10)));
        assert_eq!((m.host_port, m.port, m.proto), (5353, 53, Proto::Udp));
        assert_eq!(m.to_string(), "198.18.0.10:5353:53/udp");
        let any: PortMapping = "0.0.0.0:1:2/tcp".parse().unwrap();
        assert_eq!(any.host_ip, None);
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "80",
            "a:80",
            "80:b",
            "0:80",
            "80:0",
            "70000:80",
            "80:80/sctp",
            "80:80/",
            "1.2.3:80:80",
            "1.2.3.4:5:6:7",
            "+80:80",
            "80:+80",
            "::80",
            "224.0.0.1:80:80",
            "8080:80/TCP",
        ] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn conflicts() {
        let a: PortMapping = "8080:80".parse().unwrap();
        let b: PortMapping = "198.18.0.10:8080:81".parse().unwrap();
        let c: PortMapping = "198.18.0.11:8080:81".parse().unwrap();
        let u: PortMapping = "8080:80/udp".parse().unwrap();
        assert!(a.conflicts_with(&b) && b.conflicts_with(&a));
        assert!(!b.conflicts_with(&c));
        assert!(!a.conflicts_with(&u));
    }

    proptest! {
        #[test]
        fn never_panics_and_round_trips(s in "\\PC{0,40}") {
            if let Ok(m) = s.parse::<PortMapping>() {
                let again: PortMapping = m.to_string().parse().unwrap();
                prop_assert_eq!(m, again);
            }
        }

        #[test]
        fn valid_specs_parse(ip in proptest::option::of(any::<[u8;4]>()), hp in 1u16.., p in 1u16.., udp in any::<bool>()) {
            let ip = ip.map(Ipv4Addr::from).filter(|i| !i.is_multicast() && !i.is_broadcast());
            let mut s = String::new();
            if let Some(ip) = ip { s.push_str(&format!("{ip}:")); }
            s.push_str(&format!("{hp}:{p}"));
            if udp { s.push_str("/udp"); }
            let m: PortMapping = s.parse().unwrap();
            prop_assert_eq!(m.host_port, hp);
            prop_assert_eq!(m.port, p);
            prop_assert_eq!(m.host_ip, ip.filter(|i| !i.is_unspecified()));
        }
    }
}
