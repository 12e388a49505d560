//! `<prefix>/config`: reading the network config, writing it
//! (`weftctl cluster init`), and whether it is there (readiness).

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use weft_common::cluster::NetworkConfig;

use super::error::{Result, StoreError};
use super::handle::{Store, MAX_ATTEMPTS};
use super::records::{decode, encode};
use super::refusal::Refusal;

impl Store {
    pub async fn config(&self) -> Result<Option<NetworkConfig>> {
        let key = self.keys.config();
        match self.etcd.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, kv.value())?)),
            None => Ok(None),
        }
    }

    pub async fn require_config(&self) -> Result<NetworkConfig> {
        self.config()
            .await?
            .ok_or(StoreError::Refused(Refusal::NotInitialised))
    }

    /// Whether controllers can take registrations: etcd answers and holds
    /// a readable network config. `Err` says what is missing, in one line.
    pub async fn readiness(&self) -> std::result::Result<(), String> {
        match self.config().await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(
                "no network config in etcd: the cluster is not initialised (run `weftctl cluster init --cidr CIDR`)"
                    .to_string(),
            ),
            Err(StoreError::Corrupt(b)) => Err(format!(
                "the network config in etcd is unreadable ({}: {})",
                b.key, b.reason
            )),
            Err(e) => Err(format!("etcd is not reachable: {e}")),
        }
    }

    /// Writes the network config. Changing `cidr` or `subnet_len` is refused
    /// while any subnet is held or reserved; the check and the write are one
    /// transaction.
    pub async fn init_config(&self, cfg: &NetworkConfig) -> Result<Option<NetworkConfig>> {
        cfg.validate()
            .map_err(|e| StoreError::Rejected(e.to_string()))?;
        let key = self.keys.config();
        for _ in 0..MAX_ATTEMPTS {
            let old = self.etcd.get(&key).await?;
            let (old_cfg, guard) = match &old {
                Some(kv) => (
                    Some(decode::<NetworkConfig>(&key, kv.value())?),
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()),
                ),
                None => (None, Compare::version(key.as_str(), CompareOp::Equal, 0)),
            };
            let mut when = vec![guard];
            let layout_changes = old_cfg
                .as_ref()
                .is_some_and(|o| o.cidr != cfg.cidr || o.subnet_len != cfg.subnet_len);
            if layout_changes {
                when.push(Compare::version(self.keys.subnets(), CompareOp::Equal, 0).with_prefix());
                when.push(Compare::version(self.keys.hosts(), CompareOp::Equal, 0).with_prefix());
            }
            let txn = Txn::new()
                .when(when)
                .and_then([TxnOp::put(key.as_str(), encode(cfg), None)]);
            if self.etcd.txn(txn).await?.succeeded() {
                return Ok(old_cfg);
            }
            if layout_changes {
                let held = self.subnets().await?.len();
                if held > 0 || !self.hosts().await?.1.is_empty() {
                    let o = old_cfg.expect("layout change implies an old config");
                    return Err(StoreError::Rejected(format!(
                        "cannot change cidr/subnet-len from {} /{} to {} /{}: {held} subnets are held or reserved (remove the hosts and reservations first)",
                        o.cidr, o.subnet_len, cfg.cidr, cfg.subnet_len
                    )));
                }
            }
        }
        Err(StoreError::TooManyRaces(MAX_ATTEMPTS))
    }
}
