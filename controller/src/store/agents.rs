//! `<prefix>/agents/`: which hosts' agents are connected, and to which
//! controller (written by `crate::presence`, read by `weftctl host`).

use std::collections::HashMap;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tracing::{debug, warn};

use super::error::Result;
use super::handle::Store;
use super::keys::Key;
use super::records::AgentPresence;

/// Operations per etcd transaction (etcd's default limit is 128).
const OPS_PER_TXN: usize = 100;

impl Store {
    /// Writes presence keys: `puts` (node, value) on `lease`, and deletes
    /// of `dels` (node, value) each only if the key still holds that value
    /// (the agent may have moved to another controller meanwhile). Many
    /// per transaction; what went through before a failure is harmless to
    /// write again.
    pub async fn write_presence(
        &self,
        lease: i64,
        puts: &[(String, Vec<u8>)],
        dels: &[(String, Vec<u8>)],
    ) -> Result<()> {
        let mut ops = Vec::with_capacity(puts.len() + dels.len());
        for (node, v) in puts {
            ops.push(TxnOp::put(
                self.keys.agent(node),
                v.clone(),
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        for (node, v) in dels {
            let key = self.keys.agent(node);
            ops.push(TxnOp::txn(
                Txn::new()
                    .when([Compare::value(key.as_str(), CompareOp::Equal, v.clone())])
                    .and_then([TxnOp::delete(key.as_str(), None)]),
            ));
        }
        let mut done = 0;
        for chunk in ops.chunks(OPS_PER_TXN) {
            if let Err(e) = self.etcd.txn(Txn::new().and_then(chunk.to_vec())).await {
                if done > 0 {
                    debug!("presence: {done} operations written before the failure");
                }
                return Err(e.into());
            }
            done += chunk.len();
        }
        Ok(())
    }

    /// Every presence key: which hosts are connected, where.
    pub async fn presence(&self) -> Result<HashMap<String, AgentPresence>> {
        let (_, kvs) = self.etcd.get_prefix(&self.keys.agents()).await?;
        let mut out = HashMap::new();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(Key::Agent(node)) = self.keys.parse(&key) else {
                continue;
            };
            match serde_json::from_slice::<AgentPresence>(kv.value()) {
                Ok(p) => {
                    out.insert(node.to_string(), p);
                }
                Err(e) => warn!("skipping unreadable presence key {key}: {e}"),
            }
        }
        Ok(out)
    }
}
