//! Registration: a host gets its subnet (its old one, the one it serves,
//! a reserved or a free one) and a fresh host record, in one guarded
//! transaction; a lost race is retried with a fresh view.

use std::net::Ipv4Addr;

use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp};
use ipnetwork::Ipv4Network;
use tracing::{debug, info};
use weft_common::cluster::{HostRecord, NetworkConfig, SubnetRecord};
use weft_common::{validate_name, MacAddr};

use super::alloc::{choose, Choice};
use super::error::{Result, StoreError};
use super::handle::{now, Store, MAX_ATTEMPTS};
use super::records::{decode, encode};
use super::refusal::Refusal;

/// What an agent asks for when it registers.
#[derive(Debug, Clone)]
pub struct Registration {
    pub node: String,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    /// The subnet the host already serves, if any.
    pub want: Option<Ipv4Network>,
}

/// A successful registration.
#[derive(Debug, Clone)]
pub struct Registered {
    pub record: HostRecord,
    pub config: NetworkConfig,
    /// The etcd lease the host's keys hang on.
    pub lease: i64,
    /// Whether this registration allocated a new subnet.
    pub allocated: bool,
}

impl Store {
    /// Gives `reg.node` its subnet: the one its host record holds, else (see
    /// [`choose`]) the one it serves (`want`) if free or reserved for it,
    /// else for a new host the one reserved for it or a free one at random.
    /// A host that serves a subnet is never given another one: when that
    /// subnet is held by or reserved for another host, is not a host subnet
    /// of the cluster, or differs from its record or its reservation, the
    /// registration is refused and nothing is written. Allocation is one
    /// transaction that creates the subnet key only if it does not exist,
    /// so two controllers can never hand one subnet to two hosts; a lost
    /// race is retried with a fresh view.
    pub async fn register(&self, reg: &Registration, ttl: i64) -> Result<Registered> {
        validate_name(&reg.node).map_err(|e| Refusal::InvalidName {
            reason: e.to_string(),
        })?;
        let cfg = self.require_config().await?;
        let host_key = self.keys.host(&reg.node);
        let mut spare_lease: Option<i64> = None;
        let result = async {
            for attempt in 0..MAX_ATTEMPTS {
                if attempt > 0 {
                    debug!(node = %reg.node, attempt, "allocation race lost, retrying");
                }
                let existing = self.etcd.get(&host_key).await?;
                if let Some(kv) = existing {
                    let old: HostRecord = decode(&host_key, kv.value())?;
                    if let Some(w) = reg.want.filter(|w| *w != old.subnet) {
                        return Err(Refusal::RecordMismatch {
                            node: reg.node.clone(),
                            want: w,
                            holds: old.subnet,
                        }
                        .into());
                    }
                    if let Some(r) = self.renew(reg, &cfg, &kv, old, ttl).await? {
                        return Ok(r);
                    }
                    continue;
                }
                let subnets = self.fresh_subnets().await?;
                // Decided before anything is written: a refusal leaves etcd
                // as it was (no lease, no key).
                let choice = choose(&cfg, &reg.node, reg.want, &subnets, |(r, _)| r)?;
                let lease = match spare_lease {
                    Some(l) => l,
                    None => {
                        let l = self.etcd.lease_grant(ttl).await?;
                        spare_lease = Some(l);
                        l
                    }
                };
                let rec = HostRecord {
                    name: reg.node.clone(),
                    public_ip: reg.public_ip,
                    vtep_mac: reg.vtep_mac,
                    subnet: choice.subnet(),
                    last_seen: now(),
                };
                let put_host = TxnOp::put(host_key.as_str(), encode(&rec), Some(PutOptions::new().with_lease(lease)));
                let skey = self.keys.subnet(rec.subnet);
                let put_subnet = || {
                    let srec = SubnetRecord {
                        host: Some(reg.node.clone()),
                        reserved: false,
                    };
                    TxnOp::put(skey.as_str(), encode(&srec), Some(PutOptions::new().with_lease(lease)))
                };
                let unchanged = |net: &Ipv4Network| {
                    let (_, kv) = &subnets[net];
                    Compare::mod_revision(kv.key(), CompareOp::Equal, kv.mod_revision())
                };
                let no_record = Compare::version(host_key.as_str(), CompareOp::Equal, 0);
                let txn = match choice {
                    // The reservation stays as it is (leaseless).
                    Choice::Pinned(net) => Txn::new().when([no_record, unchanged(&net)]).and_then([put_host]),
                    // A key naming this host without a record: it gets the
                    // record's lease again.
                    Choice::Reclaim(net) => Txn::new()
                        .when([no_record, unchanged(&net)])
                        .and_then([put_subnet(), put_host]),
                    // Created only if nobody else created it meanwhile.
                    Choice::Free(_) => Txn::new()
                        .when([no_record, Compare::version(skey.as_str(), CompareOp::Equal, 0)])
                        .and_then([put_subnet(), put_host]),
                };
                if self.etcd.txn(txn).await?.succeeded() {
                    spare_lease = None;
                    info!(node = %reg.node, subnet = %rec.subnet, public_ip = %rec.public_ip, "allocated subnet {} to host {}", rec.subnet, reg.node);
                    return Ok(Registered {
                        record: rec,
                        config: cfg.clone(),
                        lease,
                        allocated: true,
                    });
                }
            }
            Err(StoreError::TooManyRaces(MAX_ATTEMPTS))
        }
        .await;
        if let Some(l) = spare_lease {
            let _ = self.etcd.lease_revoke(l).await;
        }
        result
    }

