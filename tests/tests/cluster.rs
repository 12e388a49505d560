//! Controller, etcd and agents together: registration, subnet allocation,
//! leases, the peer stream, failover and outages. Real etcd, real QUIC with
//! mutual TLS, real processes in simulated hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use weft_tests::cluster::{controller_addr, controller_metrics_addr};
use weft_tests::http::metric_in;
use weft_tests::{log_tail, logfile, wait_until, Host, Lab, LabOpts, CLUSTER_CIDR, WAIT};

/// Every host's subnet is distinct, inside `cidr`, and its subnet key names
/// it and is not a reservation. Returns host → subnet.
fn assert_consistent_in(lab: &Lab, cidr: &str) -> BTreeMap<String, String> {
    let hosts = lab.etcd_host_subnets();
    let subnets = lab.etcd_subnets();
    let cidr: Ipv4Network = cidr.parse().unwrap();
    let distinct: BTreeSet<&String> = hosts.values().collect();
    assert_eq!(
        distinct.len(),
        hosts.len(),
        "a subnet is held twice: {hosts:?}"
    );
    for (h, s) in &hosts {
        let net: Ipv4Network = s.parse().unwrap();
        assert!(
            cidr.contains(net.network()) && net.prefix() == 24,
            "{h}: {s}"
        );
        let rec = subnets
            .get(&net)
            .unwrap_or_else(|| panic!("no subnet key for {h}'s {s}"));
        assert_eq!(rec.host.as_deref(), Some(h.as_str()), "subnet {s}: {rec:?}");
        assert!(!rec.reserved, "{s} is reserved");
    }
    hosts
}

fn assert_consistent(lab: &Lab) -> BTreeMap<String, String> {
    assert_consistent_in(lab, CLUSTER_CIDR)
}

fn others(hosts: &BTreeMap<String, String>, me: &str) -> BTreeMap<String, String> {
    hosts
        .iter()
        .filter(|(n, _)| *n != me)
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect()
}

/// Whether `h`'s agent is connected, and to which controller.
fn controller_of(h: &Host) -> (bool, String) {
    let c = h.status().controller;
    (c.connected, c.address.unwrap_or_default())
}

#[test]
fn agents_register_get_stable_subnets_and_see_each_other() {
    let lab = Lab::new(LabOpts::cluster(3, 2));
    let mut agents: Vec<_> = lab.hosts().iter().map(|h| h.start_agent(&[])).collect();
    let hosts = assert_consistent(&lab);
    assert_eq!(hosts.len(), 3);
    for h in lab.hosts() {
        let st = h.status();
        assert_eq!(st.subnet, hosts[&h.name]);
        assert!(st.controller.connected, "{st:?}");
        // The bridge gateway is the subnet's first address.
        let net: Ipv4Network = hosts[&h.name].parse().unwrap();
        assert_eq!(
            st.gateway,
            std::net::Ipv4Addr::from(u32::from(net.network()) + 1)
        );
        h.wait_peers(&others(&hosts, &h.name), WAIT);
        // Table form names the controller and the peers.
        let table = String::from_utf8(h.weftctl(&["status"]).stdout).unwrap();
        assert!(table.contains("connected to 198.18.0."), "{table}");
        for (n, s) in others(&hosts, &h.name) {
            assert!(table.contains(&n) && table.contains(&s), "{table}");
        }
    }
    // An agent restarts (crash): same subnet, its namespace still there and
    // served before any controller answers again.
    let h2 = lab.host(2);
    let ep = h2.add_endpoint("web");
    agents[1].kill();
    let _a2 = h2.start_agent(&[]);
    let st = h2.status();
    assert_eq!(st.subnet, hosts["h2"]);
    assert_eq!(h2.show_endpoint("web").ip, ep.ip);
    assert!(lab.ping(h2.endpoint_netns("web"), st.gateway));
    assert_eq!(assert_consistent(&lab), hosts);
    // A graceful stop and start gives the same subnet too.
    assert!(agents[0].stop().success());
    let _a1 = lab.host(1).start_agent(&[]);
    assert_eq!(lab.host(1).status().subnet, hosts["h1"]);
    assert_eq!(assert_consistent(&lab), hosts);
}

