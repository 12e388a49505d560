//! End-to-end tests of one host in standalone mode, against the real kernel:
//! the real `weft-agent` in a simulated host namespace, driven by the real
//! `weftctl`. Needs root (CI runs it as root; without root it fails).

use std::path::Path;
use std::thread;
use std::time::Duration;

use weft_common::name::host_veth_name;
use weft_tests::cli::{check_failure, fails_with};
use weft_tests::{
    gateway_of, host_ip, tcp_peer_server, tcp_request, udp_peer_server, udp_request, EndpointOpts,
    Host, Lab, LabOpts, INTERNET_IP, WAIT,
};

/// An endpoint's address, as text.
fn ip(e: &weft_tests::Endpoint) -> String {
    e.ip.to_string()
}

/// Everything on a host that weft may change: links, addresses, routes,
/// nftables, the namespace files and mounts, and the agent's state files.
/// An `ip -o link` line of a spare namespace's host veth.
fn is_spare(line: &str) -> bool {
    line.split(':')
        .nth(1)
        .is_some_and(|n| n.trim().starts_with("wp"))
}

fn snapshot(lab: &Lab, h: &Host) -> String {
    let mut s = String::new();
    let links = h.exec_ok(&["ip", "-o", "link", "show"]);
    // Names only: flags like NO-CARRIER follow carrier timing, not weft.
    // Spare namespaces' veths (`wp…`) come and go with the agent's pool;
    // spare_namespaces_* checks them.
    for l in links.lines().filter(|l| !is_spare(l)) {
        s += l.split(':').nth(1).unwrap_or("").trim();
        s += "\n";
    }
    s += &h.exec_ok(&["ip", "-o", "-4", "addr", "show"]);
    s += &h.exec_ok(&["ip", "-4", "route", "show"]);
    s += &h.exec_ok(&["nft", "list", "ruleset"]);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = h.netns_dir.display().to_string();
    for m in mounts.lines().filter(|l| l.contains(&dir)) {
        s += m.split(' ').nth(4).unwrap_or("");
        s += "\n";
    }
    for d in [
        h.netns_dir.clone(),
        h.state_dir.join("endpoints"),
        h.state_dir.join("pending"),
    ] {
        let mut names: Vec<String> = std::fs::read_dir(&d)
            .map(|r| {
                r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        s += &format!("{}: {names:?}\n", d.display());
    }
    let _ = lab;
    s
}

#[test]
fn namespaces_ping_each_other_and_the_gateway() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h1 = lab.host(1);
    let _agent = h1.start_agent(&[]);
    let a = h1.add_endpoint("a");
    let b = h1.add_endpoint("b");
    assert_eq!(ip(&a), "10.244.1.2");
    assert_eq!(ip(&b), "10.244.1.3");
    let gw = gateway_of(&h1.subnet).unwrap();
    for (from, to) in [
        ("a", ip(&b)),
        ("b", ip(&a)),
        ("a", gw.to_string()),
        ("b", gw.to_string()),
    ] {
        assert!(lab.ping(h1.endpoint_netns(from), &to), "{from} -> {to}");
    }
    // The namespace looks like one made by hand: lo up, eth0 with the
    // address, MTU of the underlay, default route via the gateway.
    let addr = h1.exec_endpoint_ok("a", &["ip", "-o", "-4", "addr", "show"]);
    assert!(
        addr.contains("lo ") && addr.contains("127.0.0.1/8"),
        "{addr}"
    );
    assert!(
        addr.contains("eth0") && addr.contains("10.244.1.2/24"),
        "{addr}"
    );
    let route = h1.exec_endpoint_ok("a", &["ip", "-4", "route", "show", "default"]);
    assert!(
        route.contains(&format!("default via {gw} dev eth0")),
        "{route}"
    );
    let link = h1.exec_endpoint_ok("a", &["ip", "-o", "link", "show", "eth0"]);
    assert!(
        link.contains("mtu 1500") && link.contains(&a.mac.to_string()),
        "{link}"
    );
    // The host end is a port of weft0, named as weft names it.
    let veth = host_veth_name("a");
    assert_eq!(a.host_veth, veth);
    let port = h1.exec_ok(&["ip", "-o", "link", "show", &veth]);
    assert!(port.contains("master weft0"), "{port}");
    // And `ip netns`-style tools see it: weftctl ns exec runs there.
    let out = h1.weftctl(&[
        "ns",
        "exec",
        "b",
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        &ip(&a),
    ]);
    assert!(out.status.success(), "{out:?}");
    let code = h1
        .weftctl(&["ns", "exec", "b", "--", "sh", "-c", "exit 7"])
        .status
        .code();
    assert_eq!(code, Some(7), "exit code passes through");
}

#[test]
fn egress_needs_and_gets_nat() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h1 = lab.host(1);
    let mut agent = h1.start_agent(&[]);
    let a = h1.add_endpoint("a");
    let ns = h1.endpoint_netns("a");
    let server = tcp_peer_server(lab.internet(), (INTERNET_IP, 0));
    let seen = tcp_request(&ns, server.addr());
    assert!(
        seen.starts_with(&format!("{}:", host_ip(1))),
        "internet saw {seen}, not the host address"
    );
    assert!(!seen.starts_with(&ip(&a)));
    // Without weft's table the internet cannot answer: the NAT is what works.
    h1.exec(&["nft", "delete", "table", "inet", "weft"]);
    assert!(
        !lab.ping_once(&ns, INTERNET_IP),
        "egress worked without NAT: the test proves nothing"
    );
    // A restart restores the table (reconcile) and egress works again.
    agent.kill();
    let _agent = h1.start_agent(&[]);
    assert!(lab.ping(&ns, INTERNET_IP));
    let seen = tcp_request(&ns, server.addr());
    assert!(seen.starts_with(&format!("{}:", host_ip(1))), "{seen}");
}

