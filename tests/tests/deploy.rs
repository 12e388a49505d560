//! The deploy files are what operators run, so they are tested like code:
//!
//! - the systemd units pass `systemd-analyze verify`, keep the hardening they
//!   promise (and stay under an exposure score), and the agent's unit never
//!   gets a private mount namespace;
//! - the Kubernetes manifests parse and have the shape `deploy/kubernetes/
//!   README.md` describes, and their names, ports and mounts line up;
//! - every flag and `WEFT_*` variable that a unit, an example config or a
//!   manifest hands to `weft-agent` or `weft-controller` is one the built
//!   binary accepts (`--help`), and with it the binary's `--check-config`
//!   succeeds and shows each value.
//!
//! Needs the binaries (`cargo build --workspace`), not root.
//! `systemd-analyze` (Debian package `systemd`) is required under CI=true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_json::Value;

const NAMESPACE: &str = "weft-system";
/// The image of every weft container; its tag is the workspace version.
const WEFT_IMAGE: &str = "ghcr.io/weft/weft";
/// The weft daemons whose invocations are checked with `--check-config`.
const DAEMONS: [&str; 2] = ["weft-agent", "weft-controller"];
/// What the test puts in for a pod's `fieldRef`s.
const FIELD_SAMPLES: [(&str, &str); 4] = [
    ("spec.nodeName", "node-1"),
    ("status.hostIP", "10.0.0.21"),
    ("metadata.name", "pod-0"),
    ("status.podIP", "10.1.0.5"),
];
/// `WEFT_` variables the daemons read that are not flags.
const NON_FLAG_VARIABLES: [&str; 1] = ["WEFT_LOG"];

// ---------------------------------------------------------------- helpers

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A directory removed when the test ends, also on panic.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("weft-deploy-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `program` with `args` and exactly the `WEFT_*` variables in `env`.
fn run(program: &Path, args: &[String], env: &BTreeMap<String, String>) -> Output {
    let mut c = Command::new(program);
    c.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WEFT_") {
            c.env_remove(k);
        }
    }
    c.envs(env);
    c.output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The long flags and `WEFT_*` variables a binary documents in `--help`,
