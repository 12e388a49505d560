//! The agent's nftables table (`inet weft`): egress masquerade, hairpin and
//! localhost NAT, forward accepts for the cluster CIDR, and DNAT for
//! published ports through maps.
//!
//! Everything is applied as nftables JSON (`nft -j -f -`, built with the
//! `nftables` crate's typed schema) in one transaction per call. `nft` runs
//! as a child process, so it acts on the network namespace of the calling
//! thread. [`Table`]'s functions block; call them from `spawn_blocking`.
//!
//! - [`ruleset`]: the whole table as one document (pure);
//! - [`elements`]: map and set elements, added and removed (pure);
//! - [`listing`]: reading the table back (pure);
//! - [`expr`]: builders of JSON objects (pure);
//! - [`nft`]: running the `nft` binary;
//! - [`table`]: the operations on the kernel's table.
//!
//! Listed by `nft list table inet weft` (cluster 10.244.0.0/16, subnet
//! 10.244.1.0/24, bridge weft0; forwards `8080/tcp -> 10.244.1.2:80` and
//! `192.168.1.10:5353/udp -> 10.244.1.3:53`):
//!
//! ```text
//! table inet weft {
//!     map publish_ip_addr {
//!         type ipv4_addr . inet_proto . inet_service : ipv4_addr
//!         elements = { 192.168.1.10 . udp . 5353 : 10.244.1.3 }
//!     }
//!
//!     map publish_ip_port {
//!         type ipv4_addr . inet_proto . inet_service : inet_service
//!         elements = { 192.168.1.10 . udp . 5353 : 53 }
//!     }
//!
//!     map publish_any_addr {
//!         type inet_proto . inet_service : ipv4_addr
//!         elements = { tcp . 8080 : 10.244.1.2 }
//!     }
//!
//!     map publish_any_port {
//!         type inet_proto . inet_service : inet_service
//!         elements = { tcp . 8080 : 80 }
//!     }
//!
//!     chain prerouting {
//!         type nat hook prerouting priority dstnat; policy accept;
//!         fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @publish_ip_addr:ip daddr . meta l4proto . th dport map @publish_ip_port
//!         meta nfproto ipv4 fib daddr type local dnat ip to meta l4proto . th dport map @publish_any_addr:meta l4proto . th dport map @publish_any_port
//!     }
//!
//!     chain output {
//!         type nat hook output priority -100; policy accept;
//!         fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @publish_ip_addr:ip daddr . meta l4proto . th dport map @publish_ip_port
//!         meta nfproto ipv4 fib daddr type local dnat ip to meta l4proto . th dport map @publish_any_addr:meta l4proto . th dport map @publish_any_port
//!     }
//!
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade
//!         ct status dnat ip saddr 10.244.1.0/24 ip daddr 10.244.1.0/24 masquerade
//!         ip saddr 127.0.0.0/8 oifname "weft0" masquerade
//!     }
//!
//!     chain forward {
//!         type filter hook forward priority filter; policy accept;
//!         ct state established,related accept
//!         ip saddr 10.244.0.0/16 accept
//!         ip daddr 10.244.0.0/16 accept
//!     }
//! }
//! ```
//!
//! Each lookup key has an address map and a port map because nft 1.0.6
//! cannot create a map with concatenated data from JSON (see `ruleset`).

mod elements;
mod expr;
mod listing;
mod nft;
pub mod policy;
mod ruleset;
mod table;

pub use crate::model::firewall::{FirewallSpec, PortForward};
pub use nft::NftError;
pub use ruleset::PEERS_SET;
pub use table::Table;

