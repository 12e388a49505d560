//! The test bed itself: a lab builds, routes, and disappears completely,
//! also when the test body panics.

use std::path::{Path, PathBuf};

use weft_tests::{
    cleanup, tcp_peer_server, tcp_request, udp_echo_server, udp_request, Lab, LabOpts, INTERNET_IP,
    ROUTER_IP,
};

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    cleanup::mount_points()
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect()
}

fn assert_gone(names: &[String], dir: &Path) {
    for n in names {
        assert!(!netns_exists(n), "namespace {n} left behind");
    }
    assert!(!dir.exists(), "lab dir {} left behind", dir.display());
    assert!(
        mounts_under(dir).is_empty(),
        "mounts left under {}",
        dir.display()
    );
}

#[test]
fn lab_builds_routes_and_tears_down() {
    let lab = Lab::new(LabOpts::hosts(2));
    let names = lab.namespaces();
    let dir = lab.dir.clone();
    assert_eq!(names.len(), 5, "u, r, i, h1, h2: {names:?}");
    for n in &names {
        assert!(netns_exists(n), "namespace {n} missing");
        assert!(n.starts_with(&format!("{}-", lab.prefix)));
    }
    for h in lab.hosts() {
        for d in [&h.state_dir, &h.run_dir, &h.netns_dir] {
            assert!(d.is_dir(), "{} missing", d.display());
        }
    }

    let h1 = lab.host(1);
    assert_eq!(h1.ip.to_string(), "198.18.0.11");
    assert_eq!(h1.subnet, "10.244.1.0/24");
    assert_eq!(lab.host(2).ip.to_string(), "198.18.0.12");
    let addrs = lab.exec_ok("h1", &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains("198.18.0.11/24"), "{addrs}");

    // Underlay, router, internet.
    assert!(lab.ping(&h1.netns, ROUTER_IP), "h1 -> router");
    assert!(lab.ping(&h1.netns, "198.18.0.12"), "h1 -> h2");
    assert!(
        lab.ping(&h1.netns, INTERNET_IP),
        "h1 -> internet via router"
    );
    assert!(lab.ping("i", "198.18.0.12"), "internet -> h2");

    // The internet has no route to the cluster CIDR: egress needs NAT.
    let get = lab.exec("i", &["ip", "-4", "route", "get", "10.244.1.2"]);
    assert!(
        !get.status.success(),
        "internet must not route to the cluster"
    );
    let out = lab.exec("i", &["ip", "-4", "route", "show", "10.244.0.0/16"]);
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
    // The router forwards; hosts are left to the agent.
    assert_eq!(
        weft_tests::netns::read_net_sysctl(lab.router(), "ipv4/ip_forward").unwrap(),
        "1"
    );

    // In-process sockets see the real source addresses.
    let srv = tcp_peer_server(lab.internet(), (INTERNET_IP, 0));
    let peer = tcp_request(&h1.netns, srv.addr());
    assert!(peer.starts_with("198.18.0.11:"), "peer seen as {peer:?}");
    assert_eq!(srv.hits(), 1);
    let echo = udp_echo_server(lab.internet(), (INTERNET_IP, 0));
    assert_eq!(
        udp_request(&lab.host(2).netns, echo.addr(), "hello"),
        "hello"
    );
    drop((srv, echo));

    // Background processes are killed with the lab.
    let sleeper = lab.spawn("h2", &["sleep", "1000"]);
    assert!(sleeper.is_running());
    std::mem::forget(sleeper); // the lab alone must clean it up

    drop(lab);
    assert_gone(&names, &dir);
}

