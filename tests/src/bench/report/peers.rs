//! The `peers` figure: one agent programming P peers from cold, and its
//! memory.
use serde_json::Value;

use super::figure::{distinct, fms, frange, Figure, Table};
use super::svg::{Body, Line, Panel, Point};
use crate::bench::common::stats;

/// `peers.json`: `samples` of {peers, round, total_ms, rss_kb, hwm_kb, …}.
pub(super) fn peers(name: &str, v: &Value) -> Figure {
    let mut fig = Figure::new(name, "peers: one agent programming P peers from cold", v);
    let samples: Vec<&Value> = v["samples"].as_array().into_iter().flatten().collect();
    let mut counts = distinct(samples.iter().filter_map(|s| s["peers"].as_u64()));
    counts.sort_unstable();
    let col = |p: u64, key: &str, scale: f64| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| s["peers"].as_u64() == Some(p))
            .filter_map(|s| s[key].as_f64().map(|x| x * scale))
            .collect()
    };
    let rounds = counts
        .first()
        .map(|&p| col(p, "total_ms", 1.0).len())
        .unwrap_or(0);
    fig.notes.push(format!(
        "{rounds} samples per count, a fresh lab each; times from the agent's spawn."
    ));
    fig.table = Table::new(
        &[
            "peers",
            "all programmed median",
            "p99",
            "min–max",
            "snapshot received (median)",
            "agent RSS (median)",
            "agent peak RSS (median)",
        ],
        &[true; 7],
    );
    let mb = |v: &[f64]| {
        let m = stats(v).0;
        if m.is_finite() {
            format!("{m:.1} MB")
        } else {
            "–".into()
        }
    };
    for &p in &counts {
        let (p50, p99, min, max) = stats(&col(p, "total_ms", 1.0));
        fig.table.rows.push(vec![
            p.to_string(),
            fms(p50),
            fms(p99),
            frange(min, max),
            fms(stats(&col(p, "snapshot_ms", 1.0)).0),
            mb(&col(p, "rss_kb", 1.0 / 1024.0)),
            mb(&col(p, "hwm_kb", 1.0 / 1024.0)),
        ]);
    }
    let line = |name: &str, key: &str, scale: f64, color: usize, dashed: bool| Line {
        name: name.into(),
        color,
        dashed,
        points: counts
            .iter()
            .filter_map(|&p| {
                let (p50, p99, min, _) = stats(&col(p, key, scale));
                p50.is_finite()
                    .then(|| Point::new(p as f64, p50).whisker(min, p99))
            })
            .collect(),
    };
    fig.panels.push(Panel {
        title: "time to program P peers".into(),
        x_label: "peers (P)".into(),
        y_label: "time (ms)".into(),
        note: "line: median; whisker: min to p99".into(),
        body: Body::Lines(vec![
            line("spawn → all programmed", "total_ms", 1.0, 0, false),
            line("spawn → snapshot received", "snapshot_ms", 1.0, 1, true),
        ]),
    });
    fig.panels.push(Panel {
        title: "agent memory".into(),
        x_label: "peers (P)".into(),
        y_label: "MB".into(),
        note: "line: median; whisker: min to p99".into(),
        body: Body::Lines(vec![
            line("RSS", "rss_kb", 1.0 / 1024.0, 0, false),
            line("peak RSS (VmHWM)", "hwm_kb", 1.0 / 1024.0, 1, true),
        ]),
    });
    fig
}
