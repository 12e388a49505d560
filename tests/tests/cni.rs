//! The CNI protocol, driven as a container runtime drives it: `weft-cni`
//! exec'd with the `CNI_*` environment and the config on stdin, inside a
//! simulated host whose real `weft-agent` does the work, against
//! namespaces made as a runtime makes them (`ip netns add`). Every verb,
//! every cniVersion, every error code weft answers, and chaining with the
//! reference `tuning` and `portmap` plugins. Needs root.
//!
//! No `cnitool` here: Debian 12 ships the CNI library's sources
//! (`golang-github-appc-cni-dev` 1.1.2: `libcni/`, `pkg/`) but not the
//! `cnitool/` command, so it cannot be built from Debian's packages. libcni
//! itself drives weft-cni in `podman.rs` (Podman's CNI backend).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use weft_common::api::Endpoint;
use weft_tests::cni::{
    check_add_result, first_ip, host_traces, sandbox_interface, weft_config, Invocation, Runtime,
};
use weft_tests::{tcp_peer_server, try_tcp_request, wait_until, Host, Lab, LabOpts, INTERNET_IP};

const NETWORK: &str = "weft";

fn add<'a>(id: &'a str, netns: &'a Path) -> Invocation<'a> {
    Invocation {
        command: "ADD",
        container_id: Some(id),
        netns: Some(netns),
        ifname: Some("eth0"),
        env: vec![],
    }
}

fn verb<'a>(command: &'a str, id: &'a str, netns: &'a Path) -> Invocation<'a> {
    Invocation {
        command,
        ..add(id, netns)
    }
}

fn cfg(h: &Host, version: &str) -> Value {
    weft_config(version, NETWORK, &h.socket())
}

/// The attachments the agent lists (`ns list`).
fn attachments(h: &Host) -> Vec<Endpoint> {
    h.endpoints()
        .into_iter()
        .filter(|e| e.attachment.is_some())
        .collect()
}

/// The container IDs of the attachments the agent lists.
fn attached_ids(h: &Host) -> Vec<String> {
    let mut ids: Vec<String> = attachments(h)
        .into_iter()
        .filter_map(|e| e.attachment.map(|a| a.container_id))
        .collect();
    ids.sort();
    ids
}

#[test]
fn every_version_adds_checks_and_deletes() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h = lab.host(1);
    let _agent = h.start_agent(&[]);
    let rt = Runtime::new(&h.netns);
    let empty = host_traces(h);
    for (i, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let id = format!("ctr{i}");
        let ns = lab.add_netns(&format!("c{i}"));
        let conf = cfg(h, version);
        let r = rt.exec(&add(&id, &ns), &conf).unwrap();
        let result = r.expect_ok(&format!("ADD {version}")).clone();
        check_add_result(version, &result)
            .unwrap_or_else(|e| panic!("{version}: {e:#} in {result}"));
        let inner = sandbox_interface(&result).expect("container interface");
        assert_eq!(inner["name"], "eth0");
        assert_eq!(inner["sandbox"], ns.display().to_string());
        let ip = first_ip(&result).unwrap();
        // The container reaches its gateway and the internet (NAT).
        let gw = result["ips"][0]["gateway"].as_str().unwrap().to_string();
        assert!(lab.ping(&ns, &gw), "{version}: gateway {gw} from {ip}");
        assert!(lab.ping(&ns, INTERNET_IP), "{version}: internet from {ip}");
        // The interface carries the overlay MTU, the route the gateway.
        let link = lab.exec_ok(&ns, &["ip", "-o", "link", "show", "eth0"]);
        assert!(link.contains(&format!("mtu {}", h.status().mtu)), "{link}");
        let route = lab.exec_ok(&ns, &["ip", "-4", "route", "show", "default"]);
        assert!(route.contains(&format!("via {gw} dev eth0")), "{route}");
        // The agent lists it with its container ID and interface.
        let listed = attachments(h);
        assert!(
            listed.iter().any(
                |e| e.attachment.as_ref().is_some_and(|a| a.container_id == id
                    && a.ifname == "eth0"
                    && a.network == NETWORK)
                    && e.ip == ip
            ),
            "{listed:?}"
        );
        // CHECK exists from 0.4.0 on.
        let prev = {
            let mut c = conf.clone();
            c["prevResult"] = result.clone();
            c
        };
        let check = rt.exec(&verb("CHECK", &id, &ns), &prev).unwrap();
        if *version == "0.3.1" {
            check.expect_code("CHECK 0.3.1", 1);
        } else {
            check.expect_ok(&format!("CHECK {version}"));
        }
        // DEL three times: each succeeds, with no output.
        for n in 0..3 {
            let d = rt.exec(&verb("DEL", &id, &ns), &prev).unwrap();
            assert_eq!(d.expect_ok(&format!("DEL {version} #{n}")), &Value::Null);
        }
        assert!(attachments(h).is_empty());
        // The runtime's namespace is still there: weft never deletes it.
        assert!(ns.exists(), "DEL removed the runtime's namespace");
        let links = lab.exec_ok(&ns, &["ip", "-o", "link", "show"]);
        assert!(!links.contains("eth0"), "{links}");
        lab.del_netns(&format!("c{i}"));
    }
    assert_eq!(host_traces(h), empty);
}

