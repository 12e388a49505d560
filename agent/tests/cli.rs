//! weft-agent's command line: bad configuration is refused with one clear
//! line naming the bad value, before anything is changed.

use std::process::Command;

fn agent(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-agent"))
        .args(args)
        .env_remove("WEFT_SUBNET")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("weft-agent-cli-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn check_config_prints_the_resolved_config_and_changes_nothing() {
    let d = tmp("check");
    let state = d.join("state");
    let (code, out, err) = agent(&[
        "--subnet",
        "10.244.3.0/24",
        "--node-name",
        "h3",
        "--state-dir",
        state.to_str().unwrap(),
        "--check-config",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["subnet"], "10.244.3.0/24");
    assert_eq!(v["node_name"], "h3");
    assert_eq!(v["netns_dir"], "/run/netns");
    assert!(
        !state.exists(),
        "--check-config must not create the state dir"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_values_are_named_in_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--node-name", "h1"],
            "or --subnet CIDR (standalone) is required",
        ),
        (
            &["--subnet", "10.244.1.7/24", "--node-name", "h1"],
            "did you mean 10.244.1.0/24",
        ),
        (&["--subnet", "banana", "--node-name", "h1"], "\"banana\""),
        (&["--subnet", "10.244.1.0/31", "--node-name", "h1"], "/31"),
        (
            &["--subnet", "10.244.1.0/24", "--node-name", "Bad_Name"],
            "Bad_Name",
        ),
        (
            &[
                "--subnet",
                "10.244.1.0/24",
                "--node-name",
                "h1",
                "--public-ip",
                "198.18.0.1",
            ],
            "only apply with --controller",
        ),
        (
            &[
                "--subnet",
                "10.244.1.0/24",
                "--node-name",
                "h1",
                "--controller",
                "c:7470",
            ],
            "exclude each other",
        ),
        (&["--node-name", "h1"], "either --controller"),
        (
            &["--node-name", "h1", "--controller", "nohost"],
            "--controller \"nohost\"",
        ),
        (&["--node-name", "h1", "--controller", "c:0"], "HOST:PORT"),
        (
            &[
                "--node-name",
                "h1",
                "--controller",
                "c:7470",
                "--public-ip",
                "::1",
            ],
            "--public-ip ::1",
        ),
        (
            &[
                "--node-name",
                "h1",
                "--subnet",
                "10.244.1.0/24",
                "--direct-routing",
            ],
            "--direct-routing only apply with --controller",
        ),
    ];
    for (args, want) in cases {
        let mut all = args.to_vec();
        all.push("--check-config");
        let (code, _, err) = agent(&all);
        assert_ne!(code, 0, "{args:?} was accepted");
        assert!(
            err.contains(want),
            "{args:?}: stderr {err:?} lacks {want:?}"
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: not one line: {err:?}"
        );
    }
}

#[test]
fn config_file_and_environment() {
    let d = tmp("file");
    let f = d.join("agent.toml");
    std::fs::write(&f, "node-name = \"h9\"\nsubnet = \"10.244.9.0/24\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weft-agent"))
        .args(["--config", f.to_str().unwrap(), "--check-config"])
        .env("WEFT_NETNS_DIR", "/tmp/x-netns")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["node_name"].as_str(), v["netns_dir"].as_str()),
        (Some("h9"), Some("/tmp/x-netns"))
    );
    std::fs::write(&f, "subnet = 5\n").unwrap();
    let (code, _, err) = agent(&["--config", f.to_str().unwrap(), "--check-config"]);
    assert_ne!(code, 0);
    assert!(err.contains(f.to_str().unwrap()), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn shipped_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/agent.toml");
    let (code, out, err) = agent(&["--config", example, "--check-config"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["controllers"],
        serde_json::json!(["10.0.0.5:7470", "10.0.0.6:7470"])
    );
    assert_eq!(v["tls_dir"], "/etc/weft/tls");
    assert_eq!(v["subnet"], serde_json::Value::Null);
}

#[test]
fn systemd_unit_flags_are_accepted() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/weft-agent.service"
    ))
    .unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut words: Vec<&str> = exec.split_whitespace().skip(1).collect();
    assert!(!words.is_empty());
    // Point the config at the shipped example, keep every other flag as the unit has it.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/agent.toml");
    if let Some(i) = words.iter().position(|w| *w == "--config") {
        words[i + 1] = example;
    }
    words.push("--check-config");
    let (code, _, err) = agent(&words);
    assert_eq!(code, 0, "{exec}: {err}");
}