#[test]
fn published_ports_answer_from_another_host_the_host_itself_and_neighbours() {
    let lab = Lab::new(LabOpts::hosts(2));
    let (h1, h2) = (lab.host(1), lab.host(2));
    let _agent = h1.start_agent(&[]);
    let web = h1.add_endpoint_with(
        "web",
        &EndpointOpts::default()
            .publish("8080:80")
            .publish("5353:53/udp"),
    );
    let pinned = h1.add_endpoint_with(
        "pinned",
        &EndpointOpts::default().publish(&format!("{}:9090:90", host_ip(1))),
    );
    let published: Vec<String> = web.publish.iter().map(|p| p.to_string()).collect();
    assert_eq!(published, ["8080:80/tcp", "5353:53/udp"]);
    let tcp = tcp_peer_server(h1.endpoint_netns("web"), ("0.0.0.0", 80));
    let udp = udp_peer_server(h1.endpoint_netns("web"), ("0.0.0.0", 53));
    let tcp90 = tcp_peer_server(h1.endpoint_netns("pinned"), ("0.0.0.0", 90));

    // From another host: DNAT keeps the client's address.
    let seen = tcp_request(&h2.netns, (host_ip(1), 8080));
    assert!(seen.starts_with(&format!("{}:", host_ip(2))), "{seen}");
    let seen = udp_request(&h2.netns, (host_ip(1), 5353), "q");
    assert!(seen.starts_with(&format!("{}:", host_ip(2))), "{seen}");
    let seen = tcp_request(&h2.netns, (host_ip(1), 9090));
    assert!(seen.starts_with(&format!("{}:", host_ip(2))), "{seen}");
    assert_eq!(tcp90.hits(), 1);
    // From the host itself, on its address and on 127.0.0.1.
    tcp_request(&h1.netns, (host_ip(1), 8080));
    tcp_request(&h1.netns, ("127.0.0.1", 8080));
    udp_request(&h1.netns, ("127.0.0.1", 5353), "q");
    // From a neighbour namespace through the host address (hairpin).
    // The reply must come back through the host, so the source is the gateway.
    h1.add_endpoint("other");
    let seen = tcp_request(h1.endpoint_netns("other"), (host_ip(1), 8080));
    assert!(seen.starts_with("10.244.1.1:"), "{seen}");
    assert_eq!(tcp.hits(), 4);
    assert_eq!(udp.hits(), 2);
    let _ = pinned;
}

