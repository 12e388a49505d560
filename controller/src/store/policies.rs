//! `<prefix>/policies/<name>`: network policies as `weftctl policy`
//! applies, lists, shows and deletes them. Every policy is checked before
//! any is written, and one apply is one transaction: all of them or none.

use std::collections::BTreeMap;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::Serialize;
use weft_common::policy::{validate, Policy};

use super::error::{Result, StoreError};
use super::handle::Store;
use super::keys::Key;
use super::records::{decode, encode, BadRecord};

/// What `policy apply` did to one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    Created,
    Updated,
    Unchanged,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Applied::Created => "created",
            Applied::Updated => "updated",
            Applied::Unchanged => "unchanged",
        })
    }
}

/// Policies per etcd transaction (etcd allows 128 operations by default;
/// each policy takes a compare and a put).
pub const MAX_APPLY: usize = 60;

impl Store {
    /// Every policy, by name.
    pub async fn policies(&self) -> Result<BTreeMap<String, Policy>> {
        let (_, kvs) = self.etcd.get_prefix(&self.keys.policies()).await?;
        let mut out = BTreeMap::new();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(Key::Policy(name)) = self.keys.parse(&key) else {
                continue;
            };
            let p: Policy = decode(&key, kv.value())?;
            if p.name != name {
                return Err(BadRecord {
                    key,
                    reason: format!("holds policy {:?}", p.name),
                }
                .into());
            }
            out.insert(name.to_string(), p);
        }
        Ok(out)
    }

    pub async fn policy(&self, name: &str) -> Result<Option<Policy>> {
        let key = self.keys.policy(name);
        match self.etcd.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, kv.value())?)),
            None => Ok(None),
        }
    }

    /// Creates or replaces `policies`, all in one transaction guarded by
    /// what each key held when read (a concurrent change makes it fail
    /// whole: apply again).
    pub async fn apply_policies(&self, policies: &[Policy]) -> Result<Vec<(String, Applied)>> {
        if policies.len() > MAX_APPLY {
            return Err(StoreError::Rejected(format!(
                "{} policies in one apply; at most {MAX_APPLY}",
                policies.len()
            )));
        }
        for p in policies {
            validate::policy(p).map_err(|e| StoreError::Rejected(e.to_string()))?;
        }
        // One read of every policy key; the transaction is guarded by it.
        let (_, kvs) = self.etcd.get_prefix(&self.keys.policies()).await?;
        let mut current: BTreeMap<String, _> = kvs
            .into_iter()
            .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv))
            .collect();
        let mut when = Vec::new();
        let mut then = Vec::new();
        let mut outcome = Vec::new();
        for p in policies {
            let key = self.keys.policy(&p.name);
            let old = current.remove(&key);
            let (applied, guard) = match &old {
                None => (
                    Applied::Created,
                    Compare::version(key.as_str(), CompareOp::Equal, 0),
                ),
                Some(kv) => {
                    let same = decode::<Policy>(&key, kv.value()).is_ok_and(|o| o == *p);
                    (
                        if same {
                            Applied::Unchanged
                        } else {
                            Applied::Updated
                        },
                        Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()),
                    )
                }
            };
            if applied != Applied::Unchanged {
                when.push(guard);
                then.push(TxnOp::put(key.as_str(), encode(p), None));
            }
            outcome.push((p.name.clone(), applied));
        }
        if then.is_empty() {
            return Ok(outcome);
        }
        if !self
            .etcd
            .txn(Txn::new().when(when).and_then(then))
            .await?
            .succeeded()
        {
            return Err(StoreError::Rejected(
                "a policy changed while applying; nothing was written, apply again".into(),
            ));
        }
        Ok(outcome)
    }

    /// Deletes the policy `name`, answering what it was.
    pub async fn delete_policy(&self, name: &str) -> Result<Policy> {
        let key = self.keys.policy(name);
        let kv = self
            .etcd
            .get(&key)
            .await?
            .ok_or_else(|| StoreError::Rejected(format!("no policy {name:?}")))?;
        let p: Policy = decode(&key, kv.value())?;
        if !self.etcd.delete_unchanged(&key, kv.mod_revision()).await? {
            return Err(StoreError::Rejected(format!(
                "policy {name} changed while deleting it; try again"
            )));
        }
        Ok(p)
    }
}
