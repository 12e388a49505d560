//! The overlay across hosts: VXLAN tunnels and routes programmed from the
//! controller's peer stream, reconciled against the kernel. Real kernel,
//! real etcd, real controllers and agents in simulated hosts.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use weft_common::cluster::HostRecord;
use weft_tests::netns::in_netns;
use weft_tests::{log_tail, logfile, wait_until, Agent, Host, Lab, LabOpts, WAIT};

/// An endpoint namespace: on which host, where it lives and its address.
#[derive(Clone, Debug)]
struct Ep {
    host: usize,
    name: String,
    ip: Ipv4Addr,
    netns: PathBuf,
}

/// `n` endpoints on each of the given hosts.
fn add_eps(lab: &Lab, hosts: &[usize], n: usize) -> Vec<Ep> {
    let mut eps = Vec::new();
    for &i in hosts {
        let h = lab.host(i);
        for j in 1..=n {
            let e = h.add_endpoint(&format!("{}-n{j}", h.name));
            eps.push(Ep {
                host: i,
                name: e.name,
                ip: e.ip,
                netns: e.netns.into(),
            });
        }
    }
    eps
}

/// Starts the agents of `hosts` (1-based) with `extra` flags and waits until
/// each is ready.
fn start(lab: &Lab, hosts: &[usize], extra: &[&str]) -> BTreeMap<usize, Agent> {
    let mut agents: BTreeMap<usize, Agent> = hosts
        .iter()
        .map(|&i| (i, lab.host(i).spawn_agent(extra).unwrap()))
        .collect();
    for a in agents.values_mut() {
        a.wait_ready(Duration::from_secs(20)).unwrap();
    }
    agents
}

/// The peers (name → mode) an agent reports.
fn peer_modes(h: &Host) -> BTreeMap<String, String> {
    h.status()
        .peers
        .into_iter()
        .map(|p| (p.name, p.mode))
        .collect()
}

/// Waits until each of `hosts` has exactly the others as peers.
fn wait_mesh(lab: &Lab, hosts: &[usize]) {
    for &i in hosts {
        let h = lab.host(i);
        let want: Vec<String> = hosts
            .iter()
            .filter(|&&j| j != i)
            .map(|j| format!("h{j}"))
            .collect();
        h.wait_status(WAIT, &format!("exactly the peers {want:?}"), |s| {
            let mut have: Vec<&String> = s.peers.iter().map(|p| &p.name).collect();
            have.sort();
            have.into_iter().eq(want.iter())
        });
    }
}

/// Pings every endpoint from every other one; returns the failures.
fn mesh_failures(lab: &Lab, eps: &[Ep]) -> Vec<String> {
    let mut bad = Vec::new();
    for a in eps {
        for b in eps {
            if a.name != b.name && !lab.ping(&a.netns, b.ip) {
                bad.push(format!(
                    "{} (h{}) -> {} (h{}) {}",
                    a.name, a.host, b.name, b.host, b.ip
                ));
            }
        }
    }
    bad
}

fn assert_mesh(lab: &Lab, eps: &[Ep]) {
    let bad = mesh_failures(lab, eps);
    if !bad.is_empty() {
        lab.dump_logs();
    }
    assert!(bad.is_empty(), "unreachable: {bad:#?}");
}

/// Sends `len` bytes over TCP from `a` to an echo server in `b` and checks
/// that all of them come back: segments of full MTU size cross the tunnel.
fn tcp_echo(a: &Ep, b: &Ep, len: usize) {
    let bip = b.ip;
    let listener = in_netns(&b.netns, move || TcpListener::bind((bip, 0)))
        .unwrap()
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let back = in_netns(&a.netns, move || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        s.write_all(&data)?;
        let mut back = vec![0u8; len];
        s.read_exact(&mut back)?;
        assert_eq!(back, data, "echoed bytes differ");
        Ok(back)
    })
    .unwrap();
    let back = back.unwrap_or_else(|e| panic!("TCP {} -> {} ({addr}): {e}", a.name, b.name));
    assert_eq!(back.len(), len);
    server.join().unwrap();
}

