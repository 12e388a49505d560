//! weft-controller's command line: the shipped unit and example environment
//! are accepted, bad values are refused in one line naming them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A temporary directory, removed when dropped (also when the test fails).
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("weft-ctl-cli-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn controller(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weft-controller"));
    c.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("WEFT_") {
            c.env_remove(k);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A PKI with a controller certificate, made with weftctl.
fn pki(d: &Path) -> String {
    let dir = d.join("pki");
    let dir_s = dir.to_str().unwrap();
    for args in [
        vec!["certs", "init", "--dir", dir_s],
        vec![
            "certs",
            "issue",
            "--dir",
            dir_s,
            "--name",
            "c1",
            "--role",
            "controller",
            "--ip",
            "127.0.0.1",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_weftctl"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir.join("c1").to_str().unwrap().to_string()
}

#[test]
fn shipped_unit_and_environment_are_accepted() {
    let d = Tmp::new("unit");
    let tls = pki(&d.0);
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/weft-controller.service"
    ))
    .unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let env_file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/controller.env"
    ))
    .unwrap();
    let mut env: Vec<(String, String)> = env_file
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    assert!(env.iter().all(|(k, _)| k.starts_with("WEFT_")), "{env:?}");
    // The unit points WEFT_TLS_DIR at its credentials; use the test PKI.
    env.push(("WEFT_TLS_DIR".into(), tls));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut words: Vec<&str> = exec.split_whitespace().skip(1).collect();
    words.push("--check-config");
    let (code, out, err) = controller(&words, &env);
    assert_eq!(code, 0, "{exec}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["listen"], "0.0.0.0:7470");
    assert_eq!(v["lease_ttl"], 86400);
    assert_eq!(v["etcd_endpoints"].as_array().unwrap().len(), 3);
}

#[test]
fn bad_values_are_named_in_one_line() {
    let d = Tmp::new("bad");
    let tls = pki(&d.0);
    let missing = d.0.join("nope");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--etcd-endpoints", "127.0.0.1:2379", "--tls-dir", &tls],
            "127.0.0.1:2379",
        ),
        (
            vec![
                "--etcd-endpoints",
                "http://127.0.0.1:2379",
                "--tls-dir",
                missing.to_str().unwrap(),
            ],
            "nope",
        ),
        (
            vec![
                "--etcd-endpoints",
                "http://127.0.0.1:2379",
                "--tls-dir",
                &tls,
                "--etcd-prefix",
                "weft",
            ],
            "--etcd-prefix",
        ),
        (
            vec![
                "--etcd-endpoints",
                "http://127.0.0.1:2379",
                "--tls-dir",
                &tls,
                "--lease-ttl",
                "1",
            ],
            "'1' for '--lease-ttl",
        ),
        (
            vec![
                "--etcd-endpoints",
                "http://127.0.0.1:2379",
                "--tls-dir",
                &tls,
                "--listen",
                "nowhere",
            ],
            "nowhere",
        ),
        (vec!["--tls-dir", &tls], "--etcd-endpoints"),
    ];
    for (args, want) in cases {
        let mut a = args.clone();
        a.push("--check-config");
        let (code, _, err) = controller(&a, &[]);
        assert_ne!(code, 0, "{args:?} accepted");
        // Exactly one line, naming the bad value.
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(
            err.starts_with("weft-controller: ") && err.contains(want),
            "{args:?}: {err}"
        );
    }
}
