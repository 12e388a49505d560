//! `weft-bench all --quick` as a smoke run: every benchmark runs end to end
//! on a small scale against the real kernel, etcd, controllers and agents
//! (and the CNI plugins, netavark and iperf3 it compares with), writes its
//! raw samples, and `weft-bench report` turns them into Markdown and plots.
//! `weft-bench cni --quick` also runs on its own, its figure checked in
//! more detail (both sides, both variants, every count).
//!
//! No timing is judged (CI machines are shared and noisy); what is
//! asserted is that every figure was produced with its measurements
//! present (a figure whose timings are all zero, or missing because an
//! event never came, fails), for this machine, and that the benchmark's
//! labs left nothing behind. Needs root and the binaries (`cargo build
//! --workspace`).

use std::process::Command;

use serde_json::Value;
use weft_tests::{cleanup, TempDir};

/// The figures `all` produces, by their raw-sample file name.
const FIGURES: [&str; 7] = [
    "attach",
    "cni",
    "scale",
    "converge",
    "peers",
    "churn",
    "dataplane",
];

/// What each figure measured, as paths into its JSON (`a[]` is every
/// element of array `a`, which must not be empty): each value there must
/// be a number above zero. Settings (counts, rounds) are not among them.
const MEASURED: [(&str, &[&str]); 7] = [
    ("attach", &["series[].samples_ms[]"]),
    ("cni", &["series[].samples_ms[]"]),
    (
        "scale",
        &[
            "runs[].registered_ms",
            "runs[].snapshots_ms",
            "runs[].register_latencies_ms[]",
            "runs[].changes[].latencies_ms[]",
            "runs[].phases[].controllers[].rss_kb",
        ],
    ),
    (
        "converge",
        &[
            "rounds[].ready_ms",
            "rounds[].registered_ms",
            "rounds[].broadcast_ms",
            "rounds[].join_ms",
            "rounds[].join_each_ms[]",
            "rounds[].remove_broadcast_ms",
            "rounds[].remove_ms",
            "rounds[].remove_each_ms[]",
        ],
    ),
    (
        "peers",
        &[
            "samples[].total_ms",
            "samples[].assigned_ms",
            "samples[].snapshot_ms",
            "samples[].rss_kb",
            "samples[].hwm_kb",
        ],
    ),
    (
        "churn",
        &[
            "phases[].duration_s",
            "phases[].cycles_per_s",
            "phases[].step_ms[]",
            "samples[].agent_h1.rss_kb",
            "samples[].controller.rss_kb",
        ],
    ),
    ("dataplane", &["series[].gbits[]", "series[].rtt_ms[]"]),
];

/// Runs `weft-bench ARGS…`; its stdout and its pid (which names its labs,
/// `wt<pid>x<n>`). Panics unless it succeeds.
fn weft_bench(args: &[&str]) -> (String, u32) {
    let what = format!("weft-bench {}", args.join(" "));
    let child = Command::new(env!("CARGO_BIN_EXE_weft-bench"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let pid = child.id();
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout, pid)
}

/// The values at `path` in `v` (see [`MEASURED`]); panics naming the path
/// where an array is empty or a field missing.
fn at<'a>(v: &'a Value, path: &str, figure: &str) -> Vec<&'a Value> {
    let mut here = vec![v];
    for seg in path.split('.') {
        let (key, each) = match seg.strip_suffix("[]") {
            Some(k) => (k, true),
            None => (seg, false),
        };
        let mut next = Vec::new();
        for x in here {
            let field = x
                .get(key)
                .unwrap_or_else(|| panic!("{figure}: no {key:?} (in {path}) in {x}"));
            if each {
                let a = field
                    .as_array()
                    .unwrap_or_else(|| panic!("{figure}: {path}: {key} is not an array"));
                assert!(!a.is_empty(), "{figure}: {path}: {key} is empty");
                next.extend(a);
            } else {
                next.push(field);
            }
        }
        here = next;
    }
    here
}

#[test]
fn all_quick_produces_every_figure_and_the_report() {
    weft_tests::require_root();
    let out = TempDir::new("bench-smoke");
    let out_s = out.path().display().to_string();

    let (tables, pid) = weft_bench(&["all", "--quick", "--out", &out_s]);
    // Every benchmark printed its Markdown table with the machine it ran on.
    assert!(
        tables.matches("Machine: ").count() >= FIGURES.len(),
        "{tables}"
    );
    let cores = std::thread::available_parallelism().unwrap().get();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let this_machine = |m: &str| {
        m.starts_with(&format!("{cores} cores")) && m.ends_with(&format!("Linux {}", kernel.trim()))
    };

    for (f, measured) in MEASURED {
        let file = out.join(format!("{f}.json"));
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{} missing: {e}", file.display()));
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", file.display()));
        let command = v["command"].as_str().unwrap_or_default();
        assert!(
            command.starts_with("weft-bench all --quick"),
            "{f}: command {command:?}"
        );
        let machine = v["machine"].as_str().unwrap_or_default();
        assert!(
            this_machine(machine),
            "{f}: machine {machine:?} is not this one ({cores} cores, Linux {})",
            kernel.trim()
        );
        // Each measurement is there (a NaN is written as null) and above
        // zero.
        for path in measured {
            for x in at(&v, path, f) {
                assert!(
                    x.as_f64().is_some_and(|n| n > 0.0 && n.is_finite()),
                    "{f}: {path} holds {x}: not a measurement"
                );
            }
        }
    }
    assert_eq!(MEASURED.map(|(f, _)| f), FIGURES);
    let attach: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("attach.json")).unwrap()).unwrap();
    let tools: std::collections::BTreeSet<&str> = attach["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["tool"].as_str())
        .collect();
    assert_eq!(
        tools,
        std::collections::BTreeSet::from(["weft", "cni-bridge", "netavark"]),
        "attach measured against both peers"
    );

    let doc = out.join("BENCHMARKS.md");
    std::fs::write(&doc, "# Benchmarks\n\nHand-written text stays.\n").unwrap();
    weft_bench(&[
        "report",
        "--out",
        &out_s,
        "--write",
        &doc.display().to_string(),
    ]);
    let md = std::fs::read_to_string(&doc).unwrap();
    assert!(
        md.starts_with("# Benchmarks\n\nHand-written text stays.\n"),
        "{md}"
    );
    for f in FIGURES {
        let svg = out.join(format!("{f}.svg"));
        let text = std::fs::read_to_string(&svg)
            .unwrap_or_else(|e| panic!("{} missing: {e}", svg.display()));
        assert!(
            text.trim_start().starts_with("<svg") && text.trim_end().ends_with("</svg>"),
            "{}",
            svg.display()
        );
        assert!(
            md.contains(&format!("{f}.svg")),
            "report does not show {f}.svg"
        );
    }

    assert_labs_cleaned_up(pid);
}