/// Output of a command in a host's namespace.
fn sh(lab: &Lab, host: usize, cmd: &[&str]) -> String {
    lab.exec_ok(&lab.host(host).netns, cmd)
}

/// What `host` has programmed for a peer with this subnet, MAC and IP:
/// (route, neighbour, fdb entry, nft set member) present?
fn entries_for(lab: &Lab, host: usize, subnet: &str, mac: &str, ip: &str) -> [bool; 4] {
    let net = subnet.split('/').next().unwrap();
    let routes = sh(lab, host, &["ip", "-4", "route", "show"]);
    let neigh = sh(lab, host, &["ip", "-4", "neigh", "show", "dev", "weft.1"]);
    let fdb = sh(lab, host, &["bridge", "fdb", "show", "dev", "weft.1"]);
    let set = sh(
        lab,
        host,
        &["nft", "list", "set", "inet", "weft", "vxlan_peers"],
    );
    [
        routes.lines().any(|l| l.starts_with(subnet)),
        neigh.lines().any(|l| l.starts_with(&format!("{net} "))),
        fdb.lines().any(|l| l.starts_with(mac)),
        set.contains(ip),
    ]
}

fn host_record(lab: &Lab, name: &str) -> HostRecord {
    lab.etcd_hosts()
        .remove(name)
        .unwrap_or_else(|| panic!("no host record of {name} in etcd"))
}

#[test]
fn full_mesh_and_mtu_across_three_hosts() {
    let lab = Lab::new(LabOpts::cluster(3, 1));
    let _agents = start(&lab, &[1, 2, 3], &[]);
    wait_mesh(&lab, &[1, 2, 3]);
    let eps = add_eps(&lab, &[1, 2, 3], 2);
    assert_mesh(&lab, &eps);
    // The overlay MTU is the underlay's (1500) minus VXLAN's 50 bytes, on
    // the bridge, the vxlan device and inside the namespaces.
    for h in lab.hosts() {
        assert_eq!(h.status().mtu, 1450, "{}", h.name);
        let link = sh(&lab, h.index, &["ip", "-d", "link", "show", "weft.1"]);
        assert!(link.contains("mtu 1450"), "{link}");
        assert!(link.contains("vxlan id 1"), "{link}");
        assert!(link.contains("dstport 4789"), "{link}");
        assert!(link.contains("nolearning"), "{link}");
        assert!(link.contains(&format!("local {}", h.ip)), "{link}");
    }
    let inner = lab.exec_ok(&eps[0].netns, &["ip", "link", "show", "eth0"]);
    assert!(inner.contains("mtu 1450"), "{inner}");
    // Bulk TCP both ways across the tunnel: far more than one MTU.
    tcp_echo(&eps[0], &eps[2], 1 << 20);
    tcp_echo(&eps[4], &eps[1], 1 << 20);
    // A full-size ping with DF set fits; one byte more does not (no black
    // hole: the namespace MTU is what the tunnel can carry).
    let ping_df = |size: &str| {
        lab.exec(
            &eps[0].netns,
            &[
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                size,
                &eps[2].ip.to_string(),
            ],
        )
        .status
        .success()
    };
    assert!(ping_df("1422"), "1450-byte packets must cross the tunnel");
    assert!(
        !ping_df("1423"),
        "a packet above the MTU must be refused locally"
    );
}

