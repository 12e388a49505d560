//! The agent's nftables table (`inet weft`): egress masquerade, hairpin and
//! localhost NAT, forward accepts for the cluster CIDR, and DNAT for
//! published ports through maps.
//!
//! Everything is applied as nftables JSON (`nft -j -f -`, built with the
//! `nftables` crate's typed schema) in one transaction per call. `nft` runs
//! as a child process, so it acts on the network namespace of the calling
//! thread. All functions block; call them from `spawn_blocking`.
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

mod nft;
mod ruleset;

#[cfg(test)]
mod kernel_tests;

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnetwork::Ipv4Network;
use nftables::schema::{NfListObject, NfObject, Nftables};
use nftables::types::NfFamily;
use weft_common::Proto;

pub use nft::NftError;
/// The set of peers' public addresses the VXLAN port accepts packets from.
pub const PEERS_SET: &str = ruleset::PEERS_SET;
use ruleset::{Key, MapState};

/// What the table must contain besides port forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    /// Traffic from here to outside it is masqueraded.
    pub cluster_cidr: Ipv4Network,
    /// This host's subnet (on the bridge).
    pub subnet: Ipv4Network,
    /// Bridge name, "weft0".
    pub bridge: String,
    /// The VXLAN UDP port (cluster mode): packets to it are accepted only
    /// from the addresses in the peer set.
    pub vxlan_port: Option<u16>,
}

/// One DNAT entry: traffic to `host_ip:host_port` (any local address of the
/// host when `None`) goes to `target:target_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortForward {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub proto: Proto,
    pub target: Ipv4Addr,
    pub target_port: u16,
}

impl fmt::Display for PortForward {
    /// `[HOSTIP:]HOSTPORT/PROTO -> TARGET:PORT`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}/{} -> {}:{}",
            self.host_port, self.proto, self.target, self.target_port
        )
    }
}

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
    #[error("list port forwards in table inet {table}: {error}")]
    ListForwards { table: String, error: NftError },
    #[error("update the VXLAN peer set (+{added} -{removed} addresses): {error}")]
    Peers {
        added: usize,
        removed: usize,
        error: NftError,
    },
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

/// The weft-owned nftables table in the calling thread's network namespace.
#[derive(Debug, Clone)]
pub struct Firewall {
    table: String,
    nft: PathBuf,
}

impl Firewall {
    /// Table `inet <table>`; the agent uses "weft", tests a unique name.
    pub fn new(table: &str) -> Self {
        Firewall {
            table: table.to_owned(),
            nft: nft::find_program(),
        }
    }

    /// Replaces the whole table in one nft transaction (add table, delete
    /// table, full content), so packets never see a half table; conntrack
    /// entries, including NAT bindings of existing flows, are untouched.
    /// Idempotent. Exact duplicate forwards are collapsed. `peers` fills the
    /// VXLAN peer set (ignored without `spec.vxlan_port`).
    pub fn sync(
        &self,
        spec: &FirewallSpec,
        forwards: &[PortForward],
        peers: &BTreeSet<Ipv4Addr>,
    ) -> Result<(), FirewallError> {
        let forwards = ruleset::dedup(forwards);
        if let Some((first, second)) = ruleset::find_conflict(&forwards) {
            return Err(FirewallError::Conflict {
                action: format!("replace nftables table inet {}", self.table),
                first,
                second,
            });
        }
        let doc = ruleset::sync_doc(&self.table, spec, &forwards, peers);
        nft::apply(&self.nft, &doc).map_err(|error| FirewallError::Sync {
            table: self.table.clone(),
            error,
        })
    }

    /// Changes the VXLAN peer set in one transaction: `add` must not be in
    /// it yet, `del` must be (nft refuses the whole change otherwise).
    pub fn update_peers(&self, add: &[Ipv4Addr], del: &[Ipv4Addr]) -> Result<(), FirewallError> {
        if add.is_empty() && del.is_empty() {
            return Ok(());
        }
        nft::apply(&self.nft, &ruleset::peers_doc(&self.table, add, del)).map_err(|error| {
            FirewallError::Peers {
                added: add.len(),
                removed: del.len(),
                error,
            }
        })
    }

    /// Adds forwards in one transaction, all or nothing. Fails if a forward
    /// for the same host address, port and protocol is already present (even
    /// an identical one). Exact duplicates within `f` are collapsed.
    pub fn add_forwards(&self, f: &[PortForward]) -> Result<(), FirewallError> {
        let forwards = ruleset::dedup(f);
        if forwards.is_empty() {
            return Ok(());
        }
        if let Some((first, second)) = ruleset::find_conflict(&forwards) {
            return Err(FirewallError::Conflict {
                action: format!("add port forward {}", describe(&forwards)),
                first,
                second,
            });
        }
        let doc = ruleset::add_doc(&self.table, &forwards);
        nft::apply(&self.nft, &doc).map_err(|error| FirewallError::AddForwards {
            forwards: describe(&forwards),
            hint: self.clash_hint(&forwards),
            error,
        })
    }

