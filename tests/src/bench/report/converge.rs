//! The `converge` figure: how long every agent takes to program a host
//! that joins or is removed.
use serde_json::Value;

use super::figure::{fms, frange, nums, Figure, Table};
use super::svg::{Body, Line, Panel, Point};
use crate::bench::common::stats;

/// `converge.json`: `hosts` and `rounds` of {join_ms, remove_ms,
/// join_each_ms, …}.
pub(super) fn converge(name: &str, v: &Value) -> Figure {
    let mut fig = Figure::new(
        name,
        "converge: a host joins or is removed, until every agent has programmed it",
        v,
    );
    let rounds: Vec<&Value> = v["rounds"].as_array().into_iter().flatten().collect();
    let hosts = v["hosts"].as_u64().unwrap_or(0);
    fig.notes.push(format!(
        "{} rounds; {} agents running, one more host joins (fresh) and is removed each round.",
        rounds.len(),
        hosts.saturating_sub(1)
    ));
    let known: [(&str, &str); 12] = [
        ("ready_ms", "join: spawn → joining agent ready"),
        ("registered_ms", "join: spawn → controller registered it"),
        (
            "broadcast_ms",
            "join: spawn → controller broadcast the peer",
        ),
        ("join_first_ms", "join: spawn → first peer programmed"),
        ("join_ms", "**join: spawn → last peer programmed**"),
        ("join_each_ms", "join: spawn → each peer programmed"),
        (
            "join_program_ms",
            "join: per agent, `peer_change` → `overlay_programmed`",
        ),
        ("host_rm_cmd_ms", "removal: `weftctl host rm` (the command)"),
        (
            "remove_broadcast_ms",
            "removal: host rm → controller broadcast it",
        ),
        (
            "remove_first_ms",
            "removal: host rm → first peer programmed",
        ),
        ("remove_ms", "**removal: host rm → last peer programmed**"),
        ("remove_each_ms", "removal: host rm → each peer programmed"),
    ];
    let mut fields: Vec<(String, String)> = known
        .iter()
        .map(|(k, l)| (k.to_string(), l.to_string()))
        .collect();
    let mut extra: Vec<String> = rounds
        .iter()
        .filter_map(|r| r.as_object())
        .flat_map(|o| {
            o.iter()
                .filter(|(_, x)| x.is_number() || x.is_array())
                .map(|(k, _)| k.clone())
        })
        .filter(|k| !known.iter().any(|(n, _)| n == k))
        .collect();
    extra.sort();
    extra.dedup();
    fields.extend(extra.into_iter().map(|k| (k.clone(), k)));
    fig.table = Table::new(
        &["phase", "median", "p99", "min–max", "samples"],
        &[false, true, true, true, true],
    );
    for (k, label) in &fields {
        let mut all = Vec::new();
        for r in &rounds {
            match &r[k.as_str()] {
                Value::Array(_) => all.extend(nums(&r[k.as_str()])),
                x => all.extend(x.as_f64()),
            }
        }
        if all.is_empty() {
            continue;
        }
        let (p50, p99, min, max) = stats(&all);
        fig.table.rows.push(vec![
            label.clone(),
            fms(p50),
            fms(p99),
            frange(min, max),
            all.len().to_string(),
        ]);
    }
    for (what, last, first, each) in [
        ("join", "join_ms", "join_first_ms", "join_each_ms"),
        ("removal", "remove_ms", "remove_first_ms", "remove_each_ms"),
    ] {
        let pts = |key: &str, dots: bool| -> Vec<Point> {
            rounds
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let mut p = Point::new((i + 1) as f64, r[key].as_f64()?);
                    if dots {
                        p.dots = nums(&r[each]);
                    }
                    Some(p)
                })
                .collect()
        };
        let lines = vec![
            Line {
                name: "last agent done".into(),
                color: 0,
                dashed: false,
                points: pts(last, true),
            },
            Line {
                name: "first agent done".into(),
                color: 1,
                dashed: true,
                points: pts(first, false),
            },
        ];
        let from = if what == "join" {
            "from the joining agent's spawn"
        } else {
            "from `weftctl host rm`"
        };
        fig.panels.push(Panel {
            title: format!("{what}, per round"),
            x_label: "round".into(),
            y_label: format!("time (ms) {from}"),
            note: "dots: each agent".into(),
            body: Body::Lines(lines),
        });
    }
    fig
}
