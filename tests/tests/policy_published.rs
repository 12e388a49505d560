//! Network policy and published ports: a client that reaches an endpoint
//! through a port published on its host (DNAT) is matched on its own
//! address, which the endpoint also sees; a policy allowing one host's
//! address lets that host in and keeps another out. Real agents,
//! controller and etcd in a 3-host lab; needs root.

use std::time::Duration;

use weft_tests::{host_ip, tcp_peer_server, try_tcp_request, wait_until, Lab, LabOpts};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn published_ports_are_matched_on_the_original_client_address() {
    let lab = Lab::new(LabOpts::cluster(3, 1));
    let _agents: Vec<_> = lab.hosts().iter().map(|h| h.start_agent(&[])).collect();
    for h in lab.hosts() {
        h.wait_connected(WAIT);
    }
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));
    let db = h1.weftctl_json(&["ns", "add", "db", "-l", "app=db", "--publish", "8080:80"]);
    let ip: std::net::Ipv4Addr = db["ip"].as_str().unwrap().parse().unwrap();
    let _server = tcp_peer_server(h1.endpoint_netns("db"), (ip, 80));
    let published = (host_ip(1), 8080);
    assert!(
        try_tcp_request(&h3.netns, published).is_ok(),
        "open before any policy"
    );

    let policy = format!(
        r#"{{"name": "db-from-h2", "selector": {{"matchLabels": {{"app": "db"}}}},
            "ingress": [{{"from": [{{"ipBlock": {{"cidr": "{}/32"}}}}], "ports": [{{"port": 80}}]}}]}}"#,
        host_ip(2)
    );
    let out = lab.weftctl_etcd_with_input(&["policy", "apply", "-f", "-"], policy.as_bytes());
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(WAIT, || try_tcp_request(&h3.netns, published).is_err()),
        "h3 still reaches db through the published port"
    );
    let seen = try_tcp_request(&h2.netns, published).expect("h2 is allowed");
    assert!(
        seen.starts_with(&format!("{}:", host_ip(2))),
        "db saw {seen}, not h2's address"
    );
    // The decision explained the same way.
    let e = lab.weftctl_etcd_json(&["policy", "explain", &host_ip(3).to_string(), "db", "80/tcp"]);
    assert_eq!(e["allowed"], false, "{e}");
    let e = lab.weftctl_etcd_json(&["policy", "explain", &host_ip(2).to_string(), "db", "80/tcp"]);
    assert_eq!(
        e["ingress"],
        serde_json::json!({"result": "allowed", "policy": "db-from-h2", "rule": 0})
    );
}
