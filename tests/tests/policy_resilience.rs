//! Network policy under restarts and outages, and flows it no longer
//! allows: with a policy in force (db accepts TCP 80 from app=web only), an
//! agent killed and restarted, the controller killed and restarted, and
//! etcd stopped and started again: nothing opens at any time (a denied
//! client keeps being refused throughout), an established allowed
//! connection keeps working throughout, and a new allowed one opens; a
//! new endpoint the policy selects is restricted as soon as it exists. Then
//! the policy changes so that web is no longer allowed: the established
//! connection stops and a new one is refused. The per-policy counters in
//! `/metrics` count both. Real agents, controller and etcd; needs root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_common::api::Request;
use weft_tests::netns::in_netns;
use weft_tests::{wait_until, Lab, LabOpts};

const WAIT: Duration = Duration::from_secs(20);
const PROBE: Duration = Duration::from_millis(1000);

/// An echo server in a namespace: every connection gets back what it sends.
struct Echo {
    stop: Arc<AtomicBool>,
}

impl Echo {
    fn start(ns: &Path, addr: SocketAddr) -> Echo {
        let l = in_netns(ns, move || TcpListener::bind(addr))
            .unwrap()
            .unwrap();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        std::thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let mut buf = [0u8; 64];
                            while let Ok(n) = c.read(&mut buf) {
                                if n == 0 || c.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Echo { stop }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A connection kept open from a namespace.
struct Flow(TcpStream);

impl Flow {
    fn open(ns: &Path, to: SocketAddr) -> std::io::Result<Flow> {
        let s = in_netns(ns, move || TcpStream::connect_timeout(&to, PROBE))
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        s.set_read_timeout(Some(PROBE))?;
        Ok(Flow(s))
    }

    /// Whether one message goes there and back within the probe time.
    fn works(&mut self) -> bool {
        let mut buf = [0u8; 4];
        self.0.write_all(b"ping").is_ok() && self.0.read_exact(&mut buf).is_ok() && &buf == b"ping"
    }
}

fn opens(ns: &Path, to: SocketAddr) -> bool {
    Flow::open(ns, to).is_ok()
}

const POLICY: &str = r#"{"name": "db-in", "selector": {"matchLabels": {"app": "db"}},
    "ingress": [{"from": [{"selector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 80}]}]}"#;

#[test]
fn nothing_opens_through_restarts_and_outages_and_refused_flows_stop() {
    let lab = Lab::new(LabOpts::cluster(2, 1));
    let (h1, h2) = (lab.host(1), lab.host(2));
    let mut a1 = h1.start_agent(&[]);
    let _a2 = h2.start_agent(&[]);
    h1.wait_connected(WAIT);
    h2.wait_connected(WAIT);
    let ip = |v: serde_json::Value| v["ip"].as_str().unwrap().parse::<Ipv4Addr>().unwrap();
    let db = ip(h1.weftctl_json(&["ns", "add", "db", "-l", "app=db"]));
    h2.weftctl_json(&["ns", "add", "web", "-l", "app=web"]);
    // A denied client on the same host as db, one on the other host.
    h1.weftctl_json(&["ns", "add", "near", "-l", "app=other"]);
    h2.weftctl_json(&["ns", "add", "far", "-l", "app=other"]);
    let ns = |h: &weft_tests::Host, n: &str| -> PathBuf { h.endpoint_netns(n).to_path_buf() };
    let (web, near, far) = (ns(h2, "web"), ns(h1, "near"), ns(h2, "far"));
    let to = SocketAddr::from((db, 80));
    let _echo = Echo::start(&ns(h1, "db"), to);
    assert!(
        opens(&near, to) && opens(&far, to),
        "open before any policy"
    );

    let out = lab.weftctl_etcd_with_input(&["policy", "apply", "-f", "-"], POLICY.as_bytes());
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(WAIT, || !opens(&near, to) && !opens(&far, to)),
        "the policy never took effect"
    );
    let mut flow = Flow::open(&web, to).expect("web opens a connection to db");
    assert!(flow.works());

    // A new endpoint the policy selects is restricted from the moment
    // `ns add` answers (the agent writes the table before it does): the
    // status asked right after the answer, on the same connection, counts
    // it already.
    let mut client = h1.client();
    let added: weft_common::api::Endpoint = client
        .call_as(&Request::NsAdd {
            name: "db2".into(),
            ip: None,
            publish: vec![],
            labels: [("app".to_string(), "db".to_string())].into(),
        })
        .expect("ns add db2");
    let st: weft_common::api::Status = client
        .call_as(&Request::Status { probe: false })
        .expect("status");
    assert_eq!(
        st.policy.expect("policy").enforced,
        2,
        "db2 was not restricted when ns add answered"
    );
    let db2 = added.ip;
    let to2 = SocketAddr::from((db2, 80));
    let _echo2 = Echo::start(&ns(h1, "db2"), to2);
    assert!(
        !opens(&far, to2),
        "a new db took a connection before its policy"
    );
    assert!(opens(&web, to2), "web cannot reach the new db");

    // Each disruption: while it lasts and after, nothing opens for the
    // denied clients, the established flow works, and web opens anew.
    let check = |what: &str, flow: &mut Flow| {
        assert!(!opens(&near, to), "{what}: near got through");
        assert!(!opens(&far, to), "{what}: far got through");
        assert!(flow.works(), "{what}: the established flow broke");
        assert!(opens(&web, to), "{what}: web cannot open a new connection");
    };
    a1.kill();
    check("h1's agent down", &mut flow);
    a1 = h1.start_agent(&[]);
    check("h1's agent restarted", &mut flow);
    let st = h1.status().policy.expect("policy");
    assert_eq!((st.policies, st.enforced), (1, 2), "{st:?}");
    assert!(lab.kill_held("controller-c1"));
    h1.wait_status(WAIT, "policy kept", |s| {
        s.policy.as_ref().is_some_and(|p| !p.current)
    });
    check("controller down", &mut flow);
    lab.start_controller(1, &[]).unwrap();
    h1.wait_status(WAIT, "policy current", |s| {
        s.policy.as_ref().is_some_and(|p| p.current)
    });
    check("controller back", &mut flow);
    assert!(lab.kill_held("etcd"));
    check("etcd down", &mut flow);
    lab.start_etcd().unwrap();
    check("etcd back", &mut flow);

    // web is no longer allowed: its open connection stops, a new one
    // is refused.
    let narrowed = POLICY.replace(r#""app": "web""#, r#""app": "api""#);
    let out = lab.weftctl_etcd_with_input(&["policy", "apply", "-f", "-"], narrowed.as_bytes());
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(WAIT, || !flow.works()),
        "the established flow outlived the policy that allowed it"
    );
    let deadline = Instant::now() + WAIT;
    while opens(&web, to) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!opens(&web, to), "web still opens connections");

    // The counters of the policy saw both.
    let accepted =
        h1.agent_metric(r#"weft_agent_policy_packets_total{policy="db-in",verdict="accepted"}"#);
    let dropped =
        h1.agent_metric(r#"weft_agent_policy_packets_total{policy="db-in",verdict="dropped"}"#);
    assert!(
        accepted > 0.0 && dropped > 0.0,
        "accepted {accepted}, dropped {dropped}"
    );
    drop(a1);
}
