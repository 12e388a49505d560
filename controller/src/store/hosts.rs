//! `<prefix>/hosts/`: listing host records, one host, removing a host
//! (`weftctl host rm`), and when a host was last seen.

use std::collections::BTreeMap;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tracing::debug;
use weft_common::cluster::{HostRecord, SubnetRecord};

use super::error::{Result, StoreError};
use super::handle::{now, Store};
use super::keys::{Key, Keys};
use super::records::{self, decode, encode};

impl Store {
    /// Every host record that may be served, with the revision the list
    /// reflects (records that cannot be served are skipped and logged, as
    /// the watch skips them).
    pub async fn hosts(&self) -> Result<(i64, BTreeMap<String, HostRecord>)> {
        let (rev, kvs) = self.etcd.get_prefix(&self.keys.hosts()).await?;
        let listed = kvs
            .iter()
            .map(|kv| (String::from_utf8_lossy(kv.key()), kv.value()));
        Ok((rev, listing(&self.keys, listed)))
    }

    /// The record of host `name` (refused as corrupt if it cannot be served).
    pub async fn host(&self, name: &str) -> Result<Option<HostRecord>> {
        let key = self.keys.host(name);
        match self.etcd.get(&key).await? {
            Some(kv) => Ok(Some(records::host(&key, name, kv.value())?)),
            None => Ok(None),
        }
    }

    /// Removes a host: its record, its endpoint list and its subnet (a
    /// reservation stays).
    /// A record that cannot be served can be removed too.
    pub async fn remove_host(&self, name: &str) -> Result<HostRecord> {
        let key = self.keys.host(name);
        let kv = self
            .etcd
            .get(&key)
            .await?
            .ok_or_else(|| StoreError::NoHost(name.to_string()))?;
        let rec: HostRecord = decode(&key, kv.value())?;
        let skey = self.keys.subnet(rec.subnet);
        let mut ops = vec![
            TxnOp::delete(key.as_str(), None),
            TxnOp::delete(self.keys.host_endpoints(name), None),
        ];
        if let Some(skv) = self.etcd.get(&skey).await? {
            let srec: SubnetRecord = decode(&skey, skv.value())?;
            if !srec.reserved && srec.host.as_deref() == Some(name) {
                ops.push(TxnOp::delete(skey.as_str(), None));
            }
        }
        self.etcd.txn(Txn::new().and_then(ops)).await?;
        if kv.lease() != 0 {
            // Only the host's own keys hang on its lease; revoking it
            // stops any controller's keep-alive for it at once.
            let _ = self.etcd.lease_revoke(kv.lease()).await;
        }
        Ok(rec)
    }

    /// After a session ends: sets the host record's `last_seen` to now,
    /// keeping its lease. Guarded by the record's revision (a registration
    /// in between has written a fresh record anyway). Peers compare tunnel
    /// fields only, so this reaches no agent. Best effort: a failure is
    /// logged at debug level.
    pub async fn touch_last_seen(&self, node: &str) {
        let key = self.keys.host(node);
        let res: Result<()> = async {
            let Some(kv) = self.etcd.get(&key).await? else {
                return Ok(());
            };
            let Ok(mut rec) = records::host(&key, node, kv.value()) else {
                return Ok(());
            };
            rec.last_seen = now();
            let opts = (kv.lease() != 0).then(|| PutOptions::new().with_lease(kv.lease()));
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::put(key.as_str(), encode(&rec), opts)]);
            self.etcd.txn(txn).await?;
            Ok(())
        }
        .await;
        if let Err(e) = res {
            debug!("update last_seen of host {node}: {e}");
        }
    }
}

/// The host records of a listing of `<prefix>/hosts/`, by name: those
/// [`records::host_or_skip`] takes.
pub(super) fn listing<'a, K: AsRef<str>>(
    keys: &Keys,
    kvs: impl IntoIterator<Item = (K, &'a [u8])>,
) -> BTreeMap<String, HostRecord> {
    let mut out = BTreeMap::new();
    for (key, value) in kvs {
        let key = key.as_ref();
        if let Some(Key::Host(name)) = keys.parse(key) {
            if let Some(rec) = records::host_or_skip(key, name, value) {
                out.insert(rec.name.clone(), rec);
            }
        }
    }
    out
}
