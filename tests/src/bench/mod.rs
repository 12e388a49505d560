//! The benchmarks of `weft-bench`, one module each, and what they share
//! ([`common`]). Each runs on labs of the test bed and writes its raw
//! samples as JSON; [`report`] turns those into Markdown and SVG plots.
//!
//! Timings come from the daemons' structured log events
//! ([`weft_tests::events`], the labs log JSON), their metrics, or the
//! benchmark's own clock, never from the prose of a log line.

pub mod attach;
pub mod churn;
pub mod cni;
pub mod common;
pub mod converge;
pub mod dataplane;
pub mod peers;
pub mod report;
pub mod scale;
