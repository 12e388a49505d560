//! `<prefix>/endpoints/<host>`: the endpoints each host's agent reported
//! (name, address, labels), the data network policy resolves selectors
//! against. A host's list hangs on its record's lease: when the host is
//! gone for good, so are its endpoints.

use std::collections::BTreeMap;

use etcd_client::{PutOptions, Txn, TxnOp};
use tracing::warn;
use weft_common::cluster::EndpointEntry;

use super::error::Result;
use super::handle::Store;
use super::keys::Key;

impl Store {
    /// Writes `host`'s endpoint list on `lease` (the host record's); a
    /// host without endpoints has no key.
    pub async fn put_endpoints(
        &self,
        host: &str,
        lease: i64,
        endpoints: &[EndpointEntry],
    ) -> Result<()> {
        let key = self.keys.host_endpoints(host);
        let op = if endpoints.is_empty() {
            TxnOp::delete(key, None)
        } else {
            let value = serde_json::to_vec(endpoints).expect("endpoint entries serialize");
            TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))
        };
        self.etcd.txn(Txn::new().and_then([op])).await?;
        Ok(())
    }

    /// Every host's endpoint list, with the revision it reflects. An
    /// unreadable list is skipped with a warning.
    pub async fn endpoints(&self) -> Result<(i64, BTreeMap<String, Vec<EndpointEntry>>)> {
        let (rev, kvs) = self.etcd.get_prefix(&self.keys.endpoints()).await?;
        let mut out = BTreeMap::new();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(Key::Endpoints(host)) = self.keys.parse(&key) else {
                continue;
            };
            match serde_json::from_slice::<Vec<EndpointEntry>>(kv.value()) {
                Ok(list) => {
                    out.insert(host.to_string(), list);
                }
                Err(e) => warn!("skipping unreadable endpoint list {key}: {e}"),
            }
        }
        Ok((rev, out))
    }
}
