//! The values under weft's keys: JSON in and out, and the one decoder of
//! host records that everything serving agents uses (the full listing and
//! the watch alike).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::warn;
use weft_common::cluster::HostRecord;

/// A value weft cannot use, at `key`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("etcd key {key} holds a value weft cannot read: {reason}")]
pub struct BadRecord {
    pub key: String,
    pub reason: String,
}

/// `<prefix>/agents/<node>`: the agent of `node` is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPresence {
    /// The controller the agent is connected to (the address it dialled).
    pub controller: String,
    /// Unix seconds when the session was assigned.
    pub since: u64,
    /// The agent's address as the controller sees it.
    pub remote: String,
}

/// The JSON value of `key` as a `T`.
pub fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, BadRecord> {
    serde_json::from_slice(value).map_err(|e| BadRecord {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// A value as it is written.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

/// The host record at `key` (the host key of `name`), as it may be served
/// to agents: readable, naming the host its key names, and valid.
pub fn host(key: &str, name: &str, value: &[u8]) -> Result<HostRecord, BadRecord> {
    let bad = |reason: String| BadRecord {
        key: key.to_string(),
        reason,
    };
    let rec: HostRecord = decode(key, value)?;
    if rec.name != name {
        return Err(bad(format!("it names host {:?}", rec.name)));
    }
    rec.validate().map_err(bad)?;
    Ok(rec)
}

/// [`host`], or `None` when the record cannot be served: one bad record
/// must not hide every other host. Logged the same way wherever host
/// records are read in bulk.
pub fn host_or_skip(key: &str, name: &str, value: &[u8]) -> Option<HostRecord> {
    host(key, name, value)
        .map_err(|e| warn!("skipping host record: {e}"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str) -> Vec<u8> {
        encode(&HostRecord {
            name: name.into(),
            public_ip: "198.18.0.11".parse().unwrap(),
            vtep_mac: "0a:58:00:00:00:01".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            last_seen: 1,
        })
    }

    #[test]
    fn a_host_record_must_name_its_key_and_be_valid() {
        let k = "/weft/hosts/h1";
        assert_eq!(host(k, "h1", &rec("h1")).unwrap().name, "h1");
        let e = host(k, "h1", &rec("h2")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "etcd key /weft/hosts/h1 holds a value weft cannot read: it names host \"h2\""
        );
        let k = "/weft/hosts/Bad_Name";
        let e = host(k, "Bad_Name", &rec("Bad_Name")).unwrap_err();
        assert!(e.reason.contains("Bad_Name"), "{e}");
        assert!(host(k, "h1", b"{").is_err());
        assert!(host_or_skip(k, "h1", b"{").is_none());
    }
}
