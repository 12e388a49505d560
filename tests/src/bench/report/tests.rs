//! Tests of the report: a well-formed SVG for every known shape, unknown
//! shapes skipped, the Markdown spliced between its markers, round axes.

use super::svg::{axis, tick_label};
use super::*;
use serde_json::json;

/// Tags open and close in order; attributes are quoted; `&` only as
/// an entity. Returns the element names seen.
fn check_xml(s: &str) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('<') {
        let text = &rest[..i];
        for (j, _) in text.match_indices('&') {
            let t = &text[j..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;"]
                    .iter()
                    .any(|e| t.starts_with(e)),
                "bare & in {text:?}"
            );
        }
        assert!(!text.contains('>'), "stray > in {text:?}");
        let end = rest[i..].find('>').expect("unterminated tag") + i;
        let tag = &rest[i + 1..end];
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name.trim()), "bad close {tag}");
        } else {
            let name: String = tag.chars().take_while(|c| c.is_alphanumeric()).collect();
            assert!(!name.is_empty(), "empty tag name: {tag}");
            seen.push(name.clone());
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        rest = &rest[end + 1..];
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
    seen
}

fn attach_json() -> Value {
    let mut series = Vec::new();
    for (tool, f) in [("weft", 1.0), ("cni-bridge", 6.0), ("netavark", 9.0)] {
        for op in ["add", "del"] {
            for n in [1, 100, 300] {
                let v: Vec<f64> = (0..5)
                    .map(|i| f * (4.0 + i as f64 + n as f64 / 100.0))
                    .collect();
                series.push(json!({"tool": tool, "op": op, "existing": n, "samples_ms": v}));
            }
        }
    }
    json!({"machine": "2 cores (Test CPU), Linux 6.1", "command": "weft-bench attach --quick", "series": series})
}

#[test]
fn attach_svg_is_well_formed_with_one_polyline_per_series() {
    let fig = figure("attach", &attach_json()).expect("attach shape recognised");
    let svg = fig.svg();
    assert!(svg.starts_with("<svg "), "{svg}");
    let tags = check_xml(&svg);
    assert_eq!(tags.first().map(String::as_str), Some("svg"));
    // 3 tools × 2 panels (add, del).
    assert_eq!(tags.iter().filter(|t| *t == "polyline").count(), 6);
    for name in [
        "weft",
        "CNI bridge",
        "netavark",
        "existing endpoints",
        "time (ms)",
    ] {
        assert!(svg.contains(&format!(">{name}<")), "no label {name}");
    }
    // Every polyline has one point per count.
    for l in svg.lines().filter(|l| l.starts_with("<polyline")) {
        let pts = l.split('"').nth(1).unwrap();
        assert_eq!(pts.split(' ').count(), 3, "{l}");
    }
    let md = fig.markdown(Path::new("bench-out"));
    assert!(md.contains("Command: `weft-bench attach --quick`"), "{md}");
    assert!(md.contains("2 cores (Test CPU)"));
    assert!(md.contains("![attach: create-and-attach a namespace](bench-out/attach.svg)"));
    // The peers' ratio at 1 existing: 6× and 9×.
    assert!(md.contains("| add | 1 | CNI bridge | 36.1 ms |"), "{md}");
    assert!(md.contains("| 6.0× |") && md.contains("| 9.0× |"), "{md}");
    // One header row, one separator, 2 ops × 3 counts × 3 tools.
    assert_eq!(md.lines().filter(|l| l.starts_with('|')).count(), 2 + 18);
}

fn cni_json() -> Value {
    let mut series = Vec::new();
    for (plugin, f) in [("weft-cni", 1.0), ("reference", 10.0)] {
        for op in ["add", "del"] {
            for ports in [0, 1] {
                for n in [1, 300, 1000] {
                    let v: Vec<f64> = (0..5)
                        .map(|i| f * (3.0 + i as f64 + ports as f64))
                        .collect();
                    series.push(json!({"plugin": plugin, "op": op, "ports": ports,
                                       "existing": n, "samples_ms": v}));
                }
            }
        }
    }
    json!({"machine": "2 cores (Test CPU), Linux 6.1", "command": "weft-bench cni --quick",
           "settle_ms": 100.0, "series": series})
}

