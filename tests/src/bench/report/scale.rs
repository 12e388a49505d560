//! The `scale` figure (and the older `register` shape): registration
//! storms and the fan-out of host changes, per agents and controllers.
use serde_json::Value;

use super::figure::{distinct, fms, frange, nums, Figure, Table};
use super::svg::{Body, Line, Panel, Point};
use crate::bench::common::stats;

/// `register.json` / `scale.json`: `runs` of {agents, …}; every numeric
/// field is shown (lists of samples as median / p99 / min–max).
pub(super) fn registration(name: &str, v: &Value) -> Figure {
    let mut fig = Figure::new(
        name,
        &format!("{name}: agents registering at once through one controller"),
        v,
    );
    let mut runs: Vec<&Value> = v["runs"].as_array().into_iter().flatten().collect();
    runs.sort_by_key(|r| r["agents"].as_u64().unwrap_or(0));
    let known = [
        ("total_ms", "all registered"),
        ("latencies_ms", "latency"),
        ("snapshots_ms", "all snapshots"),
        ("controller_peak_rss_kb", "controller peak RSS"),
        ("controller_rss_kb", "controller RSS"),
        ("retries", "retries"),
        ("failures", "failures"),
    ];
    // Numeric fields (scalars and lists) across runs, known ones first.
    let mut fields: Vec<String> = known.iter().map(|(k, _)| k.to_string()).collect();
    for r in &runs {
        if let Some(o) = r.as_object() {
            for (k, x) in o {
                let numeric = x.is_number()
                    || x.as_array()
                        .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_number));
                if k != "agents" && numeric && !fields.contains(k) {
                    fields.push(k.clone());
                }
            }
        }
    }
    fields.retain(|f| runs.iter().any(|r| r.get(f.as_str()).is_some()));
    let label = |f: &str| -> String {
        known
            .iter()
            .find(|(k, _)| *k == f)
            .map(|(_, l)| l.to_string())
            .unwrap_or_else(|| f.replace('_', " "))
    };
    let is_list = |f: &str| runs.iter().any(|r| r[f].is_array());
    let mut head = vec!["agents".to_string()];
    for f in &fields {
        if is_list(f) {
            for s in ["median", "p99", "min–max"] {
                head.push(format!("{} {s}", label(f)));
            }
        } else {
            head.push(label(f));
        }
    }
    let head_ref: Vec<&str> = head.iter().map(String::as_str).collect();
    fig.table = Table::new(&head_ref, &vec![true; head.len()]);
    let scalar = |f: &str, x: &Value| -> String {
        let Some(n) = x.as_f64() else {
            return "–".into();
        };
        if f.ends_with("_ms") {
            if n >= 1000.0 {
                format!("{:.2} s", n / 1e3)
            } else {
                fms(n)
            }
        } else if f.ends_with("_kb") {
            format!("{:.1} MB", n / 1024.0)
        } else {
            format!("{n}")
        }
    };
    for r in &runs {
        let mut row = vec![r["agents"].to_string()];
        for f in &fields {
            if is_list(f) {
                let (p50, p99, min, max) = stats(&nums(&r[f.as_str()]));
                row.extend([fms(p50), fms(p99), frange(min, max)]);
            } else {
                row.push(scalar(f, &r[f.as_str()]));
            }
        }
        fig.table.rows.push(row);
    }
    let agents = |r: &Value| r["agents"].as_f64().unwrap_or(0.0);
    let mut lines = Vec::new();
    let mut mem = Vec::new();
    for f in &fields {
        if f.ends_with("_ms") {
            let points = runs
                .iter()
                .filter_map(|r| {
                    let x = &r[f.as_str()];
                    if x.is_array() {
                        let (p50, p99, min, _) = stats(&nums(x));
                        p50.is_finite()
                            .then(|| Point::new(agents(r), p50).whisker(min, p99))
                    } else {
                        x.as_f64().map(|y| Point::new(agents(r), y))
                    }
                })
                .collect();
            let name = if is_list(f) {
                format!("{} (median, per agent)", label(f))
            } else {
                label(f)
            };
            lines.push(Line {
                color: lines.len(),
                name,
                dashed: false,
                points,
            });
        } else if f.ends_with("_kb") {
            let points = runs
                .iter()
                .filter_map(|r| {
                    r[f.as_str()]
                        .as_f64()
                        .map(|kb| Point::new(agents(r), kb / 1024.0))
                })
                .collect();
            mem.push(Line {
                color: mem.len(),
                name: label(f),
                dashed: mem.len() % 2 == 1,
                points,
            });
        }
    }
    fig.panels.push(Panel {
        title: "time vs agents".into(),
        x_label: "agents registering at once".into(),
        y_label: "time (ms)".into(),
        note: "per-agent latency: median, whisker min to p99".into(),
        body: Body::Lines(lines),
    });
    if !mem.is_empty() {
        fig.panels.push(Panel {
            title: "controller memory".into(),
            x_label: "agents registering at once".into(),
            y_label: "MB".into(),
            note: String::new(),
            body: Body::Lines(mem),
        });
    }
    fig
}