#[test]
fn version_and_bad_input_get_the_specs_errors() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h = lab.host(1);
    let _agent = h.start_agent(&[]);
    let rt = Runtime::new(&h.netns);
    let ns = lab.add_netns("c");
    let conf = cfg(h, "1.1.0");

    let v = rt
        .exec_raw(
            "weft-cni",
            &Invocation {
                command: "VERSION",
                ..Default::default()
            },
            br#"{"cniVersion":"1.0.0"}"#,
        )
        .unwrap();
    let v = v.expect_ok("VERSION");
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );

    // 4: missing or invalid variables, named.
    let no_cmd = rt
        .exec(
            &Invocation {
                command: "",
                ..add("c1", &ns)
            },
            &conf,
        )
        .unwrap();
    assert!(no_cmd
        .expect_code("no CNI_COMMAND", 4)
        .contains("CNI_COMMAND"));
    let no_netns = rt
        .exec(
            &Invocation {
                netns: None,
                ..add("c1", &ns)
            },
            &conf,
        )
        .unwrap();
    assert!(no_netns
        .expect_code("ADD without CNI_NETNS", 4)
        .contains("CNI_NETNS"));
    let bad_id = rt.exec(&add("-bad", &ns), &conf).unwrap();
    assert!(bad_id
        .expect_code("bad id", 4)
        .contains("CNI_CONTAINERID=\"-bad\""));
    // 6: not JSON.
    let junk = rt
        .exec_raw("weft-cni", &add("c1", &ns), b"{not json")
        .unwrap();
    junk.expect_code("malformed JSON", 6);
    // 1: a version weft does not speak; GC and STATUS before 1.1.0.
    let old = rt.exec(&add("c1", &ns), &cfg(h, "0.2.0")).unwrap();
    assert!(old.expect_code("cniVersion 0.2.0", 1).contains("0.2.0"));
    for verb_name in ["GC", "STATUS"] {
        let r = rt
            .exec(&verb(verb_name, "c1", &ns), &cfg(h, "1.0.0"))
            .unwrap();
        r.expect_code(&format!("{verb_name} in 1.0.0"), 1);
    }
    // 7: a bad value in the config, named; 2: an ipam section.
    let mut bad_port = conf.clone();
    bad_port["runtimeConfig"] = json!({"portMappings": [{"hostPort": 70000, "containerPort": 80}]});
    let r = rt.exec(&add("c1", &ns), &bad_port).unwrap();
    assert!(r.expect_code("hostPort 70000", 7).contains("hostPort"));
    let mut ipam = conf.clone();
    ipam["ipam"] = json!({"type": "host-local"});
    rt.exec(&add("c1", &ns), &ipam)
        .unwrap()
        .expect_code("ipam section", 2);
    // 3: a namespace path that does not exist.
    let gone = Path::new("/run/netns/weft-test-no-such-namespace");
    let r = rt.exec(&add("c1", gone), &conf).unwrap();
    assert!(r
        .expect_code("missing netns", 3)
        .contains("/run/netns/weft-test-no-such-namespace"));
    // Nothing of these failures stays.
    assert!(attachments(h).is_empty());

    // ADD twice: the second fails (100), the first stays as it was.
    let first = rt.exec(&add("c1", &ns), &conf).unwrap();
    let ip = first_ip(first.expect_ok("ADD")).unwrap();
    let again = rt.exec(&add("c1", &ns), &conf).unwrap();
    assert!(again.expect_code("ADD twice", 100).contains("c1"));
    // Another container ID asking for the same interface in the same
    // namespace: the interface exists there.
    let clash = rt.exec(&add("c2", &ns), &conf).unwrap();
    let msg = clash.expect_code("interface exists", 100);
    assert!(msg.contains("eth0"), "{msg}");
    assert_eq!(attachments(h).len(), 1);
    assert!(lab.ping(&ns, gateway(h)), "the first attachment works");

    // CHECK names what differs: the address removed inside.
    lab.exec_ok(&ns, &["ip", "addr", "flush", "dev", "eth0"]);
    let check = rt.exec(&verb("CHECK", "c1", &ns), &conf).unwrap();
    let msg = check.expect_code("CHECK after address flush", 103);
    assert!(msg.contains(&ip.to_string()), "names the address: {msg}");
    // CHECK of what was never added.
    rt.exec(&verb("CHECK", "nope", &ns), &conf)
        .unwrap()
        .expect_code("CHECK unknown", 3);

    // STATUS: ready while the agent runs; 50 when it is stopped, and ADD
    // then says "try again later" (11).
    rt.exec(&verb("STATUS", "c1", &ns), &conf)
        .unwrap()
        .expect_ok("STATUS");
    drop(_agent);
    let st = rt.exec(&verb("STATUS", "c1", &ns), &conf).unwrap();
    assert!(st
        .expect_code("STATUS, agent stopped", 50)
        .contains("not reachable"));
    let ns2 = lab.add_netns("c2");
    rt.exec(&add("c3", &ns2), &conf)
        .unwrap()
        .expect_code("ADD, agent stopped", 11);
}

