//! Backup and restore of weft's keys in etcd (`weftctl cluster backup` and
//! `cluster restore`): the network config, every subnet record, every
//! host record and every network policy, taken at one etcd revision, as one
//! JSON document.
//!
//! A restore goes only into an empty prefix. The whole document is checked
//! before anything is written (every record well-formed, every host's subnet
//! recorded as its own, nothing held twice); if a write fails half-way, the
//! keys written so far are deleted again. Each restored host's keys hang on
//! a fresh lease of `--lease-ttl`, as if its agent had just disconnected: a
//! host whose agent comes back keeps its subnet, one that never does is
//! dropped when the lease ends. The config is written last, so controllers
//! take no registrations until the restore is complete.

use std::collections::{BTreeMap, HashMap};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use weft_common::cluster::{HostRecord, NetworkConfig, SubnetRecord};
use weft_common::policy::{self, Policy};
use weft_common::validate_name;

use crate::store::keys::Key;
use crate::store::records::{decode, encode};
use crate::store::{now, Store, StoreError};

/// The version of the backup document's layout.
pub const FORMAT: u32 = 1;

/// Writes per etcd transaction (etcd allows 128 by default).
const OPS_PER_TXN: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// Layout version ([`FORMAT`]).
    pub weft_backup: u32,
    /// The prefix the keys were read from.
    pub prefix: String,
    /// The etcd revision the backup reflects.
    pub revision: i64,
    /// When it was taken (unix seconds).
    pub taken_at: u64,
    pub config: NetworkConfig,
    /// Subnet (`10.244.1.0/24`) → who holds or reserves it.
    pub subnets: BTreeMap<String, SubnetRecord>,
    /// Node name → host record.
    pub hosts: BTreeMap<String, HostRecord>,
    /// Policy name → policy (absent in backups from before policies).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub policies: BTreeMap<String, Policy>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("nothing to back up: {0} holds no network config (run weftctl cluster init)")]
    Empty(String),
    #[error("key {key}: {reason}")]
    CorruptKey { key: String, reason: String },
    #[error("backup refused: {0}")]
    Invalid(String),
    #[error("etcd already holds {count} keys under {prefix}; restore only into an empty prefix (check them, then remove them with etcdctl del --prefix {prefix})")]
    NotEmpty { count: i64, prefix: String },
    #[error(
        "another writer created {0} during the restore; the keys written so far were removed again"
    )]
    Raced(String),
}

/// Reads every weft key under the store's prefix at one revision. Keys of
/// other kinds (the controllers' connection records) are not part of it.
pub async fn take(store: &Store) -> Result<Backup, BackupError> {
    let keys = store.keys();
    let all = store.read_all().await?;
    let (mut config, mut subnets, mut hosts) = (None, BTreeMap::new(), BTreeMap::new());
    let mut policies = BTreeMap::new();
    for (key, value) in &all.kvs {
        let bad = |reason: String| BackupError::CorruptKey {
            key: key.clone(),
            reason,
        };
        let corrupt = |e: crate::store::BadRecord| bad(e.reason);
        match keys.parse(key) {
            Some(Key::Config) => {
                config = Some(decode::<NetworkConfig>(key, value).map_err(corrupt)?);
            }
            Some(Key::Subnet(net)) => {
                let net = net.ok_or_else(|| bad("not a subnet key".into()))?;
                let rec: SubnetRecord = decode(key, value).map_err(corrupt)?;
                subnets.insert(net.to_string(), rec);
            }
            Some(Key::Host(name)) => {
                let rec: HostRecord = decode(key, value).map_err(corrupt)?;
                hosts.insert(name.to_string(), rec);
            }
            Some(Key::Policy(name)) => {
                let p: Policy = decode(key, value).map_err(corrupt)?;
                policies.insert(name.to_string(), p);
            }
            _ => {}
        }
    }
    let prefix = keys.prefix().to_string();
    let config = config.ok_or_else(|| BackupError::Empty(keys.all()))?;
    let b = Backup {
        weft_backup: FORMAT,
        prefix,
        revision: all.revision,
        taken_at: now(),
        config,
        subnets,
        hosts,
        policies,
    };
    // What is taken must also restore.
    check(&b).map_err(BackupError::Invalid)?;
    Ok(b)
}