/// `scale.json`: `runs` of {agents, controllers, registered_ms,
/// snapshots_ms, register_latencies_ms, changes: [{kind, latencies_ms,
/// missing}], phases: [{controllers: [{hwm_kb}]}], …}.
pub(super) fn scale(name: &str, v: &Value) -> Figure {
    let mut fig = Figure::new(
        name,
        &format!("{name}: agents registering at once, then the fan-out of host changes"),
        v,
    );
    let mut runs: Vec<&Value> = v["runs"].as_array().into_iter().flatten().collect();
    let num = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    runs.sort_by(|a, b| {
        (num(a, "controllers"), num(a, "agents"))
            .partial_cmp(&(num(b, "controllers"), num(b, "agents")))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    // Every client's latency for the changes of one kind (all kinds: None).
    let fan = |r: &Value, kind: Option<&str>| -> Vec<f64> {
        r["changes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| kind.is_none_or(|k| c["kind"] == k))
            .flat_map(|c| nums(&c["latencies_ms"]))
            .collect()
    };
    let kinds = distinct(runs.iter().flat_map(|r| {
        r["changes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["kind"].as_str())
    }));
    let peak_mb = |r: &Value| -> f64 {
        r["phases"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|p| p["controllers"].as_array().into_iter().flatten())
            .filter_map(|c| c["hwm_kb"].as_f64())
            .fold(f64::NAN, f64::max)
            / 1024.0
    };
    fig.notes.push(
        "Fan-out: per host change (a host joining or being removed), each client's time \
         from the change to receiving it; all changes of a run together."
            .into(),
    );
    fig.table = Table::new(
        &[
            "agents",
            "controllers",
            "all registered",
            "all snapshots",
            "register median",
            "register p99",
            "register min–max",
            "fan-out median",
            "fan-out p99",
            "fan-out min–max",
            "never received",
            "controller peak RSS",
            "retries",
            "failures",
        ],
        &[true; 14],
    );
    let secs = |ms: f64| {
        if ms.is_finite() {
            format!("{:.2} s", ms / 1e3)
        } else {
            "–".into()
        }
    };
    for r in &runs {
        let (rp50, rp99, rmin, rmax) = stats(&nums(&r["register_latencies_ms"]));
        let (fp50, fp99, fmin, fmax) = stats(&fan(r, None));
        let missing: f64 = r["changes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["missing"].as_f64())
            .sum();
        let peak = peak_mb(r);
        fig.table.rows.push(vec![
            r["agents"].to_string(),
            r["controllers"].to_string(),
            secs(num(r, "registered_ms")),
            secs(num(r, "snapshots_ms")),
            fms(rp50),
            fms(rp99),
            frange(rmin, rmax),
            fms(fp50),
            fms(fp99),
            frange(fmin, fmax),
            format!("{missing}"),
            if peak.is_finite() {
                format!("{peak:.1} MB")
            } else {
                "–".into()
            },
            r["retries"].to_string(),
            r["failures"].to_string(),
        ]);
    }
    let mut cs = distinct(runs.iter().filter_map(|r| r["controllers"].as_u64()));
    cs.sort_unstable();
    let of = |c: u64| -> Vec<&&Value> {
        runs.iter()
            .filter(|r| r["controllers"].as_u64() == Some(c))
            .collect()
    };
    let ctl = |c: u64| {
        if c == 1 {
            "1 controller".to_string()
        } else {
            format!("{c} controllers")
        }
    };
    let mut reg = Vec::new();
    let mut fanout = Vec::new();
    let mut mem = Vec::new();
    for (i, &c) in cs.iter().enumerate() {
        let rs = of(c);
        let x = |r: &Value| num(r, "agents");
        reg.push(Line {
            name: format!("all registered, {}", ctl(c)),
            color: i,
            dashed: false,
            points: rs
                .iter()
                .map(|r| Point::new(x(r), num(r, "registered_ms")))
                .collect(),
        });
        reg.push(Line {
            name: format!("per agent (median), {}", ctl(c)),
            color: i,
            dashed: true,
            points: rs
                .iter()
                .map(|r| {
                    let (p50, p99, min, _) = stats(&nums(&r["register_latencies_ms"]));
                    Point::new(x(r), p50).whisker(min, p99)
                })
                .collect(),
        });
        for (k, kind) in kinds.iter().enumerate() {
            fanout.push(Line {
                name: format!("{kind}, {}", ctl(c)),
                color: i,
                dashed: k % 2 == 1,
                points: rs
                    .iter()
                    .map(|r| {
                        let (p50, p99, min, _) = stats(&fan(r, Some(kind)));
                        Point::new(x(r), p50).whisker(min, p99)
                    })
                    .collect(),
            });
        }
        mem.push(Line {
            name: ctl(c),
            color: i,
            dashed: false,
            points: rs.iter().map(|r| Point::new(x(r), peak_mb(r))).collect(),
        });
    }
    fig.panels.push(Panel {
        title: "registration".into(),
        x_label: "agents registering at once".into(),
        y_label: "time (ms)".into(),
        note: "per agent: median, whisker min to p99".into(),
        body: Body::Lines(reg),
    });
    fig.panels.push(Panel {
        title: "fan-out of a host change".into(),
        x_label: "agents".into(),
        y_label: "time to reach a client (ms)".into(),
        note: "median over clients and changes; whisker min to p99".into(),
        body: Body::Lines(fanout),
    });
    fig.panels.push(Panel {
        title: "controller peak RSS".into(),
        x_label: "agents".into(),
        y_label: "MB (largest controller)".into(),
        note: String::new(),
        body: Body::Lines(mem),
    });
    fig
}
