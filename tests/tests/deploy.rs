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
//!   succeeds and shows each value; so are the options the examples show
//!   commented out (etcd TLS, JSON logs), once enabled;
//! - metrics and health: the examples and manifests run both daemons with
//!   `--metrics-listen`; the probes ask the paths a real controller serves
//!   (`/healthz`, `/readyz`) on the port it listens on, at an address the
//!   kubelet reaches; the scrape annotations name that port;
//! - certificate rotation: the agent's unit reloads on SIGHUP; the
//!   controller's, whose TLS files are systemd credentials copied at start,
//!   has no reload that would silently keep the old certificate;
//! - the optional `etcd-tls` kustomize component patches the controllers
//!   into a configuration the binary accepts.
//!
//! Needs the binaries (`cargo build --workspace`), not root.
//! `systemd-analyze` (Debian package `systemd`) is required under CI=true;
//! `kubectl` (for `kubectl kustomize`) is used when installed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_json::Value;
use weft_tests::TempDir;

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
    ("status.podIP", POD_IP),
];
/// `WEFT_` variables the daemons read that are not flags.
const NON_FLAG_VARIABLES: [&str; 1] = ["WEFT_LOG"];
/// The `--metrics-listen` ports of the examples and manifests (README).
const AGENT_METRICS_PORT: u16 = 7472;
const CONTROLLER_METRICS_PORT: u16 = 7471;
/// What the kubelet probes: the pod IP (the sample of `status.podIP`).
const POD_IP: &str = "10.1.0.5";

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

