//! Real containers on weft: Debian's Podman 4.3 with its CNI backend runs
//! busybox containers on the `weft` network through `weft-cni`, inside
//! simulated hosts of a 3-host cluster lab. Podman runs through a runtime
//! wrapper that drops `process.rlimits` (this sandbox lacks
//! CAP_SYS_RESOURCE; see `weft_tests::podman`). Needs root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use weft_tests::cni::host_traces;
use weft_tests::podman::{Podman, DEBIAN_CNI_PLUGIN_DIR};
use weft_tests::{wait_until, Host, Lab, LabOpts, INTERNET_IP, WAIT};

/// `<host dir>/cni/10-weft.conflist`: deploy/cni's conflist, pointed at
/// this host's agent socket. Returns the directory.
fn cni_dir(h: &Host) -> PathBuf {
    let dir = h.dir.join("cni");
    std::fs::create_dir_all(&dir).unwrap();
    let shipped: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cni/10-weft.conflist"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut conf = shipped.clone();
    conf["plugins"][0]["agentSocket"] = json!(h.socket());
    std::fs::write(dir.join("10-weft.conflist"), conf.to_string()).unwrap();
    dir
}

fn podman(h: &Host) -> Podman {
    Podman::new(
        &h.netns,
        &cni_dir(h),
        &[weft_tests::bin_dir(), PathBuf::from(DEBIAN_CNI_PLUGIN_DIR)],
    )
    .unwrap()
}

fn pings(pm: &Podman, name: &str, ip: &str) -> bool {
    pm.exec(name, &["ping", "-c", "1", "-W", "2", ip])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn containers_on_three_hosts_reach_each_other_the_internet_and_published_ports() {
    let lab = Lab::new(LabOpts::cluster(3, 1));
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));
    let _agents: Vec<_> = [h1, h2, h3].iter().map(|h| h.start_agent(&[])).collect();
    for h in [h1, h2, h3] {
        h.wait_connected(WAIT);
    }
    for (h, peers) in [(h1, ["h2", "h3"]), (h2, ["h1", "h3"])] {
        for p in peers {
            h.wait_peer(p, WAIT);
        }
    }
    let n3 = h3.add_endpoint("n3");
    let pm1 = podman(h1);
    let pm2 = podman(h2);
    std::fs::create_dir_all(pm1.rootfs().join("www")).unwrap();
    std::fs::write(pm1.rootfs().join("www/index.html"), "hello from weft\n").unwrap();
    pm1.run_detached(
        "web",
        "weft",
        &["8080:80"],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    )
    .unwrap();
    pm2.run_detached("sleeper", "weft", &[], &["sleep", "3600"])
        .unwrap();
    let web_ip = pm1.ip_of("web").unwrap();
    let sleeper_ip = pm2.ip_of("sleeper").unwrap();
    assert!(
        h1.status().subnet.contains(&format!(
            "{}.{}.{}.",
            web_ip.octets()[0],
            web_ip.octets()[1],
            web_ip.octets()[2]
        )),
        "web's address {web_ip} is from h1's subnet"
    );
    // h1's container reaches h2's container and h3's namespace, across
    // the overlay, and the internet through NAT.
    assert!(
        pings(&pm1, "web", &sleeper_ip.to_string()),
        "web -> sleeper"
    );
    assert!(pings(&pm1, "web", &n3.ip.to_string()), "web -> h3's n3");
    assert!(
        pings(&pm2, "sleeper", &web_ip.to_string()),
        "sleeper -> web"
    );
    assert!(
        pings(&pm1, "web", &INTERNET_IP.to_string()),
        "web -> internet"
    );
    // The published port answers from another host.
    let url = format!("http://{}:8080/", h1.ip);
    let fetched = wait_until(Duration::from_secs(5), || {
        lab.exec(&h2.netns, &["busybox", "wget", "-q", "-O", "-", &url])
            .stdout
            .starts_with(b"hello from weft")
    });
    assert!(fetched, "GET {url} from h2");
    // weftctl shows the container's attachment.
    let listed: Vec<serde_json::Value> = h1.weftctl_as(&["ns", "list"]);
    let web_id = pm1.container("web").unwrap().id;
    assert!(
        listed
            .iter()
            .any(|e| e["attachment"]["container_id"] == web_id.as_str()
                && e["publish"] == json!(["8080:80/tcp"])),
        "{listed:?}"
    );
    // podman rm -f releases the address and the port.
    pm1.rm_force("web").unwrap();
    let listed = h1.endpoints();
    assert!(listed.is_empty(), "{listed:?}");
    let again = h1.add_endpoint_with("reuse", &weft_tests::EndpointOpts::ip(web_ip));
    assert_eq!(again.ip, web_ip, "the released address can be taken again");
    assert!(lab
        .exec(&h2.netns, &["busybox", "wget", "-q", "-O", "-", &url])
        .stdout
        .is_empty());
}

#[test]
fn a_restarted_agent_loses_no_packets_of_a_running_container() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h = lab.host(1);
    let mut agent = h.start_agent(&[]);
    let pm = podman(h);
    pm.run_detached("pinger", "weft", &[], &["sleep", "3600"])
        .unwrap();
    let gw = h.status().gateway.to_string();
    let netns = pm.container("pinger").unwrap().netns;
    let before = host_traces(h);
    let mut ping = weft_tests::ping::spawn(&lab, &netns, &gw, 300);
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();
    std::thread::sleep(Duration::from_millis(300));
    let _agent = h.start_agent(&[]);
    assert_eq!(
        weft_tests::ping::counts(&mut ping),
        (300, 300),
        "replies lost across the agent restart"
    );
    assert_eq!(host_traces(h), before, "the restart changed the attachment");
    assert!(pings(&pm, "pinger", &gw));
}

#[test]
fn fifty_containers_started_and_removed_leave_nothing_behind() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h = lab.host(1);
    let _agent = h.start_agent(&[]);
    let pm = podman(h);
    let empty = host_traces(h);
    let mut ips = std::collections::BTreeSet::new();
    for i in 0..50 {
        let name = format!("x{i}");
        let publish = format!("{}:80", 9000 + i);
        let ports: &[&str] = if i % 5 == 0 { &[&publish] } else { &[] };
        pm.run_detached(&name, "weft", ports, &["sleep", "3600"])
            .unwrap();
        assert!(ips.insert(pm.ip_of(&name).unwrap()), "an address twice");
    }
    assert_eq!(h.endpoints().len(), 50);
    for i in 0..50 {
        pm.rm_force(&format!("x{i}")).unwrap();
    }
    assert_eq!(host_traces(h), empty);
    let listed = h.endpoints();
    assert!(listed.is_empty(), "{listed:?}");
    // The namespaces the runtime made are gone too (podman's), and no
    // pending marker stayed.
    let pending = std::fs::read_dir(h.state_dir.join("pending"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(pending, 0);
}