#[test]
fn fifty_agents_register_at_once_through_two_controllers() {
    let lab = Lab::new(LabOpts::cluster(50, 2));
    // Reservations must never be handed out.
    let reserved = ["10.244.0.0/24", "10.244.1.0/24", "10.244.200.0/24"];
    for r in reserved {
        lab.weftctl_etcd_ok(&["subnet", "reserve", r]);
    }
    let mut agents: Vec<_> = lab
        .hosts()
        .iter()
        .map(|h| h.spawn_agent(&[]).expect("spawn agent"))
        .collect();
    for a in &mut agents {
        a.wait_ready(Duration::from_secs(60)).expect("agent ready");
    }
    let hosts = assert_consistent(&lab);
    assert_eq!(hosts.len(), 50, "{hosts:?}");
    for r in reserved {
        assert!(
            !hosts.values().any(|s| s == r),
            "reserved {r} was allocated"
        );
    }
    // Each agent serves what etcd says it holds.
    for h in lab.hosts() {
        assert_eq!(h.status().subnet, hosts[&h.name], "{}", h.name);
    }
    // Both controllers took registrations (their own count of them).
    for j in 1..=2 {
        let ok = metric_in(
            lab.control(),
            controller_metrics_addr(j),
            r#"weft_controller_registrations_total{result="ok"}"#,
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(ok >= 1.0, "controller c{j} registered no host");
    }
    // The last host sees all 49 others.
    lab.host(50).wait_peers(&others(&hosts, "h50"), WAIT);
    assert_eq!(lab.etcd_subnets().len(), 53);
}

#[test]
fn lease_end_frees_the_subnet_and_peers_drop_the_host() {
    let lab = Lab::new(LabOpts {
        lease_ttl: Some(3),
        ..LabOpts::cluster(3, 1)
    });
    let mut agents: Vec<_> = lab.hosts().iter().map(|h| h.start_agent(&[])).collect();
    let hosts = assert_consistent(&lab);
    lab.host(1).wait_peers(&others(&hosts, "h1"), WAIT);
    // h3 stops; nothing keeps its lease alive any more.
    assert!(agents[2].stop().success());
    let gone = wait_until(Duration::from_secs(20), || {
        !lab.etcd_hosts().contains_key("h3")
    });
    assert!(gone, "h3's host record outlived its 3 s lease");
    let h3_subnet: Ipv4Network = hosts["h3"].parse().unwrap();
    assert!(
        !lab.etcd_subnets().contains_key(&h3_subnet),
        "h3's subnet key outlived its lease"
    );
    let mut want = others(&hosts, "h1");
    want.remove("h3");
    lab.host(1).wait_peers(&want, WAIT);
    let mut want2 = others(&hosts, "h2");
    want2.remove("h3");
    lab.host(2).wait_peers(&want2, WAIT);
    // The live hosts' leases are kept alive well past the TTL.
    std::thread::sleep(Duration::from_secs(4));
    let now = assert_consistent(&lab);
    assert_eq!(now.len(), 2, "{now:?}");
    // h3 comes back: it serves its saved subnet at once, and registers
    // it again since it is still free.
    let _a3 = lab.host(3).start_agent(&[]);
    assert_eq!(lab.host(3).status().subnet, hosts["h3"]);
    assert!(wait_until(WAIT, || lab.etcd_hosts().len() == 3));
    assert_eq!(assert_consistent(&lab), hosts);
    lab.host(1).wait_peers(&others(&hosts, "h1"), WAIT);
}

#[test]
fn agents_fail_over_when_a_controller_dies() {
    let lab = Lab::new(LabOpts::cluster(4, 2));
    let _agents: Vec<_> = lab.hosts()[..3]
        .iter()
        .map(|h| h.start_agent(&[]))
        .collect();
    let before = assert_consistent(&lab);
    // The controller the agents actually use (where h1 is, at least): the
    // name hash that picks each agent's first controller may well put
    // every host on the same one.
    for h in &lab.hosts()[..3] {
        h.wait_connected(WAIT);
    }
    let used = controller_of(lab.host(1)).1;
    let dead = (1..=2)
        .find(|&j| controller_addr(j) == used)
        .unwrap_or_else(|| panic!("h1 is connected to {used:?}, none of the lab's controllers"));
    let alive = 3 - dead;
    let on_dead: Vec<&Host> = lab.hosts()[..3]
        .iter()
        .filter(|h| controller_of(h).1 == used)
        .collect();
    let log_from: Vec<u64> = on_dead
        .iter()
        .map(|h| logfile::len(&h.agent_log()))
        .collect();
    assert!(lab.kill_held(&format!("controller-c{dead}")));
    let to = controller_addr(alive);
    for h in &lab.hosts()[..3] {
        let ok = wait_until(Duration::from_secs(30), || {
            controller_of(h) == (true, to.clone())
        });
        assert!(
            ok,
            "{} did not fail over to {to}: {:?}\n{}",
            h.name,
            controller_of(h),
            log_tail(&h.agent_log(), 20)
        );
    }
    // Every agent that was on the dead controller says it lost it.
    for (h, from) in on_dead.iter().zip(log_from) {
        let lost = format!("lost controller {used}");
        assert!(
            logfile::lines_since(&h.agent_log(), from)
                .iter()
                .any(|l| l.contains(&lost)),
            "{} does not log {lost:?}:\n{}",
            h.name,
            log_tail(&h.agent_log(), 20)
        );
    }
    // Same subnets after the failover.
    assert_eq!(assert_consistent(&lab), before);
    // A new host still registers, and the others learn of it.
    let _a4 = lab.host(4).start_agent(&[]);
    let hosts = assert_consistent(&lab);
    assert_eq!(hosts.len(), 4);
    lab.host(1).wait_peers(&others(&hosts, "h1"), WAIT);
    // No controller at all: a restarted agent still serves its saved subnet
    // and its namespaces (fail static).
    let h1 = lab.host(1);
    let a = h1.add_endpoint("a");
    let b = h1.add_endpoint("b");
    assert!(lab.kill_held(&format!("controller-c{alive}")));
    drop(_agents);
    let _again = h1.start_agent(&[]);
    let st = h1.status();
    assert_eq!(st.subnet, hosts["h1"]);
    assert!(
        !st.controller.connected,
        "connected with every controller down"
    );
    assert_eq!(h1.show_endpoint("a").ip, a.ip);
    assert!(lab.ping(h1.endpoint_netns("a"), b.ip));
    // Its peers are still known (saved with the subnet).
    assert_eq!(h1.peer_subnets(), others(&hosts, "h1"));
    // A controller comes back: the agent reconnects by itself.
    lab.start_controller(dead, &[]).unwrap();
    h1.wait_connected(Duration::from_secs(30));
    assert_eq!(assert_consistent(&lab), hosts);
}

#[test]
fn etcd_outage_is_survived_without_restarts() {
    let lab = Lab::new(LabOpts::cluster(3, 2));
    let _a: Vec<_> = lab.hosts()[..2]
        .iter()
        .map(|h| h.start_agent(&[]))
        .collect();
    let before = assert_consistent(&lab);
    let h1 = lab.host(1);
    h1.add_endpoint("a");
    let b_ip = h1.add_endpoint("b").ip;

    assert!(lab.kill_held("etcd"));
    // A host that starts during the outage waits (and says why).
    let mut a3 = lab.host(3).spawn_agent(&[]).unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        assert!(
            lab.ping(h1.endpoint_netns("a"), b_ip),
            "endpoints broke during the etcd outage"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !lab.host(3).weftctl(&["status"]).status.success(),
        "h3 serves without a subnet"
    );
    let log3 = std::fs::read_to_string(lab.host(3).agent_log()).unwrap();
    assert!(
        log3.contains("etcd"),
        "h3's log does not name the cause:\n{log3}"
    );
    // Existing agents stayed connected to their controllers.
    for h in &lab.hosts()[..2] {
        assert!(
            controller_of(h).0,
            "{} lost its controller during the etcd outage",
            h.name
        );
    }
    lab.start_etcd().unwrap();
    a3.wait_ready(Duration::from_secs(30))
        .expect("h3 registers once etcd is back");
    let after = assert_consistent(&lab);
    assert_eq!(after.len(), 3);
    for (h, s) in &before {
        assert_eq!(&after[h], s, "{h} changed subnet across the outage");
    }
    // The controllers' watches resumed: old hosts learn of h3.
    h1.wait_peers(&others(&after, "h1"), WAIT);
    for j in 1..=2 {
        let log = std::fs::read_to_string(lab.held_log(&format!("controller-c{j}"))).unwrap();
        assert!(
            log.contains("retrying"),
            "controller c{j} did not report the outage:\n{log}"
        );
    }
    assert!(lab.ping(h1.endpoint_netns("a"), b_ip));
}

#[test]
fn subnet_exhaustion_is_a_clear_error_and_others_keep_working() {
    let lab = Lab::new(LabOpts {
        cluster_cidr: Some("10.244.0.0/23".into()),
        ..LabOpts::cluster(3, 1)
    });
    let mut a1 = lab.host(1).start_agent(&[]);
    let _a2 = lab.host(2).start_agent(&[]);
    let _a3 = lab.host(3).spawn_agent(&[]).unwrap();
    let log3 = lab.host(3).agent_log();
    let said = wait_until(Duration::from_secs(15), || {
        std::fs::read_to_string(&log3)
            .unwrap_or_default()
            .contains("no free subnet left in 10.244.0.0/23")
    });
    assert!(said, "h3's log does not explain:\n{}", log_tail(&log3, 20));
    assert!(controller_of(lab.host(2)).0);
    // Decommission h1: its subnet goes to the waiting h3.
    assert!(a1.stop().success());
    lab.weftctl_etcd_ok(&["host", "rm", "h1"]);
    assert!(
        !lab.etcd_hosts().contains_key("h1"),
        "host rm left h1 in etcd"
    );
    let ready = wait_until(Duration::from_secs(30), || {
        lab.host(3).socket().exists() && lab.host(3).weftctl(&["status"]).status.success()
    });
    assert!(
        ready,
        "h3 never got h1's freed subnet:\n{}",
        log_tail(&log3, 20)
    );
    let hosts = assert_consistent_in(&lab, "10.244.0.0/23");
    assert_eq!(hosts.keys().collect::<Vec<_>>(), ["h2", "h3"]);
    lab.host(2).wait_peers(&others(&hosts, "h2"), WAIT);
}
