//! `weftctl`'s output contract, as the CLI tests check it: a success is
//! quiet on stderr (and with `-o json` one JSON document on one line); a
//! refusal is one `weftctl: …` line on stderr, a non-zero exit, nothing on
//! stdout in table form and exactly `{"error": …}` with `-o json`.
//!
//! The functions take how to run `weftctl` (`|a| lab.weftctl_etcd(a)`,
//! `|a| host.weftctl(a)`, …), so one check serves every place it runs.

use std::process::Output;

use serde_json::{json, Value};

/// Checks the output of a failed run; returns (exit code, message without
/// the `weftctl: ` prefix).
pub fn check_failure(what: &str, out: &Output, json: bool) -> (i32, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("weftctl {what} died from a signal: {:?}", out.status));
    assert_ne!(
        code, 0,
        "weftctl {what} was expected to fail:\nstdout: {stdout}\nstderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "weftctl {what}: stderr is not one line:\n{stderr}"
    );
    assert!(stderr.ends_with('\n'), "weftctl {what}: {stderr:?}");
    let msg = lines[0]
        .strip_prefix("weftctl: ")
        .unwrap_or_else(|| panic!("weftctl {what}: stderr lacks the `weftctl: ` prefix: {stderr}"))
        .to_string();
    assert!(!msg.is_empty(), "weftctl {what}: empty message");
    if json {
        assert_eq!(
            stdout.lines().count(),
            1,
            "weftctl {what}: stdout is not one line:\n{stdout}"
        );
        let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("weftctl {what}: stdout is not one JSON document ({e}): {stdout}")
        });
        assert_eq!(v, json!({ "error": msg }), "weftctl {what}");
    } else {
        assert_eq!(
            stdout, "",
            "weftctl {what}: output on stdout despite failing"
        );
    }
    (code, msg)
}

/// Runs `args` expecting a refusal, in table form and with `-o json`; both
/// must fail the same way. Returns (exit code, message).
pub fn fails_with(run: impl Fn(&[&str]) -> Output, args: &[&str]) -> (i32, String) {
    let what = args.join(" ");
    let table = check_failure(&what, &run(args), false);
    let mut a = vec!["-o", "json"];
    a.extend_from_slice(args);
    let json = check_failure(&a.join(" "), &run(&a), true);
    assert_eq!(table, json, "weftctl {what}: table and json forms differ");
    table
}

/// Runs `args` in table form; panics unless it succeeds with nothing on
/// stderr. Returns stdout.
pub fn table_with(run: impl Fn(&[&str]) -> Output, args: &[&str]) -> String {
    let out = run(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && stderr.is_empty(),
        "weftctl {} ({:?}):\nstdout: {stdout}\nstderr: {stderr}",
        args.join(" "),
        out.status
    );
    stdout
}

/// `-o json ARGS…`: succeeds quietly with one JSON document on one line.
pub fn json_with(run: impl Fn(&[&str]) -> Output, args: &[&str]) -> Value {
    let mut a = vec!["-o", "json"];
    a.extend_from_slice(args);
    let stdout = table_with(run, &a);
    assert_eq!(
        stdout.lines().count(),
        1,
        "weftctl {}: {stdout}",
        a.join(" ")
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("weftctl {}: not JSON ({e}): {stdout}", a.join(" ")))
}
