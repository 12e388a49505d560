//! The deploy files are what operators run, so they are tested like code.
//! Here the systemd units and the example configs (the Kubernetes
//! manifests in `deploy_kubernetes` and `deploy_kubernetes_probes`, the CNI
//! config in `deploy_cni`; what they share in `weft_tests::deploy`):
//!
//! - the systemd units pass `systemd-analyze verify`, keep the hardening they
//!   promise (and stay under an exposure score), and the agent's unit never
//!   gets a private mount namespace;
//! - every flag and `WEFT_*` variable that a unit or an example config
//!   hands to `weft-agent` or `weft-controller` is one the built binary
//!   accepts (`--help`), and with it the binary's `--check-config`
//!   succeeds and shows each value; so are the options the examples show
//!   commented out (etcd TLS, JSON logs), once enabled;
//! - metrics: the examples run both daemons with `--metrics-listen`;
//! - certificate rotation: the agent's unit reloads on SIGHUP; the
//!   controller's, whose TLS files are systemd credentials copied at start,
//!   has no reload that would silently keep the old certificate.
//!
//! Needs the binaries (`cargo build --workspace`), not root.
//! `systemd-analyze` (Debian package `systemd`) is required under CI=true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use weft_tests::deploy::invocation::{
    assert_arrived, check_invocation, controller_pki, Invocation,
};
use weft_tests::deploy::systemd::{commented_env, env_file, Unit};
use weft_tests::deploy::{
    deploy, read, text, under_ci, which, AGENT_METRICS_PORT, CONTROLLER_METRICS_PORT,
};
use weft_tests::TempDir;

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