#[test]
fn cni_figure_sets_the_sides_side_by_side_with_their_ratio() {
    let fig = figure("cni", &cni_json()).expect("cni shape recognised");
    let svg = fig.svg();
    let tags = check_xml(&svg);
    // ADD and DEL panels: 2 sides × 2 variants each; weft's ADD alone: 2
    // variants; the ratio panel: 2 ops × 2 variants and the target.
    assert_eq!(
        tags.iter().filter(|t| *t == "polyline").count(),
        2 * 4 + 2 + 5
    );
    for name in [
        "weft-cni, no port",
        "reference, 1 port",
        "ADD, 1 port",
        "ADD target (5×)",
        "existing attachments",
        "ADD: weft-cni alone",
    ] {
        assert!(svg.contains(&format!(">{name}<")), "no label {name}");
    }
    let md = fig.markdown(Path::new("bench-out"));
    assert!(md.contains("![cni: attach a container's namespace through CNI](bench-out/cni.svg)"));
    // Medians 5 and 50 ms without a port, 6 and 60 with: 10× either way.
    assert!(
        md.contains("| add | no port | 1 | 5.00 ms | 7.00 ms | 3.00–7.00 ms | 50.0 ms | 70.0 ms | 30.0–70.0 ms | 10.0× |"),
        "{md}"
    );
    assert!(md.contains("| del | 1 port | 1000 | 6.00 ms |"), "{md}");
    // One header row, one separator, 2 ops × 2 variants × 3 counts.
    assert_eq!(md.lines().filter(|l| l.starts_with('|')).count(), 2 + 12);
    // Without process-start samples there is no such note; with them, it
    // gives both medians.
    assert!(!md.contains("Process start"), "{md}");
    let mut v = cni_json();
    v["process_start_ms"] = json!({"weft-cni": [1.0, 2.0, 3.0], "true": [0.5, 1.0, 1.5]});
    let md = figure("cni", &v).unwrap().markdown(Path::new("bench-out"));
    assert!(
        md.contains(
            "`weft-cni` VERSION 2.00 ms (1.00–3.00 ms), `/bin/true` 1.00 ms (0.50–1.50 ms)"
        ),
        "{md}"
    );
}

