//! The `cni` figure: a container's namespace attached (and detached) by
//! `weft-cni` and by the reference chain, per count of existing
//! attachments, without and with a published port, and their ratio.
use serde_json::Value;

use super::figure::{distinct, fms, frange, nums, ratio, Figure, Table};
use super::svg::{Body, Line, Panel, Point};
use crate::bench::common::stats;

/// The ADD target: the reference chain's median at least this many times
/// weft-cni's.
const ADD_TARGET: f64 = 5.0;

/// The `p` quantile of `v` (nearest rank, as [`stats`]); NaN if empty.
fn quantile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn ports_label(p: u64) -> &'static str {
    if p == 0 {
        "no port"
    } else {
        "1 port"
    }
}

/// `cni.json`: `series` of {plugin, op, ports, existing, samples_ms}.
pub(super) fn cni(name: &str, v: &Value) -> Figure {
    let mut fig = Figure::new(name, "cni: attach a container's namespace through CNI", v);
    let series: Vec<&Value> = v["series"].as_array().into_iter().flatten().collect();
    let plugins = distinct(series.iter().filter_map(|s| s["plugin"].as_str()));
    let ops = distinct(series.iter().filter_map(|s| s["op"].as_str()));
    let mut ports = distinct(series.iter().filter_map(|s| s["ports"].as_u64()));
    ports.sort_unstable();
    let mut counts = distinct(series.iter().filter_map(|s| s["existing"].as_u64()));
    counts.sort_unstable();
    let weft = plugins.first().copied().unwrap_or("weft-cni");
    let reference = plugins.get(1).copied().unwrap_or("reference");
    let get = |plugin: &str, op: &str, p: u64, n: u64| -> Vec<f64> {
        series
            .iter()
            .find(|s| {
                s["plugin"] == plugin
                    && s["op"] == op
                    && s["ports"].as_u64() == Some(p)
                    && s["existing"].as_u64() == Some(n)
            })
            .map(|s| nums(&s["samples_ms"]))
            .unwrap_or_default()
    };
    let samples = series
        .first()
        .map(|s| nums(&s["samples_ms"]).len())
        .unwrap_or(0);
    fig.notes.push(format!(
        "{samples} samples per side, operation, variant and count of existing attachments; \
         sides and variants interleaved in one run. {weft}: `weft-cni` and its agent; \
         {reference}: `bridge` + `host-local` (+ `portmap` with a port), each exec'd as a runtime does. \
         Ratio: {reference}'s median over {weft}'s (how many times longer)."
    ));
    let start = &v["process_start_ms"];
    let (plugin, bare) = (nums(&start["weft-cni"]), nums(&start["true"]));
    if !plugin.is_empty() && !bare.is_empty() {
        let (p50, _, pmin, pmax) = stats(&plugin);
        let (t50, _, tmin, tmax) = stats(&bare);
        fig.notes.push(format!(
            "Process start ({} samples each, interleaved): `weft-cni` VERSION {} ({}), \
             `/bin/true` {} ({}), exec'd alike with the config on stdin; medians (min–max).",
            plugin.len(),
            fms(p50),
            frange(pmin, pmax),
            fms(t50),
            frange(tmin, tmax),
        ));
    }
    fig.table = Table::new(
        &[
            "op",
            "published",
            "existing",
            &format!("{weft} median"),
            "p99",
            "min–max",
            &format!("{reference} median"),
            "p99",
            "min–max",
            &format!("{reference} / {weft}"),
        ],
        &[false, false, true, true, true, true, true, true, true, true],
    );
    // Ratio of the medians, by (op, ports), per count.
    let mut ratios: Vec<(&str, u64, Vec<Point>)> = Vec::new();
    for &op in &ops {
        for &p in &ports {
            let mut points = Vec::new();
            for &n in &counts {
                let w = get(weft, op, p, n);
                let r = get(reference, op, p, n);
                if w.is_empty() && r.is_empty() {
                    continue;
                }
                let (w50, w99, wmin, wmax) = stats(&w);
                let (r50, r99, rmin, rmax) = stats(&r);
                fig.table.rows.push(vec![
                    op.to_string(),
                    ports_label(p).to_string(),
                    n.to_string(),
                    fms(w50),
                    fms(w99),
                    frange(wmin, wmax),
                    fms(r50),
                    fms(r99),
                    frange(rmin, rmax),
                    ratio(r50, w50),
                ]);
                let q = r50 / w50;
                if q.is_finite() {
                    points.push(Point::new(n as f64, q));
                }
            }
            ratios.push((op, p, points));
        }
    }
    // Medians of `plugin`'s `op` with `p` ports; whiskers `spread`.
    type Spread = fn(&[f64]) -> (f64, f64);
    let min_p99: Spread = |s| {
        let (_, p99, min, _) = stats(s);
        (min, p99)
    };
    let p10_p90: Spread = |s| (quantile(s, 0.1), quantile(s, 0.9));
    let line = |plugin: &str, color: usize, op: &str, p: u64, spread: Spread| Line {
        name: format!("{plugin}, {}", ports_label(p)),
        color,
        dashed: p > 0,
        points: counts
            .iter()
            .filter_map(|&n| {
                let s = get(plugin, op, p, n);
                (!s.is_empty()).then(|| {
                    let (lo, hi) = spread(&s);
                    Point::new(n as f64, stats(&s).0).whisker(lo, hi)
                })
            })
            .collect(),
    };
    let note = "line: median; whisker: min to p99; dashed: one port published";
    for &op in &ops {
        let lines = plugins
            .iter()
            .enumerate()
            .flat_map(|(k, &plugin)| ports.iter().map(move |&p| (k, plugin, p)))
            .map(|(k, plugin, p)| line(plugin, k, op, p, min_p99))
            .collect();
        let title = match op {
            "add" => "ADD: attach".to_string(),
            "del" => "DEL: detach".to_string(),
            o => o.to_uppercase(),
        };
        fig.panels.push(Panel {
            title,
            x_label: "existing attachments".into(),
            y_label: "time (ms)".into(),
            note: note.into(),
            body: Body::Lines(lines),
        });
        // weft's ADD on a scale of its own (is it flat?), without the
        // outliers that would set that scale.
        if op == "add" {
            let lines = ports
                .iter()
                .map(|&p| line(weft, 0, op, p, p10_p90))
                .collect();
            fig.panels.push(Panel {
                title: format!("ADD: {weft} alone"),
                x_label: "existing attachments".into(),
                y_label: "time (ms)".into(),
                note: "line: median; whisker: p10 to p90; dashed: one port published".into(),
                body: Body::Lines(lines),
            });
        }
    }
    let mut lines: Vec<Line> = ratios
        .into_iter()
        .filter(|(_, _, pts)| !pts.is_empty())
        .map(|(op, p, points)| Line {
            name: format!("{}, {}", op.to_uppercase(), ports_label(p)),
            color: if op == "add" { 2 } else { 3 },
            dashed: p > 0,
            points,
        })
        .collect();
    if let (Some(&lo), Some(&hi)) = (counts.first(), counts.last()) {
        lines.push(Line {
            name: format!("ADD target ({ADD_TARGET}×)"),
            color: 7,
            dashed: true,
            points: vec![
                Point::new(lo as f64, ADD_TARGET),
                Point::new(hi as f64, ADD_TARGET),
            ],
        });
    }
    fig.panels.push(Panel {
        title: format!("{reference} ÷ {weft}"),
        x_label: "existing attachments".into(),
        y_label: "ratio of medians (×)".into(),
        note: "same run, interleaved; dashed: one port published".into(),
        body: Body::Lines(lines),
    });
    fig
}
