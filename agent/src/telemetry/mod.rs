//! What the agent tells about itself: Prometheus metrics and readiness.
//! A leaf: it imports nothing of the layers it observes; they report to it
//! in plain numbers and words.

pub mod metrics;
pub mod ready;