#[test]
fn agent_killed_and_restarted_drops_no_packets() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h1 = lab.host(1);
    let mut agent = h1.start_agent(&[]);
    let a = h1.add_endpoint_with("a", &EndpointOpts::default().publish("8080:80"));
    let b = h1.add_endpoint("b");
    assert!(lab.ping(h1.endpoint_netns("a"), ip(&b)));
    assert!(lab.ping(h1.endpoint_netns("a"), INTERNET_IP));
    let count = "400";
    let mut local = lab.spawn(
        h1.endpoint_netns("a"),
        &["ping", "-n", "-i", "0.01", "-W", "1", "-c", count, &ip(&b)],
    );
    let mut nat = lab.spawn(
        h1.endpoint_netns("b"),
        &[
            "ping",
            "-n",
            "-i",
            "0.01",
            "-W",
            "1",
            "-c",
            count,
            &INTERNET_IP.to_string(),
        ],
    );
    thread::sleep(Duration::from_millis(500));
    agent.kill();
    thread::sleep(Duration::from_millis(300));
    let _agent = h1.start_agent(&[]);
    for p in [&mut local, &mut nat] {
        let st = p
            .wait_timeout(Duration::from_secs(30))
            .expect("ping finished");
        let out = p.log_text();
        let (sent, got) = weft_tests::ping::summary(&out);
        assert_eq!(sent, 400, "{out}");
        assert_eq!(got, sent, "lost replies across the restart:\n{out}");
        assert!(st.success(), "{out}");
    }
    let list = h1.endpoints();
    let names: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(list[0].ip, a.ip);
    let published: Vec<String> = list[0].publish.iter().map(|p| p.to_string()).collect();
    assert_eq!(published, ["8080:80/tcp"]);
}

#[test]
fn bad_input_is_refused_with_one_line_and_changes_nothing() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h1 = lab.host(1);
    let _agent = h1.start_agent(&[]);
    let a = h1.add_endpoint_with("a", &EndpointOpts::default().publish("8080:80"));
    let a_ip = ip(&a);
    std::fs::write(h1.netns_dir.join("foreign"), b"").unwrap();
    // A host process listening on 9091 in the host namespace.
    let busy = tcp_peer_server(&h1.netns, ("0.0.0.0", 9091));
    let before = snapshot(&lab, h1);
    let long = "x".repeat(64);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["ns", "add", "Bad"], "\"Bad\""),
        (vec!["ns", "add", "a_b"], "'_'"),
        (
            vec!["ns", "add", "--", "-a"],
            "must start with a letter or digit",
        ),
        (vec!["ns", "add", &long], "at most 63"),
        (vec!["ns", "add", ""], "name is empty"),
        (vec!["ns", "add", "a/b"], "'/'"),
        (vec!["ns", "add", ".."], "'.'"),
        (vec!["ns", "add", "../etc"], "'.'"),
        (vec!["ns", "add", "a"], "namespace \"a\" already exists"),
        (vec!["ns", "add", "foreign"], "was not created by weft"),
        (
            vec!["ns", "add", "c", "--ip", "10.244.2.5"],
            "outside this host's subnet 10.244.1.0/24",
        ),
        (vec!["ns", "add", "c", "--ip", "10.244.1.1"], "gateway"),
        (vec!["ns", "add", "c", "--ip", "10.244.1.255"], "broadcast"),
        (
            vec!["ns", "add", "c", "--ip", &a_ip],
            "already used by namespace \"a\"",
        ),
        (
            vec!["ns", "add", "c", "--publish", "8080:81"],
            "already published by namespace \"a\"",
        ),
        (
            vec!["ns", "add", "c", "--publish", "9091:80"],
            "already in use on this host",
        ),
        (
            vec!["ns", "add", "c", "--publish", "198.18.0.99:8081:80"],
            "not an address of this host",
        ),
        (
            vec![
                "ns",
                "add",
                "c",
                "--publish",
                "7000:70",
                "--publish",
                "7000:71",
            ],
            "given twice",
        ),
        (
            vec!["ns", "add", "c", "--publish", "8080"],
            "expected [HOSTIP:]HOSTPORT:PORT",
        ),
        (vec!["ns", "add", "c", "--publish", "8080:80/icmp"], "icmp"),
        (vec!["ns", "add", "c", "--publish", "99999:80"], "99999"),
        (
            vec!["ns", "del", "nope"],
            "namespace \"nope\" does not exist",
        ),
        (
            vec!["ns", "show", "nope"],
            "namespace \"nope\" does not exist",
        ),
        (
            vec!["ns", "exec", "nope", "--", "true"],
            "namespace \"nope\" does not exist",
        ),
    ];
    for (args, want) in &cases {
        // One `weftctl: …` line, nothing on stdout; with -o json the same
        // message as `{"error": …}`.
        let (_, msg) = fails_with(|a| h1.weftctl(a), args);
        assert!(msg.contains(want), "{args:?}: {msg:?} lacks {want:?}");
    }
    assert_eq!(
        snapshot(&lab, h1),
        before,
        "a refused request changed the host"
    );
    drop(busy);
    // The agent is still healthy afterwards.
    let c = h1.add_endpoint("c");
    assert_eq!(ip(&c), "10.244.1.3");
}