/// The labs of the `weft-bench` process `pid` (named after it) cleaned up
/// after themselves: no namespace, directory or mount of theirs is left.
fn assert_labs_cleaned_up(pid: u32) {
    let ours = format!("wt{pid}x");
    let named = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&ours))
                    .collect()
            })
            .unwrap_or_default()
    };
    let netns = named(weft_tests::netns::NETNS_RUN_DIR);
    assert!(netns.is_empty(), "namespaces left in /run/netns: {netns:?}");
    let dirs = named(cleanup::LAB_ROOT);
    assert!(
        dirs.is_empty(),
        "lab directories left in {}: {dirs:?}",
        cleanup::LAB_ROOT
    );
    let root = std::path::Path::new(cleanup::LAB_ROOT);
    let mounts: Vec<_> = cleanup::mount_points()
        .into_iter()
        .filter(|m| {
            m.strip_prefix(root).is_ok_and(|r| {
                r.components()
                    .next()
                    .is_some_and(|c| c.as_os_str().to_string_lossy().starts_with(&ours))
            })
        })
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
}

/// `weft-bench cni --quick` on its own: weft-cni and the reference chain
/// both measured, ADD and DEL, without and with a published port, at each
/// count, every sample a measurement; the reference chain is the one
/// asked for (portmap only when publishing); the report shows the ratio;
/// nothing of the lab (its 2 × 10 existing attachments' namespaces
/// included) is left.
#[test]
fn cni_quick_measures_both_sides_and_the_report_shows_their_ratio() {
    weft_tests::require_root();
    let out = TempDir::new("bench-smoke-cni");
    let out_s = out.path().display().to_string();
    let (table, pid) = weft_bench(&["cni", "--quick", "--out", &out_s]);
    assert!(table.contains("reference / weft-cni"), "{table}");

    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("cni.json")).unwrap()).unwrap();
    assert!(
        v["command"]
            .as_str()
            .is_some_and(|c| c.starts_with("weft-bench cni --quick")),
        "{}",
        v["command"]
    );
    let series = v["series"].as_array().expect("series");
    // --quick: counts 1 and 10, 5 samples.
    assert_eq!(series.len(), 2 * 2 * 2 * 2, "{series:?}");
    for plugin in ["weft-cni", "reference"] {
        for op in ["add", "del"] {
            for ports in [0, 1] {
                for existing in [1, 10] {
                    let what = format!("{plugin} {op} ports={ports} existing={existing}");
                    let s = series
                        .iter()
                        .find(|s| {
                            s["plugin"] == plugin
                                && s["op"] == op
                                && s["ports"] == ports
                                && s["existing"] == existing
                        })
                        .unwrap_or_else(|| panic!("no series {what}"));
                    let samples = s["samples_ms"].as_array().unwrap();
                    assert_eq!(samples.len(), 5, "{what}");
                    for x in samples {
                        assert!(
                            x.as_f64().is_some_and(|n| n > 0.0 && n.is_finite()),
                            "{what}: {x} is not a measurement"
                        );
                    }
                }
            }
        }
    }
    let types = |list: &Value| -> Vec<String> {
        list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(types(&v["weft"]["conflist"]), ["weft-cni"]);
    assert_eq!(types(&v["reference"]["conflist"]), ["bridge"]);
    assert_eq!(
        types(&v["reference"]["conflist_with_ports"]),
        ["bridge", "portmap"]
    );

    let (md, _) = weft_bench(&["report", "--out", &out_s]);
    assert!(md.contains("### cni: "), "{md}");
    // One row per op, variant and count, each with a ratio.
    let rows: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| add |") || l.starts_with("| del |"))
        .collect();
    assert_eq!(rows.len(), 8, "{md}");
    assert!(rows.iter().all(|r| r.trim_end().ends_with("× |")), "{md}");
    let svg = std::fs::read_to_string(out.join("cni.svg")).unwrap();
    assert!(
        svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    assert_labs_cleaned_up(pid);
}