#[test]
fn fourth_host_joins_and_host_rm_cleans_up() {
    let lab = Lab::new(LabOpts::cluster(4, 1));
    let mut agents = start(&lab, &[1, 2, 3], &[]);
    wait_mesh(&lab, &[1, 2, 3]);
    let mut eps = add_eps(&lab, &[1, 2, 3], 1);
    assert_mesh(&lab, &eps);
    let pids: Vec<Option<i32>> = (1..=3).map(|i| lab.host(i).agent_pid()).collect();

    agents.extend(start(&lab, &[4], &[]));
    wait_mesh(&lab, &[1, 2, 3, 4]);
    eps.extend(add_eps(&lab, &[4], 1));
    assert_mesh(&lab, &eps);
    let after: Vec<Option<i32>> = (1..=3).map(|i| lab.host(i).agent_pid()).collect();
    assert_eq!(pids, after, "no agent was restarted");

    let rec = host_record(&lab, "h4");
    let subnet = rec.subnet.to_string();
    let mac = rec.vtep_mac.to_string();
    let ip = rec.public_ip.to_string();
    for i in 1..=3 {
        assert_eq!(
            entries_for(&lab, i, &subnet, &mac, &ip),
            [true; 4],
            "h{i} before host rm"
        );
    }
    // Decommission h4: its agent stops (its lease would keep it for a day),
    // then the operator removes it.
    agents.get_mut(&4).unwrap().stop();
    let out = lab.weftctl_etcd(&["host", "rm", "h4"]);
    assert!(out.status.success(), "{out:?}");
    for i in 1..=3 {
        assert!(
            wait_until(Duration::from_secs(10), || entries_for(
                &lab, i, &subnet, &mac, &ip
            ) == [false; 4]),
            "h{i} still has h4's entries (route, neigh, fdb, nft): {:?}",
            entries_for(&lab, i, &subnet, &mac, &ip)
        );
    }
    eps.retain(|e| e.host != 4);
    assert_mesh(&lab, &eps);
}

#[test]
fn agent_restart_loses_no_packets() {
    let lab = Lab::new(LabOpts::cluster(2, 1));
    // No spare namespaces: they live and die with the agent process, so a
    // restart would rebuild them; everything else must survive untouched.
    let no_pool = ["--ns-pool", "0"];
    let mut agents = start(&lab, &[1, 2], &no_pool);
    wait_mesh(&lab, &[1, 2]);
    let eps = add_eps(&lab, &[1, 2], 1);
    assert_mesh(&lab, &eps);
    let logs_from: Vec<u64> = (1..=2)
        .map(|i| logfile::len(&lab.host(i).agent_log()))
        .collect();
    let ruleset = |i: usize| {
        lab.host(i)
            .exec_ok(&["nft", "-s", "list", "table", "inet", "weft"])
    };
    let tables_before = [ruleset(1), ruleset(2)];
    // 600 pings 10 ms apart while both agents restart, one after the other,
    // once with SIGTERM and once killed outright.
    let mut ping = weft_tests::ping::spawn(&lab, &eps[0].netns, eps[1].ip, 600);
    std::thread::sleep(Duration::from_millis(500));
    let a1 = agents.get_mut(&1).unwrap();
    a1.stop();
    *a1 = lab.host(1).start_agent(&no_pool);
    std::thread::sleep(Duration::from_millis(300));
    let a2 = agents.get_mut(&2).unwrap();
    a2.kill();
    *a2 = lab.host(2).start_agent(&no_pool);
    let (tx, rx) = weft_tests::ping::counts(&mut ping);
    assert_eq!(tx, 600);
    assert_eq!(rx, tx, "pings lost across agent restarts");
    // The restarts changed nothing in the kernel. Once each new agent has
    // programmed its data plane and applied its first peer snapshot
    // (ready), it has counted no change at all — no device, address,
    // route, neighbour, FDB entry, sysctl, namespace or nft transaction;
    // its nft table holds what it held before; and its log has no line of
    // a change (each is logged at info as "<what>: <why>").
    for ((i, from), table_before) in [1, 2].into_iter().zip(logs_from).zip(tables_before) {
        let h = lab.host(i);
        h.wait_agent_ready(WAIT);
        let changes = h.agent_changes();
        assert!(
            changes.contains_key("nft") && changes.values().all(|&n| n == 0.0),
            "{}: the restarted agent changed the kernel: {changes:?}; log:\n{}",
            h.name,
            log_tail(&h.agent_log(), 40)
        );
        assert_eq!(
            ruleset(i),
            table_before,
            "{}: the restart changed the nft table",
            h.name
        );
        let second = logfile::lines_since(&h.agent_log(), from).join("\n");
        for word in [
            "link add",
            "link set",
            "address add",
            "restored",
            "route add",
            "neigh add",
            "fdb append",
            "nft table",
            "nft add element",
        ] {
            assert!(
                !second.contains(word),
                "{}: restart logged {word:?}:\n{second}",
                h.name
            );
        }
    }
}