fn gateway(h: &Host) -> String {
    h.status().gateway.to_string()
}

#[test]
fn del_after_the_namespace_went_and_gc_sweep_and_release() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h = lab.host(1);
    let _agent = h.start_agent(&[]);
    let rt = Runtime::new(&h.netns);
    let conf = cfg(h, "1.1.0");
    let empty = host_traces(h);

    // DEL after the runtime deleted the namespace: succeeds, releases.
    let ns = lab.add_netns("a");
    let r = rt.exec(&add("a", &ns), &conf).unwrap();
    let ip_a = first_ip(r.expect_ok("ADD a")).unwrap();
    lab.del_netns("a");
    rt.exec(&verb("DEL", "a", &ns), &conf)
        .unwrap()
        .expect_ok("DEL after netns gone");
    assert!(attachments(h).is_empty());
    // The address is free again: a namespace may take it.
    let ep = h.add_endpoint_with("x", &weft_tests::EndpointOpts::ip(ip_a));
    assert_eq!(ep.ip, ip_a);
    h.del_endpoint("x");
    let ns_b = lab.add_netns("b");
    rt.exec(&add("b", &ns_b), &conf).unwrap().expect_ok("ADD b");

    // A namespace that vanishes without DEL (the runtime crashed): the
    // agent releases its attachment by itself, at the latest at its next
    // periodic repair (every 30 s).
    lab.del_netns("b");
    assert!(
        wait_until(Duration::from_secs(40), || attachments(h).is_empty()),
        "the agent kept an attachment whose namespace is gone: {:?}",
        attachments(h)
    );

    // GC: a partial list keeps those listed, an empty list removes all of
    // this network's (another network's attachment is left alone).
    let mut keys = Vec::new();
    for n in 0..3 {
        let name = format!("g{n}");
        let ns = lab.add_netns(&name);
        rt.exec(&add(&name, &ns), &conf)
            .unwrap()
            .expect_ok("ADD for GC");
        keys.push(name);
    }
    let other_ns = lab.add_netns("o");
    let other = weft_config("1.1.0", "other-net", &h.socket());
    rt.exec(&add("o", &other_ns), &other)
        .unwrap()
        .expect_ok("ADD other network");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "g1", "ifname": "eth0"}]);
    let gc_inv = Invocation {
        command: "GC",
        ..Default::default()
    };
    rt.exec(&gc_inv, &gc).unwrap().expect_ok("GC partial");
    assert_eq!(attached_ids(h), ["g1", "o"]);
    gc["cni.dev/valid-attachments"] = json!([]);
    rt.exec(&gc_inv, &gc).unwrap().expect_ok("GC empty");
    let left = attachments(h);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].attachment.as_ref().unwrap().network, "other-net");
    rt.exec(&verb("DEL", "o", &other_ns), &other)
        .unwrap()
        .expect_ok("DEL other");
    assert_eq!(host_traces(h), empty);
}