/// which are exactly the ones clap accepts.
struct Accepted {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

fn accepted(bin: &Path) -> Accepted {
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

/// A certificate directory for `weft-controller --check-config`, which
/// loads its TLS files (made with the real weftctl).
fn controller_pki(tmp: &TempDir) -> String {
    let dir = tmp.0.join("pki");
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
        let out = Command::new(weft_tests::bin_path("weftctl"))
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
fn assert_arrived(what: &str, config: &Value, option: &str, value: &str) {
    let key = json_key(option);
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
struct Invocation {
    /// Where it comes from, for messages.
    origin: String,
    /// `weft-agent` or `weft-controller`.
    binary: String,
    /// Its arguments after the program.
    args: Vec<String>,
    /// Its environment (only `WEFT_*` matter).
    env: BTreeMap<String, String>,
}

/// (flag without dashes, value) for each `--flag value` / `--flag=value`.
fn flag_values(args: &[String]) -> Vec<(String, String)> {
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
fn check_invocation(inv: &Invocation) -> Value {
    let what = &inv.origin;
    let bin = weft_tests::bin_path(&inv.binary);
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

// ---------------------------------------------------------------- systemd

/// A unit file as (section, key, value) lines.
struct Unit {
    name: String,
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn load(name: &str) -> Unit {
        let path = deploy(&format!("systemd/{name}"));
        let mut section = String::new();
        let mut entries = Vec::new();
        for (n, line) in read(&path).lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
                continue;
            }
            assert!(
                !l.ends_with('\\'),
                "{name}:{}: continuation lines are not supported by this test",
                n + 1
            );
            if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                section = s.to_string();
                continue;
            }
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}:{}: not key=value: {l}", n + 1));
            entries.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
        Unit {
            name: name.to_string(),
            entries,
        }
    }

    /// Every value of `key` in [Service].
    fn all(&self, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The one value of `key` in [Service].
    fn one(&self, key: &str) -> &str {
        match self.all(key).as_slice() {
            [v] => v,
            other => panic!("{}: expected one {key}=, found {other:?}", self.name),
        }
    }

    /// The words of ExecStart (program first).
    fn exec_start(&self) -> Vec<String> {
        let exec = self.one("ExecStart");
        assert!(
            !exec.contains(['"', '\'', '$', '%']),
            "{}: ExecStart={exec}: quoting and specifiers are not supported by this test",
            self.name
        );
        exec.split_whitespace().map(str::to_string).collect()
    }

    /// The space-separated words of every value of `key`.
    fn words(&self, key: &str) -> BTreeSet<String> {
        self.all(key)
            .iter()
            .flat_map(|v| v.split_whitespace())
            .map(str::to_string)
            .collect()
    }
}

/// `KEY=VALUE` lines of an environment file (comments and blanks skipped).
fn env_file(path: &Path) -> BTreeMap<String, String> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: not KEY=VALUE: {l}", path.display()));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// Each key of an example agent config arrived in the resolved config.
fn assert_file_arrived(what: &str, file: &Path, config: &Value) {
    let table: toml::Table =
        toml::from_str(&read(file)).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(!table.is_empty(), "{what}: {} sets nothing", file.display());
    for (k, v) in &table {
        let value = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Array(a) => a
                .iter()
                .map(|x| x.as_str().expect("string array").to_string())
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        assert_arrived(what, config, k, &value);
    }
}

#[test]
fn systemd_units_and_examples_are_accepted_by_the_binaries() {
    // The agent: ExecStart with the shipped example configs in place of
    // /etc/weft/agent.toml; systemd's StateDirectory/RuntimeDirectory must be
    // the directories the agent then uses.
    let agent = Unit::load("weft-agent.service");
    let exec = agent.exec_start();
    assert_eq!(exec[0], "/usr/local/bin/weft-agent");
    let at = exec
        .iter()
        .position(|w| w == "--config")
        .expect("the agent unit passes --config");
    assert_eq!(exec[at + 1], "/etc/weft/agent.toml");
    for example in ["agent.toml", "agent-standalone.toml"] {
        let file = deploy(&format!("examples/{example}"));
        let mut args = exec[1..].to_vec();
        args[at] = file.to_str().unwrap().to_string();
        let inv = Invocation {
            origin: format!("weft-agent.service with {example}"),
            binary: "weft-agent".into(),
            args,
            env: BTreeMap::new(),
        };
        let config = check_invocation(&inv);
        assert_file_arrived(&inv.origin, &file, &config);
        let cluster_mode = !config["controllers"].as_array().unwrap().is_empty();
        assert_eq!(
            (cluster_mode, config["subnet"].is_null()),
            (example == "agent.toml", example == "agent.toml"),
            "{}: agent.toml is the cluster example, agent-standalone.toml the standalone one",
            inv.origin
        );
        assert_eq!(
            config["state_dir"],
            format!("/var/lib/{}", agent.one("StateDirectory")),
            "{}: the state dir is not systemd's StateDirectory",
            inv.origin
        );
        assert_eq!(
            config["run_dir"],
            format!("/run/{}", agent.one("RuntimeDirectory")),
            "{}: the run dir is not systemd's RuntimeDirectory",
            inv.origin
        );
    }

    // The controller: ExecStart, the example environment file in place of
    // /etc/weft/controller.env, the unit's own Environment= (WEFT_TLS_DIR
    // pointing at the credentials, here a real test PKI).
    let ctl = Unit::load("weft-controller.service");
    let exec = ctl.exec_start();
    assert_eq!(exec[0], "/usr/local/bin/weft-controller");
    assert_eq!(ctl.one("EnvironmentFile"), "/etc/weft/controller.env");
    let example = env_file(&deploy("examples/controller.env"));
    assert!(
        !example.contains_key("WEFT_TLS_DIR"),
        "controller.env must not set WEFT_TLS_DIR: it would override the unit's credentials directory"
    );
    let tmp = TempDir::new("unit");
    let tls = controller_pki(&tmp);
    let mut env = BTreeMap::new();
    for e in ctl.all("Environment") {
        let (k, v) = e.split_once('=').expect("Environment=KEY=VALUE");
        let v = if v == "%d" {
            tls.clone()
        } else {
            v.to_string()
        };
        env.insert(k.to_string(), v);
    }
    assert_eq!(
        env.get("WEFT_TLS_DIR"),
        Some(&tls),
        "the controller unit sets WEFT_TLS_DIR=%d (its credentials)"
    );
    // EnvironmentFile= overrides Environment=.
    env.extend(example);
    let config = check_invocation(&Invocation {
        origin: "weft-controller.service with controller.env".into(),
        binary: "weft-controller".into(),
        args: exec[1..].to_vec(),
        env,
    });
    assert_eq!(config["tls_dir"], tls.as_str());
}

/// Directives that give a service its own mount namespace (systemd's
/// `exec_needs_mount_namespace`), or cut it off the host's network or
/// capabilities. Namespaces the agent bind-mounts there are invisible to
/// the host and die with the agent.
const NOT_FOR_THE_AGENT: [&str; 34] = [
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateMounts",
    "PrivateIPC",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectProc",
    "ProcSubset",
    "ReadOnlyPaths",
    "ReadWritePaths",
    "InaccessiblePaths",
    "ExecPaths",
    "NoExecPaths",
    "BindPaths",
    "BindReadOnlyPaths",
    "TemporaryFileSystem",
    "MountFlags",
    "RootDirectory",
    "RootImage",
    "MountImages",
    "ExtensionImages",
    "ExtensionDirectories",
    "LogNamespace",
    "DynamicUser",
    "IPCNamespacePath",
    "PrivateNetwork",
    "NetworkNamespacePath",
    "JoinsNamespaceOf",
    "PrivateUsers",
    "User",
];

fn is_off(v: &str) -> bool {
    matches!(v, "" | "no" | "false" | "off" | "0")
}

#[test]
fn agent_unit_keeps_the_host_mount_namespace_and_only_the_capabilities_it_needs() {
    let u = Unit::load("weft-agent.service");
    for (section, k, v) in &u.entries {
        assert!(
            section != "Service" || !NOT_FOR_THE_AGENT.contains(&k.as_str()) || is_off(v),
            "weft-agent.service: {k}={v} gives the agent its own mount namespace (or cuts it \
             off the host): its namespaces under /run/netns would be invisible to the host"
        );
    }
    let caps: BTreeSet<String> = ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE"]
        .map(String::from)
        .into();
    assert_eq!(u.words("CapabilityBoundingSet"), caps);
    assert_eq!(u.words("AmbientCapabilities"), caps);
    assert_eq!(u.one("NoNewPrivileges"), "yes");
    let families = u.words("RestrictAddressFamilies");
    for f in ["AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6"] {
        assert!(families.contains(f), "the agent needs {f}: {families:?}");
    }
    // It creates and enters network namespaces, nothing else.
    assert_eq!(u.one("RestrictNamespaces"), "net");
    // An allow-list of system calls must keep mount(2) for the bind mounts
    // (setns/unshare are in @system-service).
    let calls = u.words("SystemCallFilter");
    assert!(
        calls.is_empty() || (calls.contains("@mount") && calls.contains("@system-service")),
        "SystemCallFilter {calls:?} would refuse the agent's mounts or namespaces"
    );
    // A crash or stop leaves the data plane in place; only leftovers are killed.
    assert_eq!(u.one("KillMode"), "mixed");
    assert_eq!(u.one("RuntimeDirectoryPreserve"), "yes");
}

#[test]
fn controller_unit_runs_unprivileged_with_its_tls_files_as_credentials() {
    let u = Unit::load("weft-controller.service");
    assert_eq!(u.one("DynamicUser"), "yes");
    assert_eq!(u.one("CapabilityBoundingSet"), "");
    assert!(u.words("AmbientCapabilities").is_empty());
    assert_eq!(u.one("NoNewPrivileges"), "yes");
    assert_eq!(u.one("ProtectSystem"), "strict");
    let creds: BTreeMap<&str, &str> = u
        .all("LoadCredential")
        .into_iter()
        .map(|c| c.split_once(':').expect("LoadCredential=NAME:PATH"))
        .collect();
    assert_eq!(
        creds,
        BTreeMap::from([
            ("ca.pem", "/etc/weft/tls/ca.pem"),
            ("cert.pem", "/etc/weft/tls/cert.pem"),
            ("key.pem", "/etc/weft/tls/key.pem"),
        ])
    );
    assert!(u.all("Environment").contains(&"WEFT_TLS_DIR=%d"));
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

#[test]
fn systemd_analyze_verifies_the_units() {
    let Some(tool) = which("systemd-analyze") else {
        if under_ci() {
            panic!(
                "systemd-analyze is not installed, so the units cannot be verified; \
                 deploy/install-deps.sh installs it (Debian package systemd)"
            );
        }
        eprintln!(
            "NOTE: systemd-analyze not found (Debian package systemd): the systemd units were \
             NOT verified. Under CI=true this test fails instead."
        );
        return;
    };
    // verify wants ExecStart's program to exist: point it at the built binaries.
    let tmp = TempDir::new("verify");
    let mut paths = Vec::new();
    for name in ["weft-agent.service", "weft-controller.service"] {
        let unit = Unit::load(name);
        let program = unit.exec_start()[0].clone();
        let built = weft_tests::bin_path(program.rsplit('/').next().unwrap());
        let original = read(&deploy(&format!("systemd/{name}")));
        let copy = original.replace(
            &format!("ExecStart={program}"),
            &format!("ExecStart={}", built.display()),
        );
        assert_ne!(copy, original);
        let path = tmp.0.join(name);
        std::fs::write(&path, copy).unwrap();
        paths.push(path);
    }
    let out = Command::new(&tool)
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .unwrap();
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    // verify exits 0 on unknown keys and bad values ("…, ignoring"): any
    // line about our units is a failure.
    let ours: Vec<&str> = report.lines().filter(|l| l.contains("weft-")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{report}",
        out.status
    );
    if !report.trim().is_empty() {
        eprintln!("systemd-analyze verify (about other units):\n{report}");
    }
    // The exposure score (0-100, lower is better) must not creep up. The
    // agent needs CAP_SYS_ADMIN and the host's mount namespace; the
    // controller needs nothing.
    for (path, threshold) in paths.iter().zip([50, 20]) {
        let out = Command::new(&tool)
            .args([
                "security",
                "--offline=true",
                &format!("--threshold={threshold}"),
            ])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: exposure above {threshold}:\n{}{}",
            path.display(),
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------- Kubernetes

/// Every document of every `*.yaml` file under deploy/kubernetes, with the
/// file it came from.
fn manifests() -> Vec<(String, Value)> {
    let dir = deploy("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut docs = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let source = read(&f);
        for (i, de) in serde_norway::Deserializer::from_str(&source).enumerate() {
            let v = Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{name}: document {}: {e}", i + 1));
            if !v.is_null() {
                docs.push((name.clone(), v));
            }
        }
    }
    docs
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or_default()
}

/// The one object of this kind and name.
fn object<'a>(docs: &'a [(String, Value)], k: &str, n: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .map(|(_, v)| v)
        .filter(|v| kind(v) == k && name(v) == n)
        .collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!("expected one {k} {n}, found {}", found.len()),
    }
}

fn at<'a>(v: &'a Value, pointer: &str) -> &'a Value {
    v.pointer(pointer)
        .unwrap_or_else(|| panic!("{} {}: no {pointer}", kind(v), name(v)))
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

const WORKLOADS: [&str; 3] = ["Deployment", "DaemonSet", "StatefulSet"];

fn workloads(docs: &[(String, Value)]) -> impl Iterator<Item = &Value> {
    docs.iter()
        .map(|(_, v)| v)
        .filter(|v| WORKLOADS.contains(&kind(v)))
}

/// Containers and init containers of a workload's pod.
fn containers(w: &Value) -> Vec<&Value> {
    let pod = at(w, "/spec/template/spec");
    list(&pod["initContainers"])
        .iter()
        .chain(list(&pod["containers"]))
        .collect()
}

fn container<'a>(w: &'a Value, n: &str) -> &'a Value {
    containers(w)
        .into_iter()
        .find(|c| c["name"] == n)
        .unwrap_or_else(|| panic!("{} {} has no container {n}", kind(w), name(w)))
}

fn strings(v: &Value) -> Vec<String> {
    list(v)
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_string()
        })
        .collect()
}

