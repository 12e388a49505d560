//! The cluster's data model as it lives in etcd: the network config, host
//! records and subnet records (DESIGN.md, "Control plane").

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::{validate_name, MacAddr};

pub const DEFAULT_SUBNET_LEN: u8 = 24;
pub const DEFAULT_VNI: u32 = 1;
pub const DEFAULT_PORT: u16 = 4789;
pub const MAX_VNI: u32 = 16_777_215;
/// More subnets than this would make every allocation scan a huge space; a
/// /8 cut into /24s (65,536 hosts) is far beyond what weft is built for.
pub const MAX_SUBNETS: u64 = 1 << 16;
/// Smallest and largest overlay MTU a config may set.
pub const MTU_RANGE: (u32, u32) = (576, 9000);

/// `/weft/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    pub cidr: Ipv4Network,
    pub subnet_len: u8,
    pub vni: u32,
    pub port: u16,
    /// Overlay MTU; `None` means underlay MTU − 50 on each host.
    #[serde(default)]
    pub mtu: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cidr {0}: host bits are set; did you mean {1}?")]
    HostBits(String, String),
    #[error(
        "cidr {0} is not usable for namespaces (loopback, multicast, link-local or 0.0.0.0/8)"
    )]
    Reserved(String),
    #[error("subnet-len {len} must be longer than the cluster prefix /{prefix}")]
    NotLonger { len: u8, prefix: u8 },
    #[error("subnet-len {0} leaves no address for namespaces; use 30 or less")]
    TooLong(u8),
    #[error("cidr {cidr} with subnet-len {len} makes {count} subnets; at most {max} are supported, use a longer cidr prefix or a shorter subnet-len")]
    TooMany {
        cidr: String,
        len: u8,
        count: u64,
        max: u64,
    },
    #[error("vni {0} is out of range 1..16777215")]
    Vni(u32),
    #[error("port 0 is not a usable VXLAN port")]
    Port,
    #[error("mtu {0} is out of range 576..9000")]
    Mtu(u32),
}

impl NetworkConfig {
    pub fn new(cidr: Ipv4Network) -> NetworkConfig {
        NetworkConfig {
            cidr,
            subnet_len: DEFAULT_SUBNET_LEN,
            vni: DEFAULT_VNI,
            port: DEFAULT_PORT,
            mtu: None,
        }
    }

    /// Refuses a config that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = self.cidr;
        if c.network() != c.ip() {
            return Err(ConfigError::HostBits(
                c.to_string(),
                format!("{}/{}", c.network(), c.prefix()),
            ));
        }
        let first = c.network().octets()[0];
        if first == 0
            || first == 127
            || first >= 224
            || (c.network().octets()[0..2] == [169, 254])
            || c.prefix() < 8 && c.contains(Ipv4Addr::new(127, 0, 0, 1))
        {
            return Err(ConfigError::Reserved(c.to_string()));
        }
        if self.subnet_len <= c.prefix() {
            return Err(ConfigError::NotLonger {
                len: self.subnet_len,
                prefix: c.prefix(),
            });
        }
        if self.subnet_len > 30 {
            return Err(ConfigError::TooLong(self.subnet_len));
        }
        let count = self.subnet_count();
        if count > MAX_SUBNETS {
            return Err(ConfigError::TooMany {
                cidr: c.to_string(),
                len: self.subnet_len,
                count,
                max: MAX_SUBNETS,
            });
        }
        if self.vni == 0 || self.vni > MAX_VNI {
            return Err(ConfigError::Vni(self.vni));
        }
        if self.port == 0 {
            return Err(ConfigError::Port);
        }
        if let Some(m) = self.mtu {
            if m < MTU_RANGE.0 || m > MTU_RANGE.1 {
                return Err(ConfigError::Mtu(m));
            }
        }
        Ok(())
    }

    /// How many host subnets the cluster CIDR holds.
    pub fn subnet_count(&self) -> u64 {
        1u64 << (self.subnet_len.saturating_sub(self.cidr.prefix()).min(32))
    }

    /// The `i`-th host subnet, counting from the start of the CIDR.
    pub fn nth_subnet(&self, i: u64) -> Option<Ipv4Network> {
        if i >= self.subnet_count() {
            return None;
        }
        let base = u32::from(self.cidr.network()) as u64;
        let ip = base + (i << (32 - self.subnet_len as u32));
        Ipv4Network::new(Ipv4Addr::from(ip as u32), self.subnet_len).ok()
    }

    /// Whether `net` is one of this cluster's host subnets.
    pub fn is_host_subnet(&self, net: Ipv4Network) -> bool {
        net.prefix() == self.subnet_len
            && net.network() == net.ip()
            && self.cidr.contains(net.network())
    }
}

/// `/weft/hosts/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecord {
    pub name: String,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    pub subnet: Ipv4Network,
    /// Unix seconds of the last registration.
    pub last_seen: u64,
}

impl HostRecord {
    /// Whether two records differ in anything a peer programs (not
    /// `last_seen`).
    pub fn same_tunnel(&self, other: &HostRecord) -> bool {
        self.name == other.name
            && self.public_ip == other.public_ip
            && self.vtep_mac == other.vtep_mac
            && self.subnet == other.subnet
    }

    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name).map_err(|e| e.to_string())?;
        if self.subnet.network() != self.subnet.ip() {
            return Err(format!("subnet {} has host bits set", self.subnet));
        }
        Ok(())
    }
}