#[test]
fn published_ports_and_chaining_with_the_reference_plugins() {
    let lab = Lab::new(LabOpts::hosts(2));
    let (h1, h2) = (lab.host(1), lab.host(2));
    let _agent = h1.start_agent(&[]);
    let rt = Runtime::new(&h1.netns);
    let ns = lab.add_netns("web");
    // weft, then the reference tuning plugin (a sysctl in the container)
    // and portmap (given weft's result; weft itself publishes the port).
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {"type": "weft-cni", "agentSocket": h1.socket(), "capabilities": {"portMappings": true}},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_local": "1"}},
        ]
    });
    let runtime_config =
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    let out = rt
        .run_list(&add("web", &ns), &conflist, &runtime_config, None)
        .unwrap();
    let result = out.expect_ok("ADD weft+tuning").clone();
    check_add_result("1.0.0", &result).unwrap();
    let sysctl = lab.exec_ok(&ns, &["cat", "/proc/sys/net/ipv4/conf/eth0/accept_local"]);
    assert_eq!(sysctl.trim(), "1", "tuning ran on weft's interface");
    let ip = first_ip(&result).unwrap();
    let _server = tcp_peer_server(&ns, (ip, 80));
    // From another host, the published port answers.
    let reply = (0..20)
        .find_map(|_| {
            try_tcp_request(&h2.netns, (h1.ip, 8080)).ok().or_else(|| {
                std::thread::sleep(Duration::from_millis(100));
                None
            })
        })
        .expect("published port 8080 answers from h2");
    assert!(!reply.is_empty());
    // The ports are listed on the attachment.
    let listed = attachments(h1);
    let published: Vec<String> = listed[0].publish.iter().map(|p| p.to_string()).collect();
    assert_eq!(published, ["8080:80/tcp"]);
    // DEL through the chain in reverse order releases the port.
    rt.run_list(
        &verb("DEL", "web", &ns),
        &conflist,
        &runtime_config,
        Some(&result),
    )
    .unwrap()
    .expect_ok("DEL chain");
    assert!(try_tcp_request(&h2.netns, (h1.ip, 8080)).is_err());
    assert!(attachments(h1).is_empty());

    // The reference portmap plugin can follow weft in a conflist.
    let with_portmap = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {"type": "weft-cni", "agentSocket": h1.socket()},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": false},
        ]
    });
    let rc = json!({"portMappings": [{"hostPort": 9090, "containerPort": 90, "protocol": "tcp"}]});
    let out = rt
        .run_list(&add("pm", &ns), &with_portmap, &rc, None)
        .unwrap();
    let result = out.expect_ok("ADD weft+portmap").clone();
    let ip = first_ip(&result).unwrap();
    let _server = tcp_peer_server(&ns, (ip, 90));
    assert!(
        wait_until(Duration::from_secs(5), || try_tcp_request(
            &h2.netns,
            (h1.ip, 9090)
        )
        .is_ok()),
        "portmap's DNAT after weft answers"
    );
    rt.run_list(&verb("DEL", "pm", &ns), &with_portmap, &rc, Some(&result))
        .unwrap()
        .expect_ok("DEL weft+portmap");
    assert!(attachments(h1).is_empty());
}

#[test]
fn an_agent_restart_keeps_attachments_working() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h = lab.host(1);
    let mut agent = h.start_agent(&[]);
    let rt = Runtime::new(&h.netns);
    let ns = lab.add_netns("c");
    let mut conf = cfg(h, "1.0.0");
    // Labels from the config's args.cni.labels (the CNI conventions).
    conf["args"] = json!({"cni": {"labels": [{"key": "app", "value": "web"}]}});
    let r = rt.exec(&add("c", &ns), &conf).unwrap();
    let ip = first_ip(r.expect_ok("ADD")).unwrap();
    let before = host_traces(h);
    let mut pings = weft_tests::ping::spawn(&lab, &ns, gateway(h), 300);
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();
    let _agent = h.start_agent(&[]);
    let (sent, got) = weft_tests::ping::counts(&mut pings);
    assert_eq!(
        (sent, got),
        (300, 300),
        "pings lost across the agent restart"
    );
    assert_eq!(host_traces(h), before);
    let listed = attachments(h);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].ip, ip);
    let labels: Vec<(&str, &str)> = listed[0]
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(labels, [("app", "web")], "labels kept across the restart");
    rt.exec(&verb("CHECK", "c", &ns), &conf)
        .unwrap()
        .expect_ok("CHECK after restart");
}
