//! `weftctl status` (controller link, peer reachability through the
//! tunnel), `weftctl host list` (connected, controller, last seen) and the
//! agent's kernel-change log lines. Real etcd, controller and agents in a
//! three-host lab; the tunnel to h3 is broken with an nft table of the
//! test's own inside h3's namespace (never the root namespace).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weft_tests::cluster::controller_addr;
use weft_tests::host::api::peer;
use weft_tests::{wait_until, Host, Lab, Status, WAIT};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// How long a change of the controller link may take to show: generous
/// (the QUIC idle timeout is 15 s, the presence lease 10 s); how long it
/// really takes is for weft-bench.
const SHOWS_WITHIN: Duration = Duration::from_secs(45);

/// Status of `h`, probed, once it has both its peers and each of `want`
/// has the reachability given (polled, bounded by `timeout`).
fn status_when(h: &Host, want: &[(&str, bool)], timeout: Duration) -> Status {
    h.wait_status_probed(timeout, &format!("reachability {want:?}"), |s| {
        s.peers.len() == 2
            && want.iter().all(|(n, r)| {
                s.peers
                    .iter()
                    .any(|p| p.name == *n && p.reachable == Some(*r))
            })
    })
}

/// Drops VXLAN packets from `from` arriving at `h`, in a table of its own.
const BLOCK: &str = "weft_test_block";

fn block_vxlan(h: &Host, from: std::net::Ipv4Addr) {
    let from = from.to_string();
    for cmd in [
        vec!["nft", "add", "table", "inet", BLOCK],
        vec![
            "nft",
            "add",
            "chain",
            "inet",
            BLOCK,
            "input",
            "{ type filter hook input priority -300 ; policy accept ; }",
        ],
        vec![
            "nft", "add", "rule", "inet", BLOCK, "input", "ip", "saddr", &from, "udp", "dport",
            "4789", "drop",
        ],
    ] {
        let out = h.exec(&cmd);
        assert!(
            out.status.success(),
            "{}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn unblock_vxlan(h: &Host) {
    let out = h.exec(&["nft", "delete", "table", "inet", BLOCK]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn log_of(h: &Host) -> String {
    std::fs::read_to_string(h.agent_log()).expect("agent log")
}

#[test]
fn status_reachability_host_presence_and_change_logs() {
    let t0 = unix_now();
    let lab = Lab::new(weft_tests::LabOpts::cluster(3, 1));
    let mut agents: Vec<_> = lab.hosts().iter().map(|h| h.start_agent(&[])).collect();
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));

    // Both peers answer through the tunnel, with a round trip.
    let s = status_when(h1, &[("h2", true), ("h3", true)], Duration::from_secs(20));
    for n in ["h2", "h3"] {
        let p = peer(&s, n);
        let rtt = p.rtt_ms.unwrap_or_else(|| panic!("{p:?}"));
        assert!(rtt > 0.0 && rtt < 1000.0, "{p:?}");
        assert_eq!(p.mode, "vxlan", "{p:?}");
    }
    // The controller link: connected, since when, to which controller.
    let c = &s.controller;
    assert!(c.connected, "{c:?}");
    assert!(c.address.is_some(), "{c:?}");
    let since = c.since.unwrap_or_else(|| panic!("{c:?}"));
    assert!(
        since >= t0 && since <= unix_now(),
        "{c:?} (test began {t0})"
    );
    // --no-probe: state only, reachability not known.
    let s: Status = h1.weftctl_as(&["status", "--no-probe"]);
    assert_eq!(peer(&s, "h3").reachable, None, "{s:?}");
    assert_eq!(peer(&s, "h3").rtt_ms, None, "{s:?}");

    // Break the tunnel h1 -> h3 (inside h3's namespace): h3 unreachable
    // within the probe timeout, h2 still fine; the table says so. (The
    // probe waits a second at most; weftctl's run is bounded too.)
    let h3_subnet = peer(&s, "h3").subnet.clone();
    block_vxlan(h3, h1.ip);
    let s = h1.status_probed();
    assert_eq!(peer(&s, "h3").reachable, Some(false), "{s:#?}");
    assert_eq!(peer(&s, "h3").rtt_ms, None, "{s:#?}");
    assert_eq!(peer(&s, "h2").reachable, Some(true), "{s:#?}");
    let out = h1.weftctl_probing(&["status"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains("1 UNREACHABLE"), "{table}");
    let row = |name: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let header: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("NAME"))
        .unwrap_or_else(|| panic!("no peer table:\n{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "SUBNET", "PUBLIC-IP", "MODE", "REACHABLE", "RTT"]
    );
    assert_eq!(
        row("h3"),
        ["h3", &h3_subnet, &h3.ip.to_string(), "vxlan", "NO", "-"],
        "{table}"
    );
    let r2 = row("h2");
    assert!(r2[4] == "yes" && r2[6] == "ms", "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("controller:  connected to ") && l.contains(" since ")),
        "no controller line:\n{table}"
    );
    unblock_vxlan(h3);
    status_when(h1, &[("h2", true), ("h3", true)], WAIT);

    // Every host's agent is connected, to the one controller.
    for h in lab.hosts() {
        let e = lab.listed_host(&h.name);
        assert!(e.connected, "{e:?}");
        assert!(
            e.controller
                .as_deref()
                .is_some_and(|c| c.ends_with(":7470")),
            "{e:?}"
        );
        assert!(e.connected_since.is_some_and(|t| t >= t0), "{e:?}");
    }

    // h2's agent crashes: disconnected once the QUIC idle timeout (15 s)
    // ends its session, with last_seen set when the session ended; back
    // when it restarts.
    let killed = unix_now();
    agents[1].kill();
    let mut e = lab.listed_host("h2");
    assert!(
        wait_until(SHOWS_WITHIN, || {
            e = lab.listed_host("h2");
            !e.connected
        }),
        "h2 still connected: {e:?}"
    );
    assert_eq!(e.controller, None, "{e:?}");
    let seen = e.last_seen;
    assert!(
        seen >= killed && seen <= unix_now(),
        "last_seen {seen} not updated at the session's end (killed at {killed}): {e:?}"
    );
    eprintln!(
        "h2 shown disconnected {} s after the kill",
        unix_now() - killed
    );
    let out = lab.weftctl_etcd(&["host", "list"]);
    let t = String::from_utf8_lossy(&out.stdout).into_owned();
    let r: Vec<&str> = t
        .lines()
        .find(|l| l.starts_with("h2 "))
        .unwrap_or_else(|| panic!("{t}"))
        .split_whitespace()
        .collect();
    assert_eq!((r[4], r[5]), ("NO", "-"), "{t}");
    assert!(r[6].ends_with('s') && r[7] == "ago", "{t}");
    agents[1] = h2.start_agent(&[]);
    assert!(
        wait_until(SHOWS_WITHIN, || {
            e = lab.listed_host("h2");
            e.connected
        }),
        "h2 not connected again: {e:?}"
    );

    // Kernel-change logs: h3's route added once, with the reason.
    let log = log_of(h1);
    let added: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("route add {h3_subnet} ")))
        .collect();
    assert_eq!(added.len(), 1, "{added:#?}");
    assert!(added[0].contains("peer h3 joined"), "{}", added[0]);
    // A route deleted under the agent comes back, and says why.
    let out = h1.exec(&["ip", "route", "del", &h3_subnet]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(WAIT, || log_of(h1)
            .lines()
            .any(|l| l.contains(&format!("route add {h3_subnet} "))
                && l.contains("for peer h3: restored (deleted outside weft)"))),
        "no repair line:\n{}",
        log_of(h1)
    );
    status_when(h1, &[("h2", true), ("h3", true)], WAIT);
    // h3 leaves (agent stopped, host removed): h1 logs the route's removal.
    agents[2].stop();
    let out = lab.weftctl_etcd(&["host", "rm", "h3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(WAIT, || log_of(h1).lines().any(|l| l
            .contains(&format!("route del {h3_subnet} "))
            && l.contains("peer h3 left"))),
        "no route del line:\n{}",
        log_of(h1)
    );
    let log = log_of(h1);
    assert_eq!(
        log.lines()
            .filter(|l| l.contains(&format!("route del {h3_subnet} ")))
            .count(),
        1,
        "{log}"
    );
}

