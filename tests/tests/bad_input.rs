//! Bad input against the real agent: a corrupt, truncated, empty,
//! wrong-shaped or future state file, and a lost state directory, make
//! `weft-agent` refuse to start with one clear line naming the file (or
//! directory) and what to do, and destroy nothing: every endpoint's
//! namespace, veth, address, nft rule and the bridge stay, and still pass
//! traffic. Restoring the file brings the agent back with every endpoint.
//! Garbage on the agent's API socket is answered and survived.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_tests::{gateway_of, wait_until, EndpointOpts, Host, Lab, LabOpts};

/// A refused start must end within this (it fails before any kernel work).
const REFUSE_WITHIN: Duration = Duration::from_secs(10);
/// Prefix of the agent's spare namespaces and their veths.
const SPARE: &str = "wp";

/// Everything weft built on the host that a bad start could destroy: links
/// (with their master), addresses, routes, the nft ruleset, and the
/// namespaces' mounts; and each endpoint's own links and addresses.
fn kernel(h: &Host, eps: &[&str]) -> String {
    let mut s = String::new();
    for l in h.exec_ok(&["ip", "-o", "link", "show"]).lines() {
        // Names and master only: flags follow carrier timing, not weft.
        // Spare namespaces (`wp…`) are the agent's pool, not endpoints.
        let name = l.split(':').nth(1).unwrap_or("").trim();
        if name.starts_with(SPARE) {
            continue;
        }
        let master = l
            .split(" master ")
            .nth(1)
            .map(|m| m.split(' ').next().unwrap_or(""));
        s += &format!("{name} master {master:?}\n");
    }
    s += &h.exec_ok(&["ip", "-o", "-4", "addr", "show"]);
    s += &h.exec_ok(&["ip", "-4", "route", "show"]);
    s += &h.exec_ok(&["nft", "list", "ruleset"]);
    for ep in eps {
        s += &h.exec_endpoint_ok(ep, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
        s += &h.exec_endpoint_ok(ep, &["ip", "-4", "route", "show"]);
    }
    let mut names: Vec<String> = std::fs::read_dir(&h.netns_dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with(SPARE) && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    s += &format!("netns dir: {names:?}\n");
    s
}

/// The endpoints reach each other and the gateway.
fn assert_traffic(lab: &Lab, h: &Host, eps: &[(String, String)], when: &str) {
    let gw = gateway_of(&h.subnet).unwrap();
    for (i, (from, _)) in eps.iter().enumerate() {
        assert!(
            lab.ping(from, gw),
            "{when}: {from} cannot ping the gateway {gw}"
        );
        let (_, to_ip) = &eps[(i + 1) % eps.len()];
        assert!(lab.ping(from, to_ip), "{when}: {from} cannot ping {to_ip}");
    }
}

/// Starts the agent expecting a refusal: a non-zero exit within
/// [`REFUSE_WITHIN`], with a line naming `names` and saying what to do.
/// Returns that line.
fn assert_refused(h: &Host, names: &str, what_to_do: &str, case: &str) -> String {
    let t = Instant::now();
    let out = h.run_agent(&[], REFUSE_WITHIN + Duration::from_secs(5));
    let took = t.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "{case}: weft-agent started or was killed ({:?}) instead of refusing:\n{text}",
        out.status
    );
    assert!(
        took < REFUSE_WITHIN,
        "{case}: refusing took {took:?}:\n{text}"
    );
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(names)).collect();
    assert_eq!(
        lines.len(),
        1,
        "{case}: expected one line naming {names}:\n{text}"
    );
    assert!(
        lines[0].contains("ERROR") && lines[0].contains(what_to_do),
        "{case}: the line does not say what to do ({what_to_do:?}): {}",
        lines[0]
    );
    lines[0].to_string()
}

