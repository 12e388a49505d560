//! The [`Store`] handle: connecting, the lease operations every user of
//! the store shares, and the clock records are stamped with.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::access::{EtcdAccess, EtcdTarget};
use super::error::{Result, StoreError};
use super::etcd::Etcd;
use super::keys::Keys;
use super::listing::SharedListing;
use super::members;

/// A registration gives up after this many lost races (each one means
/// another host got a subnet, so this bounds a pathological storm only).
pub(super) const MAX_ATTEMPTS: u32 = 1000;

/// weft's state in one etcd prefix (cheap to clone: clones share the
/// connection).
#[derive(Clone)]
pub struct Store {
    pub(super) etcd: Etcd,
    pub(super) keys: Keys,
    pub(super) listing: Arc<SharedListing>,
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    /// Connects to a plain (http, no user) etcd. `timeout` bounds each
    /// request, so an unreachable etcd gives an error instead of a hang.
    pub async fn connect(endpoints: &[String], prefix: &str, timeout: Duration) -> Result<Store> {
        Self::connect_to(
            &EtcdTarget {
                endpoints: endpoints.to_vec(),
                prefix: prefix.to_string(),
                access: EtcdAccess::default(),
            },
            timeout,
        )
        .await
    }

    /// Connects to `target`, over TLS and/or as an etcd user. A wrong
    /// password fails here, as "etcd refused user NAME: authentication
    /// failed".
    pub async fn connect_to(target: &EtcdTarget, timeout: Duration) -> Result<Store> {
        let access = &target.access;
        let etcd = Etcd::connect(&target.endpoints, timeout, |o| access.apply(o))
            .await
            .map_err(|e| match access.refusal(&e) {
                Some(why) => StoreError::Access(why),
                None => StoreError::Etcd(e),
            })?;
        Ok(Store {
            etcd,
            keys: Keys::new(&target.prefix),
            listing: Default::default(),
        })
    }

    /// The key layout of this store's prefix.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Keeps requests off `endpoints` that are down, for the life of the
    /// process (see `members`); nothing to do for a single endpoint.
    pub fn watch_members(&self, endpoints: Vec<String>) {
        members::spawn(self.etcd.clone(), endpoints);
    }

    /// A lease of `ttl` seconds.
    pub async fn grant_lease(&self, ttl: i64) -> Result<i64> {
        Ok(self.etcd.lease_grant(ttl).await?)
    }

    /// Ends a lease: every key on it is deleted.
    pub async fn revoke_lease(&self, id: i64) -> Result<()> {
        Ok(self.etcd.lease_revoke(id).await?)
    }

    /// One keep-alive of lease `id`: the TTL etcd gives it now (0 or less
    /// when etcd no longer has it: it expired, or was revoked), `None`
    /// when etcd closed the stream without answering. Bound it with a
    /// timeout: a keep-alive stream has none of its own.
    pub async fn keep_lease_alive(&self, id: i64) -> Result<Option<i64>> {
        Ok(self.etcd.lease_keep_alive(id).await?)
    }
}
