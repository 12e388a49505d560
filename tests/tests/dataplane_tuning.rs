//! The data-plane settings weft chose by measurement (see
//! `agent/src/netlink/offload.rs` and `weft-bench dataplane` with
//! `WEFT_BENCH_DP_VARIANTS`): the devices carry them, and a vxlan device
//! made without them is corrected when the agent starts. Real kernel, real
//! etcd, controller and agents in simulated hosts.

use std::path::Path;

use weft_tests::{Agent, Endpoint, Host, Lab, LabOpts, WAIT};

/// The words of `ip -d link show weft.1` in a host.
fn vxlan_words(lab: &Lab, h: &Host) -> Vec<String> {
    lab.exec_ok(&h.netns, &["ip", "-d", "link", "show", "weft.1"])
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// `generic-receive-offload` of `dev` as `ethtool -k` shows it ("on"/"off").
fn gro(lab: &Lab, ns: impl AsRef<Path>, dev: &str) -> String {
    let out = lab.exec_ok(ns, &["ethtool", "-k", dev]);
    out.lines()
        .find_map(|l| l.strip_prefix("generic-receive-offload:"))
        .unwrap_or_else(|| panic!("no GRO line in ethtool -k {dev}:\n{out}"))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Agents on h1 and h2 that see each other, and a namespace on each that
/// reaches the other.
fn two_hosts_with_endpoints(lab: &Lab) -> (Agent, Agent, [Endpoint; 2]) {
    let a1 = lab.host(1).start_agent(&[]);
    let a2 = lab.host(2).start_agent(&[]);
    lab.host(1).wait_peer("h2", WAIT);
    lab.host(2).wait_peer("h1", WAIT);
    let eps = [
        lab.host(1).add_endpoint("tun-a"),
        lab.host(2).add_endpoint("tun-b"),
    ];
    assert!(
        lab.ping(&eps[0].netns, eps[1].ip),
        "no path between the namespaces"
    );
    (a1, a2, eps)
}

#[test]
fn devices_carry_the_chosen_settings() {
    let lab = Lab::new(LabOpts::cluster(2, 1));
    let (_a1, _a2, eps) = two_hosts_with_endpoints(&lab);
    for (h, ep) in lab.hosts().iter().zip(&eps) {
        // The vxlan device sends outer UDP checksums.
        let words = vxlan_words(&lab, h);
        assert!(
            words.iter().any(|w| w == "udpcsum") && !words.iter().any(|w| w == "noudpcsum"),
            "{}: weft.1 without udpcsum: {}",
            h.name,
            words.join(" ")
        );
        // GRO stays off on both ends of the endpoint's veth.
        assert_eq!(gro(&lab, &h.netns, &ep.host_veth), "off", "{}", h.name);
        assert_eq!(gro(&lab, &ep.netns, "eth0"), "off", "{}", h.name);
    }
}

#[test]
fn vxlan_device_made_without_udpcsum_is_recreated_on_start() {
    let lab = Lab::new(LabOpts::cluster(2, 1));
    let (mut a1, _a2, eps) = two_hosts_with_endpoints(&lab);
    let h1 = lab.host(1);
    a1.stop();
    // The same device by hand, but without outer UDP checksums.
    let j: serde_json::Value =
        serde_json::from_str(&lab.exec_ok(&h1.netns, &["ip", "-j", "link", "show", "weft.1"]))
            .expect("ip -j output");
    let mac = j[0]["address"].as_str().expect("mac").to_string();
    let mtu = j[0]["mtu"].as_u64().expect("mtu").to_string();
    let ip = h1.ip.to_string();
    lab.exec_ok(&h1.netns, &["ip", "link", "del", "weft.1"]);
    lab.exec_ok(
        &h1.netns,
        &[
            "ip",
            "link",
            "add",
            "weft.1",
            "address",
            &mac,
            "mtu",
            &mtu,
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &ip,
            "dev",
            "eth0",
            "dstport",
            "4789",
            "nolearning",
            "noudpcsum",
        ],
    );
    lab.exec_ok(&h1.netns, &["ip", "link", "set", "weft.1", "up"]);
    assert!(vxlan_words(&lab, h1).iter().any(|w| w == "noudpcsum"));

    let _a1 = h1.start_agent(&[]);
    let words = vxlan_words(&lab, h1);
    assert!(
        words.iter().any(|w| w == "udpcsum") && !words.iter().any(|w| w == "noudpcsum"),
        "weft.1 still without udpcsum after the agent started: {}",
        words.join(" ")
    );
    let log = std::fs::read_to_string(h1.agent_log()).expect("agent log");
    let second = log
        .rsplit("=== weft-tests: starting")
        .next()
        .unwrap_or_default();
    assert!(
        second.contains("re-creating it"),
        "the agent did not say it re-created weft.1:\n{second}"
    );
    // Its MAC (persisted) and the tunnel entries are back: traffic flows.
    assert!(
        lab.exec_ok(&h1.netns, &["ip", "link", "show", "weft.1"])
            .contains(&mac),
        "weft.1 changed its MAC"
    );
    assert!(
        lab.ping(&eps[0].netns, eps[1].ip) && lab.ping(&eps[1].netns, eps[0].ip),
        "no path between the namespaces after the device was re-created"
    );
}
