//! The `dataplane` figure: throughput and RTT of the underlay, VXLAN and
//! direct routing.
use serde_json::Value;

use super::figure::{nums, Figure, Table};
use super::svg::{Bar, Body, Panel};
use crate::bench::common::stats;

/// `dataplane.json`: `series` of {mode, what, gbits, rtt_ms, ping_lost, …};
/// the first series is the underlay, the reference.
pub(super) fn dataplane(name: &str, v: &Value) -> Figure {
    let mut fig = Figure::new(name, "dataplane: TCP throughput and RTT across hosts", v);
    let series: Vec<&Value> = v["series"].as_array().into_iter().flatten().collect();
    let base = series
        .first()
        .map(|s| nums(&s["gbits"]))
        .unwrap_or_default();
    let base_mode = series
        .first()
        .and_then(|s| s["mode"].as_str())
        .unwrap_or("underlay")
        .to_string();
    fig.notes.push(format!(
        "{} rounds of {} s per path (iperf3, one TCP stream), paths interleaved. \
         Ratio: per round, throughput over {base_mode}'s; median of rounds.",
        v["rounds"], v["seconds"]
    ));
    if let Some(n) = v["variants"].as_array().map(Vec::len).filter(|&n| n > 0) {
        fig.notes.push(format!(
            "The file also holds {n} variants of the configuration; the table and plot show the \
             first (`series`) only."
        ));
    }
    fig.table = Table::new(
        &[
            "path",
            "mode",
            "throughput median",
            "min–max",
            &format!("/ {base_mode}"),
            "RTT median",
            "RTT p99",
            "RTT min–max",
            "pings lost",
        ],
        &[false, false, true, true, true, true, true, true, true],
    );
    let mut tput = Vec::new();
    let mut rtt = Vec::new();
    for (i, s) in series.iter().enumerate() {
        let mode = s["mode"].as_str().unwrap_or("?").to_string();
        let g = nums(&s["gbits"]);
        let ratios: Vec<f64> = g.iter().zip(&base).map(|(x, b)| x / b).collect();
        let (g50, _, gmin, gmax) = stats(&g);
        let (r50, _, rmin, rmax) = stats(&ratios);
        let (t50, t99, tmin, tmax) = stats(&nums(&s["rtt_ms"]));
        fig.table.rows.push(vec![
            s["what"].as_str().unwrap_or("").to_string(),
            mode.clone(),
            format!("{g50:.2} Gbit/s"),
            format!("{gmin:.2}–{gmax:.2}"),
            if r50.is_finite() {
                format!("{r50:.2}")
            } else {
                "–".into()
            },
            format!("{t50:.3} ms"),
            format!("{t99:.3} ms"),
            format!("{tmin:.3}–{tmax:.3}"),
            s["ping_lost"].to_string(),
        ]);
        tput.push(Bar {
            label: mode.clone(),
            color: i,
            value: r50,
            whisker: Some((rmin, rmax)),
            text: format!("{r50:.2} ({g50:.1} Gbit/s)"),
        });
        rtt.push(Bar {
            label: mode,
            color: i,
            value: t50,
            whisker: Some((tmin, t99)),
            text: format!("{t50:.3}"),
        });
    }
    fig.panels.push(Panel {
        title: format!("throughput / {base_mode}"),
        x_label: "path".into(),
        y_label: format!("throughput / {base_mode} (median of rounds)"),
        note: "whisker: min to max over rounds".into(),
        body: Body::Bars(tput),
    });
    fig.panels.push(Panel {
        title: "ping RTT".into(),
        x_label: "path".into(),
        y_label: "RTT (ms)".into(),
        note: "bar: median; whisker: min to p99".into(),
        body: Body::Bars(rtt),
    });
    fig
}
