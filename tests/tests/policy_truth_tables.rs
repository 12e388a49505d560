//! The Kubernetes network-policy e2e truth tables against weft's data
//! plane: the upstream layout (scopes x, y, z × endpoints a, b, c, each
//! listening on TCP 80 and 81 and UDP 80) spread over a 3-host lab so that
//! every host holds one endpoint of each scope and of each name (same-host
//! and cross-host pairs in every case), then every step of every case of
//! `tests/data/netpol_cases.yaml`: its policies applied with `weftctl
//! policy apply` (the others deleted), its label changes made with
//! `weftctl ns label`, and a connection attempted from every endpoint to
//! every other on the step's port. The observed matrix must become the
//! expected one (policies take effect within a deadline, as upstream
//! probes again until then); on failure both are printed as a table.
//! Real agents, controller and etcd; needs root.

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use weft_common::policy::decide::Traffic;
use weft_common::policy::Protocol;
use weft_tests::netns::in_netns;
use weft_tests::netpol::{self, Matrix, PODS};
use weft_tests::sock::{tcp_peer_server, udp_echo_server, Server};
use weft_tests::{Lab, LabOpts};

const WAIT: Duration = Duration::from_secs(20);
/// A connection attempt that gets no answer within this is closed.
const PROBE: Duration = Duration::from_millis(1500);

struct Endpoint {
    host: usize,
    name: String,
    ip: Ipv4Addr,
    netns: PathBuf,
    _servers: Vec<Server>,
}

/// The host of a pod: a Latin square, so every host has one endpoint of
/// each scope and of each name.
fn host_of(i: usize) -> usize {
    let (scope, pod) = (i / 3, i % 3);
    (scope + pod) % 3 + 1
}

/// Whether a connection from `from` to `to` opens.
fn probe(from: &PathBuf, to: Ipv4Addr, traffic: Traffic) -> bool {
    let Traffic::Port(proto, port) = traffic else {
        panic!("the cases probe ports")
    };
    let addr = SocketAddr::from((to, port));
    match proto {
        Protocol::Tcp => in_netns(from, move || {
            TcpStream::connect_timeout(&addr, PROBE).is_ok()
        })
        .unwrap_or(false),
        Protocol::Udp => in_netns(from, move || {
            let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
                return false;
            };
            let mut buf = [0u8; 64];
            let _ = s.set_read_timeout(Some(PROBE / 3));
            (0..3).any(|_| s.send_to(b"probe", addr).is_ok() && s.recv(&mut buf).is_ok())
        })
        .unwrap_or(false),
        Protocol::Sctp => panic!("no SCTP probes"),
    }
}

/// Every endpoint to every other, at once; an endpoint reaching itself
/// stays in its namespace and counts as open (as upstream allows).
fn observe(eps: &[Endpoint], traffic: Traffic) -> Matrix {
    let mut m = [[true; 9]; 9];
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, from) in eps.iter().enumerate() {
            for (j, to) in eps.iter().enumerate() {
                if i != j {
                    let (ns, ip) = (&from.netns, to.ip);
                    handles.push((i, j, s.spawn(move || probe(ns, ip, traffic))));
                }
            }
        }
        for (i, j, h) in handles {
            m[i][j] = h.join().expect("probe thread");
        }
    });
    m
}

/// Makes the step's policies the only ones in etcd.
fn set_policies(lab: &Lab, step: &netpol::Step, ip_of: impl Fn(&str) -> Ipv4Addr) {
    let want = netpol::policies(step, ip_of);
    let have = lab.weftctl_etcd_json(&["policy", "list"]);
    for p in have.as_array().expect("policy list") {
        let name = p["name"].as_str().expect("name");
        if !want.iter().any(|w| w.name == name) {
            lab.weftctl_etcd_ok(&["policy", "delete", name]);
        }
    }
    if !want.is_empty() {
        let json = serde_json::to_vec(&want).expect("policies");
        let out = lab.weftctl_etcd_with_input(&["policy", "apply", "-f", "-"], &json);
        assert!(out.status.success(), "policy apply: {out:?}");
    }
}

#[test]
fn kubernetes_network_policy_truth_tables_hold_across_hosts() {
    let lab = Lab::new(LabOpts::cluster(3, 1));
    let _agents: Vec<_> = lab.hosts().iter().map(|h| h.start_agent(&[])).collect();
    for h in lab.hosts() {
        h.wait_connected(WAIT);
    }
    let eps: Vec<Endpoint> = PODS
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let host = host_of(i);
            let h = lab.host(host);
            let name = netpol::endpoint_name(pod);
            let mut args = vec!["ns".to_string(), "add".to_string(), name.clone()];
            for (k, v) in netpol::base_labels(pod) {
                args.extend(["-l".to_string(), format!("{k}={v}")]);
            }
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let ep = h.weftctl_json(&a);
            let ip: Ipv4Addr = ep["ip"].as_str().unwrap().parse().unwrap();
            let netns = h.endpoint_netns(&name).to_path_buf();
            let servers = vec![
                tcp_peer_server(&netns, (ip, 80)),
                tcp_peer_server(&netns, (ip, 81)),
                udp_echo_server(&netns, (ip, 80)),
            ];
            Endpoint {
                host,
                name,
                ip,
                netns,
                _servers: servers,
            }
        })
        .collect();
    let ip_of = |pod: &str| eps[PODS.iter().position(|p| *p == pod).unwrap()].ip;
    let cases = netpol::cases();
    assert!(cases.len() >= 25, "{} cases", cases.len());
    let mut failures = Vec::new();
    let mut steps = 0;
    for case in &cases {
        let mut added: Vec<(usize, String)> = Vec::new();
        for (n, step) in case.steps.iter().enumerate() {
            steps += 1;
            for (pod, labels) in &step.labels {
                let i = PODS.iter().position(|p| p == pod).expect("pod");
                let mut args = vec!["ns".to_string(), "label".to_string(), eps[i].name.clone()];
                for (k, v) in labels {
                    args.push(format!("{k}={v}"));
                    added.push((i, k.clone()));
                }
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                lab.host(eps[i].host).weftctl_json(&a);
            }
            set_policies(&lab, step, ip_of);
            let want = netpol::expected(step);
            let traffic = netpol::traffic(step);
            let deadline = Instant::now() + WAIT;
            let mut seen = observe(&eps, traffic);
            while seen != want && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(300));
                seen = observe(&eps, traffic);
            }
            if seen != want {
                failures.push(format!(
                    "{} (upstream: {}) step {} on {} — expected X/., `X!` expected open but closed, `.!` expected closed but open:\n{}",
                    case.name,
                    case.upstream,
                    n + 1,
                    step.probe,
                    netpol::table(&want, &seen)
                ));
            }
        }
        // Back to the layout's labels for the next case.
        for (i, key) in added {
            lab.host(eps[i].host)
                .weftctl_json(&["ns", "label", &eps[i].name, &format!("{key}-")]);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {steps} steps differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
