//! `weft-bench all --quick` as a smoke run: every benchmark runs end to end
//! on a small scale against the real kernel, etcd, controllers and agents
//! (and the CNI plugins, netavark and iperf3 it compares with), writes its
//! raw samples, and `weft-bench report` turns them into Markdown and plots.
//!
//! No timing is asserted (CI machines are shared and noisy); what is
//! asserted is that every figure was produced, with plausible content, and
//! that the lab left nothing behind. Needs root and the binaries
//! (`cargo build --workspace`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The figures `all` produces, by their raw-sample file name.
const FIGURES: [&str; 6] = ["attach", "scale", "converge", "peers", "churn", "dataplane"];

fn weft_bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft-bench"))
}

fn run(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn mounts_under(dir: &str) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(dir)))
        .count()
}

fn netns_names() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn all_quick_produces_every_figure_and_the_report() {
    weft_tests::require_root();
    let out = tempfile_dir();
    let netns_before = netns_names();
    let lab_mounts_before = mounts_under("/tmp/weft-lab");

    let mut all = weft_bench();
    all.args(["all", "--quick", "--out"]).arg(&out);
    let tables = run(all, "weft-bench all --quick");
    // Every benchmark printed its Markdown table with the machine it ran on.
    assert!(
        tables.matches("Machine: ").count() >= FIGURES.len(),
        "{tables}"
    );

    for f in FIGURES {
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
        assert!(
            v["machine"].as_str().is_some_and(|m| m.contains("cores")),
            "{f}: machine {:?}",
            v["machine"]
        );
        // Some samples, and every number in them is finite.
        let mut numbers = 0;
        count_numbers(&v, &mut numbers, f);
        assert!(numbers >= 10, "{f}: only {numbers} numbers in {text}");
    }
    let attach: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("attach.json")).unwrap()).unwrap();
    let tools: BTreeSet<&str> = attach["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["tool"].as_str())
        .collect();
    assert_eq!(
        tools,
        BTreeSet::from(["weft", "cni-bridge", "netavark"]),
        "attach measured against both peers"
    );

    let doc = out.join("BENCHMARKS.md");
    std::fs::write(&doc, "# Benchmarks\n\nHand-written text stays.\n").unwrap();
    let mut report = weft_bench();
    report
        .args(["report", "--out"])
        .arg(&out)
        .arg("--write")
        .arg(&doc);
    run(report, "weft-bench report");
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

    // The labs cleaned up after themselves.
    assert_eq!(netns_names(), netns_before, "namespaces left in /run/netns");
    assert_eq!(
        mounts_under("/tmp/weft-lab"),
        lab_mounts_before,
        "mounts left under /tmp/weft-lab"
    );
    let _ = std::fs::remove_dir_all(&out);
}

fn count_numbers(v: &Value, n: &mut usize, figure: &str) {
    match v {
        Value::Number(x) => {
            let f = x.as_f64().unwrap_or(f64::NAN);
            assert!(f.is_finite(), "{figure}: bad number {x}");
            *n += 1;
        }
        Value::Array(a) => a.iter().for_each(|x| count_numbers(x, n, figure)),
        Value::Object(o) => o.values().for_each(|x| count_numbers(x, n, figure)),
        _ => {}
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = Path::new("/tmp").join(format!("weft-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