/// A failed firewall operation: what was attempted, then why (for nft
/// failures, nft's error output).
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("replace nftables table inet {table}: {error}")]
    Sync { table: String, error: NftError },
    #[error("add port forward {forwards}: {error}{hint}")]
    AddForwards {
        forwards: String,
        error: NftError,
        /// Which requested forwards clash with ones already in the kernel,
        /// when that could be found out (else empty).
        hint: String,
    },
    #[error("remove port forward {forwards}: {error}")]
    DelForwards { forwards: String, error: NftError },
    #[error("read nftables table inet {table}: {error}")]
    Read { table: String, error: NftError },
    #[error("list port forwards in table inet {table}: {error}")]
    ListForwards { table: String, error: NftError },
    #[error("update the VXLAN peer set (+{added} -{removed} addresses): {error}")]
    Peers {
        added: usize,
        removed: usize,
        error: NftError,
    },
    #[error("update {sets} network policy address sets: {error}")]
    PolicySets { sets: usize, error: NftError },
    #[error("check whether table inet {table} exists: {error}")]
    Exists { table: String, error: NftError },
    #[error("delete nftables table inet {table}: {error}")]
    Teardown { table: String, error: NftError },
    /// Refused before running nft: two requested forwards claim the same
    /// host address, port and protocol with different targets.
    #[error("{action}: {first} and {second} claim the same host address, port and protocol")]
    Conflict {
        action: String,
        first: PortForward,
        second: PortForward,
    },
}

/// Forwards for an error message, at most a few of them.
pub(crate) fn describe(forwards: &[PortForward]) -> String {
    const MAX: usize = 8;
    let mut s = forwards
        .iter()
        .take(MAX)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if forwards.len() > MAX {
        s.push_str(&format!(" and {} more", forwards.len() - MAX));
    }
    s
}

#[cfg(test)]
pub(crate) mod testing {
    //! Values the firewall's unit tests share.
    use super::*;
    use nftables::schema::Nftables;
    use serde_json::Value;
    pub use std::net::Ipv4Addr;
    pub use weft_common::Proto;

    pub fn fwd(
        host_ip: Option<[u8; 4]>,
        host_port: u16,
        proto: Proto,
        target: [u8; 4],
        target_port: u16,
    ) -> PortForward {
        PortForward {
            host_ip: host_ip.map(Ipv4Addr::from),
            host_port,
            proto,
            target: Ipv4Addr::from(target),
            target_port,
        }
    }

    pub fn spec() -> FirewallSpec {
        FirewallSpec {
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            bridge: "weft0".into(),
            vxlan_port: None,
        }
    }

    pub fn to_value(doc: &Nftables) -> Value {
        serde_json::to_value(doc).unwrap()
    }

    pub fn commands(doc: &Nftables) -> Vec<Value> {
        to_value(doc)["nftables"].as_array().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use weft_common::Proto;

    fn fwd(host_ip: Option<Ipv4Addr>, host_port: u16, proto: Proto) -> PortForward {
        PortForward {
            host_ip,
            host_port,
            proto,
            target: Ipv4Addr::new(10, 244, 1, 2),
            target_port: 80,
        }
    }

    #[test]
    fn display_forward() {
        assert_eq!(
            fwd(None, 8080, Proto::Tcp).to_string(),
            "8080/tcp -> 10.244.1.2:80"
        );
        assert_eq!(
            fwd(Some(Ipv4Addr::new(192, 168, 1, 1)), 53, Proto::Udp).to_string(),
            "192.168.1.1:53/udp -> 10.244.1.2:80"
        );
    }

    #[test]
    fn describe_truncates() {
        let many: Vec<_> = (1..=10).map(|p| fwd(None, p, Proto::Tcp)).collect();
        let s = describe(&many);
        assert!(s.starts_with("1/tcp -> 10.244.1.2:80, 2/tcp"), "{s}");
        assert!(s.ends_with("8/tcp -> 10.244.1.2:80 and 2 more"), "{s}");
    }

    #[test]
    fn error_messages_say_what_and_why() {
        let err = FirewallError::AddForwards {
            forwards: describe(&[fwd(None, 8080, Proto::Tcp)]),
            error: NftError::Failed {
                program: "nft".into(),
                status: std::os::unix::process::ExitStatusExt::from_raw(256),
                stderr: "Error: Could not process rule: File exists".into(),
            },
            hint: String::new(),
        };
        assert_eq!(
            err.to_string(),
            "add port forward 8080/tcp -> 10.244.1.2:80: nft failed (exit status: 1): \
             Error: Could not process rule: File exists"
        );
    }
}