#[test]
fn a_full_subnet_is_refused() {
    let lab = Lab::new(LabOpts::hosts(1).subnet(1, "10.244.1.0/29"));
    let h1 = lab.host(1);
    let _agent = h1.start_agent(&[]);
    for i in 0..5 {
        h1.add_endpoint(&format!("n{i}"));
    }
    let before = snapshot(&lab, h1);
    let (code, msg) = check_failure("ns add n5", &h1.weftctl(&["ns", "add", "n5"]), false);
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("subnet 10.244.1.0/29 is full"), "{msg}");
    assert_eq!(snapshot(&lab, h1), before);
    h1.del_endpoint("n2");
    assert_eq!(ip(&h1.add_endpoint("n5")), "10.244.1.4");
}

#[test]
fn a_failure_half_way_through_ns_add_is_rolled_back() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h1 = lab.host(1);
    let _agent = h1.start_agent(&[]);
    h1.add_endpoint("a");
    // 1. The veth cannot be created: its host-side name is taken (by a device
    //    that is not weft's, so the agent leaves it alone). The namespace was
    //    already made by then and must go again.
    let veth = host_veth_name("victim");
    h1.exec_ok(&["ip", "link", "add", &veth, "type", "bridge"]);
    let before = snapshot(&lab, h1);
    let args = ["ns", "add", "victim"];
    let (code, msg) = check_failure("ns add victim", &h1.weftctl(&args), false);
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains(&format!("create veth {veth}")), "{msg}");
    assert_eq!(snapshot(&lab, h1), before, "ns add left pieces behind");
    h1.exec_ok(&["ip", "link", "del", &veth]);

    // 2. nftables refuses the port forward (an entry weft does not know of
    //    holds the key), after namespace and veth exist.
    h1.exec_ok(&[
        "nft",
        "add",
        "element",
        "inet",
        "weft",
        "publish_any_addr",
        "{ tcp . 7777 : 10.244.1.200 }",
    ]);
    h1.exec_ok(&[
        "nft",
        "add",
        "element",
        "inet",
        "weft",
        "publish_any_port",
        "{ tcp . 7777 : 80 }",
    ]);
    let before = snapshot(&lab, h1);
    let args = ["ns", "add", "victim", "--publish", "7777:80"];
    let (code, msg) = check_failure("ns add victim --publish", &h1.weftctl(&args), false);
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("7777"), "{msg}");
    assert_eq!(snapshot(&lab, h1), before, "ns add left pieces behind");
    // The address it had taken is free again.
    let ep = h1.add_endpoint_with("victim", &EndpointOpts::ip("10.244.1.3".parse().unwrap()));
    assert_eq!(ip(&ep), "10.244.1.3");
}

