//! The command-line surface every binary shares: `--version`, `--log-format`,
//! and weftctl's shell completions.

use std::process::Command;

use weft_tests::{bin_path, require_root, Lab, LabOpts};

const BINARIES: [&str; 5] = [
    "weft-agent",
    "weft-controller",
    "weftctl",
    "weft-lab",
    "weft-bench",
];

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin_path(bin))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_binary_prints_its_version() {
    for bin in BINARIES {
        let (code, out, err) = run(bin, &["--version"]);
        assert_eq!(code, 0, "{bin} --version: {err}");
        assert_eq!(
            out.trim(),
            format!("{bin} {}", env!("CARGO_PKG_VERSION")),
            "{bin} --version"
        );
    }
}

#[test]
fn weftctl_prints_completions_for_bash_zsh_and_fish() {
    let (code, bash, err) = run("weftctl", &["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    for word in ["weftctl", "status", "subnet", "--publish", "--agent-socket"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    // The script is valid bash.
    let check = Command::new("bash")
        .args(["-n", "-c", &bash])
        .output()
        .expect("run bash -n");
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let (code, zsh, err) = run("weftctl", &["completions", "zsh"]);
    assert_eq!(code, 0, "{err}");
    assert!(zsh.starts_with("#compdef weftctl"), "zsh: {}", &zsh[..80]);
    assert!(zsh.contains("--publish"));

    let (code, fish, err) = run("weftctl", &["completions", "fish"]);
    assert_eq!(code, 0, "{err}");
    assert!(fish.contains("complete -c weftctl"), "fish completion");
    assert!(fish.contains("publish"));

    let (code, _, err) = run("weftctl", &["completions", "tcsh"]);
    assert_eq!(code, 2);
    assert!(err.contains("tcsh"), "error names the value: {err}");
}

#[test]
fn a_bad_log_format_is_refused_by_name() {
    for bin in ["weft-agent", "weft-controller"] {
        let (code, _, err) = run(bin, &["--log-format", "yaml"]);
        assert_eq!(code, 2, "{bin}: {err}");
        assert!(
            err.contains("yaml") && err.contains("text or json"),
            "{bin}: {err}"
        );
    }
    let (code, out, err) = run(
        "weft-agent",
        &[
            "--check-config",
            "--subnet",
            "10.244.1.0/24",
            "--log-format",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let cfg: serde_json::Value = serde_json::from_str(&out).expect("check-config prints JSON");
    assert_eq!(cfg["log_format"], "json");
}

/// `--log-format json`: every line the agent writes is one JSON object with
/// a level and a message, and the start line is among them.
#[test]
fn the_agent_logs_one_json_object_per_line() {
    require_root();
    let lab = Lab::new(LabOpts::hosts(1));
    let h1 = lab.host(1);
    let mut agent = h1.start_agent(&["--log-format", "json"]);
    h1.add_endpoint("web");
    agent.stop();
    let log = std::fs::read_to_string(h1.agent_log()).expect("agent log");
    let mut messages = Vec::new();
    // The lab writes a `=== weft-tests: starting …` header of its own.
    let lines = log
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("=== weft-tests"));
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string(), "no level: {line}");
        assert!(v["timestamp"].is_string(), "no timestamp: {line}");
        messages.push(v["message"].as_str().expect("message").to_string());
    }
    assert!(
        messages.iter().any(|m| m.contains("starting")),
        "start line missing: {messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("web")),
        "no line about endpoint web: {messages:?}"
    );
}

/// Switches read from the environment take the usual spellings (1, yes,
/// true, 0, no, false), as a systemd environment file writes them.
#[test]
fn boolean_switches_from_the_environment() {
    for (v, want) in [
        ("1", true),
        ("yes", true),
        ("true", true),
        ("0", false),
        ("no", false),
    ] {
        let out = Command::new(bin_path("weft-agent"))
            .args([
                "--check-config",
                "--controller",
                "198.18.0.3:7470",
                "--public-ip",
                "198.18.0.11",
            ])
            .env("WEFT_DIRECT_ROUTING", v)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "WEFT_DIRECT_ROUTING={v}: {err}");
        let cfg: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(cfg["direct_routing"], want, "WEFT_DIRECT_ROUTING={v}");
    }
    let (code, _, err) = {
        let out = Command::new(bin_path("weftctl"))
            .args(["status"])
            .env("WEFT_NO_PROBE", "maybe")
            .output()
            .unwrap();
        (
            out.status.code(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("maybe"), "{err}");
}
