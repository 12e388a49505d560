//! The churn benchmark's Markdown report: throughput per phase, memory
//! and fds with their slope, kernel objects start → end.

use super::objects::{Objects, Phase, Proc, Sample};
use crate::bench::common;

/// Least-squares slope of `y` over `x`, per 1000 units of `x`.
fn slope(pts: &[(f64, f64)]) -> f64 {
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return f64::NAN;
    }
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return f64::NAN;
    }
    sxy / sxx * 1000.0
}

pub(super) fn print_report(phases: &[Phase], samples: &[Sample], in_flight: usize) {
    common::header();
    let start = &samples[0];
    let end = &samples[samples.len() - 1];
    println!(
        "A step is one ns add + del, or one batch of {in_flight} peers added, then removed.\n"
    );
    println!("| phase | cycles | duration | cycles/s | step median / p99 |");
    println!("|---|---:|---:|---:|---:|");
    for p in phases {
        let (p50, p99, _, _) = common::stats(&p.step_ms);
        println!(
            "| {} | {} | {:.1} s | {:.1} | {p50:.1} / {p99:.1} ms |",
            if p.name == "ns" {
                "ns add + ns del (h1)".to_string()
            } else {
                format!("peer add + remove (h1, h2), {in_flight} at a time")
            },
            p.cycles,
            p.duration_s,
            p.cycles_per_s,
        );
    }
    println!();
    println!("Memory (VmRSS) and fds; slope = least-squares fit over the phase's samples after its first 10% of cycles, per 1000 cycles.\n");
    println!("| process | phase | RSS start | RSS end | RSS max | slope | fds start → end | threads start → end |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    type Get = fn(&Sample) -> &Proc;
    let procs: [(&str, Get); 3] = [
        ("agent h1", |s| &s.agent_h1),
        ("agent h2", |s| &s.agent_h2),
        ("controller", |s| &s.controller),
    ];
    for p in phases {
        let ss: Vec<&Sample> = samples.iter().filter(|s| s.phase == p.name).collect();
        let Some(last) = ss.last() else { continue };
        // The sample before the phase: the last of the previous phase, or the start.
        let first_idx = samples.iter().position(|s| s.phase == p.name).unwrap_or(1);
        let before = &samples[first_idx - 1];
        for (name, get) in procs {
            let all: Vec<&Proc> = std::iter::once(get(before))
                .chain(ss.iter().map(|s| get(s)))
                .collect();
            let max = all.iter().map(|x| x.rss_kb).max().unwrap_or(0);
            let pts: Vec<(f64, f64)> = ss
                .iter()
                .filter(|s| s.cycle * 10 > p.cycles)
                .map(|s| (s.cycle as f64, get(s).rss_kb as f64))
                .collect();
            println!(
                "| {name} | {} | {:.1} MB | {:.1} MB | {:.1} MB | {:+.1} kB | {} → {} | {} → {} |",
                p.name,
                get(before).rss_kb as f64 / 1024.0,
                get(last).rss_kb as f64 / 1024.0,
                max as f64 / 1024.0,
                slope(&pts),
                get(before).fds,
                get(last).fds,
                get(before).threads,
                get(last).threads,
            );
        }
    }
    println!();
    println!("Kernel objects and state, start → end (strict counts must come back; the others are shown for information).\n");
    println!("| object | h1 start | h1 max | h1 end | h2 start | h2 max | h2 end |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    type Count = fn(&Objects) -> u64;
    let rows: [(&str, Count); 14] = [
        ("links", |o| o.links as u64),
        ("netns dir entries", |o| o.netns_entries as u64),
        ("netns mounts", |o| o.netns_mounts as u64),
        ("proto-119 routes", |o| o.weft_routes as u64),
        ("neighbours on weft.1", |o| o.neigh_weft as u64),
        ("fdb entries on weft.1", |o| o.fdb_weft as u64),
        ("nft rules", |o| o.nft_rules as u64),
        ("nft set/map elements", |o| o.nft_elems as u64),
        ("vxlan_peers elements", |o| o.vxlan_peers as u64),
        ("state files", |o| o.state_files as u64),
        ("(info) IPv4 routes, all tables", |o| o.routes_all as u64),
        ("(info) neighbours, all", |o| o.neigh_all as u64),
        ("(info) fdb entries, all", |o| o.fdb_all as u64),
        ("(info) state bytes", |o| o.state_bytes),
    ];
    for (what, f) in rows {
        let max1 = samples.iter().map(|s| f(&s.h1)).max().unwrap_or(0);
        let max2 = samples.iter().map(|s| f(&s.h2)).max().unwrap_or(0);
        println!(
            "| {what} | {} | {max1} | {} | {} | {max2} | {} |",
            f(&start.h1),
            f(&end.h1),
            f(&start.h2),
            f(&end.h2)
        );
    }
    let settle: Vec<f64> = samples.iter().filter_map(|s| s.settle_ms).collect();
    let never = samples.iter().filter(|s| s.settle_ms.is_none()).count();
    println!(
        "\n{} samples; the kernel came back to the start counts within {:.0} ms at most{}.",
        samples.len(),
        settle.iter().cloned().fold(0.0, f64::max),
        if never > 0 {
            format!(", and **did not** at {never} samples (leftovers)")
        } else {
            String::new()
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_reported() {
        let base = Objects {
            links: 8,
            weft_routes: 1,
            ..Default::default()
        };
        let same = Objects {
            neigh_all: 5,
            state_bytes: 9,
            ..base.clone()
        };
        assert!(same.diff(&base).is_empty(), "informational counts vary");
        let more = Objects {
            links: 9,
            netns_mounts: 1,
            ..base.clone()
        };
        assert_eq!(
            more.diff(&base),
            vec!["links 9 (was 8)", "netns mounts 1 (was 0)"]
        );
    }

    #[test]
    fn slope_per_thousand() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64 * 500.0, 100.0 + i as f64 * 10.0))
            .collect();
        assert!((slope(&pts) - 20.0).abs() < 1e-9);
        assert!(slope(&pts[..1]).is_nan());
    }
}