#[test]
fn panic_in_test_body_still_cleans_up() {
    let seen = std::sync::Mutex::new(None::<(Vec<String>, PathBuf, u32)>);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new(LabOpts::hosts(1));
        let p = lab.spawn("h1", &["sleep", "1000"]);
        *seen.lock().unwrap() = Some((lab.namespaces(), lab.dir.clone(), p.pid()));
        std::mem::forget(p);
        // A mount under the lab dir, like the agent's endpoint namespaces.
        let target = lab.host(1).netns_dir.join("fake");
        std::fs::write(&target, b"").unwrap();
        nix::mount::mount(
            Some(&lab.host(1).netns),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        assert!(!mounts_under(&lab.dir).is_empty());
        panic!("deliberate panic inside a lab");
    }));
    assert!(r.is_err(), "the body must have panicked");
    let (names, dir, pid) = seen.lock().unwrap().take().expect("lab was built");
    assert!(!names.is_empty());
    assert_gone(&names, &dir);
    assert!(
        !cleanup::proc_alive(pid as i32, None),
        "process {pid} left running"
    );
}

#[test]
fn labs_in_parallel_get_distinct_prefixes() {
    let a = Lab::new(LabOpts::hosts(1));
    let b = Lab::new(LabOpts::hosts(1).subnet(1, "10.244.7.0/24"));
    assert_ne!(a.prefix, b.prefix);
    assert_eq!(b.host(1).subnet, "10.244.7.0/24");
    // Same addresses, separate worlds.
    assert!(a.ping(&a.host(1).netns, INTERNET_IP));
    assert!(b.ping(&b.host(1).netns, INTERNET_IP));
}

#[test]
fn stale_lab_of_dead_process_is_swept() {
    // Forge the remains of a lab whose owner died: a namespace and a
    // directory named after a pid, with a process inside the namespace and
    // a mount under the directory. The pid belongs to a dummy child that is
    // alive while we build (so no concurrent sweep takes the remains
    // early) and is killed before the sweep.
    let mut owner = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let prefix = format!("wt{}x0", owner.id());
    let ns = format!("{prefix}-h1");
    let st = std::process::Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap();
    assert!(st.success());
    let dir = Path::new(cleanup::LAB_ROOT).join(&prefix);
    std::fs::create_dir_all(dir.join("h1/netns")).unwrap();
    let target = dir.join("h1/netns/ep");
    std::fs::write(&target, b"").unwrap();
    nix::mount::mount(
        Some(&Path::new("/run/netns").join(&ns)),
        &target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let mut cmd = weft_tests::netns::command_in(&ns, "sleep", Default::default()).unwrap();
    let mut child = cmd.arg("1000").spawn().unwrap();
    owner.kill().unwrap();
    owner.wait().unwrap();

    // Building any lab sweeps it (or a concurrent test process did).
    let lab = Lab::new(LabOpts::hosts(1));
    // (A concurrent sweep may still be finishing: allow it a moment.)
    let gone = || !netns_exists(&ns) && !dir.exists() && mounts_under(&dir).is_empty();
    assert!(
        weft_tests::wait_until(std::time::Duration::from_secs(5), gone),
        "stale lab {prefix} not swept"
    );
    // The process inside was killed (we are its parent, so reap it here).
    let status = child.wait().unwrap();
    assert!(!status.success());
    drop(lab);
}

#[test]
fn persisted_lab_survives_drop_and_is_destroyed_by_attach() {
    let opts = LabOpts {
        detachable: true,
        ..LabOpts::hosts(1)
    };
    let lab = Lab::new(opts);
    let names = lab.namespaces();
    let dir = lab.dir.clone();
    let p = lab.spawn("h1", &["sleep", "1000"]);
    let pid = p.pid() as i32;
    let manifest = lab.persist().unwrap();
    assert!(manifest.is_file());
    drop(p);
    drop(lab);
    // Still there after the Lab value is gone.
    for n in &names {
        assert!(netns_exists(n), "{n} removed although persisted");
    }
    assert!(cleanup::proc_alive(pid, None), "persisted process killed");

    let again = Lab::attach(&dir).unwrap();
    assert_eq!(again.namespaces(), names);
    assert_eq!(again.host(1).ip.to_string(), "198.18.0.11");
    assert!(again.ping(&again.host(1).netns, INTERNET_IP));
    drop(again); // attached labs stay persistent too
    assert!(netns_exists(&names[0]));

    Lab::attach(&dir).unwrap().destroy();
    assert_gone(&names, &dir);
    assert!(
        !cleanup::proc_alive(pid, None),
        "process {pid} survived destroy"
    );
}