#[test]
fn corrupt_state_files_refuse_to_start_and_destroy_nothing() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h = lab.host(1);
    let mut agent = h.start_agent(&[]);
    let mut eps = Vec::new();
    for (name, opts) in [
        ("a", EndpointOpts::default().publish("8080:80")),
        ("b", EndpointOpts::default()),
    ] {
        let ep = h.add_endpoint_with(name, &opts);
        eps.push((ep.netns, ep.ip.to_string()));
    }
    assert_traffic(&lab, h, &eps, "before");
    agent.stop();
    let before = kernel(h, &["a", "b"]);
    assert!(before.contains("dnat"), "published port rule:\n{before}");

    let node = h.state_dir.join("node.json");
    let ep_a = h.state_dir.join("endpoints").join("a.json");
    for file in [&node, &ep_a] {
        let good = std::fs::read(file).unwrap();
        let mut future: serde_json::Value = serde_json::from_slice(&good).unwrap();
        future["format"] = serde_json::json!(2);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "truncated",
                good[..good.len() / 2].to_vec(),
                "EOF while parsing",
            ),
            (
                "garbage",
                (0..good.len()).map(|i| (i * 131 % 251) as u8).collect(),
                "corrupt",
            ),
            ("empty", Vec::new(), "the file is empty"),
            (
                "wrong shape",
                br#"{"hello":["world"]}"#.to_vec(),
                "unknown field",
            ),
            ("an array", b"[1,2,3]\n".to_vec(), "corrupt"),
            (
                "a future version",
                serde_json::to_vec(&future).unwrap(),
                "a newer weft-agent may have written it",
            ),
        ];
        for (case, bytes, reason) in cases {
            let case = format!("{} {case}", file.display());
            std::fs::write(file, &bytes).unwrap();
            let line = assert_refused(
                h,
                &file.display().to_string(),
                "restore it from a backup or repair it by hand",
                &case,
            );
            assert!(
                line.contains(reason),
                "{case}: reason {reason:?} missing: {line}"
            );
            assert_eq!(
                std::fs::read(file).unwrap(),
                bytes,
                "{case}: the file was changed"
            );
            let after = kernel(h, &["a", "b"]);
            assert_eq!(
                before, after,
                "{case}: the refused start changed the kernel"
            );
        }
        assert_traffic(&lab, h, &eps, &format!("after bad {}", file.display()));
        std::fs::write(file, &good).unwrap();
    }

    // Restored: it starts, keeps both endpoints, changes nothing they use.
    let mut agent = h.start_agent(&[]);
    let names: Vec<String> = h.endpoints().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["a", "b"]);
    assert_traffic(&lab, h, &eps, "restored");
    agent.stop();
    assert_eq!(
        before,
        kernel(h, &["a", "b"]),
        "a restart on the restored state changed the kernel"
    );
}

/// Missing state is a first start — unless the kernel still holds weft's
/// namespaces, which means the state was lost (or `--state-dir` is wrong):
/// then the agent refuses rather than start empty and delete them. An
/// empty `node.json` is corrupt (see above), not missing.
#[test]
fn lost_state_directory_refuses_to_start_when_namespaces_exist() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h = lab.host(1);
    // First start: no state directory at all.
    let _ = std::fs::remove_dir_all(&h.state_dir);
    let mut agent = h.start_agent(&[]);
    let ep = h.add_endpoint("a");
    let eps = vec![
        (ep.netns.clone(), ep.ip.to_string()),
        (ep.netns.clone(), gateway_of(&h.subnet).unwrap().to_string()),
    ];
    agent.stop();
    let before = kernel(h, &["a"]);
    let moved: PathBuf = h.dir.join("state.moved");
    std::fs::rename(&h.state_dir, &moved).unwrap();
    for case in ["missing directory", "empty directory"] {
        if case == "empty directory" {
            std::fs::create_dir_all(&h.state_dir).unwrap();
        }
        assert_refused(
            h,
            &h.state_dir.display().to_string(),
            "point --state-dir at the right directory",
            case,
        );
        assert_eq!(before, kernel(h, &["a"]), "{case}: the kernel was changed");
        assert_traffic(&lab, h, &eps, case);
        std::fs::remove_dir_all(&h.state_dir).unwrap();
    }
    std::fs::rename(&moved, &h.state_dir).unwrap();
    let mut agent = h.start_agent(&[]);
    assert_eq!(h.show_endpoint("a").ip, ep.ip);
    assert_traffic(&lab, h, &eps, "restored");
    agent.stop();
}