/// One endpoint of a host as network policy sees it: its name on that
/// host, its address and its labels. An agent reports its endpoints so;
/// `/weft/endpoints/<host>` holds the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointEntry {
    pub name: String,
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "crate::Labels::is_empty")]
    pub labels: crate::Labels,
}

impl EndpointEntry {
    /// Whether a host serving `subnet` may report this entry: a valid
    /// name, labels of Kubernetes syntax, an address of its own subnet (a
    /// host cannot claim another's addresses for the policies).
    pub fn validate(&self, subnet: Ipv4Network) -> Result<(), String> {
        validate_name(&self.name).map_err(|e| format!("endpoint: {e}"))?;
        if !subnet.contains(self.ip) {
            return Err(format!(
                "endpoint {}: address {} is not in the host's subnet {subnet}",
                self.name, self.ip
            ));
        }
        crate::labels::check(&self.labels).map_err(|e| format!("endpoint {}: {e}", self.name))
    }
}

/// `/weft/subnets/<a.b.c.d-len>`: who holds the subnet, or a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetRecord {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub reserved: bool,
}

/// `10.244.3.0/24` ⇄ `10.244.3.0-24` (etcd key form, no slash).
pub fn subnet_key(net: Ipv4Network) -> String {
    format!("{}-{}", net.network(), net.prefix())
}

pub fn parse_subnet_key(s: &str) -> Option<Ipv4Network> {
    let (ip, len) = s.split_once('-')?;
    let net = Ipv4Network::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
    (net.network() == net.ip()).then_some(net)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(cidr: &str, len: u8) -> NetworkConfig {
        NetworkConfig {
            subnet_len: len,
            ..NetworkConfig::new(cidr.parse().unwrap())
        }
    }

    #[test]
    fn refuses_configs_that_cannot_work() {
        assert!(cfg("10.244.0.0/16", 24).validate().is_ok());
        let e = |c: NetworkConfig| c.validate().unwrap_err().to_string();
        assert!(e(cfg("10.244.0.0/16", 16)).contains("longer than the cluster prefix /16"));
        assert!(e(cfg("10.244.0.0/16", 8)).contains("subnet-len 8"));
        assert!(e(cfg("10.244.0.0/16", 31)).contains("subnet-len 31"));
        assert!(e(cfg("10.244.1.0/16", 24)).contains("did you mean 10.244.0.0/16"));
        assert!(e(cfg("127.0.0.0/8", 24)).contains("127.0.0.0/8"));
        assert!(e(cfg("224.0.0.0/8", 24)).contains("224.0.0.0/8"));
        assert!(e(cfg("10.0.0.0/8", 28)).contains("1048576 subnets"));
        assert!(e(NetworkConfig {
            vni: 0,
            ..cfg("10.244.0.0/16", 24)
        })
        .contains("vni 0"));
        assert!(e(NetworkConfig {
            vni: MAX_VNI + 1,
            ..cfg("10.244.0.0/16", 24)
        })
        .contains("16777216"));
        assert!(e(NetworkConfig {
            port: 0,
            ..cfg("10.244.0.0/16", 24)
        })
        .contains("port 0"));
        assert!(e(NetworkConfig {
            mtu: Some(100),
            ..cfg("10.244.0.0/16", 24)
        })
        .contains("mtu 100"));
    }

    #[test]
    fn subnets_enumerate_the_cidr() {
        let c = cfg("10.244.0.0/16", 24);
        assert_eq!(c.subnet_count(), 256);
        assert_eq!(c.nth_subnet(0).unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(c.nth_subnet(255).unwrap().to_string(), "10.244.255.0/24");
        assert!(c.nth_subnet(256).is_none());
        assert!(c.is_host_subnet("10.244.9.0/24".parse().unwrap()));
        assert!(!c.is_host_subnet("10.245.9.0/24".parse().unwrap()));
        assert!(!c.is_host_subnet("10.244.9.0/25".parse().unwrap()));
    }

    #[test]
    fn subnet_keys_round_trip() {
        let n: Ipv4Network = "10.244.3.0/24".parse().unwrap();
        assert_eq!(subnet_key(n), "10.244.3.0-24");
        assert_eq!(parse_subnet_key("10.244.3.0-24"), Some(n));
        assert_eq!(parse_subnet_key("10.244.3.1-24"), None);
        assert_eq!(parse_subnet_key("10.244.3.0/24"), None);
        assert_eq!(parse_subnet_key("x-24"), None);
    }

    proptest! {
        #[test]
        fn nth_subnets_are_distinct_and_inside(prefix in 8u8..24, extra in 1u8..8, i in 0u64..256, j in 0u64..256) {
            let c = NetworkConfig { subnet_len: prefix + extra, ..NetworkConfig::new(Ipv4Network::new(Ipv4Addr::new(10, 0, 0, 0), prefix).unwrap()) };
            if let (Some(a), Some(b)) = (c.nth_subnet(i), c.nth_subnet(j)) {
                prop_assert!(c.is_host_subnet(a));
                prop_assert_eq!(a == b, i == j);
            }
        }
    }
}
