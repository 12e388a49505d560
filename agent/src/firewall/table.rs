//! The operations on weft's table in the kernel, through `nft`: replace
//! it whole, change map and set elements, read it back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use nftables::schema::{NfListObject, NfObject, Nftables};
use nftables::types::NfFamily;

use super::elements::{self, Key};
use super::listing::TableState;
use super::{describe, nft, policy, ruleset, FirewallError, FirewallSpec, NftError, PortForward};
use crate::model::observed::FirewallView;
use crate::model::observed::PolicyView;
use crate::model::policy::{PolicyTable, SetEdit};

/// The weft-owned nftables table in the calling thread's network namespace.
#[derive(Debug, Clone)]
pub struct Table {
    name: String,
    nft: PathBuf,
}

impl Table {
    /// Table `inet <name>`; the agent uses "weft", tests a unique name.
    pub fn new(name: &str) -> Self {
        Table {
            name: name.to_owned(),
            nft: nft::find_program(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
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
        let forwards = elements::dedup(forwards);
        if let Some((first, second)) = elements::find_conflict(&forwards) {
            return Err(FirewallError::Conflict {
                action: format!("replace nftables table inet {}", self.name),
                first,
                second,
            });
        }
        let doc = ruleset::sync_doc(&self.name, spec, &forwards, peers);
        nft::apply(&self.nft, &doc).map_err(|error| FirewallError::Sync {
            table: self.name.clone(),
            error,
        })
    }

    /// Replaces the network policy table (this `Table` names it) in one
    /// transaction: packets see the old table or the new one.
    pub fn replace_policy(&self, t: &PolicyTable) -> Result<(), FirewallError> {
        nft::apply(&self.nft, &policy::replace_doc(&self.name, t)).map_err(|error| {
            FirewallError::Sync {
                table: self.name.clone(),
                error,
            }
        })
    }

    /// Changes the members of the policy table's address sets in one
    /// transaction (the rules stay as they are).
    pub fn update_policy_sets(&self, edits: &[SetEdit]) -> Result<(), FirewallError> {
        if edits.is_empty() {
            return Ok(());
        }
        nft::apply(&self.nft, &policy::sets_doc(&self.name, edits)).map_err(|error| {
            FirewallError::PolicySets {
                sets: edits.len(),
                error,
            }
        })
    }

    /// The network policy table as the kernel holds it (its fingerprint,
    /// set members, counters); `None` when it is not there.
    pub fn observe_policy(&self) -> Result<Option<PolicyView>, FirewallError> {
        if !self.exists()? {
            return Ok(None);
        }
        let read = |error| FirewallError::Read {
            table: self.name.clone(),
            error,
        };
        let out = nft::run(
            &self.nft,
            &["-j", "list", "table", "inet", &self.name],
            None,
        )
        .map_err(read)?;
        policy::view(&out)
            .map(Some)
            .map_err(|e| read(NftError::output(&self.nft, e)))
    }

    /// Changes the VXLAN peer set in one transaction: `add` must not be in
    /// it yet, `del` must be (nft refuses the whole change otherwise).
    pub fn update_peers(&self, add: &[Ipv4Addr], del: &[Ipv4Addr]) -> Result<(), FirewallError> {
        if add.is_empty() && del.is_empty() {
            return Ok(());
        }
        nft::apply(&self.nft, &elements::peers_doc(&self.name, add, del)).map_err(|error| {
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
        let forwards = elements::dedup(f);
        if forwards.is_empty() {
            return Ok(());
        }
        if let Some((first, second)) = elements::find_conflict(&forwards) {
            return Err(FirewallError::Conflict {
                action: format!("add port forward {}", describe(&forwards)),
                first,
                second,
            });
        }
        let doc = elements::add_doc(&self.name, &forwards);
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
        let (addr_keys, port_keys) = self.state().map_err(err)?.maps.removals(f);
        if addr_keys.is_empty() && port_keys.is_empty() {
            return Ok(());
        }
        nft::apply(
            &self.nft,
            &elements::del_doc(&self.name, &addr_keys, &port_keys),
        )
        .map_err(err)
    }

    /// Forwards currently in the kernel, sorted; none if the table does not
    /// exist.
    pub fn list_forwards(&self) -> Result<Vec<PortForward>, FirewallError> {
        self.state()
            .map(|s| s.maps.forwards())
            .map_err(|error| FirewallError::ListForwards {
                table: self.name.clone(),
                error,
            })
    }

    /// The table as found, compared with what `spec` makes.
    pub fn observe(&self, spec: &FirewallSpec) -> Result<FirewallView, FirewallError> {
        let state = self.state().map_err(|error| FirewallError::Read {
            table: self.name.clone(),
            error,
        })?;
        if !state.exists {
            return Ok(FirewallView::default());
        }
        let want: BTreeMap<String, Vec<String>> = ruleset::fingerprints(&self.name, spec);
        Ok(FirewallView {
            exists: true,
            rules_as_desired: state.matches(&want, spec.vxlan_port.is_some()),
            forwards: state.maps.forwards(),
            peers: state.peers,
        })
    }

    /// Whether the table exists.
    pub fn exists(&self) -> Result<bool, FirewallError> {
        self.table_exists().map_err(|error| FirewallError::Exists {
            table: self.name.clone(),
            error,
        })
    }

    /// Deletes the table if it exists (one transaction: add, then delete).
    pub fn teardown(&self) -> Result<(), FirewallError> {
        nft::apply(&self.nft, &elements::teardown_doc(&self.name)).map_err(|error| {
            FirewallError::Teardown {
                table: self.name.clone(),
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
                if t.family == NfFamily::INet && t.name == self.name)
        }))
    }

    /// The table's contents; empty (not existing) if there is none.
    fn state(&self) -> Result<TableState, NftError> {
        let args = ["-j", "list", "table", "inet", self.name.as_str()];
        match nft::run(&self.nft, &args, None) {
            Ok(out) => {
                TableState::parse(&out).map_err(|reason| NftError::output(&self.nft, reason))
            }
            // nft only says "No such file or directory"; ask properly.
            Err(e @ NftError::Failed { .. }) => match self.table_exists() {
                Ok(false) => Ok(TableState::default()),
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// After a failed add: which requested forwards' keys are already taken
    /// (best effort; empty if that cannot be determined).
    fn clash_hint(&self, forwards: &[PortForward]) -> String {
        let Ok(state) = self.state() else {
            return String::new();
        };
        let maps = &state.maps;
        let taken: Vec<String> = forwards
            .iter()
            .map(Key::of)
            .filter(|k| maps.has_key(k))
            .map(|k| {
                let host = k.host_ip.map(|ip| format!("{ip}:")).unwrap_or_default();
                let to = match (maps.addr.get(&k), maps.port.get(&k)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use weft_common::Proto;

    #[test]
    fn conflicting_request_is_refused_without_nft() {
        let fw = Table {
            name: "t".into(),
            nft: "/nonexistent/nft".into(),
        };
        let a = PortForward {
            host_ip: None,
            host_port: 8080,
            proto: Proto::Tcp,
            target: Ipv4Addr::new(10, 244, 1, 2),
            target_port: 80,
        };
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
