//! Helpers the agent's and the controller's Prometheus metrics share
//! (`agent/src/metrics.rs`, `controller/src/metrics.rs`; served by
//! [`crate::http`]).

use std::future::Future;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// Registers `metric` in `r` as `name` with `help` and returns it (metrics
/// are handles: the returned one and the registered one are the same).
pub fn register<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

/// Awaits `f`, observes how long it took in `duration` (seconds) and
/// counts a failure in `errors`.
pub async fn timed<T, E>(
    duration: &Histogram,
    errors: &Counter,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let r = f.await;
    duration.observe(started.elapsed().as_secs_f64());
    if r.is_err() {
        errors.inc();
    }
    r
}

/// Adds one to a gauge until dropped.
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(g: &Gauge) -> GaugeGuard {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::histogram::exponential_buckets;

    #[test]
    fn register_times_and_guards() {
        let mut r = Registry::default();
        let g = register(&mut r, "g", "a gauge", Gauge::<i64>::default());
        let h = register(
            &mut r,
            "h",
            "a histogram",
            Histogram::new(exponential_buckets(0.001, 2.0, 4)),
        );
        let e = register(&mut r, "e", "errors", Counter::<u64>::default());
        {
            let _one = GaugeGuard::new(&g);
            let _two = GaugeGuard::new(&g);
            assert_eq!(g.get(), 2);
        }
        assert_eq!(g.get(), 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ok: Result<(), ()> = rt.block_on(timed(&h, &e, async { Ok(()) }));
        assert!(ok.is_ok());
        assert_eq!(e.get(), 0);
        let bad: Result<(), &str> = rt.block_on(timed(&h, &e, async { Err("no") }));
        assert_eq!(bad, Err("no"));
        assert_eq!(e.get(), 1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(text.contains("h_count 2"), "{text}");
        assert!(text.contains("e_total 1"), "{text}");
    }
}