/// `# WEFT_X=value` lines of an environment file: options shown commented out.
fn commented_env(path: &Path) -> BTreeMap<String, String> {
    read(path)
        .lines()
        .filter_map(|l| l.trim().strip_prefix('#'))
        .map(str::trim)
        .filter(|l| l.starts_with("WEFT_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// An example TOML file with its commented-out settings (`# key = value`
/// lines that parse as one TOML key) enabled, and how many there were.
fn uncommented_toml(file: &Path) -> (String, usize) {
    let mut n = 0;
    let text = read(file)
        .lines()
        .map(|line| {
            if let Some(rest) = line.strip_prefix("# ") {
                if toml::from_str::<toml::Table>(rest).is_ok_and(|t| t.len() == 1) {
                    n += 1;
                    return rest.to_string();
                }
            }
            line.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n");
    (text, n)
}

/// `IP:PORT` of a `--metrics-listen` value.
fn metrics_addr(what: &str, v: &Value) -> std::net::SocketAddr {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: runs without --metrics-listen (metrics_listen = {v})"))
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
        // Metrics on loopback: every other address of the host also
        // answers weft's namespaces (the example says why).
        let m = metrics_addr(&inv.origin, &config["metrics_listen"]);
        assert!(
            m.ip().is_loopback() && m.port() == AGENT_METRICS_PORT,
            "{}: metrics-listen {m}, expected 127.0.0.1:{AGENT_METRICS_PORT}",
            inv.origin
        );
        // The settings shown commented out are right too.
        let (text, n) = uncommented_toml(&file);
        assert!(
            text.contains("log-format = \"json\""),
            "{}: no commented log-format = \"json\"",
            inv.origin
        );
        let tmp = TempDir::new(&format!("deploy-uncommented-{example}"));
        let enabled = tmp.join(example);
        std::fs::write(&enabled, text).unwrap();
        let mut args = exec[1..].to_vec();
        args[at] = enabled.to_str().unwrap().to_string();
        let inv = Invocation {
            origin: format!("weft-agent.service with {example}, its {n} commented settings on"),
            binary: "weft-agent".into(),
            args,
            env: BTreeMap::new(),
        };
        let config = check_invocation(&inv);
        assert_file_arrived(&inv.origin, &enabled, &config);
        assert_eq!(config["log_format"], "json", "{}", inv.origin);
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
    let tmp = TempDir::new("deploy-unit");
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
    let env_with_tls = {
        let mut e = env.clone();
        e.extend(example.clone());
        e
    };
    // EnvironmentFile= overrides Environment=.
    env.extend(example);
    let config = check_invocation(&Invocation {
        origin: "weft-controller.service with controller.env".into(),
        binary: "weft-controller".into(),
        args: exec[1..].to_vec(),
        env,
    });
    assert_eq!(config["tls_dir"], tls.as_str());
    let m = metrics_addr("controller.env", &config["metrics_listen"]);
    assert_eq!(
        m.port(),
        CONTROLLER_METRICS_PORT,
        "controller.env: metrics port"
    );

    // The options controller.env shows commented out: etcd over TLS with a
    // user, whose files are credentials too (commented LoadCredential=
    // lines of the unit to enable), and JSON logs. All on at once, with
    // https:// endpoints and the credentials made of the test PKI.
    let commented = commented_env(&deploy("examples/controller.env"));
    for k in [
        "WEFT_ETCD_CA",
        "WEFT_ETCD_CERT",
        "WEFT_ETCD_KEY",
        "WEFT_ETCD_USER",
        "WEFT_ETCD_PASSWORD_FILE",
        "WEFT_LOG_FORMAT",
    ] {
        assert!(
            commented.contains_key(k),
            "controller.env does not show {k} (commented out)"
        );
    }
    let creds_dir = format!("/run/credentials/{}/", ctl.name);
    let unit_creds: BTreeMap<String, String> = read(&deploy("systemd/weft-controller.service"))
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix('#')?
                .trim()
                .strip_prefix("LoadCredential=")
        })
        .map(|c| {
            let (id, path) = c.split_once(':').expect("LoadCredential=ID:PATH");
            (id.to_string(), path.to_string())
        })
        .collect();
    let pki = Path::new(&tls);
    let creds = tmp.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    let mut env = env_with_tls.clone();
    for (k, v) in &commented {
        let v = match v.strip_prefix(&creds_dir) {
            Some(id) => {
                let source = unit_creds.get(id).unwrap_or_else(|| {
                    panic!(
                        "controller.env: {k}={v}, but {} has no (commented) LoadCredential={id}:…",
                        ctl.name
                    )
                });
                assert!(
                    source.starts_with("/etc/weft/"),
                    "LoadCredential={id}:{source}: expected a file under /etc/weft"
                );
                // What the test puts there.
                let stand_in = creds.join(id);
                match k.as_str() {
                    "WEFT_ETCD_CA" => std::fs::copy(pki.join("ca.pem"), &stand_in).map(|_| ()),
                    "WEFT_ETCD_CERT" => std::fs::copy(pki.join("cert.pem"), &stand_in).map(|_| ()),
                    "WEFT_ETCD_KEY" => std::fs::copy(pki.join("key.pem"), &stand_in).map(|_| ()),
                    "WEFT_ETCD_PASSWORD_FILE" => std::fs::write(&stand_in, "hunter2\n"),
                    other => panic!("controller.env: no stand-in for credential {other}"),
                }
                .unwrap();
                stand_in.to_str().unwrap().to_string()
            }
            None => v.clone(),
        };
        env.insert(k.clone(), v);
    }
    let https = env["WEFT_ETCD_ENDPOINTS"].replace("http://", "https://");
    env.insert("WEFT_ETCD_ENDPOINTS".into(), https);
    let config = check_invocation(&Invocation {
        origin: "weft-controller.service with controller.env, its commented options on".into(),
        binary: "weft-controller".into(),
        args: exec[1..].to_vec(),
        env,
    });
    assert_eq!(config["etcd_tls"], true);
    assert_eq!(config["log_format"], "json");
}

#[test]
fn units_rotate_certificates_the_way_the_files_arrive() {
    // The agent reads /etc/weft/tls itself: SIGHUP reloads it.
    let agent = Unit::load("weft-agent.service");
    assert_eq!(
        agent.one("ExecReload"),
        "/bin/kill -HUP $MAINPID",
        "weft-agent.service: `systemctl reload` must send SIGHUP (certificate rotation)"
    );
    for example in ["agent.toml", "agent-standalone.toml"] {
        let t: toml::Table =
            toml::from_str(&read(&deploy(&format!("examples/{example}")))).unwrap();
        if let Some(dir) = t.get("tls-dir").and_then(|v| v.as_str()) {
            assert!(
                !dir.starts_with("/run/credentials"),
                "{example}: tls-dir {dir}: the agent reloads files it reads directly"
            );
        }
    }
    // The controller's TLS files are credentials, copied by systemd at
    // start: SIGHUP would re-read the old copies, so the unit must not
    // offer a reload (rotation is a restart; the unit says so).
    let ctl = Unit::load("weft-controller.service");
    if ctl.all("Environment").contains(&"WEFT_TLS_DIR=%d") {
        assert!(
            ctl.all("ExecReload").is_empty(),
            "weft-controller.service: ExecReload= with the TLS files as credentials would \
             reload the copies made at start, keeping the old certificate"
        );
    } else {
        assert_eq!(ctl.one("ExecReload"), "/bin/kill -HUP $MAINPID");
    }
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
    let tmp = TempDir::new("deploy-verify");
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
        let path = tmp.join(name);
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

/// Kubernetes' `$(VAR)` in an env `value`: the value of a variable defined
/// before it (by `envFrom` or an earlier `env` entry); `$$` is a `$`;
/// anything else stays as written.
fn expand_k8s(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        if let Some(r) = after.strip_prefix('(') {
            if let Some(v) = r.find(')').and_then(|j| Some((env.get(&r[..j])?, j))) {
                out.push_str(v.0);
                rest = &r[v.1 + 1..];
                continue;
            }
        }
        out.push('$');
        rest = after;
    }
    out.push_str(rest);
    out
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
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("env {k}: not a string"));
            let expanded = expand_k8s(v, &env);
            assert!(
                !expanded.contains("$("),
                "env {k}={v}: refers to a variable not defined before it"
            );
            expanded
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
    let tmp = TempDir::new("deploy-k8s");
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
    let tmp = TempDir::new("deploy-probe");
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
                    let sock = tmp.join("agent.sock");
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

/// The httpGet probe `probe` of container `c`: (path, port as named or
/// numbered, host if given).
fn http_probe<'a>(what: &str, c: &'a Value, probe: &str) -> (&'a str, &'a Value, Option<&'a str>) {
    let get = c[probe]
        .get("httpGet")
        .unwrap_or_else(|| panic!("{what}: no {probe} with httpGet"));
    assert!(
        get.get("scheme").is_none_or(|s| s == "HTTP"),
        "{what}: {probe}: the metrics listener speaks plain HTTP"
    );
    (
        get["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {probe}: no path")),
        &get["port"],
        get.get("host").and_then(Value::as_str),
    )
}

#[test]
fn kubernetes_metrics_ports_and_probes_line_up() {
    let docs = manifests();
    let mut seen = BTreeSet::new();
    for w in workloads(&docs) {
        let pod = at(w, "/spec/template/spec");
        let host_network = pod["hostNetwork"] == true;
        for c in containers(w) {
            let Some((program, _)) = command(c) else {
                continue;
            };
            if !DAEMONS.contains(&program.as_str()) {
                continue;
            }
            let what = format!("{} {}/{}", kind(w), name(w), c["name"].as_str().unwrap());
            let env = container_env(&docs, c);
            let listen: std::net::SocketAddr = env
                .get("WEFT_METRICS_LISTEN")
                .unwrap_or_else(|| panic!("{what}: no WEFT_METRICS_LISTEN: no metrics, no probes"))
                .parse()
                .unwrap_or_else(|e| panic!("{what}: WEFT_METRICS_LISTEN: {e}"));
            let want = if program == "weft-agent" {
                AGENT_METRICS_PORT
            } else {
                CONTROLLER_METRICS_PORT
            };
            assert_eq!(listen.port(), want, "{what}: metrics port");
            if host_network {
                assert!(
                    !listen.ip().is_unspecified(),
                    "{what}: {listen} on the node's network namespace would also answer on \
                     weft0's address, the tunnel and every interface of the node"
                );
            }
            // The port named "metrics" is the listener's.
            let port = list(&c["ports"])
                .iter()
                .find(|p| p["name"] == "metrics")
                .unwrap_or_else(|| panic!("{what}: no container port named metrics"));
            assert_eq!(port["containerPort"], u64::from(listen.port()), "{what}");
            assert!(port.get("protocol").is_none_or(|p| p == "TCP"), "{what}");
            // Liveness and readiness ask the listener, where the kubelet
            // reaches it: the pod IP unless the probe names a host.
            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                let (p, port, host) = http_probe(&what, c, probe);
                assert_eq!(p, path, "{what}: {probe}");
                assert!(
                    *port == "metrics" || *port == u64::from(listen.port()),
                    "{what}: {probe} asks port {port}, the listener is on {}",
                    listen.port()
                );
                match host {
                    Some(h) => assert_eq!(
                        h.parse::<std::net::IpAddr>().ok(),
                        Some(listen.ip()),
                        "{what}: {probe} asks {h}, the listener is on {listen}"
                    ),
                    None => assert!(
                        listen.ip().is_unspecified() || listen.ip().to_string() == POD_IP,
                        "{what}: the kubelet probes the pod IP, the listener is on {listen} \
                         (use status.podIP, or give the probes a host)"
                    ),
                }
            }
            // Scrape annotations name the listener, reachable from outside.
            let ann = &w["spec"]["template"]["metadata"]["annotations"];
            if ann["prometheus.io/scrape"] == "true" {
                assert_eq!(
                    ann["prometheus.io/port"],
                    listen.port().to_string(),
                    "{what}: prometheus.io/port"
                );
                assert!(
                    ann.get("prometheus.io/path")
                        .is_none_or(|p| p == "/metrics"),
                    "{what}: prometheus.io/path"
                );
                assert!(
                    !listen.ip().is_loopback(),
                    "{what}: scraped, but the listener is on loopback"
                );
            }
            seen.insert(program);
        }
    }
    assert_eq!(seen, DAEMONS.map(String::from).into());
}