#[test]
fn controllers_down_traffic_flows_and_late_host_joins() {
    let lab = Lab::new(LabOpts::cluster(3, 2));
    let _agents = start(&lab, &[1, 2], &[]);
    wait_mesh(&lab, &[1, 2]);
    let mut eps = add_eps(&lab, &[1, 2], 1);
    assert!(lab.kill_held("controller-c1"));
    assert!(lab.kill_held("controller-c2"));
    // Traffic keeps flowing with every controller gone.
    let mut ping = weft_tests::ping::spawn(&lab, &eps[0].netns, eps[1].ip, 200);
    let (tx, rx) = weft_tests::ping::counts(&mut ping);
    assert_eq!(
        (tx, rx),
        (200, 200),
        "cross-host traffic with controllers down"
    );
    // A new host starts meanwhile: it waits for a subnet. Seen from the
    // outside: it runs, its readiness says it waits for a controller to
    // assign the subnet, it has tried and failed at least once, and it
    // does not serve (its socket is bound only once it has a subnet).
    let h3 = lab.host(3);
    let mut late = h3.spawn_agent(&[]).unwrap();
    let mut last = Err(anyhow::anyhow!("no answer yet"));
    let waiting = wait_until(WAIT, || {
        last = weft_tests::http::get_in(
            &h3.netns,
            h3.metrics_addr(),
            "/readyz",
            Duration::from_secs(5),
        );
        matches!(&last, Ok((503, body)) if body.contains("waiting for a controller to assign"))
    });
    assert!(waiting, "h3 does not say it waits for a subnet: {last:?}");
    logfile::wait_for_line(
        &h3.agent_log(),
        &["no controller assigned a subnet yet"],
        0,
        WAIT,
    );
    assert!(late.is_running(), "h3's agent exited while waiting");
    assert!(!h3.socket().exists(), "h3 serves without a subnet");
    lab.start_controller(2, &[]).unwrap();
    late.wait_ready(Duration::from_secs(30)).unwrap();
    wait_mesh(&lab, &[1, 2, 3]);
    eps.extend(add_eps(&lab, &[3], 1));
    assert_mesh(&lab, &eps);
}

