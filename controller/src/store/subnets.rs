//! `<prefix>/subnets/`: listing subnet keys (shared between concurrent
//! registrations), reserving and releasing subnets (`weftctl subnet`).

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use ipnetwork::Ipv4Network;
use weft_common::cluster::{NetworkConfig, SubnetRecord};
use weft_common::validate_name;

use super::error::{Result, StoreError};
use super::handle::Store;
use super::keys::Key;
use super::listing::Subnets;
use super::records::{decode, encode, BadRecord};

impl Store {
    /// Every subnet key, from a listing that started after this call did
    /// (see [`SharedListing::fresh`]).
    pub async fn fresh_subnets(&self) -> Result<Arc<Subnets>> {
        self.listing.fresh(|| self.subnets()).await
    }

    /// Every subnet key: held or reserved.
    pub async fn subnets(&self) -> Result<Subnets> {
        let (_, kvs) = self.etcd.get_prefix(&self.keys.subnets()).await?;
        let mut out = BTreeMap::new();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(Key::Subnet(Some(net))) = self.keys.parse(&key) else {
                return Err(BadRecord {
                    key,
                    reason: "not a subnet key".into(),
                }
                .into());
            };
            out.insert(net, (decode(&key, kv.value())?, kv));
        }
        Ok(out)
    }

    /// Keeps `net` out of allocation, optionally pinned to `host`.
    pub async fn reserve(&self, net: Ipv4Network, host: Option<&str>) -> Result<SubnetRecord> {
        let cfg = self.require_config().await?;
        if let Some(h) = host {
            validate_name(h).map_err(|e| StoreError::Rejected(e.to_string()))?;
        }
        check_subnet(&cfg, net)?;
        let key = self.keys.subnet(net);
        let rec = SubnetRecord {
            host: host.map(str::to_string),
            reserved: true,
        };
        let t = Txn::new()
            .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), encode(&rec), None)]);
        if self.etcd.txn(t).await?.succeeded() {
            return Ok(rec);
        }
        let cur: SubnetRecord = match self.etcd.get(&key).await? {
            Some(kv) => decode(&key, kv.value())?,
            None => {
                return Err(StoreError::Rejected(format!(
                    "subnet {net} changed while reserving it; try again"
                )))
            }
        };
        if cur == rec {
            return Ok(rec);
        }
        Err(StoreError::Rejected(match (cur.reserved, cur.host) {
            (true, Some(h)) => format!("subnet {net} is already reserved for host {h}"),
            (true, None) => format!("subnet {net} is already reserved"),
            (false, Some(h)) => format!(
                "subnet {net} is held by host {h}; remove it first with `weftctl host rm {h}`"
            ),
            (false, None) => format!("subnet {net} is in use"),
        }))
    }

    /// Frees a reservation.
    pub async fn release(&self, net: Ipv4Network) -> Result<SubnetRecord> {
        let cfg = self.require_config().await?;
        check_subnet(&cfg, net)?;
        let key = self.keys.subnet(net);
        let kv = self.etcd.get(&key).await?.ok_or_else(|| {
            StoreError::Rejected(format!("subnet {net} is neither reserved nor held"))
        })?;
        let rec: SubnetRecord = decode(&key, kv.value())?;
        if !rec.reserved {
            let h = rec.host.unwrap_or_default();
            return Err(StoreError::Rejected(format!(
                "subnet {net} is not reserved but held by host {h}; use `weftctl host rm {h}` to free it"
            )));
        }
        if let Some(h) = &rec.host {
            if self.host(h).await?.is_some_and(|r| r.subnet == net) {
                return Err(StoreError::Rejected(format!(
                    "subnet {net} is reserved for host {h}, which is using it; use `weftctl host rm {h}` first"
                )));
            }
        }
        if !self.etcd.delete_unchanged(&key, kv.mod_revision()).await? {
            return Err(StoreError::Rejected(format!(
                "subnet {net} changed while releasing it; try again"
            )));
        }
        Ok(rec)
    }
}

fn check_subnet(cfg: &NetworkConfig, net: Ipv4Network) -> Result<()> {
    if !cfg.is_host_subnet(net) {
        return Err(StoreError::Rejected(format!(
            "{net} is not a /{} subnet of the cluster cidr {}",
            cfg.subnet_len, cfg.cidr
        )));
    }
    Ok(())
}