/// Kills a child process when dropped (also on panic).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` on 127.0.0.1:port: (status, body), or None if nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let status = r.split_whitespace().nth(1)?.parse().ok()?;
    let body = r.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

#[test]
fn probe_paths_are_served_by_a_real_controller() {
    // Every httpGet path of the manifests, asked of a real weft-controller
    // (the listener is the daemons' common one) whose etcd is not there:
    // alive, not ready, and saying why.
    let docs = manifests();
    let mut paths = BTreeSet::new();
    for w in workloads(&docs) {
        for c in containers(w) {
            if !c["image"]
                .as_str()
                .unwrap_or_default()
                .starts_with(WEFT_IMAGE)
            {
                continue;
            }
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                if let Some(p) = c[probe].pointer("/httpGet/path").and_then(Value::as_str) {
                    paths.insert((probe, p.to_string()));
                }
            }
        }
    }
    assert!(!paths.is_empty(), "no httpGet probes");
    let tmp = TempDir::new("deploy-probe-live");
    let pki = controller_pki(&tmp);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(tmp.join("controller.log")).unwrap();
    let mut cmd = Command::new(weft_tests::bin_path("weft-controller"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WEFT_") {
            cmd.env_remove(k);
        }
    }
    let _ctl = Child(
        cmd.args([
            "--etcd-endpoints",
            "http://127.0.0.1:9",
            "--tls-dir",
            &pki,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start weft-controller"),
    );
    let up = weft_tests::wait_until(std::time::Duration::from_secs(15), || {
        http_get(port, "/healthz").is_some()
    });
    assert!(
        up,
        "weft-controller --metrics-listen 127.0.0.1:{port} never answered: {}",
        read(&tmp.join("controller.log"))
    );
    for (probe, path) in &paths {
        let (status, body) =
            http_get(port, path).unwrap_or_else(|| panic!("{probe} {path}: no answer"));
        match *probe {
            "readinessProbe" => {
                assert_eq!(status, 503, "{probe} {path} without etcd: {body}");
                assert!(body.contains("etcd"), "{probe} {path}: {body}");
            }
            _ => assert_eq!(status, 200, "{probe} {path}: {body}"),
        }
    }
    let (status, body) = http_get(port, "/metrics").expect("/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("weft_"), "/metrics: {body}");
}

/// The subset of Kubernetes' strategic merge patch the components use:
/// maps merge, lists of objects merge by `name` (`mountPath` for volume
/// mounts), anything else is replaced.
fn strategic_merge(base: &mut Value, patch: &Value) {
    fn key(v: &Value) -> Option<(&'static str, &Value)> {
        ["mountPath", "name"]
            .into_iter()
            .find_map(|k| Some((k, v.get(k)?)))
    }
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(bv) => strategic_merge(bv, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(p)) if p.iter().all(|x| key(x).is_some()) => {
            for item in p {
                let (k, id) = key(item).unwrap();
                match b.iter_mut().find(|x| x.get(k) == Some(id)) {
                    Some(existing) => strategic_merge(existing, item),
                    None => b.push(item.clone()),
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    serde_norway::Deserializer::from_str(&read(path))
        .map(|de| Value::deserialize(de).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn kubernetes_etcd_tls_component_patches_the_controllers() {
    let docs = manifests();
    let dir = deploy("kubernetes/etcd-tls");
    let comp = &yaml_docs(&dir.join("kustomization.yaml"))[0];
    assert_eq!(comp["kind"], "Component");
    // Offered (commented out) where `kubectl apply -k` would take it.
    assert!(
        read(&deploy("kubernetes/kustomization.yaml")).contains("#   - etcd-tls"),
        "kustomization.yaml does not offer the etcd-tls component"
    );
    let mut dep = object(&docs, "Deployment", "weft-controller").clone();
    let patches = list(&comp["patches"]);
    assert!(!patches.is_empty(), "etcd-tls patches nothing");
    for p in patches {
        let file = dir.join(p["path"].as_str().expect("patches: path"));
        for patch in yaml_docs(&file) {
            assert_eq!(
                (kind(&patch), name(&patch)),
                ("Deployment", "weft-controller"),
                "{}: patches something else",
                file.display()
            );
            strategic_merge(&mut dep, &patch);
        }
    }
    let c = container(&dep, "weft-controller");
    let mut env = container_env(&docs, c);
    for k in ["WEFT_ETCD_CA", "WEFT_ETCD_CERT", "WEFT_ETCD_KEY"] {
        let f = env
            .get(k)
            .unwrap_or_else(|| panic!("etcd-tls: no {k}"))
            .clone();
        let parent = Path::new(&f).parent().unwrap().to_str().unwrap();
        let (v, _) = mounted(&dep, c, parent)
            .unwrap_or_else(|| panic!("etcd-tls: {k}={f}: nothing mounted at {parent}"));
        let secret = v
            .pointer("/secret/secretName")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("etcd-tls: {parent} is not a Secret"));
        assert!(
            read(&deploy("kubernetes/README.md"))
                .contains(&format!("create secret generic {secret}")),
            "deploy/kubernetes/README.md does not say how to create Secret {secret}"
        );
    }
    // The controller accepts it, with https:// endpoints (the component
    // leaves them to the ConfigMap) and the test PKI standing in for both
    // Secrets (it has ca.pem, cert.pem, key.pem too).
    let tmp = TempDir::new("deploy-etcd-tls");
    let pki = controller_pki(&tmp);
    for (k, v) in env.iter_mut() {
        if k == "WEFT_TLS_DIR" {
            *v = pki.clone();
        } else if k.starts_with("WEFT_ETCD_") && v.starts_with('/') {
            let file = Path::new(v.as_str()).file_name().unwrap().to_owned();
            *v = Path::new(&pki).join(file).to_str().unwrap().to_string();
        } else if k == "WEFT_ETCD_ENDPOINTS" {
            *v = v.replace("http://", "https://");
        }
    }
    let config = check_invocation(&Invocation {
        origin: "Deployment weft-controller with the etcd-tls component".into(),
        binary: "weft-controller".into(),
        args: command(c).unwrap().1,
        env,
    });
    assert_eq!(config["etcd_tls"], true);

    // kubectl builds the tree with and without the component.
    let Some(kubectl) = which("kubectl") else {
        eprintln!("NOTE: kubectl not found: `kubectl kustomize` was NOT run on deploy/kubernetes");
        return;
    };
    let base = deploy("kubernetes");
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(&base)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("WEFT_ETCD_CA"));
    let overlay = TempDir::new("deploy-overlay");
    let rel = |p: &Path| {
        // kustomize wants relative paths: up from the overlay to /, down to p.
        let ups = overlay.path().components().count() - 1;
        format!(
            "{}{}",
            "../".repeat(ups),
            p.to_str().unwrap().trim_start_matches('/')
        )
    };
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n  - {}\n",
            rel(&base),
            rel(&dir)
        ),
    )
    .unwrap();
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(overlay.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize with etcd-tls: {}",
        text(&out.stderr)
    );
    let built = text(&out.stdout);
    for k in [
        "WEFT_ETCD_CA",
        "WEFT_ETCD_CERT",
        "WEFT_ETCD_KEY",
        "weft-etcd-client",
    ] {
        assert!(built.contains(k), "kubectl kustomize with etcd-tls: no {k}");
    }
}