/// Everything a restore needs to hold, checked before any write: one clear
/// sentence about the first problem.
pub fn check(b: &Backup) -> Result<BTreeMap<Ipv4Network, &SubnetRecord>, String> {
    if b.weft_backup != FORMAT {
        return Err(format!(
            "unsupported backup format {} (this weftctl reads {FORMAT})",
            b.weft_backup
        ));
    }
    b.config.validate().map_err(|e| format!("config: {e}"))?;
    let mut nets = BTreeMap::new();
    for (s, rec) in &b.subnets {
        let net: Ipv4Network = s
            .parse()
            .map_err(|_| format!("subnet {s:?} is not a CIDR"))?;
        if net.to_string() != *s || !b.config.is_host_subnet(net) {
            return Err(format!(
                "subnet {s} is not a /{} of the cluster cidr {}",
                b.config.subnet_len, b.config.cidr
            ));
        }
        if let Some(h) = &rec.host {
            validate_name(h).map_err(|e| format!("subnet {s}: host {e}"))?;
            if !rec.reserved && !b.hosts.contains_key(h) {
                return Err(format!(
                    "subnet {s} is held by host {h}, which has no host record"
                ));
            }
        } else if !rec.reserved {
            return Err(format!("subnet {s} is neither held nor reserved"));
        }
        nets.insert(net, rec);
    }
    let mut holders: HashMap<Ipv4Network, &str> = HashMap::new();
    for (name, rec) in &b.hosts {
        validate_name(name).map_err(|e| format!("host {e}"))?;
        if rec.name != *name {
            return Err(format!("host {name}: its record names {}", rec.name));
        }
        rec.validate().map_err(|e| format!("host {name}: {e}"))?;
        match nets.get(&rec.subnet) {
            Some(s) if s.host.as_deref() == Some(name.as_str()) => {}
            Some(s) => {
                return Err(format!(
                    "host {name} holds {}, but the subnet record names {}",
                    rec.subnet,
                    s.host.as_deref().unwrap_or("no host")
                ))
            }
            None => {
                return Err(format!(
                    "host {name} holds {}, which has no subnet record",
                    rec.subnet
                ))
            }
        }
        if let Some(other) = holders.insert(rec.subnet, name) {
            return Err(format!(
                "subnet {} is held by both {other} and {name}",
                rec.subnet
            ));
        }
    }
    for (name, p) in &b.policies {
        if p.name != *name {
            return Err(format!("policy {name}: its document names {}", p.name));
        }
        policy::validate::policy(p).map_err(|e| e.to_string())?;
    }
    Ok(nets)
}

/// What [`restore`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub prefix: String,
    pub hosts: usize,
    pub subnets: usize,
    pub policies: usize,
    pub lease_ttl: i64,
}

/// Writes a checked backup into the store's (empty) prefix.
pub async fn restore(store: &Store, b: &Backup, lease_ttl: i64) -> Result<Restored, BackupError> {
    let nets = check(b).map_err(BackupError::Invalid)?;
    let existing = store.count_all().await?;
    if existing > 0 {
        return Err(BackupError::NotEmpty {
            count: existing,
            prefix: store.keys().all(),
        });
    }
    let mut written: Vec<String> = Vec::new();
    let mut leases: Vec<i64> = Vec::new();
    let result = write_all(store, b, &nets, lease_ttl, &mut written, &mut leases).await;
    if result.is_err() {
        store.delete_keys(&written).await;
        for l in leases {
            let _ = store.revoke_lease(l).await;
        }
    }
    result?;
    Ok(Restored {
        prefix: store.keys().prefix().to_string(),
        hosts: b.hosts.len(),
        subnets: b.subnets.len(),
        policies: b.policies.len(),
        lease_ttl,
    })
}