#[test]
fn reconcile_removes_stale_entries_and_restores_deleted_ones() {
    let lab = Lab::new(LabOpts::cluster(2, 1));
    let mut agents = start(&lab, &[1, 2], &[]);
    wait_mesh(&lab, &[1, 2]);
    let eps = add_eps(&lab, &[1, 2], 1);
    assert_mesh(&lab, &eps);
    let stale = ("10.244.250.0/24", "02:00:00:00:fa:fa", "198.18.0.250");
    let plant = |lab: &Lab| {
        for cmd in [
            "ip neigh replace 10.244.250.0 lladdr 02:00:00:00:fa:fa dev weft.1 nud permanent",
            "bridge fdb append 02:00:00:00:fa:fa dev weft.1 dst 198.18.0.250 self permanent",
            "ip route replace 10.244.250.0/24 via 10.244.250.0 dev weft.1 onlink",
        ] {
            let args: Vec<&str> = cmd.split(' ').collect();
            sh(lab, 1, &args);
        }
    };
    let stale_on_h1 = |lab: &Lab| {
        let [r, n, f, _] = entries_for(lab, 1, stale.0, stale.1, stale.2);
        [r, n, f]
    };
    // While the agent runs: the netlink watch sees them and they go.
    plant(&lab);
    assert!(
        wait_until(Duration::from_secs(5), || stale_on_h1(&lab) == [false; 3]),
        "stale entries survived on a running agent: {:?}",
        stale_on_h1(&lab)
    );
    // While it is stopped (flannel #2554): gone once it has started.
    agents.get_mut(&1).unwrap().stop();
    plant(&lab);
    assert_eq!(stale_on_h1(&lab), [true; 3], "planting worked");
    *agents.get_mut(&1).unwrap() = lab.host(1).start_agent(&[]);
    assert_eq!(
        stale_on_h1(&lab),
        [false; 3],
        "stale entries survived a restart"
    );
    assert_mesh(&lab, &eps);

    // Deleted by hand: the peer's route, then the whole vxlan device.
    let rec = host_record(&lab, "h2");
    let subnet = rec.subnet.to_string();
    let (mac, ip) = (rec.vtep_mac.to_string(), rec.public_ip.to_string());
    sh(&lab, 1, &["ip", "route", "del", &subnet]);
    assert!(
        wait_until(WAIT, || entries_for(&lab, 1, &subnet, &mac, &ip)
            == [true; 4]),
        "the deleted route was not restored"
    );
    sh(&lab, 1, &["ip", "link", "del", "weft.1"]);
    assert!(
        wait_until(Duration::from_secs(5), || lab
            .exec(&lab.host(1).netns, &["ip", "link", "show", "weft.1"])
            .status
            .success()),
        "the vxlan device was not re-created"
    );
    assert!(
        wait_until(Duration::from_secs(5), || mesh_failures(&lab, &eps)
            .is_empty()),
        "mesh broken after the vxlan device was re-created: {:?}",
        mesh_failures(&lab, &eps)
    );
}

/// A VXLAN packet carrying an Ethernet frame with an IPv4/UDP datagram from
/// `src` to `dst:port`, for the VTEP with MAC `vtep`.
fn vxlan_packet(vni: u32, vtep: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Vec<u8> {
    let payload = b"forged";
    let mut p = vec![0x08, 0, 0, 0];
    p.extend_from_slice(&(vni << 8).to_be_bytes());
    p.extend_from_slice(&vtep);
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x66]);
    p.extend_from_slice(&[0x08, 0x00]);
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut ip = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&ip);
    p.extend_from_slice(&4444u16.to_be_bytes());
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

#[test]
fn forged_vxlan_from_a_non_peer_is_dropped() {
    // h3 is on the underlay but runs no agent: not a peer.
    let lab = Lab::new(LabOpts::cluster(3, 1));
    let _agents = start(&lab, &[1, 2], &[]);
    wait_mesh(&lab, &[1, 2]);
    let eps = add_eps(&lab, &[1], 1);
    let target = eps[0].clone();
    let vtep = host_record(&lab, "h1").vtep_mac.octets();
    let h2_subnet = host_record(&lab, "h2").subnet;
    let src = Ipv4Addr::from(u32::from(h2_subnet.network()) + 77);
    let sock = in_netns(&target.netns, move || UdpSocket::bind((target.ip, 9999)))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let pkt = vxlan_packet(1, vtep, src, eps[0].ip, 9999);
    let h1_ip = lab.host(1).ip;
    let send_from = |host: usize| {
        let pkt = pkt.clone();
        in_netns(&lab.host(host).netns, move || {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            for _ in 0..3 {
                s.send_to(&pkt, (h1_ip, 4789)).unwrap();
            }
        })
        .unwrap();
    };
    let received = |sock: &UdpSocket| {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while let Ok((len, _)) = sock.recv_from(&mut buf) {
            assert_eq!(&buf[..len], b"forged");
            n += 1;
        }
        n
    };
    // From the non-peer: dropped before decapsulation, and counted.
    send_from(3);
    assert_eq!(
        received(&sock),
        0,
        "a forged packet from a non-peer got through"
    );
    let chain = sh(&lab, 1, &["nft", "list", "chain", "inet", "weft", "input"]);
    let counted = chain
        .lines()
        .find(|l| l.contains("udp dport 4789"))
        .unwrap_or_else(|| panic!("no VXLAN rule:\n{chain}"));
    assert!(counted.contains("packets 3 "), "{counted}");
    // The same packet from a peer's address is decapsulated and delivered:
    // the packet is well formed, only its source was refused.
    send_from(2);
    assert_eq!(
        received(&sock),
        3,
        "the control packet from a peer was not delivered"
    );
}

