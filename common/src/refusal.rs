//! Why a controller refused an agent, as a stable machine code.
//!
//! A controller that refuses a registration (or ends a session) sends an
//! `error` frame: a sentence for the operator and, to agents that
//! understand it (see [`crate::wire::understands_codes`]), one of these
//! codes. The sentence may be reworded; the code may not: agents choose
//! their retry pace from it ([`RefusalCode::persists`]), never from the
//! text.

use serde::{Deserialize, Serialize};

/// The stable code of a refusal, as it travels on the wire (`snake_case`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// The node name is not a valid name (1–63 of `[a-z0-9-]`).
    InvalidName,
    /// The node name differs from the name in the agent's certificate.
    NameMismatch,
    /// etcd holds no network config: `weftctl cluster init` has not run.
    NotInitialised,
    /// Every host subnet of the cluster is held or reserved.
    Exhausted,
    /// The subnet the host serves is now held by another host.
    SubnetTaken,
    /// The subnet the host serves is reserved (for another host, or for none).
    SubnetReserved,
    /// The subnet the host serves is not a host subnet of the cluster.
    OutsideCluster,
    /// Another subnet than the one the host serves is reserved for it.
    ReservedElsewhere,
    /// The host's record in etcd holds another subnet than the one it serves.
    RecordMismatch,
    /// The subnet in the host's record is not a host subnet of the cluster
    /// (the config changed under it).
    RecordOutsideCluster,
    /// etcd holds a value weft cannot read where the registration looked.
    CorruptRecord,
    /// The host's record is gone during a session (its lease ended, or
    /// `weftctl host rm`): the agent registers again.
    RecordGone,
    /// An etcd request failed (etcd down, a leader change, a timeout).
    EtcdUnavailable,
    /// The allocation lost too many races with other controllers.
    AllocationRaces,
    /// A code this version does not know (sent by a newer controller).
    #[serde(other)]
    Unknown,
}

impl RefusalCode {
    /// Every code, in declaration order.
    pub const ALL: [RefusalCode; 15] = [
        RefusalCode::InvalidName,
        RefusalCode::NameMismatch,
        RefusalCode::NotInitialised,
        RefusalCode::Exhausted,
        RefusalCode::SubnetTaken,
        RefusalCode::SubnetReserved,
        RefusalCode::OutsideCluster,
        RefusalCode::ReservedElsewhere,
        RefusalCode::RecordMismatch,
        RefusalCode::RecordOutsideCluster,
        RefusalCode::CorruptRecord,
        RefusalCode::RecordGone,
        RefusalCode::EtcdUnavailable,
        RefusalCode::AllocationRaces,
        RefusalCode::Unknown,
    ];

    /// The code as it is spelled on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::InvalidName => "invalid_name",
            RefusalCode::NameMismatch => "name_mismatch",
            RefusalCode::NotInitialised => "not_initialised",
            RefusalCode::Exhausted => "exhausted",
            RefusalCode::SubnetTaken => "subnet_taken",
            RefusalCode::SubnetReserved => "subnet_reserved",
            RefusalCode::OutsideCluster => "outside_cluster",
            RefusalCode::ReservedElsewhere => "reserved_elsewhere",
            RefusalCode::RecordMismatch => "record_mismatch",
            RefusalCode::RecordOutsideCluster => "record_outside_cluster",
            RefusalCode::CorruptRecord => "corrupt_record",
            RefusalCode::RecordGone => "record_gone",
            RefusalCode::EtcdUnavailable => "etcd_unavailable",
            RefusalCode::AllocationRaces => "allocation_races",
            RefusalCode::Unknown => "unknown",
        }
    }

    /// Whether the same registration is refused again until an operator
    /// changes something (frees or reserves a subnet, initialises the
    /// cluster, issues a certificate, repairs etcd): retrying sooner cannot
    /// help, so an agent retries at its slowest pace. `false` for what may
    /// pass by itself (etcd unavailable, lost races, a record to register
    /// again) and for codes this version does not know.
    pub fn persists(self) -> bool {
        match self {
            RefusalCode::InvalidName
            | RefusalCode::NameMismatch
            | RefusalCode::NotInitialised
            | RefusalCode::Exhausted
            | RefusalCode::SubnetTaken
            | RefusalCode::SubnetReserved
            | RefusalCode::OutsideCluster
            | RefusalCode::ReservedElsewhere
            | RefusalCode::RecordMismatch
            | RefusalCode::RecordOutsideCluster
            | RefusalCode::CorruptRecord => true,
            RefusalCode::RecordGone
            | RefusalCode::EtcdUnavailable
            | RefusalCode::AllocationRaces
            | RefusalCode::Unknown => false,
        }
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire spelling is `as_str`, both ways, for every code.
    #[test]
    fn codes_are_spelled_as_documented() {
        for c in RefusalCode::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<RefusalCode>(&json).unwrap(), c);
            assert_eq!(c.to_string(), c.as_str());
        }
    }

    /// A code from a newer controller is `Unknown`, which is retried as
    /// usual.
    #[test]
    fn unknown_codes_decode_and_pass() {
        let c: RefusalCode = serde_json::from_str("\"subnet_on_fire\"").unwrap();
        assert_eq!(c, RefusalCode::Unknown);
        assert!(!c.persists());
        assert!(RefusalCode::SubnetTaken.persists());
        assert!(!RefusalCode::EtcdUnavailable.persists());
    }
}