#[test]
fn ns_del_leaves_nothing_behind() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h1 = lab.host(1);
    let _agent = h1.start_agent(&[]);
    h1.add_endpoint("keep");
    let before = snapshot(&lab, h1);
    let ep = h1.add_endpoint_with(
        "gone",
        &EndpointOpts::default()
            .publish("8080:80")
            .publish("5353:53/udp"),
    );
    let during = snapshot(&lab, h1);
    assert_ne!(during, before);
    assert!(
        during.contains(&host_veth_name("gone")) && during.contains("8080"),
        "{during}"
    );
    let deleted = h1.del_endpoint("gone");
    assert_eq!(deleted.name, "gone");
    assert_eq!(snapshot(&lab, h1), before);
    assert!(!Path::new(&ep.netns).exists());
    // The name and the published ports can be used again at once.
    h1.add_endpoint_with("gone", &EndpointOpts::default().publish("8080:80"));
}

#[test]
fn restart_recreates_what_was_removed_by_hand() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h1 = lab.host(1);
    let mut agent = h1.start_agent(&[]);
    let a = h1.add_endpoint("a");
    let b = h1.add_endpoint("b");
    let c = h1.add_endpoint("c");
    // A process keeps b's namespace alive after its mount is gone, as after
    // a careless `ip netns del b` with something still running inside.
    let holder = lab.spawn(h1.endpoint_netns("b"), &["sleep", "60"]);
    agent.kill();
    h1.exec_ok(&["ip", "link", "del", &host_veth_name("a")]);
    nix::mount::umount2(&h1.endpoint_netns("b"), nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_file(h1.endpoint_netns("b")).unwrap();
    h1.exec_endpoint_ok("c", &["ip", "route", "del", "default"]);
    h1.exec_endpoint_ok("c", &["ip", "link", "set", "lo", "down"]);

    let _agent = h1.start_agent(&[]);
    for (from, to) in [("a", &b), ("b", &c), ("c", &a)] {
        assert!(
            lab.ping(h1.endpoint_netns(from), ip(to)),
            "{from} -> {}",
            ip(to)
        );
    }
    assert!(
        lab.ping(h1.endpoint_netns("c"), INTERNET_IP),
        "c's default route is back"
    );
    assert!(
        lab.ping(h1.endpoint_netns("c"), "127.0.0.1"),
        "c's lo is up again"
    );
    // The old namespace of b is cut off: its veth was not b's any more.
    let old_b = format!("/proc/{}/ns/net", holder.pid());
    assert!(!lab.ping_once(&old_b, ip(&a)));
    let log = std::fs::read_to_string(h1.agent_log()).unwrap();
    assert!(log.contains("re-created namespace b"), "{log}");
    assert!(
        log.contains(&format!(
            "re-created veth {} of namespace a",
            host_veth_name("a")
        )),
        "{log}"
    );
}

#[test]
fn one_agent_per_host_namespace() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h1 = lab.host(1);
    let _agent = h1.start_agent(&[]);
    // Same namespace, other directories: the bridge and table are shared, so it must refuse.
    let other = lab.dir.join("second");
    let (s, r, n) = (other.join("state"), other.join("run"), other.join("netns"));
    let mut cmd = weft_tests::netns::command_in(
        &h1.netns,
        weft_tests::bin_path("weft-agent"),
        Default::default(),
    )
    .unwrap();
    cmd.args(["--subnet", &h1.subnet, "--node-name", "h1"]);
    cmd.args([
        "--state-dir",
        s.to_str().unwrap(),
        "--run-dir",
        r.to_str().unwrap(),
        "--netns-dir",
        n.to_str().unwrap(),
    ]);
    let out = weft_tests::netns::run_with_timeout(&mut cmd, Duration::from_secs(10)).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another weft-agent is already running in this network namespace"),
        "{err}"
    );
    assert!(
        h1.weftctl(&["status"]).status.success(),
        "the first agent is unaffected"
    );
}