#[test]
fn direct_routing_on_one_segment_vxlan_across_the_router() {
    let lab = Lab::new(LabOpts {
        routed: vec![3],
        ..LabOpts::cluster(3, 1)
    });
    let _agents = start(&lab, &[1, 2, 3], &["--direct-routing"]);
    wait_mesh(&lab, &[1, 2, 3]);
    let modes = |i: usize| {
        peer_modes(lab.host(i))
            .into_iter()
            .map(|(n, m)| format!("{n}={m}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(modes(1), ["h2=direct", "h3=vxlan"]);
    assert_eq!(modes(2), ["h1=direct", "h3=vxlan"]);
    assert_eq!(modes(3), ["h1=vxlan", "h2=vxlan"]);
    let h2_subnet = host_record(&lab, "h2").subnet.to_string();
    let route = sh(&lab, 1, &["ip", "-4", "route", "show", &h2_subnet]);
    assert!(
        route.contains(&format!("via {} dev eth0", lab.host(2).ip)) && route.contains("proto 119"),
        "{route}"
    );
    let fdb = sh(&lab, 1, &["bridge", "fdb", "show", "dev", "weft.1"]);
    assert_eq!(fdb.lines().count(), 1, "only h3 is tunnelled:\n{fdb}");
    let eps = add_eps(&lab, &[1, 2, 3], 1);
    assert_mesh(&lab, &eps);
    tcp_echo(&eps[0], &eps[1], 1 << 20);
    tcp_echo(&eps[0], &eps[2], 1 << 20);
}

#[test]
fn peer_with_a_new_vtep_mac_is_updated_in_place() {
    let lab = Lab::new(LabOpts::cluster(2, 1));
    let mut agents = start(&lab, &[1, 2], &[]);
    wait_mesh(&lab, &[1, 2]);
    let eps = add_eps(&lab, &[1], 1);
    let before = host_record(&lab, "h2");
    // h2 loses its state (a reinstalled host): a new VTEP MAC, same name,
    // and the controller gives it its subnet back.
    agents.get_mut(&2).unwrap().stop();
    std::fs::remove_dir_all(&lab.host(2).state_dir).unwrap();
    std::fs::create_dir_all(&lab.host(2).state_dir).unwrap();
    *agents.get_mut(&2).unwrap() = lab.host(2).start_agent(&[]);
    let after = host_record(&lab, "h2");
    assert_eq!(after.subnet, before.subnet);
    assert_ne!(after.vtep_mac, before.vtep_mac);
    let new_mac = after.vtep_mac.to_string();
    let subnet = after.subnet.to_string();
    let ip = after.public_ip.to_string();
    assert!(
        wait_until(WAIT, || entries_for(&lab, 1, &subnet, &new_mac, &ip)
            == [true; 4]),
        "h1 did not follow h2's new MAC: {:?}",
        entries_for(&lab, 1, &subnet, &new_mac, &ip)
    );
    let fdb = sh(&lab, 1, &["bridge", "fdb", "show", "dev", "weft.1"]);
    assert_eq!(
        fdb.lines().count(),
        1,
        "the old MAC's entry is gone:\n{fdb}"
    );
    let mut all = eps.clone();
    all.extend(add_eps(&lab, &[2], 1));
    assert_mesh(&lab, &all);
}
