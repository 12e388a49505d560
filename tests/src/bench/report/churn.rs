//! The `churn` figure: cycles per second, memory and fds over the cycles,
//! and leftovers.
use serde_json::Value;

use super::figure::{distinct, fms, frange, nums, Figure, Table};
use super::svg::{Body, Line, Panel, Point};
use crate::bench::common::stats;

/// `churn.json`: `phases` of {name, cycles, duration_s, cycles_per_s,
/// step_ms} and `samples` of {phase, cycle, agent_h1/agent_h2/controller:
/// {rss_kb, fds, threads}, leftovers, …}.
pub(super) fn churn(name: &str, v: &Value) -> Figure {
    let mut fig = Figure::new(
        name,
        "churn: add/delete cycles, memory and fds throughout",
        v,
    );
    let phases: Vec<&Value> = v["phases"].as_array().into_iter().flatten().collect();
    let samples: Vec<&Value> = v["samples"].as_array().into_iter().flatten().collect();
    fig.table = Table::new(
        &[
            "phase",
            "cycles",
            "duration",
            "cycles/s",
            "cycle median",
            "cycle p99",
            "cycle min–max",
        ],
        &[false, true, true, true, true, true, true],
    );
    for p in &phases {
        let (p50, p99, min, max) = stats(&nums(&p["step_ms"]));
        fig.table.rows.push(vec![
            p["name"].as_str().unwrap_or("?").to_string(),
            p["cycles"].to_string(),
            format!("{:.1} s", p["duration_s"].as_f64().unwrap_or(f64::NAN)),
            format!("{:.1}", p["cycles_per_s"].as_f64().unwrap_or(f64::NAN)),
            fms(p50),
            fms(p99),
            frange(min, max),
        ]);
    }
    // x: cycles since the start of the run (phases one after the other).
    let mut offset = std::collections::HashMap::new();
    let mut total = 0.0;
    for p in &phases {
        if let Some(n) = p["name"].as_str() {
            offset.insert(n.to_string(), total);
        }
        total += p["cycles"].as_f64().unwrap_or(0.0);
    }
    let xs: Vec<f64> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let phase = s["phase"].as_str().unwrap_or("");
            match offset.get(phase) {
                Some(o) => o + s["cycle"].as_f64().unwrap_or(0.0),
                None if i == 0 => 0.0,
                None => total,
            }
        })
        .collect();
    let procs = distinct(samples.iter().flat_map(|s| {
        s.as_object()
            .into_iter()
            .flatten()
            .filter(|(_, x)| x.get("rss_kb").is_some())
            .map(|(k, _)| k.clone())
    }));
    let mut more = Table::new(
        &[
            "process",
            "RSS start",
            "RSS end",
            "RSS max",
            "fds start → end",
        ],
        &[false, true, true, true, true],
    );
    let mut rss = Vec::new();
    let mut fds = Vec::new();
    for (i, pr) in procs.iter().enumerate() {
        let col = |key: &str, scale: f64| -> Vec<f64> {
            samples
                .iter()
                .map(|s| s[pr.as_str()][key].as_f64().unwrap_or(f64::NAN) * scale)
                .collect()
        };
        let r = col("rss_kb", 1.0 / 1024.0);
        let f = col("fds", 1.0);
        let label = pr.replace('_', " ");
        let mb = |x: Option<&f64>| x.map(|v| format!("{v:.1} MB")).unwrap_or("–".into());
        more.rows.push(vec![
            label.clone(),
            mb(r.first()),
            mb(r.last()),
            mb(Some(&r.iter().cloned().fold(f64::NAN, f64::max))),
            format!(
                "{} → {}",
                f.first().copied().unwrap_or(f64::NAN),
                f.last().copied().unwrap_or(f64::NAN)
            ),
        ]);
        let line = |ys: &[f64]| Line {
            name: label.clone(),
            color: i,
            dashed: false,
            points: xs.iter().zip(ys).map(|(&x, &y)| Point::new(x, y)).collect(),
        };
        rss.push(line(&r));
        fds.push(line(&f));
    }
    let leftovers = samples
        .iter()
        .filter(|s| s["leftovers"].as_array().is_some_and(|a| !a.is_empty()))
        .count();
    fig.notes.push(format!(
        "{} samples; {leftovers} of them with objects left over after settling.",
        samples.len()
    ));
    fig.more
        .push(("Processes over the whole run:".into(), more));
    let phase_names: Vec<&str> = phases.iter().filter_map(|p| p["name"].as_str()).collect();
    let x_label = format!("cycles ({})", phase_names.join(", then "));
    fig.panels.push(Panel {
        title: "RSS".into(),
        x_label: x_label.clone(),
        y_label: "MB".into(),
        note: String::new(),
        body: Body::Lines(rss),
    });
    fig.panels.push(Panel {
        title: "open fds".into(),
        x_label,
        y_label: "fds".into(),
        note: String::new(),
        body: Body::Lines(fds),
    });
    fig
}
