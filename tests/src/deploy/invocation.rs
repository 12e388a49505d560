//! Whether a weft binary accepts how a deploy file starts it: every flag
//! and `WEFT_*` variable is one it documents in `--help` (exactly the ones
//! clap accepts), and with them its `--check-config` succeeds and shows
//! each value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::{run, text};
use crate::TempDir;

/// The weft daemons whose invocations are checked with `--check-config`.
pub const DAEMONS: [&str; 2] = ["weft-agent", "weft-controller"];
/// `WEFT_` variables the daemons read that are not flags.
pub const NON_FLAG_VARIABLES: [&str; 1] = ["WEFT_LOG"];

/// The long flags and `WEFT_*` variables a binary documents in `--help`,
/// which are exactly the ones clap accepts.
pub struct Accepted {
    pub flags: BTreeSet<String>,
    pub env: BTreeSet<String>,
}

/// What `bin` documents in `--help`.
pub fn accepted(bin: &Path) -> Accepted {
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert!(out.status.success(), "{} --help failed", bin.display());
    let help = text(&out.stdout);
    let flags = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect();
    let env = help
        .split("[env: ")
        .skip(1)
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .collect();
    Accepted { flags, env }
}

/// Every `WEFT_*` variable `bin`'s help names, its subcommands' included
/// (`[env: …]` of flags, and the ones the text mentions, such as
/// `WEFT_ETCD_PASSWORD`), with [`NON_FLAG_VARIABLES`]: what a variable set
/// in its environment must not be named unless meant for it.
pub fn variables_read(bin: &Path) -> BTreeSet<String> {
    fn walk(bin: &Path, sub: &mut Vec<String>, out: &mut BTreeSet<String>) {
        let out_help = Command::new(bin)
            .args(&*sub)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out_help.status.success(),
            "{} {sub:?} --help failed",
            bin.display()
        );
        let help = text(&out_help.stdout);
        let mut rest = help.as_str();
        while let Some(i) = rest.find("WEFT_") {
            let v: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[i + v.len()..];
            out.insert(v);
        }
        let commands: Vec<String> = help
            .lines()
            .skip_while(|l| l.trim() != "Commands:")
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help")
            .map(str::to_string)
            .collect();
        for c in commands {
            sub.push(c);
            walk(bin, sub, out);
            sub.pop();
        }
    }
    let mut out: BTreeSet<String> = NON_FLAG_VARIABLES.map(String::from).into();
    walk(bin, &mut Vec::new(), &mut out);
    out
}

