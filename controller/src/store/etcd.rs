//! The one holder of the etcd client. Every request to etcd goes through
//! here and is timed here (`weft_controller_etcd_request_duration_seconds`
//! and `weft_controller_etcd_errors` by operation), so nothing else in the
//! controller can reach etcd untimed.

use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, GetOptions, KeyValue, Txn, TxnResponse, WatchOptions, WatchStream,
};

use crate::telemetry::metrics;

/// A connected etcd client (cheap to clone: clones share the connection).
#[derive(Clone)]
pub(super) struct Etcd {
    client: Client,
}

impl Etcd {
    /// Connects to `endpoints`; `timeout` bounds connecting and each
    /// request, so an unreachable etcd gives an error instead of a hang.
    pub async fn connect(
        endpoints: &[String],
        timeout: Duration,
        with: impl FnOnce(ConnectOptions) -> ConnectOptions,
    ) -> Result<Etcd, etcd_client::Error> {
        let opts = with(
            ConnectOptions::new()
                .with_connect_timeout(timeout)
                .with_timeout(timeout)
                .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5)),
        );
        Ok(Etcd {
            client: Client::connect(endpoints, Some(opts)).await?,
        })
    }

    /// The value of one key.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, etcd_client::Error> {
        let mut c = self.client.clone();
        let mut r = metrics::etcd("get", c.get(key, None)).await?;
        Ok(r.take_kvs().into_iter().next())
    }

    /// Every key under `prefix`, with the revision the listing reflects.
    pub async fn get_prefix(
        &self,
        prefix: &str,
    ) -> Result<(i64, Vec<KeyValue>), etcd_client::Error> {
        let mut c = self.client.clone();
        let mut r =
            metrics::etcd("get", c.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        Ok((rev, r.take_kvs()))
    }

    /// How many keys there are under `prefix`.
    pub async fn count_prefix(&self, prefix: &str) -> Result<i64, etcd_client::Error> {
        let mut c = self.client.clone();
        let r = metrics::etcd(
            "get",
            c.get(
                prefix,
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        )
        .await?;
        Ok(r.count())
    }

    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, etcd_client::Error> {
        let mut c = self.client.clone();
        metrics::etcd("txn", c.txn(txn)).await
    }

    /// Deletes `key` if it is still at `mod_revision` (as it was read);
    /// whether it was.
    pub async fn delete_unchanged(
        &self,
        key: &str,
        mod_revision: i64,
    ) -> Result<bool, etcd_client::Error> {
        let t = Txn::new()
            .when([etcd_client::Compare::mod_revision(
                key,
                etcd_client::CompareOp::Equal,
                mod_revision,
            )])
            .and_then([etcd_client::TxnOp::delete(key, None)]);
        Ok(self.txn(t).await?.succeeded())
    }

    /// A new lease of `ttl` seconds.
    pub async fn lease_grant(&self, ttl: i64) -> Result<i64, etcd_client::Error> {
        let mut c = self.client.clone();
        Ok(metrics::etcd("lease_grant", c.lease_grant(ttl, None))
            .await?
            .id())
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<(), etcd_client::Error> {
        let mut c = self.client.clone();
        metrics::etcd("lease_revoke", c.lease_revoke(id))
            .await
            .map(drop)
    }

    /// One keep-alive of lease `id`: the TTL etcd gives it now (0 or less
    /// when the lease no longer exists), `None` when etcd closed the
    /// stream without answering. A keep-alive stream has no request
    /// timeout of its own: callers bound it.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<Option<i64>, etcd_client::Error> {
        let mut c = self.client.clone();
        metrics::etcd("lease_keep_alive", async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
            keeper.keep_alive().await?;
            Ok(stream.message().await?.map(|r| r.ttl()))
        })
        .await
    }

    /// Watches every key under `prefix` from revision `from`, with
    /// progress notifications.
    pub async fn watch_prefix(
        &self,
        prefix: &str,
        from: i64,
    ) -> Result<WatchStream, etcd_client::Error> {
        let mut c = self.client.clone();
        metrics::etcd(
            "watch",
            c.watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(from)
                        .with_progress_notify(),
                ),
            ),
        )
        .await
    }

    /// Takes an endpoint out of the client's balanced channel (no request
    /// to etcd).
    pub async fn remove_endpoint(&self, endpoint: &str) -> Result<(), etcd_client::Error> {
        self.client.remove_endpoint(endpoint).await
    }

    /// Puts an endpoint back into the client's balanced channel.
    pub async fn add_endpoint(&self, endpoint: &str) -> Result<(), etcd_client::Error> {
        self.client.add_endpoint(endpoint).await
    }
}
