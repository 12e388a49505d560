//! weftctl's own error handling, without an agent: one sentence on stderr,
//! a non-zero exit, and `{"error": ...}` on stdout with `-o json`.

use std::process::Command;

fn weftctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(args)
        .env_remove("WEFT_AGENT_SOCKET")
        .env_remove("WEFT_OUTPUT")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn missing_agent_is_explained() {
    let sock = "/nonexistent/weft/agent.sock";
    let (code, out, err) = weftctl(&["--agent-socket", sock, "ns", "list"]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.contains(sock) && err.contains("is weft-agent running"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1);
    // Global flags go after the subcommand too.
    let (code, out, _) = weftctl(&["status", "-o", "json", "--agent-socket", sock]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["error"].as_str().unwrap().contains(sock));
}

#[test]
fn malformed_arguments_are_refused_before_contacting_anyone() {
    for (args, want) in [
        (
            vec!["ns", "add", "a", "--publish", "80"],
            "expected [HOSTIP:]HOSTPORT:PORT",
        ),
        (vec!["ns", "add", "a", "--publish", "8080:80/sctp"], "sctp"),
        (vec!["ns", "add", "a", "--ip", "10.1.1"], "10.1.1"),
        (vec!["ns", "frobnicate"], "frobnicate"),
        (vec!["ns", "exec", "a"], "CMD"),
    ] {
        let (code, out, err) = weftctl(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err:?}");
        let mut j = vec!["-o", "json"];
        j.extend(&args);
        let (_, out, _) = weftctl(&j);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {out:?}: {e}"));
        assert!(v["error"].as_str().unwrap().contains(want));
    }
}

#[test]
fn help_and_version() {
    let (code, out, _) = weftctl(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("weftctl "));
    let (code, out, _) = weftctl(&["ns", "--help"]);
    assert_eq!(code, 0);
    for sub in ["add", "del", "list", "show", "exec"] {
        assert!(out.contains(sub), "{out}");
    }
}
