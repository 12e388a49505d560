//! The test bed's agent plumbing: starting the real `weft-agent` in a host
//! namespace, talking to it with the real `weftctl`, reaching endpoint
//! namespaces, and removing everything the agent mounted.
//!
//! Needs the binaries: `cargo build --workspace --bins`.

use std::path::Path;

use weft_tests::{
    cleanup, gateway_of, tcp_peer_server, tcp_request, udp_peer_server, udp_request, Lab, LabOpts,
    INTERNET_IP,
};

#[test]
fn agent_endpoint_reaches_gateway_and_internet_through_nat() {
    let lab = Lab::new(LabOpts::hosts(1));
    let names = lab.namespaces();
    let dir = lab.dir.clone();
    let h1 = lab.host(1);
    let agent = h1.start_agent(&[]);
    let pid = agent.pid() as i32;
    assert_eq!(h1.agent_pid(), Some(pid));

    // The typed helper decodes `weftctl -o json ns add` strictly, every
    // field of the API's endpoint included.
    let ep = h1.add_endpoint("a");
    assert_eq!(ep.name, "a");
    let ns = ep.netns.clone();
    assert_eq!(Path::new(&ns), h1.endpoint_netns("a"));

    let gw = gateway_of(&h1.subnet).unwrap();
    assert!(lab.ping(&ns, gw), "a -> gateway {gw}");
    assert!(lab.ping(&ns, INTERNET_IP), "a -> internet");

    // Egress is masqueraded to the host's underlay address.
    let tcp = tcp_peer_server(lab.internet(), (INTERNET_IP, 0));
    let seen = tcp_request(&ns, tcp.addr());
    assert!(
        seen.starts_with("198.18.0.11:"),
        "TCP source seen as {seen:?}"
    );
    let udp = udp_peer_server(lab.internet(), (INTERNET_IP, 0));
    let seen = udp_request(&ns, udp.addr(), "x");
    assert!(
        seen.starts_with("198.18.0.11:"),
        "UDP source seen as {seen:?}"
    );

    // weftctl ns exec enters the endpoint itself.
    let out = h1.weftctl(&[
        "ns", "exec", "a", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{}/", ep.ip)));

    let (code, stderr, _) = h1.weftctl_err(&["ns", "show", "no-such-ns"]);
    assert_ne!(code, 0);
    assert!(!stderr.trim().is_empty());

    // The agent's mounts are there now and must go with the lab.
    assert!(cleanup::mount_points().iter().any(|m| m.starts_with(&dir)));
    drop((tcp, udp));
    drop(lab);
    for n in &names {
        assert!(!Path::new("/run/netns").join(n).exists(), "{n} left");
    }
    assert!(!dir.exists(), "{} left", dir.display());
    assert!(!cleanup::mount_points().iter().any(|m| m.starts_with(&dir)));
    assert!(!cleanup::proc_alive(pid, None), "agent {pid} left running");
    drop(agent);
}

#[test]
fn agent_stop_kill_and_restart() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h1 = lab.host(1);
    let mut agent = h1.start_agent(&[]);
    h1.add_endpoint("a");
    agent.stop();
    assert!(!agent.is_running());
    assert_eq!(h1.agent_pid(), None);

    // A second start on the same host (stale socket file, same dirs).
    let mut agent = h1.start_agent(&[]);
    let list = h1.endpoints();
    assert!(list.iter().any(|e| e.name == "a"), "{list:?}");
    agent.kill();
    assert!(!agent.is_running());
    // Left-over mounts of a killed agent are the lab's to remove (on drop).
}

#[test]
fn agent_that_cannot_start_fails_with_its_log() {
    let lab = Lab::new(LabOpts::hosts(1).subnet(1, "not-a-cidr"));
    let r = lab.host(1).try_start_agent(&[]);
    let e = format!("{:#}", r.expect_err("agent must refuse a bad --subnet"));
    assert!(e.contains("exited"), "{e}");
}