    /// Removes forwards in one transaction. Entries already absent are not
    /// an error, and an entry for the same host address, port and protocol
    /// with a different target is left alone.
    pub fn del_forwards(&self, f: &[PortForward]) -> Result<(), FirewallError> {
        if f.is_empty() {
            return Ok(());
        }
        let err = |error| FirewallError::DelForwards {
            forwards: describe(f),
            error,
        };
        let (addr_keys, port_keys) = self.map_state().map_err(err)?.removals(f);
        if addr_keys.is_empty() && port_keys.is_empty() {
            return Ok(());
        }
        nft::apply(
            &self.nft,
            &ruleset::del_doc(&self.table, &addr_keys, &port_keys),
        )
        .map_err(err)
    }

    /// Forwards currently in the kernel, sorted; none if the table does not
    /// exist.
    #[allow(dead_code)] // part of the API; the agent does not call it yet
    pub fn list_forwards(&self) -> Result<Vec<PortForward>, FirewallError> {
        self.map_state()
            .map(|s| s.forwards())
            .map_err(|error| FirewallError::ListForwards {
                table: self.table.clone(),
                error,
            })
    }

    /// Whether the table exists.
    #[allow(dead_code)] // part of the API; the agent does not call it yet
    pub fn exists(&self) -> Result<bool, FirewallError> {
        self.table_exists().map_err(|error| FirewallError::Exists {
            table: self.table.clone(),
            error,
        })
    }

    /// Deletes the table if it exists (one transaction: add, then delete).
    #[allow(dead_code)] // part of the API; the agent does not call it yet
    pub fn teardown(&self) -> Result<(), FirewallError> {
        nft::apply(&self.nft, &ruleset::teardown_doc(&self.table)).map_err(|error| {
            FirewallError::Teardown {
                table: self.table.clone(),
                error,
            }
        })
    }

    fn table_exists(&self) -> Result<bool, NftError> {
        let out = nft::run(&self.nft, &["-j", "list", "tables", "inet"], None)?;
        let doc: Nftables =
            serde_json::from_str(&out).map_err(|e| NftError::output(&self.nft, e.to_string()))?;
        Ok(doc.objects.iter().any(|o| {
            matches!(o, NfObject::ListObject(NfListObject::Table(t))
                if t.family == NfFamily::INet && t.name == self.table)
        }))
    }

    /// The DNAT maps' contents; empty if the table does not exist.
    fn map_state(&self) -> Result<MapState, NftError> {
        let args = ["-j", "list", "table", "inet", self.table.as_str()];
        match nft::run(&self.nft, &args, None) {
            Ok(out) => MapState::parse(&out).map_err(|reason| NftError::output(&self.nft, reason)),
            // nft only says "No such file or directory"; ask properly.
            Err(e @ NftError::Failed { .. }) => match self.table_exists() {
                Ok(false) => Ok(MapState::default()),
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// After a failed add: which requested forwards' keys are already taken
    /// (best effort; empty if that cannot be determined).
    fn clash_hint(&self, forwards: &[PortForward]) -> String {
        let Ok(state) = self.map_state() else {
            return String::new();
        };
        let taken: Vec<String> = forwards
            .iter()
            .map(Key::of)
            .filter(|k| state.has_key(k))
            .map(|k| {
                let host = k.host_ip.map(|ip| format!("{ip}:")).unwrap_or_default();
                let to = match (state.addr.get(&k), state.port.get(&k)) {
                    (Some(a), Some(p)) => format!("{a}:{p}"),
                    _ => "an incomplete entry".to_owned(),
                };
                format!("{host}{}/{} (-> {to})", k.port, k.proto)
            })
            .collect();
        if taken.is_empty() {
            String::new()
        } else {
            format!(" (already forwarded: {})", taken.join(", "))
        }
    }
}

/// Forwards for an error message, at most a few of them.
fn describe(forwards: &[PortForward]) -> String {
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
mod tests {
    use super::*;

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

    #[test]
    fn conflicting_request_is_refused_without_nft() {
        let fw = Firewall {
            table: "t".into(),
            nft: "/nonexistent/nft".into(),
        };
        let a = fwd(None, 8080, Proto::Tcp);
        let b = PortForward {
            target_port: 81,
            ..a
        };
        let err = fw.add_forwards(&[a, b]).unwrap_err();
        assert!(matches!(err, FirewallError::Conflict { .. }), "{err}");
        // Nothing to do means no nft run at all.
        fw.add_forwards(&[]).unwrap();
        fw.del_forwards(&[]).unwrap();
    }
}