/// The host veths of this host's spare namespaces: (name, ifindex, line).
fn spares(h: &Host) -> Vec<(String, u32, String)> {
    h.exec_ok(&["ip", "-o", "link", "show"])
        .lines()
        .filter(|l| is_spare(l))
        .map(|l| {
            let mut f = l.split(':');
            let index = f.next().unwrap().trim().parse().unwrap();
            let name = f.next().unwrap().trim();
            let name = name.split('@').next().unwrap().to_string();
            (name, index, l.to_string())
        })
        .collect()
}

fn wait_spares(h: &Host, n: usize) -> Vec<(String, u32, String)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = spares(h);
        if s.len() == n {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {n} spare veths, found {}: {s:?}",
            s.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn spare_namespaces_are_used_refilled_and_die_with_the_agent() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h1 = lab.host(1);
    let mut agent = h1.start_agent(&[]);
    // The default pool: 4 spares, each a down port of weft0.
    let before = wait_spares(h1, 4);
    for (name, _, line) in &before {
        assert!(line.contains("master weft0"), "{line}");
        assert!(line.contains("state DOWN"), "{name} should be down: {line}");
    }
    // ns add takes one: the endpoint's host veth is a former spare (same
    // ifindex), renamed and up, and the endpoint is complete.
    let a = h1.add_endpoint("a");
    let veth = host_veth_name("a");
    let port = h1.exec_ok(&["ip", "-o", "link", "show", &veth]);
    let index: u32 = port.split(':').next().unwrap().trim().parse().unwrap();
    assert!(
        before.iter().any(|(_, i, _)| *i == index),
        "{veth} (ifindex {index}) is not one of the spares {before:?}"
    );
    assert!(
        port.contains("master weft0") && port.contains("state UP"),
        "{port}"
    );
    let link = h1.exec_endpoint_ok("a", &["ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains(&a.mac.to_string()), "{link}");
    let addr = h1.exec_endpoint_ok("a", &["ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains(&format!("{}/24", ip(&a))), "{addr}");
    let route = h1.exec_endpoint_ok("a", &["ip", "-4", "route", "show", "default"]);
    assert!(route.contains("default via 10.244.1.1 dev eth0"), "{route}");
    let lo = h1.exec_endpoint_ok("a", &["ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    assert!(lab.ping(&h1.netns, ip(&a)), "host cannot reach a");
    // The pool is refilled.
    let refilled = wait_spares(h1, 4);
    assert!(refilled.iter().all(|(_, i, _)| *i != index), "{refilled:?}");

    // A crash takes the spares along (nothing names them), not endpoints.
    agent.kill();
    wait_spares(h1, 0);
    assert!(lab.ping(&h1.netns, ip(&a)), "a lost with the agent");

    // Without a pool, ns add builds from scratch, and no spare is ever
    // made. Spares appear asynchronously (woken by each ns add) and die
    // with the agent, so a look at one moment proves nothing: every link
    // the host's namespace sees from before the agent starts until after
    // it has exited is recorded (`ip monitor`), and the record ends with a
    // marker link made last, so it is known to be complete.
    let mut monitor = lab.spawn(&h1.netns, &["ip", "-o", "monitor", "link"]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut agent = h1.start_agent(&["--ns-pool", "0"]);
    let b = h1.add_endpoint("b");
    let c = h1.add_endpoint("c");
    assert!(lab.ping(&h1.netns, ip(&b)), "host cannot reach b");
    h1.del_endpoint("c");
    assert!(agent.stop().success());
    h1.exec_ok(&[
        "ip", "link", "add", "wtmark", "type", "veth", "peer", "name", "wtmark1",
    ]);
    assert!(
        weft_tests::wait_until(WAIT, || monitor.log_text().contains("wtmark")),
        "ip monitor did not see the marker link:\n{}",
        monitor.log_text()
    );
    monitor.kill();
    let seen = monitor.log_text();
    assert!(
        seen.contains(&host_veth_name("b")) && seen.contains(&c.host_veth),
        "ip monitor missed the endpoints' veths:\n{seen}"
    );
    let spare_lines: Vec<&str> = seen.lines().filter(|l| is_spare(l)).collect();
    assert!(
        spare_lines.is_empty(),
        "--ns-pool 0 still made spares:\n{}",
        spare_lines.join("\n")
    );
}