/// A certificate directory for `weft-controller --check-config`, which
/// loads its TLS files (made with the real weftctl).
pub fn controller_pki(tmp: &TempDir) -> String {
    let dir = tmp.join("pki");
    let d = dir.to_str().unwrap();
    for args in [
        vec!["certs", "init", "--dir", d],
        vec![
            "certs",
            "issue",
            "--dir",
            d,
            "--name",
            "weft-controller",
            "--role",
            "controller",
        ],
    ] {
        let out = Command::new(crate::bin_path("weftctl"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "weftctl {args:?}: {}",
            text(&out.stderr)
        );
    }
    dir.join("weft-controller").to_str().unwrap().to_string()
}

/// The key of `--check-config`'s JSON that shows an option (a long flag
/// without its dashes, or a variable without `WEFT_`).
fn json_key(option: &str) -> String {
    let k = option.to_ascii_lowercase().replace('-', "_");
    match k.as_str() {
        "controller" => "controllers".to_string(),
        _ => k,
    }
}

/// Asserts that `option` given as `value` shows up in the resolved config.
pub fn assert_arrived(what: &str, config: &Value, option: &str, value: &str) {
    let key = json_key(option);
    // The controller does not echo its etcd files (it has read them): it
    // shows that TLS is on and which user it logs in as.
    match key.as_str() {
        "etcd_ca" | "etcd_cert" | "etcd_key" => {
            assert_eq!(
                config["etcd_tls"], true,
                "{what}: {option}={value} but etcd TLS is off: {config}"
            );
            return;
        }
        "etcd_password_file" => {
            assert!(
                config["etcd_user"].is_string(),
                "{what}: {option}={value} but no etcd user: {config}"
            );
            return;
        }
        _ => {}
    }
    let got = config.get(&key).unwrap_or_else(|| {
        panic!("{what}: --check-config shows no {key:?} for {option}={value}: {config}")
    });
    let ok = match got {
        Value::Array(a) => {
            let got: Vec<&str> = a.iter().map(|v| v.as_str().unwrap_or("?")).collect();
            let want: Vec<&str> = value.split(',').map(str::trim).collect();
            got == want
        }
        Value::Number(n) => n.to_string() == value.trim(),
        Value::String(s) => s == value,
        Value::Bool(b) => b.to_string() == value,
        Value::Null | Value::Object(_) => false,
    };
    assert!(ok, "{what}: {option}={value} resolved to {key} = {got}");
}

/// How a deploy file starts a weft daemon.
pub struct Invocation {
    /// Where it comes from, for messages.
    pub origin: String,
    /// `weft-agent` or `weft-controller`.
    pub binary: String,
    /// Its arguments after the program.
    pub args: Vec<String>,
    /// Its environment (only `WEFT_*` matter).
    pub env: BTreeMap<String, String>,
}

/// (flag without dashes, value) for each `--flag value` / `--flag=value`.
pub fn flag_values(args: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        assert!(
            a.starts_with("--"),
            "unexpected positional argument {a:?} in {args:?}"
        );
        if let Some((f, v)) = a.split_once('=') {
            out.push((f[2..].to_string(), v.to_string()));
        } else if args.get(i + 1).is_some_and(|n| !n.starts_with("--")) {
            out.push((a[2..].to_string(), args[i + 1].clone()));
            i += 1;
        } else {
            out.push((a[2..].to_string(), "true".to_string()));
        }
        i += 1;
    }
    out
}

/// Checks that the binary accepts every flag and variable of `inv`, runs it
/// with `--check-config` and checks that every value arrived. Returns the
/// resolved configuration.
pub fn check_invocation(inv: &Invocation) -> Value {
    let what = &inv.origin;
    let bin = crate::bin_path(&inv.binary);
    let acc = accepted(&bin);
    let flags = flag_values(&inv.args);
    for (f, _) in &flags {
        assert!(
            acc.flags.contains(&format!("--{f}")),
            "{what}: {} has no flag --{f}",
            inv.binary
        );
    }
    for k in inv.env.keys().filter(|k| k.starts_with("WEFT_")) {
        assert!(
            acc.env.contains(k) || NON_FLAG_VARIABLES.contains(&k.as_str()),
            "{what}: {} reads no variable {k} (it would be ignored)",
            inv.binary
        );
    }
    let mut args = inv.args.clone();
    args.push("--check-config".into());
    let out = run(&bin, &args, &inv.env);
    assert!(
        out.status.success(),
        "{what}: {} {args:?} with {:?} is refused: {}",
        inv.binary,
        inv.env,
        text(&out.stderr)
    );
    let config: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: --check-config printed no JSON ({e}): {}",
            text(&out.stdout)
        )
    });
    for (f, v) in &flags {
        if f != "config" {
            assert_arrived(what, &config, f, v);
        }
    }
    for (k, v) in &inv.env {
        let Some(name) = k.strip_prefix("WEFT_") else {
            continue;
        };
        // Flags win over the environment; WEFT_CONFIG is checked by its keys.
        let flag = name.to_ascii_lowercase().replace('_', "-");
        if name == "CONFIG"
            || NON_FLAG_VARIABLES.contains(&k.as_str())
            || flags.iter().any(|(f, _)| *f == flag)
        {
            continue;
        }
        assert_arrived(what, &config, name, v);
    }
    config
}