/// The controller `host` is connected to (host list), and whether it is.
fn connection(lab: &Lab, host: &str) -> (bool, Option<String>) {
    let e = lab.listed_host(host);
    (e.connected, e.controller)
}

#[test]
fn crashed_controllers_agents_show_disconnected_then_fail_over() {
    let lab = Lab::new(weft_tests::LabOpts::cluster(2, 2));
    let _agents: Vec<_> = lab.hosts().iter().map(|h| h.start_agent(&[])).collect();
    let h1 = lab.host(1);
    let mut c = (false, None);
    assert!(
        wait_until(Duration::from_secs(15), || {
            c = connection(&lab, "h1");
            c.0
        }),
        "h1 never shown connected: {c:?}"
    );
    let first = c.1.clone().expect("controller of a connected host");
    let j = (1..=2)
        .find(|j| controller_addr(*j) == first)
        .unwrap_or_else(|| panic!("{first} is none of the lab's controllers"));
    // Its controller crashes: h1 fails over to the other one, and the list
    // says so (the new session's key replaces the dead controller's).
    assert!(lab.kill_held(&format!("controller-c{j}")));
    let other = controller_addr(3 - j);
    assert!(
        wait_until(Duration::from_secs(30), || {
            c = connection(&lab, "h1");
            c == (true, Some(other.clone()))
        }),
        "h1 not shown connected to {other}: {c:?}"
    );
    let s = h1.status();
    assert!(s.controller.connected, "{s:?}");
    assert_eq!(s.controller.address.as_ref(), Some(&other), "{s:?}");
    // Every controller gone: nobody removes the keys, the presence lease
    // (10 s) does; the agents say since when they are disconnected.
    assert!(lab.kill_held(&format!("controller-c{}", 3 - j)));
    let killed = unix_now();
    for h in ["h1", "h2"] {
        assert!(
            wait_until(SHOWS_WITHIN, || {
                c = connection(&lab, h);
                !c.0
            }),
            "{h} still shown connected: {c:?}"
        );
    }
    eprintln!(
        "both shown disconnected {} s after the kill",
        unix_now() - killed
    );
    let s = h1.wait_status(SHOWS_WITHIN, "the controller link down", |s| {
        !s.controller.connected
    });
    let since = s.controller.since.expect("since");
    assert!(since >= killed && since <= unix_now(), "{s:?}");
    let out = h1.weftctl(&["status", "--no-probe"]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("controller:  DISCONNECTED since ")),
        "{table}"
    );
    // A controller is back: connected again.
    lab.start_controller(1, &[]).expect("restart controller c1");
    for h in ["h1", "h2"] {
        assert!(
            wait_until(Duration::from_secs(30), || {
                c = connection(&lab, h);
                c == (true, Some(controller_addr(1)))
            }),
            "{h} not shown connected to c1 again: {c:?}"
        );
    }
}