/// The program a container runs (basename) and its arguments.
fn command(c: &Value) -> Option<(String, Vec<String>)> {
    let mut words = strings(&c["command"]);
    words.extend(strings(&c["args"]));
    let program = words.first()?.rsplit('/').next()?.to_string();
    Some((program, words[1..].to_vec()))
}

fn config_map<'a>(docs: &'a [(String, Value)], n: &str) -> &'a serde_json::Map<String, Value> {
    at(object(docs, "ConfigMap", n), "/data")
        .as_object()
        .expect("ConfigMap data")
}

/// A container's environment as the kubelet would set it, with sample
/// values for `fieldRef`s.
fn container_env(docs: &[(String, Value)], c: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for from in list(&c["envFrom"]) {
        let n = from["configMapRef"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("envFrom other than a ConfigMap: {from}"));
        for (k, v) in config_map(docs, n) {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("ConfigMap {n}: {k} is not a string"));
            env.insert(k.clone(), v.to_string());
        }
    }
    for e in list(&c["env"]) {
        let k = e["name"].as_str().expect("env name").to_string();
        let v = if let Some(v) = e.get("value") {
            v.as_str()
                .unwrap_or_else(|| panic!("env {k}: not a string"))
                .to_string()
        } else if let Some(path) = e.pointer("/valueFrom/fieldRef/fieldPath") {
            let path = path.as_str().unwrap();
            FIELD_SAMPLES
                .iter()
                .find(|(p, _)| *p == path)
                .unwrap_or_else(|| panic!("env {k}: no sample for fieldRef {path}"))
                .1
                .to_string()
        } else if let Some(r) = e.pointer("/valueFrom/configMapKeyRef") {
            let (n, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
            config_map(docs, n)[key].as_str().unwrap().to_string()
        } else {
            panic!("env {k}: cannot resolve {e}")
        };
        env.insert(k, v);
    }
    env
}

