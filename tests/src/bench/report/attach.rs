//! The `attach` figure: namespace create-and-attach (and delete) times per
//! tool and count of existing endpoints.
use serde_json::Value;

use super::figure::{distinct, fms, frange, nums, ratio, tool_label, Figure, Table};
use super::svg::{Body, Line, Panel, Point};
use crate::bench::common::stats;

/// `attach.json`: `series` of {tool, op, existing, samples_ms}.
pub(super) fn attach(name: &str, v: &Value) -> Figure {
    let mut fig = Figure::new(name, "attach: create-and-attach a namespace", v);
    let series: Vec<&Value> = v["series"].as_array().into_iter().flatten().collect();
    let tools = distinct(series.iter().filter_map(|s| s["tool"].as_str()));
    let ops = distinct(series.iter().filter_map(|s| s["op"].as_str()));
    let mut counts = distinct(series.iter().filter_map(|s| s["existing"].as_u64()));
    counts.sort_unstable();
    let base = tools.first().copied().unwrap_or("weft");
    let get = |tool: &str, op: &str, n: u64| -> Vec<f64> {
        series
            .iter()
            .find(|s| s["tool"] == tool && s["op"] == op && s["existing"].as_u64() == Some(n))
            .map(|s| nums(&s["samples_ms"]))
            .unwrap_or_default()
    };
    let samples = series
        .first()
        .map(|s| nums(&s["samples_ms"]).len())
        .unwrap_or(0);
    fig.notes.push(format!(
        "{samples} samples per tool, operation and count of existing endpoints; tools interleaved. \
         Ratio: the tool's median over {base}'s (how many times longer)."
    ));
    fig.table = Table::new(
        &[
            "op",
            "existing",
            "tool",
            "median",
            "p99",
            "min–max",
            &format!("/ {base} (median)"),
        ],
        &[false, true, false, true, true, true, true],
    );
    for &op in &ops {
        for &n in &counts {
            let b = stats(&get(base, op, n)).0;
            for &t in &tools {
                let s = get(t, op, n);
                if s.is_empty() {
                    continue;
                }
                let (p50, p99, min, max) = stats(&s);
                fig.table.rows.push(vec![
                    op.to_string(),
                    n.to_string(),
                    tool_label(t),
                    fms(p50),
                    fms(p99),
                    frange(min, max),
                    if t == base {
                        "–".into()
                    } else {
                        ratio(p50, b)
                    },
                ]);
            }
        }
    }
    for &op in &ops {
        let lines = tools
            .iter()
            .enumerate()
            .map(|(k, &t)| Line {
                name: tool_label(t),
                color: k,
                dashed: false,
                points: counts
                    .iter()
                    .filter_map(|&n| {
                        let s = get(t, op, n);
                        (!s.is_empty()).then(|| {
                            let (p50, p99, min, _) = stats(&s);
                            Point::new(n as f64, p50).whisker(min, p99)
                        })
                    })
                    .collect(),
            })
            .collect();
        let what = match op {
            "add" => "add (create + attach)",
            "del" => "del (detach + delete)",
            o => o,
        };
        fig.panels.push(Panel {
            title: what.into(),
            x_label: "existing endpoints".into(),
            y_label: "time (ms)".into(),
            note: "line: median; whisker: min to p99".into(),
            body: Body::Lines(lines),
        });
    }
    fig
}
