//! What the controller says about itself: Prometheus metrics and readiness,
//! served on `--metrics-listen` by `weft_common::http`.
//!
//! A leaf: it imports nothing of the layers it observes (store, hub,
//! server). They call in with plain values; readiness gets its etcd check
//! handed in by `main`.

pub mod metrics;
pub mod ready;

pub use ready::ready;

/// What `--metrics-listen` serves.
pub fn endpoints() -> weft_common::http::Endpoints {
    weft_common::http::Endpoints {
        heartbeat: Default::default(),
        registry: metrics::get().registry(),
        ready: std::sync::Arc::new(|| {
            let r = ready().clone();
            Box::pin(async move { r.check().await })
        }),
    }
}
