//! The deploy files are what operators run, so they are tested like code.
//! Here the Kubernetes manifests' probes, metrics and image (the rest of
//! `deploy/kubernetes/` in `deploy_kubernetes`):
//!
//! - the programs the weft containers and their exec probes run are ones
//!   the image (`deploy/kubernetes/Dockerfile`) installs;
//! - metrics and health: the manifests run both daemons with
//!   `--metrics-listen`; the probes ask the paths a real controller serves
//!   (`/healthz`, `/readyz`) on the port it listens on, at an address the
//!   kubelet reaches; the scrape annotations name that port.
//!
//! Needs the binaries (`cargo build --workspace`), not root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use weft_tests::deploy::invocation::{controller_pki, DAEMONS};
use weft_tests::deploy::manifests::{
    at, container_env, containers, daemon_containers, kind, list, manifests, mounted, name,
    strings, workloads, POD_IP, WEFT_IMAGE,
};
use weft_tests::deploy::{deploy, read, run, text, AGENT_METRICS_PORT, CONTROLLER_METRICS_PORT};
use weft_tests::TempDir;

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
    for d in daemon_containers(&docs) {
        let (w, c, program, what) = (d.workload, d.container, d.program, d.what);
        let pod = at(w, "/spec/template/spec");
        let host_network = pod["hostNetwork"] == true;
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
