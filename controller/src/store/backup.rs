//! Bulk reads and writes for `weftctl cluster backup` and `cluster restore`
//! (the document and its checks are `crate::backup`'s): every key at one
//! revision, and creating keys that must not exist yet.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::error::Result;
use super::handle::Store;

/// Every key under the prefix, at one revision.
#[derive(Debug, Clone)]
pub struct BackupKeys {
    pub revision: i64,
    pub kvs: Vec<(String, Vec<u8>)>,
}

/// Operations per transaction (etcd allows 128 by default).
const OPS_PER_TXN: usize = 64;

impl Store {
    /// Every key under the prefix, at one revision.
    pub async fn read_all(&self) -> Result<BackupKeys> {
        let (revision, kvs) = self.etcd.get_prefix(&self.keys.all()).await?;
        Ok(BackupKeys {
            revision,
            kvs: kvs
                .into_iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        kv.value().to_vec(),
                    )
                })
                .collect(),
        })
    }

    /// How many keys there are under the prefix.
    pub async fn count_all(&self) -> Result<i64> {
        Ok(self.etcd.count_prefix(&self.keys.all()).await?)
    }

    /// Creates `puts` (key, value, lease) in one transaction, only if none
    /// of them exists and there is no network config yet (nobody
    /// initialises or restores the cluster meanwhile). `Ok(false)` when
    /// that guard failed and nothing was written.
    pub async fn create_keys(&self, puts: &[(String, Vec<u8>, Option<i64>)]) -> Result<bool> {
        let config = self.keys.config();
        let mut when = vec![Compare::version(config.as_str(), CompareOp::Equal, 0)];
        when.extend(
            puts.iter()
                .map(|(k, _, _)| Compare::version(k.as_str(), CompareOp::Equal, 0)),
        );
        let ops: Vec<TxnOp> = puts
            .iter()
            .map(|(k, v, lease)| {
                let opts = lease.map(|l| PutOptions::new().with_lease(l));
                TxnOp::put(k.as_str(), v.clone(), opts)
            })
            .collect();
        Ok(self
            .etcd
            .txn(Txn::new().when(when).and_then(ops))
            .await?
            .succeeded())
    }

    /// Deletes `keys`, as far as etcd lets it (best effort: undoing a
    /// restore that failed half-way).
    pub async fn delete_keys(&self, keys: &[String]) {
        for chunk in keys.chunks(OPS_PER_TXN) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|k| TxnOp::delete(k.as_str(), None))
                .collect();
            let _ = self.etcd.txn(Txn::new().and_then(ops)).await;
        }
    }
}
