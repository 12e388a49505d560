//! The cluster commands' way to etcd: the flags checked (shared with
//! weft-controller), one connection, and etcd's errors as sentences that
//! name etcd's URL.

use std::future::Future;
use std::time::Duration;

use weft_controller::backup::BackupError;
use weft_controller::flags::etcd::{self as etcd_flags, EtcdFlags, PASSWORD_ENV};
use weft_controller::store::access::unreachable_reason;
use weft_controller::store::{EtcdTarget, Store, StoreError};

use crate::output::Failure;

/// The etcd flags of this run.
pub struct Etcd {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub flags: EtcdFlags,
}

/// A connected store, and what its error messages name.
pub struct Cluster {
    pub store: Store,
    target: EtcdTarget,
}

impl Etcd {
    /// Checks the flags (usage errors, exit 2), connects, and runs `f`.
    pub fn run<F, Fut>(&self, f: F) -> Result<(), Failure>
    where
        F: FnOnce(Cluster) -> Fut,
        Fut: Future<Output = Result<(), Failure>>,
    {
        let target = etcd_flags::target(
            &self.endpoints,
            &self.prefix,
            &self.flags,
            std::env::var(PASSWORD_ENV).ok(),
        )
        .map_err(Failure::usage)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::failed(format!("start runtime: {e}")))?;
        let eps = target.endpoints.join(",");
        rt.block_on(async {
            let store = Store::connect_to(&target, Duration::from_secs(5))
                .await
                .map_err(|e| match &e {
                    // The client connects lazily: failing here means a URL
                    // it cannot use.
                    StoreError::Etcd(etcd_client::Error::InvalidUri(u)) => {
                        Failure::usage(format!("--etcd-endpoints {eps:?}: not a usable URL ({u})"))
                    }
                    StoreError::Access(why) => Failure::failed(format!("{why} (etcd at {eps})")),
                    _ => Failure::failed(format!("cannot reach etcd at {eps}: {}", reason(&e))),
                })?;
            f(Cluster { store, target }).await
        })
    }
}

impl Cluster {
    /// A store error as the sentence weftctl prints.
    pub fn fail(&self, e: StoreError) -> Failure {
        let eps = self.target.endpoints.join(",");
        match &e {
            StoreError::Etcd(err) => {
                if let Some(why) = self.target.access.refusal(err) {
                    return Failure::failed(format!("{why} (etcd at {eps})"));
                }
                match unreachable_reason(err) {
                    Some(why) => Failure::failed(format!("cannot reach etcd at {eps}: {why}")),
                    None => Failure::failed(format!("etcd request failed: {}", reason(&e))),
                }
            }
            StoreError::Access(why) => Failure::failed(format!("{why} (etcd at {eps})")),
            _ => Failure::failed(e.to_string()),
        }
    }

    /// A backup or restore error as the sentence weftctl prints; a
    /// refused document is a usage error.
    pub fn fail_backup(&self, e: BackupError) -> Failure {
        match e {
            BackupError::Store(e) => self.fail(e),
            BackupError::Invalid(_) | BackupError::NotEmpty { .. } => Failure::usage(e.to_string()),
            other => Failure::failed(other.to_string()),
        }
    }
}

/// An etcd error without the "etcd: " it starts with.
fn reason(e: &StoreError) -> String {
    let s = e.to_string();
    s.strip_prefix("etcd: ").unwrap_or(&s).to_string()
}