#[test]
fn every_known_shape_makes_a_well_formed_svg() {
    let m = |extra: Value| {
        let mut v = json!({"machine": "m", "command": "c"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let cases = [
        (
            "register",
            m(json!({"runs": [
                    {"agents": 100, "total_ms": 150.0, "latencies_ms": [70.0, 120.0, 140.0],
                     "snapshots_ms": 155.0, "controller_peak_rss_kb": 16792, "controller_rss_kb": 16000,
                     "failures": 0, "retries": 0},
                    {"agents": 1000, "total_ms": 2260.0, "latencies_ms": [300.0, 1300.0, 2100.0],
                     "snapshots_ms": 2900.0, "controller_peak_rss_kb": 135000, "controller_rss_kb": 120000,
                     "failures": 0, "retries": 3, "fanout_ms": [5.0, 9.0]}]})),
            6,
        ),
        (
            "converge",
            m(json!({"hosts": 4, "rounds": [
                    {"join_ms": 50.0, "join_first_ms": 40.0, "join_each_ms": [40.0, 45.0, 50.0],
                     "remove_ms": 60.0, "remove_first_ms": 30.0, "remove_each_ms": [30.0, 50.0, 60.0],
                     "registered_ms": 11.0, "subnet": "10.0.0.0/24"},
                    {"join_ms": 55.0, "join_first_ms": 42.0, "join_each_ms": [42.0, 48.0, 55.0],
                     "remove_ms": 66.0, "remove_first_ms": 33.0, "remove_each_ms": [33.0, 51.0, 66.0],
                     "registered_ms": null, "subnet": "10.0.1.0/24"}]})),
            4,
        ),
        (
            "peers",
            m(json!({"samples": [
                    {"peers": 100, "round": 0, "total_ms": 50.0, "snapshot_ms": 40.0, "rss_kb": 9000, "hwm_kb": 9500},
                    {"peers": 1000, "round": 0, "total_ms": 150.0, "snapshot_ms": 90.0, "rss_kb": 12000, "hwm_kb": 13000},
                    {"peers": 100, "round": 1, "total_ms": 55.0, "snapshot_ms": null, "rss_kb": 9100, "hwm_kb": 9600}]})),
            4,
        ),
        (
            "dataplane",
            m(json!({"rounds": 2, "seconds": 1, "series": [
                    {"mode": "underlay", "what": "u", "gbits": [10.0, 12.0], "rtt_ms": [0.05, 0.06], "ping_lost": 0},
                    {"mode": "vxlan", "what": "v", "gbits": [8.0, 9.0], "rtt_ms": [0.07, 0.09], "ping_lost": 1}]})),
            0,
        ),
    ];
    for (name, v, polylines) in cases {
        let fig = figure(name, &v).unwrap_or_else(|| panic!("{name} not recognised"));
        let svg = fig.svg();
        let tags = check_xml(&svg);
        assert_eq!(
            tags.iter().filter(|t| *t == "polyline").count(),
            polylines,
            "{name}: {svg}"
        );
        let md = fig.markdown(Path::new("out"));
        assert!(md.contains(&format!("(out/{name}.svg)")), "{md}");
        assert!(
            md.lines().filter(|l| l.starts_with('|')).count() >= 3,
            "{md}"
        );
    }
    // A field the report does not know is still shown (scale.json may add some).
    let reg = figure("scale", &cases_register()).unwrap();
    assert!(reg.markdown(Path::new(".")).contains("fanout ms median"));
    // Bars: one rect per path (besides the background and the frame).
    let dp = figure("dataplane", &cases_dataplane()).unwrap().svg();
    assert_eq!(
        check_xml(&dp).iter().filter(|t| *t == "rect").count(),
        1 + 2 + 2 * 2
    );
}

#[test]
fn scale_and_churn_shapes() {
    let change = |kind: &str, l: &[f64]| json!({"kind": kind, "host": "x0", "latencies_ms": l, "missing": 0});
    let run = |k: u64, c: u64| {
        json!({"agents": k, "controllers": c, "per_controller": [k], "cert_issue_ms": 5.0,
                   "registered_ms": 100.0 * k as f64, "snapshots_ms": 120.0 * k as f64,
                   "register_latencies_ms": [10.0, 20.0, 30.0], "failures": 0, "retries": 0,
                   "changes": [change("join", &[5.0, 6.0]), change("remove", &[7.0, 8.0])],
                   "dropped": 0, "hosts_in_etcd": k,
                   "phases": [{"name": "register", "wall_ms": 1.0, "cpu_ms": [1.0], "etcd": {},
                               "bench_rss_kb": 1, "controllers": [{"controller": "c1", "rss_kb": 2048, "hwm_kb": 4096, "cpu_ms": 1.0}]}]})
    };
    let v = json!({"machine": "m", "command": "c", "runs": [run(10, 1), run(100, 1), run(10, 2), run(100, 2)]});
    let fig = figure("scale", &v).expect("scale recognised");
    let tags = check_xml(&fig.svg());
    // Per controller count: 2 registration lines, 2 fan-out kinds, 1 memory.
    assert_eq!(
        tags.iter().filter(|t| *t == "polyline").count(),
        2 * (2 + 2 + 1)
    );
    let md = fig.markdown(Path::new("bench-out"));
    assert!(
        md.contains("| 100 | 2 | 10.00 s | 12.00 s | 20.0 ms |"),
        "{md}"
    );
    assert!(md.contains("| 4.0 MB |"), "{md}");

    let proc_ = |rss: u64| json!({"rss_kb": rss, "fds": 20, "threads": 4});
    let sample = |phase: &str, cycle: u64, rss: u64| {
        json!({"phase": phase, "cycle": cycle, "t_s": 0.0, "agent_h1": proc_(rss), "agent_h2": proc_(rss),
                   "controller": proc_(rss), "h1": {"links": 1}, "h2": {"links": 1}, "settle_ms": 1.0, "leftovers": []})
    };
    let v = json!({"machine": "m", "command": "c", "in_flight": 1, "every": 10,
            "phases": [{"name": "ns", "cycles": 20, "duration_s": 1.0, "cycles_per_s": 20.0, "step_ms": [40.0, 50.0]},
                       {"name": "peers", "cycles": 20, "duration_s": 1.0, "cycles_per_s": 20.0, "step_ms": [60.0]}],
            "samples": [sample("start", 0, 9000), sample("ns", 10, 9100), sample("ns", 20, 9200),
                        sample("peers", 10, 9300), sample("peers", 20, 9400), sample("end", 0, 9400)]});
    let fig = figure("churn", &v).expect("churn recognised");
    let svg = fig.svg();
    let tags = check_xml(&svg);
    // 3 processes × (RSS, fds).
    assert_eq!(tags.iter().filter(|t| *t == "polyline").count(), 6);
    // The peers phase continues where ns ended: x of its samples 30, 40.
    let pts = svg.lines().find(|l| l.starts_with("<polyline")).unwrap();
    assert_eq!(pts.split('"').nth(1).unwrap().split(' ').count(), 6);
    let md = fig.markdown(Path::new("bench-out"));
    assert!(md.contains("| ns | 20 | 1.0 s | 20.0 | 50.0 ms |"), "{md}");
    assert!(
        md.contains("| agent h1 | 8.8 MB | 9.2 MB | 9.2 MB | 20 → 20 |"),
        "{md}"
    );
}

fn cases_register() -> Value {
    json!({"runs": [{"agents": 5, "total_ms": 1.0, "fanout_ms": [1.0, 2.0]}]})
}

fn cases_dataplane() -> Value {
    json!({"rounds": 1, "seconds": 1, "series": [
            {"mode": "underlay", "what": "u", "gbits": [10.0], "rtt_ms": [0.05], "ping_lost": 0},
            {"mode": "vxlan", "what": "v", "gbits": [8.0], "rtt_ms": [0.07], "ping_lost": 0}]})
}

#[test]
fn unknown_shapes_are_skipped() {
    assert!(figure("churn", &json!({"machine": "m", "events": [1, 2]})).is_none());
    assert!(figure("x", &json!([1, 2, 3])).is_none());
    assert!(figure("x", &json!({"series": []})).is_none());
}

#[test]
fn splice_replaces_between_markers_and_keeps_the_rest() {
    let doc = format!("# Title\n\nprose before\n\n{BEGIN}\nold stuff\n{END}\n\nprose after\n");
    let out = splice(&doc, "new table\n");
    assert_eq!(
        out,
        format!("# Title\n\nprose before\n\n{BEGIN}\nnew table\n{END}\n\nprose after\n")
    );
    // Idempotent.
    assert_eq!(splice(&out, "new table\n"), out);
    // Absent markers: appended at the end, the text kept.
    let out = splice("# Title\ntext", "body");
    assert_eq!(out, format!("# Title\ntext\n\n{BEGIN}\nbody\n{END}\n"));
    assert!(splice("", "b").starts_with(BEGIN));
    // Markers in the wrong order are not trusted: append.
    let odd = format!("{END}\n{BEGIN}\n");
    assert!(splice(&odd, "b").starts_with(&odd));
}

#[test]
fn axes_are_round_and_cover_the_data() {
    let (a, b, t) = axis(1.0, 1000.0, false);
    assert_eq!((a, b), (0.0, 1000.0));
    assert_eq!(t, vec![0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]);
    let (a, b, t) = axis(3.2, 87.0, true);
    assert_eq!((a, b), (0.0, 100.0));
    assert_eq!(t.len(), 6);
    let (a, b, _) = axis(20.0, 20.0, false);
    assert!(a < 20.0 && b > 20.0);
    let (a, b, t) = axis(0.05, 0.09, true);
    assert!(a == 0.0 && b >= 0.09 && t.len() >= 3, "{t:?}");
    assert_eq!(tick_label(0.02, &[0.0, 0.02]), "0.02");
    assert_eq!(
        relative_to(Path::new("bench-out"), Path::new("")),
        PathBuf::from("bench-out")
    );
    assert_eq!(
        relative_to(Path::new("/a/b/out"), Path::new("/a/b")),
        PathBuf::from("out")
    );
    assert_eq!(
        relative_to(Path::new("/x/out"), Path::new("/a")),
        PathBuf::from("/x/out")
    );
}