/// The volume mounted at `path` in container `c` of workload `w`, with the
/// mount.
fn mounted<'a>(w: &'a Value, c: &'a Value, path: &str) -> Option<(&'a Value, &'a Value)> {
    let m = list(&c["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == path)?;
    let volume = list(&w["spec"]["template"]["spec"]["volumes"])
        .iter()
        .find(|v| v["name"] == m["name"])?;
    Some((volume, m))
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("selector labels");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kubernetes_manifests_parse_and_have_the_documented_shape() {
    let docs = manifests();
    for (file, v) in &docs {
        assert!(
            v["apiVersion"].is_string() && v["kind"].is_string(),
            "{file}: a document without apiVersion/kind: {v}"
        );
        if kind(v) == "Kustomization" {
            continue;
        }
        assert!(!name(v).is_empty(), "{file}: a {} without a name", kind(v));
        if kind(v) != "Namespace" {
            assert_eq!(
                v["metadata"]["namespace"],
                NAMESPACE,
                "{file}: {} {} is not in {NAMESPACE}",
                kind(v),
                name(v)
            );
        }
    }

    // kustomization.yaml lists every other manifest.
    let (kfile, kust) = docs
        .iter()
        .find(|(_, v)| kind(v) == "Kustomization")
        .expect("a kustomization.yaml");
    let listed: BTreeSet<String> = strings(&kust["resources"]).into_iter().collect();
    let files: BTreeSet<String> = docs
        .iter()
        .map(|(f, _)| f.clone())
        .filter(|f| f != kfile)
        .collect();
    assert_eq!(
        listed, files,
        "{kfile}: resources differ from the manifests"
    );

    let ns = object(&docs, "Namespace", NAMESPACE);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
        "the agent pods are privileged: the namespace must admit them"
    );

    let version = env!("CARGO_PKG_VERSION");
    for w in workloads(&docs) {
        let what = format!("{} {}", kind(w), name(w));
        assert!(
            labels_match(
                at(w, "/spec/selector/matchLabels"),
                at(w, "/spec/template/metadata/labels")
            ),
            "{what}: the selector does not match the pod labels"
        );
        let pod = at(w, "/spec/template/spec");
        let mut volumes: BTreeSet<&str> = list(&pod["volumes"])
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        for t in list(&w["spec"]["volumeClaimTemplates"]) {
            volumes.insert(name(t));
        }
        for c in containers(w) {
            let cname = c["name"].as_str().unwrap_or_default();
            let image = c["image"].as_str().unwrap_or_default();
            let tag = image.rsplit('/').next().unwrap().split_once(':');
            assert!(
                tag.is_some_and(|(_, t)| !t.is_empty() && t != "latest"),
                "{what}/{cname}: image {image:?} is not pinned to a version"
            );
            if image.starts_with(WEFT_IMAGE) {
                assert_eq!(
                    image,
                    format!("{WEFT_IMAGE}:{version}"),
                    "{what}/{cname}: the weft image is tagged with the workspace version"
                );
                assert!(
                    command(c).is_some(),
                    "{what}/{cname}: name the binary (command:), the image runs none by default"
                );
            }
            for m in list(&c["volumeMounts"]) {
                let v = m["name"].as_str().unwrap_or_default();
                assert!(
                    volumes.contains(v),
                    "{what}/{cname}: mounts unknown volume {v:?}"
                );
            }
        }
    }

    // The agent: every node, the node's network namespace, privileged (which
    // Bidirectional propagation requires), the node's name.
    let ds = object(&docs, "DaemonSet", "weft-agent");
    let pod = at(ds, "/spec/template/spec");
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(
        pod["dnsPolicy"], "ClusterFirstWithHostNet",
        "a host-network agent must still resolve the controllers' Service"
    );
    assert!(
        list(&pod["tolerations"])
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "the agent must run on every node, tainted or not"
    );
    let agent = container(ds, "weft-agent");
    assert_eq!(agent["securityContext"]["privileged"], true);
    let env = container_env(&docs, agent);
    assert_eq!(
        env.get("WEFT_NODE_NAME").map(String::as_str),
        Some("node-1")
    );
    let node_name = list(&agent["env"])
        .iter()
        .find(|e| e["name"] == "WEFT_NODE_NAME")
        .unwrap();
    assert_eq!(
        node_name.pointer("/valueFrom/fieldRef/fieldPath"),
        Some(&Value::from("spec.nodeName"))
    );
    let (netns, m) = mounted(ds, agent, "/run/netns").expect("/run/netns mounted");
    assert_eq!(netns["hostPath"]["path"], "/run/netns");
    assert_eq!(
        m["mountPropagation"], "Bidirectional",
        "namespaces bind-mounted by the agent must reach the node"
    );
    for path in ["/var/lib/weft", "/run/weft"] {
        let (v, _) = mounted(ds, agent, path).unwrap_or_else(|| panic!("{path} not mounted"));
        assert_eq!(v["hostPath"]["path"], path, "{path} must be the node's");
    }
    let (modules, m) = mounted(ds, agent, "/lib/modules").expect("/lib/modules mounted");
    assert_eq!(modules["hostPath"]["path"], "/lib/modules");
    assert_eq!(m["readOnly"], true);

    // The controllers: two or more, unprivileged.
    let dep = object(&docs, "Deployment", "weft-controller");
    let replicas = at(dep, "/spec/replicas").as_u64().expect("replicas");
    assert!(
        replicas >= 2,
        "{replicas} controller(s): agents need one to fail over to"
    );
    let pod = at(dep, "/spec/template/spec");
    let ctl = container(dep, "weft-controller");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(ctl["securityContext"]["privileged"], true);
    assert_eq!(ctl["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(ctl["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        ctl["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert!(list(&ctl["securityContext"]["capabilities"]["add"]).is_empty());
    assert!(pod.get("hostNetwork").is_none_or(|h| h == false));
    let pdb = object(&docs, "PodDisruptionBudget", "weft-controller");
    assert!(labels_match(
        at(pdb, "/spec/selector/matchLabels"),
        at(dep, "/spec/template/metadata/labels")
    ));

    // The controllers' Service: QUIC on UDP 7470.
    let svc = object(&docs, "Service", "weft-controller");
    assert!(
        list(at(svc, "/spec/ports"))
            .iter()
            .any(|p| p["port"] == 7470 && p["protocol"] == "UDP"),
        "Service weft-controller: no UDP 7470"
    );

    // etcd: a StatefulSet with storage and its headless Service.
    let sts = object(&docs, "StatefulSet", "weft-etcd");
    let svc = object(
        &docs,
        "Service",
        at(sts, "/spec/serviceName").as_str().unwrap(),
    );
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert!(labels_match(
        at(svc, "/spec/selector"),
        at(sts, "/spec/template/metadata/labels")
    ));
    let claims = list(at(sts, "/spec/volumeClaimTemplates"));
    assert!(!claims.is_empty(), "etcd without a persistent volume");
    let etcd = container(sts, "etcd");
    assert!(
        list(&etcd["volumeMounts"])
            .iter()
            .any(|m| m["name"] == name(&claims[0])),
        "etcd does not mount its volume"
    );

    // Every Secret the pods use is created by hand (it holds keys): the
    // README must say how.
    let readme = read(&deploy("kubernetes/README.md"));
    for w in workloads(&docs) {
        for v in list(&w["spec"]["template"]["spec"]["volumes"]) {
            if let Some(s) = v.pointer("/secret/secretName").and_then(Value::as_str) {
                assert!(
                    readme.contains(&format!("create secret generic {s}")),
                    "deploy/kubernetes/README.md does not say how to create Secret {s}"
                );
            }
        }
    }
}

#[test]
fn kubernetes_flags_and_variables_are_accepted_by_the_binaries() {
    let docs = manifests();
    let tmp = TempDir::new("k8s");
    let pki = controller_pki(&tmp);
    let mut seen = BTreeSet::new();
    for w in workloads(&docs) {
        for c in containers(w) {
            let Some((program, args)) = command(c) else {
                continue;
            };
            if !DAEMONS.contains(&program.as_str()) {
                continue;
            }
            let what = format!("{} {}/{}", kind(w), name(w), c["name"].as_str().unwrap());
            assert!(
                !args.iter().any(|a| a.contains("$(")),
                "{what}: $(VAR) arguments are not checked by this test"
            );
            let mut env = container_env(&docs, c);
            if program == "weft-controller" {
                // --check-config loads the TLS files: the manifest's directory
                // must be where the Secret is mounted; the test's PKI stands in.
                let dir = env
                    .get("WEFT_TLS_DIR")
                    .cloned()
                    .unwrap_or_else(|| "/etc/weft/tls".into());
                let (v, _) = mounted(w, c, &dir)
                    .unwrap_or_else(|| panic!("{what}: nothing mounted at its TLS dir {dir}"));
                assert!(
                    v.pointer("/secret/secretName").is_some(),
                    "{what}: {dir} is not a Secret"
                );
                env.insert("WEFT_TLS_DIR".into(), pki.clone());
            }
            let config = check_invocation(&Invocation {
                origin: what.clone(),
                binary: program.clone(),
                args,
                env,
            });
            if program == "weft-agent" {
                // The directories the agent uses are the node's.
                for key in ["state_dir", "run_dir", "netns_dir"] {
                    let dir = config[key].as_str().unwrap();
                    let (v, _) = mounted(w, c, dir)
                        .unwrap_or_else(|| panic!("{what}: its {key} {dir} is not mounted"));
                    assert_eq!(
                        v["hostPath"]["path"], dir,
                        "{what}: {key} {dir} is not the node's {dir}"
                    );
                }
                let tls = config["tls_dir"].as_str().unwrap();
                assert!(
                    mounted(w, c, tls).is_some(),
                    "{what}: its TLS dir {tls} is not mounted"
                );
                assert!(
                    !config["controllers"].as_array().unwrap().is_empty(),
                    "{what}: the agent in Kubernetes runs in cluster mode"
                );
            }
            seen.insert(program);
        }
    }
    assert_eq!(
        seen,
        DAEMONS.map(String::from).into(),
        "the manifests run both daemons"
    );
}

/// `HOST:PORT` or `scheme://HOST:PORT` → (HOST, PORT).
fn host_port(addr: &str) -> (String, u64) {
    let addr = addr.split_once("://").map_or(addr, |(_, a)| a);
    let (h, p) = addr.rsplit_once(':').expect("HOST:PORT");
    (h.to_string(), p.parse().expect("port"))
}

/// The container port a Service port leads to (by number or name), on the
/// pods of `w`.
fn target_port(svc: &Value, port: &Value, w: &Value) -> u64 {
    let target = port.get("targetPort").unwrap_or(&port["port"]);
    containers(w)
        .iter()
        .flat_map(|c| list(&c["ports"]))
        .find(|p| p["containerPort"] == *target || p["name"] == *target)
        .unwrap_or_else(|| {
            panic!(
                "Service {}: port {port} leads to no container port",
                name(svc)
            )
        })["containerPort"]
        .as_u64()
        .unwrap()
}

/// The workload a Service selects.
fn selected<'a>(docs: &'a [(String, Value)], svc: &Value) -> &'a Value {
    workloads(docs)
        .find(|w| {
            labels_match(
                at(svc, "/spec/selector"),
                at(w, "/spec/template/metadata/labels"),
            )
        })
        .unwrap_or_else(|| panic!("Service {} selects no workload", name(svc)))
}

#[test]
fn kubernetes_names_and_ports_line_up() {
    let docs = manifests();
    let dep = object(&docs, "Deployment", "weft-controller");
    let ctl_env = container_env(&docs, container(dep, "weft-controller"));
    let ds = object(&docs, "DaemonSet", "weft-agent");
    let agent_env = container_env(&docs, container(ds, "weft-agent"));

    // Agents dial Services of the controllers, on a UDP port that leads to
    // the port the controllers listen on.
    let listen = host_port(ctl_env.get("WEFT_LISTEN").map_or("0.0.0.0:7470", |s| s)).1;
    let controllers = agent_env.get("WEFT_CONTROLLER").expect("WEFT_CONTROLLER");
    for c in controllers.split(',') {
        let (host, port) = host_port(c);
        let svc = object(&docs, "Service", host.split('.').next().unwrap());
        assert!(
            !host.contains('.'),
            "agents dial {host}: the controller certificate (README) is issued for {}",
            name(svc)
        );
        let p = list(at(svc, "/spec/ports"))
            .iter()
            .find(|p| p["port"] == port)
            .unwrap_or_else(|| panic!("Service {host} has no port {port}"));
        assert_eq!(p["protocol"], "UDP", "QUIC runs over UDP");
        let w = selected(&docs, svc);
        assert_eq!(name(w), "weft-controller");
        assert_eq!(
            target_port(svc, p, w),
            listen,
            "{c} does not reach the controllers' --listen"
        );
        let cp = list(&container(w, "weft-controller")["ports"])
            .iter()
            .find(|x| x["containerPort"] == listen)
            .unwrap();
        assert_eq!(cp["protocol"], "UDP");
    }

    // The controllers reach etcd through its Service.
    for e in ctl_env["WEFT_ETCD_ENDPOINTS"].split(',') {
        let (host, port) = host_port(e);
        let svc = object(&docs, "Service", host.split('.').next().unwrap());
        let p = list(at(svc, "/spec/ports"))
            .iter()
            .find(|p| p["port"] == port)
            .unwrap_or_else(|| panic!("Service {host} has no port {port}"));
        let w = selected(&docs, svc);
        assert_eq!(kind(w), "StatefulSet");
        assert_eq!(target_port(svc, p, w), 2379);
    }
}

#[test]
fn kubernetes_probes_and_image_match_the_binaries() {
    let docs = manifests();
    let dockerfile = read(&deploy("kubernetes/Dockerfile"));
    assert!(
        dockerfile.contains("COPY --from=build /out/ /usr/local/bin/"),
        "the Dockerfile installs the binaries into /usr/local/bin"
    );
    assert!(dockerfile.contains("nftables"), "the agent runs nft");
    let tmp = TempDir::new("probe");
    for w in workloads(&docs) {
        for c in containers(w) {
            if !c["image"]
                .as_str()
                .unwrap_or_default()
                .starts_with(WEFT_IMAGE)
            {
                continue;
            }
            let what = format!("{} {}/{}", kind(w), name(w), c["name"].as_str().unwrap());
            let words = strings(&c["command"]);
            let mut programs = vec![words[0].clone()];
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                let cmd = strings(&c[probe]["exec"]["command"]);
                if cmd.is_empty() {
                    continue;
                }
                programs.push(cmd[0].clone());
                if cmd[0].ends_with("/weftctl") {
                    // Run it against a socket that does not exist: it must get
                    // past parsing (exit 1 and the path), not be a usage error (2).
                    let sock = tmp.0.join("agent.sock");
                    let mut args = cmd[1..].to_vec();
                    let i = args
                        .iter()
                        .position(|a| a == "--agent-socket")
                        .unwrap_or_else(|| panic!("{what}: {probe} names no --agent-socket"));
                    assert_eq!(
                        mounted(
                            w,
                            c,
                            Path::new(&args[i + 1]).parent().unwrap().to_str().unwrap()
                        )
                        .map(|(v, _)| v["hostPath"]["path"].clone()),
                        Some(Value::from("/run/weft")),
                        "{what}: {probe} talks to a socket outside the agent's run dir"
                    );
                    args[i + 1] = sock.to_str().unwrap().to_string();
                    let out = run(&weft_tests::bin_path("weftctl"), &args, &BTreeMap::new());
                    let err = text(&out.stderr);
                    assert_eq!(out.status.code(), Some(1), "{what}: {probe} {cmd:?}: {err}");
                    assert!(
                        err.contains(&format!("cannot reach weft-agent at {}", sock.display())),
                        "{what}: {probe}: {err}"
                    );
                }
            }
            for p in programs {
                if let Some(bin) = p.strip_prefix("/usr/local/bin/") {
                    assert!(
                        dockerfile.contains(&format!("target/release/{bin}")),
                        "{what}: runs {p}, which the Dockerfile does not install"
                    );
                }
            }
            if words.join(" ").contains("modprobe") {
                assert!(dockerfile.contains("kmod"), "{what}: modprobe needs kmod");
            }
        }
    }
}