    /// Re-registration of a known host: same subnet, refreshed record, same
    /// lease. `None` when the record changed under us (retry).
    async fn renew(
        &self,
        reg: &Registration,
        cfg: &NetworkConfig,
        kv: &KeyValue,
        old: HostRecord,
        ttl: i64,
    ) -> Result<Option<Registered>> {
        let host_key = self.keys.host(&reg.node);
        let mut lease = kv.lease();
        if lease == 0 {
            lease = self.etcd.lease_grant(ttl).await?;
        }
        // The record under this host's key names this host (a hand-edited
        // one that names another is put right).
        let rec = HostRecord {
            name: reg.node.clone(),
            public_ip: reg.public_ip,
            vtep_mac: reg.vtep_mac,
            last_seen: now(),
            ..old.clone()
        };
        let skey = self.keys.subnet(old.subnet);
        let mut ops = vec![TxnOp::put(
            host_key.as_str(),
            encode(&rec),
            Some(PutOptions::new().with_lease(lease)),
        )];
        let mut when = vec![Compare::mod_revision(
            host_key.as_str(),
            CompareOp::Equal,
            kv.mod_revision(),
        )];
        // The subnet key must still name this host; re-attach it to the
        // lease unless it is a (leaseless) reservation.
        match self.etcd.get(&skey).await? {
            Some(skv) => {
                let srec: SubnetRecord = decode(&skey, skv.value())?;
                if srec.host.as_deref() != Some(reg.node.as_str()) {
                    // Inconsistent (hand-edited etcd): drop the record and
                    // allocate afresh.
                    let t = Txn::new()
                        .when(when)
                        .and_then([TxnOp::delete(host_key.as_str(), None)]);
                    self.etcd.txn(t).await?;
                    return Ok(None);
                }
                when.push(Compare::mod_revision(
                    skey.as_str(),
                    CompareOp::Equal,
                    skv.mod_revision(),
                ));
                if !srec.reserved && skv.lease() != lease {
                    ops.push(TxnOp::put(
                        skey.as_str(),
                        encode(&srec),
                        Some(PutOptions::new().with_lease(lease)),
                    ));
                }
            }
            None => {
                when.push(Compare::version(skey.as_str(), CompareOp::Equal, 0));
                let srec = SubnetRecord {
                    host: Some(reg.node.clone()),
                    reserved: false,
                };
                ops.push(TxnOp::put(
                    skey.as_str(),
                    encode(&srec),
                    Some(PutOptions::new().with_lease(lease)),
                ));
            }
        }
        if !cfg.is_host_subnet(old.subnet) {
            return Err(Refusal::RecordOutsideCluster {
                node: reg.node.clone(),
                holds: old.subnet,
                cidr: cfg.cidr,
                len: cfg.subnet_len,
            }
            .into());
        }
        let t = Txn::new().when(when).and_then(ops);
        if !self.etcd.txn(t).await?.succeeded() {
            return Ok(None);
        }
        if !rec.same_tunnel(&old) {
            info!(node = %reg.node, "host {} re-registered with a new tunnel endpoint: {} {}", reg.node, rec.public_ip, rec.vtep_mac);
        }
        Ok(Some(Registered {
            record: rec,
            config: cfg.clone(),
            lease,
            allocated: false,
        }))
    }
}
