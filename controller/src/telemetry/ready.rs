//! The controller's readiness (`/readyz`): connected to etcd, etcd answers,
//! and the network config is there. What "etcd answers with a config"
//! means is the store's to say: `main` hands in the check once the store
//! is connected; this module only bounds, serializes and caches it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How long a readiness answer is reused.
pub const READY_CACHE: Duration = Duration::from_secs(1);
/// The longest the etcd check may take (within `/readyz`'s own limit).
pub const READY_ETCD_TIMEOUT: Duration = Duration::from_millis(400);

/// A check of etcd: `Err` says what is not ready, in one line.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The readiness state. Checked at most once per [`READY_CACHE`], by one
/// request at a time; others get the last answer.
pub struct Ready {
    check: Mutex<Option<Check>>,
    /// Why etcd is not connected yet (before the check exists).
    connecting: Mutex<String>,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
    checking: tokio::sync::Mutex<()>,
}

static READY: LazyLock<Arc<Ready>> = LazyLock::new(|| {
    Arc::new(Ready {
        check: Mutex::new(None),
        connecting: Mutex::new("connecting to etcd".into()),
        last: Mutex::new(None),
        checking: tokio::sync::Mutex::new(()),
    })
});

/// The process's readiness.
pub fn ready() -> &'static Arc<Ready> {
    &READY
}

impl Ready {
    /// Not connected to etcd yet, because `why`.
    pub fn connecting(&self, why: impl Into<String>) {
        *self.connecting.lock().expect("ready") = why.into();
    }

    /// Connected: from now on readiness is `check`.
    pub fn connected(&self, check: Check) {
        *self.check.lock().expect("ready") = Some(check);
    }

    fn cached(&self) -> Option<Result<(), String>> {
        let last = self.last.lock().expect("ready");
        match &*last {
            Some((at, r)) if at.elapsed() < READY_CACHE => Some(r.clone()),
            _ => None,
        }
    }

    pub async fn check(&self) -> Result<(), String> {
        if let Some(r) = self.cached() {
            return r;
        }
        let Some(check) = self.check.lock().expect("ready").clone() else {
            return Err(format!(
                "not connected to etcd yet: {}",
                self.connecting.lock().expect("ready")
            ));
        };
        let _one = match self.checking.try_lock() {
            Ok(g) => g,
            // Another request is checking: wait for it (bounded by /readyz).
            Err(_) => {
                let _ = self.checking.lock().await;
                return self
                    .cached()
                    .unwrap_or_else(|| Err("etcd did not answer the readiness check".into()));
            }
        };
        let r = match tokio::time::timeout(READY_ETCD_TIMEOUT, check()).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "etcd is not reachable: no answer within {READY_ETCD_TIMEOUT:?}"
            )),
        };
        *self.last.lock().expect("ready") = Some((Instant::now(), r.clone()));
        r
    }
}