async fn write_all(
    store: &Store,
    b: &Backup,
    nets: &BTreeMap<Ipv4Network, &SubnetRecord>,
    lease_ttl: i64,
    written: &mut Vec<String>,
    leases: &mut Vec<i64>,
) -> Result<(), BackupError> {
    let keys = store.keys();
    // One lease per host, as registration gives it.
    let mut lease_of: HashMap<&str, i64> = HashMap::new();
    for name in b.hosts.keys() {
        let id = store.grant_lease(lease_ttl).await?;
        leases.push(id);
        lease_of.insert(name, id);
    }
    let mut puts: Vec<(String, Vec<u8>, Option<i64>)> = Vec::new();
    for (net, rec) in nets {
        // Reservations have no lease; a held subnet shares its host's.
        let lease = match (&rec.host, rec.reserved) {
            (Some(h), false) => lease_of.get(h.as_str()).copied(),
            _ => None,
        };
        puts.push((keys.subnet(*net), encode(*rec), lease));
    }
    for (name, rec) in &b.hosts {
        puts.push((
            keys.host(name),
            encode(rec),
            lease_of.get(name.as_str()).copied(),
        ));
    }
    for (name, p) in &b.policies {
        puts.push((keys.policy(name), encode(p), None));
    }
    for chunk in puts.chunks(OPS_PER_TXN) {
        // Nobody may initialise or restore the cluster meanwhile, and none
        // of these keys may have appeared.
        if !store.create_keys(chunk).await? {
            return Err(BackupError::Raced(format!(
                "{} or one of {} keys",
                keys.config(),
                chunk.len()
            )));
        }
        written.extend(chunk.iter().map(|(k, _, _)| k.clone()));
    }
    let config = keys.config();
    if !store
        .create_keys(&[(config.clone(), encode(&b.config), None)])
        .await?
    {
        return Err(BackupError::Raced(config));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_common::MacAddr;

    fn sample() -> Backup {
        let cfg = NetworkConfig::new("10.244.0.0/16".parse().unwrap());
        let host = |name: &str, subnet: &str, ip: &str| HostRecord {
            name: name.into(),
            public_ip: ip.parse().unwrap(),
            vtep_mac: "0a:58:00:00:00:01".parse::<MacAddr>().unwrap(),
            subnet: subnet.parse().unwrap(),
            last_seen: 1,
        };
        let held = |h: &str| SubnetRecord {
            host: Some(h.into()),
            reserved: false,
        };
        Backup {
            weft_backup: FORMAT,
            prefix: "/weft".into(),
            revision: 7,
            taken_at: 1,
            config: cfg,
            subnets: [
                ("10.244.1.0/24".to_string(), held("h1")),
                ("10.244.2.0/24".to_string(), held("h2")),
                (
                    "10.244.9.0/24".to_string(),
                    SubnetRecord {
                        host: None,
                        reserved: true,
                    },
                ),
            ]
            .into(),
            hosts: [
                ("h1".to_string(), host("h1", "10.244.1.0/24", "198.18.0.11")),
                ("h2".to_string(), host("h2", "10.244.2.0/24", "198.18.0.12")),
            ]
            .into(),
            policies: policy::parse(r#"{"name":"deny-x","scope":"x","selector":{}}"#)
                .unwrap()
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
        }
    }

    #[test]
    fn a_consistent_backup_passes_and_round_trips() {
        let b = sample();
        assert_eq!(check(&b).unwrap().len(), 3);
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<Backup>(&text).unwrap(), b);
    }

    #[test]
    fn inconsistent_backups_are_refused_with_the_reason() {
        let refuse = |f: &dyn Fn(&mut Backup), want: &str| {
            let mut b = sample();
            f(&mut b);
            let e = check(&b).unwrap_err();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        };
        refuse(&|b| b.weft_backup = 2, "unsupported backup format 2");
        refuse(
            &|b| {
                let p = b.policies.remove("deny-x").unwrap();
                b.policies.insert("other".into(), p);
            },
            "policy other: its document names deny-x",
        );
        refuse(
            &|b| b.policies.get_mut("deny-x").unwrap().scope = Some("a b".into()),
            "policy deny-x: scope:",
        );
        refuse(
            &|b| {
                b.hosts.get_mut("h2").unwrap().subnet = "10.244.1.0/24".parse().unwrap();
            },
            "host h2 holds 10.244.1.0/24, but the subnet record names h1",
        );
        refuse(
            &|b| {
                b.hosts.remove("h2");
            },
            "subnet 10.244.2.0/24 is held by host h2, which has no host record",
        );
        refuse(
            &|b| {
                b.subnets.remove("10.244.1.0/24");
            },
            "host h1 holds 10.244.1.0/24, which has no subnet record",
        );
        refuse(
            &|b| {
                let r = b.subnets.remove("10.244.9.0/24").unwrap();
                b.subnets.insert("10.245.9.0/24".into(), r);
            },
            "subnet 10.245.9.0/24 is not a /24 of the cluster cidr 10.244.0.0/16",
        );
        refuse(
            &|b| {
                let mut r = b.hosts.remove("h1").unwrap();
                r.name = "Bad_Name".into();
                b.hosts.insert("Bad_Name".into(), r);
                b.subnets.get_mut("10.244.1.0/24").unwrap().host = Some("Bad_Name".into());
            },
            "Bad_Name",
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["surprise"] = 1.into();
        let e = serde_json::from_value::<Backup>(v).unwrap_err().to_string();
        assert!(e.contains("surprise"), "{e}");
    }
}