/// In cluster mode the lost state is noticed before the controller is
/// asked for anything: a refused start allocates no subnet, takes no lease
/// and writes no host record.
#[test]
fn lost_state_in_cluster_mode_is_refused_before_registering() {
    let lab = Lab::new(LabOpts::cluster(1, 1));
    let h = lab.host(1);
    let mut agent = h.start_agent(&[]);
    let ep = h.add_endpoint("a");
    let gw = (ep.netns.clone(), h.status().gateway.to_string());
    agent.stop();
    // The host's lease ended meanwhile (as after a long outage): etcd holds
    // no record of it, so a registration would allocate.
    lab.weftctl_etcd_ok(&["host", "rm", "h1"]);
    let ours = |k: &str| {
        k.starts_with("/weft/hosts/")
            || k.starts_with("/weft/subnets/")
            || k.starts_with("/weft/agents/")
    };
    assert!(
        wait_until(Duration::from_secs(10), || !lab
            .etcd_dump()
            .iter()
            .any(|(k, _)| ours(k))),
        "h1's keys stay in etcd: {:?}",
        lab.etcd_dump()
    );
    let before = lab.etcd_dump();
    let kernel_before = kernel(h, &["a"]);
    let ctl_log = lab.held_log("controller-c1");
    let ctl_before = std::fs::read_to_string(&ctl_log).unwrap();
    let moved: PathBuf = h.dir.join("state.moved");
    std::fs::rename(&h.state_dir, &moved).unwrap();
    assert_refused(
        h,
        &h.state_dir.display().to_string(),
        "point --state-dir at the right directory",
        "cluster mode, missing directory",
    );
    assert_eq!(lab.etcd_dump(), before, "the refused start changed etcd");
    let ctl_after = std::fs::read_to_string(&ctl_log).unwrap();
    assert!(
        !ctl_after[ctl_before.len()..].contains("h1"),
        "the controller heard from h1:\n{}",
        &ctl_after[ctl_before.len()..]
    );
    assert_eq!(kernel_before, kernel(h, &["a"]), "the kernel was changed");
    assert!(
        lab.ping(&gw.0, &gw.1),
        "refused: {} cannot ping the gateway {}",
        gw.0,
        gw.1
    );
    // Restored: it registers again with the subnet its namespace uses.
    std::fs::remove_dir_all(&h.state_dir).unwrap();
    std::fs::rename(&moved, &h.state_dir).unwrap();
    let mut agent = h.start_agent(&[]);
    assert_eq!(h.show_endpoint("a").ip, ep.ip);
    agent.stop();
}

/// Sends raw bytes on the agent's socket and returns the answer lines.
fn raw_api(sock: &Path, bytes: &[u8], answers: usize) -> Vec<String> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    for _ in 0..answers {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 {
            break;
        }
        out.push(l);
    }
    out
}

#[test]
fn garbage_on_the_api_socket_is_answered_and_survived() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h = lab.host(1);
    let mut agent = h.start_agent(&[]);
    let sock = h.socket();
    // One answer per line, an error for each bad one, on one connection.
    let mut input = Vec::new();
    let bad: [&[u8]; 6] = [
        b"",
        b"\x00\xff\xfe garbage",
        b"{\"op\":\"rm_rf\"}",
        b"{\"op\":\"ns_add\",\"name\":\"../../etc\"}",
        b"{\"op\":\"ns_add\",\"name\":\"a\",\"publish\":[\"99999:80\"]}",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    ];
    for b in bad {
        input.extend_from_slice(b);
        input.push(b'\n');
    }
    input.extend_from_slice(b"{\"op\":\"ns_list\"}\n");
    let answers = raw_api(&sock, &input, bad.len() + 1);
    assert_eq!(answers.len(), bad.len() + 1, "{answers:?}");
    for a in &answers[..bad.len()] {
        let v: serde_json::Value = serde_json::from_str(a).unwrap();
        assert!(v["error"].is_string(), "{a}");
    }
    assert_eq!(answers[bad.len()].trim(), r#"{"ok":[]}"#);
    // A line over the limit (1 MiB): one error, then the connection ends.
    let mut long = vec![b'x'; (1 << 20) + 10];
    long.extend_from_slice(b"\n{\"op\":\"ns_list\"}\n");
    let answers = raw_api(&sock, &long, 2);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(answers[0].contains("longer than"), "{}", answers[0]);
    // Nothing was created, the agent still serves.
    assert!(std::fs::read_dir(&h.netns_dir).unwrap().next().is_none());
    let ep = h.add_endpoint("a");
    assert!(lab.ping(&ep.netns, gateway_of(&h.subnet).unwrap()));
    assert!(agent.is_running());
    agent.stop();
}
