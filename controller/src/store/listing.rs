//! One listing of every subnet key, shared by the registrations that ask
//! for one at the same time: a registration storm otherwise lists every
//! subnet once per host (O(hosts²) data out of etcd).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use etcd_client::KeyValue;
use ipnetwork::Ipv4Network;
use weft_common::cluster::SubnetRecord;

use super::error::Result;

/// Every subnet key, as `Store::subnets` returns them.
pub type Subnets = BTreeMap<Ipv4Network, (SubnetRecord, KeyValue)>;

/// The listing registrations share.
#[derive(Default)]
pub(super) struct SharedListing {
    /// Listings started so far.
    started: AtomicU64,
    /// The last listing and its sequence number.
    last: tokio::sync::Mutex<Option<(u64, Arc<Subnets>)>>,
}

impl SharedListing {
    /// A listing (made by `list`) that started after this call did: as
    /// fresh as a listing of its own (etcd reads are linearizable, so it
    /// holds every write that completed before the call), but concurrent
    /// callers share one listing instead of each making their own.
    pub async fn fresh<F, Fut>(&self, list: F) -> Result<Arc<Subnets>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Subnets>>,
    {
        let arrived = self.started.load(SeqCst);
        let mut last = self.last.lock().await;
        if let Some((seq, subnets)) = &*last {
            if *seq > arrived {
                return Ok(subnets.clone());
            }
        }
        let seq = self.started.fetch_add(1, SeqCst) + 1;
        let subnets = Arc::new(list().await?);
        *last = Some((seq, subnets.clone()));
        Ok(subnets)
    }
}
