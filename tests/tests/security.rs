//! Security end to end: etcd over TLS with client certificates and etcd
//! users, certificate rotation without dropping traffic (same CA, then a
//! wholly new CA), expired and foreign agent certificates refused with a
//! log line on both sides, and the agent socket closed to non-root users.
//! Real etcd, real controller and agent processes in simulated hosts.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rustls::pki_types::CertificateDer;
use weft_common::tls::{self, CertSummary};
use weft_tests::cli::check_failure;
use weft_tests::clients::run_in;
use weft_tests::cluster::{controller_addr, controller_ip, controller_sockaddr};
use weft_tests::logfile::{lines_with, wait_for_line};
use weft_tests::netns::{self, command_in, SpawnOpts};
use weft_tests::{bin_path, host_ip, log_tail, wait_until, Host, Lab, LabOpts, TempDir};

/// Bound of each wait for a log line, a connection or a reload.
const LIMIT: Duration = Duration::from_secs(20);

fn cluster_lab(hosts: usize, etcd_tls: bool) -> Lab {
    Lab::new(LabOpts {
        etcd_tls,
        ..LabOpts::cluster(hosts, 1)
    })
}

/// Asserts `out` is weftctl's one-line refusal, containing `want`.
fn assert_one_line_failure(what: &str, out: &Output, want: &str) -> String {
    let (_, msg) = check_failure(what, out, false);
    assert!(
        msg.contains(want),
        "{what}: message {msg:?} does not contain {want:?}"
    );
    msg
}

/// Waits until `log` has more than `before` lines containing all `needles`;
/// returns the newest one.
fn await_lines(log: &Path, needles: &[&str], before: usize) -> String {
    wait_for_line(log, needles, before, LIMIT)
}

#[test]
fn etcd_over_tls_with_client_certificates_and_users() {
    let lab = cluster_lab(2, true);
    let t = lab.etcd_tls().expect("TLS etcd");
    let _agents: Vec<_> = lab.hosts().iter().map(|h| h.start_agent(&[])).collect();
    for h in lab.hosts() {
        h.wait_connected(LIMIT);
    }
    // The controller's watch works as the weft user too: h1 learns of h2.
    lab.host(1).wait_peer("h2", LIMIT);
    // The controller and the lab's weftctl use TLS, a client certificate
    // and the weft user: both hosts are registered.
    let mut names: Vec<String> = lab.host_list().into_iter().map(|h| h.name).collect();
    names.sort();
    assert_eq!(names, ["h1", "h2"]);
    let dump = lab.etcd_dump();
    assert!(
        dump.iter().any(|(k, _)| k == "/weft/hosts/h1"),
        "etcdctl over TLS sees no host record: {dump:?}"
    );
    // The weft user may touch /weft only.
    let pw = t.password();
    let out = lab.exec(
        lab.control(),
        &[
            "etcdctl",
            "--endpoints",
            &lab.etcd_client_endpoints(),
            &format!("--cacert={}", t.ca().display()),
            &format!("--cert={}", t.client().join("cert.pem").display()),
            &format!("--key={}", t.client().join("key.pem").display()),
            &format!("--user=weft:{pw}"),
            "put",
            "/other",
            "x",
        ],
    );
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "user weft wrote outside /weft: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let eps = lab.etcd_client_endpoints();
    let ca = t.ca().display().to_string();
    let cert = t.client().join("cert.pem").display().to_string();
    let key = t.client().join("key.pem").display().to_string();
    let pwfile = t.password_file().display().to_string();
    let base = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["--etcd-endpoints".into(), eps.clone()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |args: Vec<String>, env: &[(&str, &str)]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        lab.weftctl_env(&a, env)
    };
    // Everything given, as flags after the subcommand, password by env.
    let mut a = base(&[]);
    a.extend(
        [
            "host",
            "list",
            "-o",
            "json",
            "--etcd-ca",
            &ca,
            "--etcd-cert",
            &cert,
            "--etcd-key",
            &key,
            "--etcd-user",
            "weft",
        ]
        .map(String::from),
    );
    let out = run(a, &[("WEFT_ETCD_PASSWORD", pw.as_str())]);
    assert!(
        out.status.success(),
        "weftctl host list with flags failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same from WEFT_* variables only.
    let out = run(
        vec!["host".into(), "list".into()],
        &[
            ("WEFT_ETCD_ENDPOINTS", eps.as_str()),
            ("WEFT_ETCD_CA", ca.as_str()),
            ("WEFT_ETCD_CERT", cert.as_str()),
            ("WEFT_ETCD_KEY", key.as_str()),
            ("WEFT_ETCD_USER", "weft"),
            ("WEFT_ETCD_PASSWORD_FILE", pwfile.as_str()),
        ],
    );
    assert!(
        out.status.success(),
        "weftctl host list from WEFT_* failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Wrong password.
    let mut a = base(&[]);
    a.extend(
        [
            "--etcd-ca",
            &ca,
            "--etcd-cert",
            &cert,
            "--etcd-key",
            &key,
            "--etcd-user",
            "weft",
            "host",
            "list",
        ]
        .map(String::from),
    );
    let out = run(a.clone(), &[("WEFT_ETCD_PASSWORD", "wrong")]);
    assert_one_line_failure(
        "wrong password",
        &out,
        "etcd refused user weft: authentication failed",
    );
    // No client certificate: etcd refuses the TLS handshake.
    let mut a = base(&[]);
    a.extend(
        [
            "--etcd-ca",
            &ca,
            "--etcd-user",
            "weft",
            "--etcd-password-file",
            &pwfile,
            "host",
            "list",
        ]
        .map(String::from),
    );
    assert_one_line_failure(
        "no client certificate",
        &run(a, &[]),
        "etcd closed the TLS connection: it requires a client certificate (--etcd-cert and --etcd-key)",
    );
    // https without a CA, a certificate without its key, a password on
    // the command line, a missing CA file: refused before connecting.
    let mut a = base(&[]);
    a.extend(["host", "list"].map(String::from));
    assert_one_line_failure("https without CA", &run(a, &[]), "https:// needs --etcd-ca");
    let mut a = base(&[]);
    a.extend(["--etcd-ca", &ca, "--etcd-cert", &cert, "host", "list"].map(String::from));
    assert_one_line_failure("cert without key", &run(a, &[]), "needs --etcd-key");
    let mut a = base(&[]);
    a.extend(
        [
            "--etcd-ca",
            &ca,
            "--etcd-user",
            "weft",
            "--etcd-password",
            "pw",
            "host",
            "list",
        ]
        .map(String::from),
    );
    assert_one_line_failure("password flag", &run(a, &[]), "visible to every user");
    let mut a = base(&[]);
    a.extend(["--etcd-ca", "/nonexistent/ca.pem", "host", "list"].map(String::from));
    assert_one_line_failure(
        "missing CA file",
        &run(a, &[]),
        "--etcd-ca: cannot read /nonexistent/ca.pem: No such file or directory",
    );

    // The controller names a wrong password too (and keeps retrying).
    lab.kill_held("controller-c1");
    let bad = lab.dir.join("bad.password");
    std::fs::write(&bad, "wrong\n").unwrap();
    let bad = bad.display().to_string();
    let tls_dir = lab.cluster_info().pki.join("c1").display().to_string();
    let listen = controller_addr(1);
    let bin = bin_path("weft-controller").display().to_string();
    let mut p = lab.spawn(
        lab.control(),
        &[
            &bin,
            "--etcd-endpoints",
            &eps,
            "--etcd-ca",
            &ca,
            "--etcd-cert",
            &cert,
            "--etcd-key",
            &key,
            "--etcd-user",
            "weft",
            "--etcd-password-file",
            &bad,
            "--listen",
            &listen,
            "--tls-dir",
            &tls_dir,
        ],
    );
    let ok = wait_until(LIMIT, || {
        p.log_text()
            .contains("etcd refused user weft: authentication failed")
    });
    assert!(ok, "controller log:\n{}", p.log_text());
    p.kill();
}

/// Name, serial and expiry of the certificate controller c1 serves now,
/// read by a fresh QUIC client in h1's namespace presenting `client_dir`.
fn served_certificate(lab: &Lab, client_dir: &Path) -> CertSummary {
    let config = tls::client_config(client_dir).expect("client config");
    run_in(&lab.host(1).netns, move || async move {
        let ep = weft_common::client::endpoint().expect("client endpoint");
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            ep.connect_with(
                config,
                controller_sockaddr(1),
                &controller_ip(1).to_string(),
            )
            .expect("connect"),
        )
        .await
        .expect("handshake timed out")
        .expect("handshake");
        let certs = conn
            .peer_identity()
            .expect("peer identity")
            .downcast::<Vec<CertificateDer<'static>>>()
            .expect("certificates");
        let s = CertSummary::of(&certs[0]).expect("parse served certificate");
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;
        s
    })
}

fn summary_of(dir: &Path) -> CertSummary {
    CertSummary::of(&tls::load_certs(&dir.join(tls::CERT_FILE)).unwrap()[0]).unwrap()
}

/// Replaces `file` atomically with `contents` (write aside, rename).
fn replace(file: &Path, contents: &[u8]) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn sighup(h: &Host) {
    let pid = h.agent_pid().expect("agent runs");
    kill(Pid::from_raw(pid), Signal::SIGHUP).expect("SIGHUP");
}

/// A bounded ping from an endpoint on h1 to one on h2, run in the
/// background: `count` probes every 50 ms.
fn ping_in_background(lab: &Lab, to: &str, count: u32) -> std::thread::JoinHandle<Output> {
    let ns = lab.host(1).endpoint_netns("a");
    let to = to.to_string();
    std::thread::spawn(move || {
        netns::exec_in_timeout(
            &ns,
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.05",
                "-W",
                "1",
                &to,
            ],
            Duration::from_secs(u64::from(count) / 20 + 30),
        )
        .expect("ping")
    })
}

fn assert_no_loss(out: Output) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(" 0% packet loss"),
        "pings were lost during the reload:\n{text}"
    );
}

#[test]
fn certificates_rotate_without_dropping_traffic() {
    let lab = cluster_lab(2, false);
    let _agents: Vec<_> = lab.hosts().iter().map(|h| h.start_agent(&[])).collect();
    for h in lab.hosts() {
        h.wait_connected(LIMIT);
    }
    lab.host(1).add_endpoint("a");
    let b_ip = lab.host(2).add_endpoint("b").ip.to_string();
    assert!(
        lab.ping(lab.host(1).endpoint_netns("a"), &b_ip),
        "a cannot reach b"
    );
    let pki = lab.cluster_info().pki;
    let pki_s = pki.display().to_string();
    let c1_dir = pki.join("c1");
    let clog = lab.held_log("controller-c1");
    let reloaded = ["reloaded TLS from"];

    // 1. Same CA: a new controller certificate, file replaced (no signal).
    let before = served_certificate(&lab, &pki.join("h1"));
    let n = lines_with(&clog, &reloaded).len();
    let ping = ping_in_background(&lab, &b_ip, 200);
    let ip = controller_ip(1).to_string();
    lab.weftctl_plain_ok(&[
        "certs",
        "issue",
        "--dir",
        &pki_s,
        "--name",
        "c1",
        "--role",
        "controller",
        "--ip",
        &ip,
        "--force",
    ]);
    let line = await_lines(&clog, &reloaded, n);
    let now = summary_of(&c1_dir);
    assert!(
        line.contains(&format!("certificate c1 valid until {}", now.valid_until())),
        "{line}"
    );
    let after = served_certificate(&lab, &pki.join("h1"));
    assert_ne!(before.serial, after.serial, "still the old certificate");
    assert_eq!(after.serial, now.serial, "not the new certificate");
    // 2. A new certificate for h1, taken on SIGHUP.
    let alog = lab.host(1).agent_log();
    let an = lines_with(&alog, &reloaded).len();
    lab.weftctl_plain_ok(&[
        "certs", "issue", "--dir", &pki_s, "--name", "h1", "--role", "agent", "--force",
    ]);
    sighup(lab.host(1));
    let line = await_lines(&alog, &reloaded, an);
    assert!(
        line.contains("(SIGHUP)") || line.contains("files changed"),
        "{line}"
    );
    assert_no_loss(ping.join().unwrap());
    // The sessions in progress were not dropped.
    for h in lab.hosts() {
        assert!(
            lines_with(&h.agent_log(), &["lost controller"]).is_empty(),
            "{} lost its session during the reload:\n{}",
            h.name,
            log_tail(&h.agent_log(), 20)
        );
    }

    // 3. A wholly new CA, in the safe order: trust both CAs everywhere,
    // then new certificates, then trust only the new CA.
    let pki2 = lab.dir.join("pki2");
    let pki2_s = pki2.display().to_string();
    lab.weftctl_plain_ok(&["certs", "init", "--dir", &pki2_s]);
    lab.weftctl_plain_ok(&[
        "certs",
        "issue",
        "--dir",
        &pki2_s,
        "--name",
        "c1",
        "--role",
        "controller",
        "--ip",
        &ip,
    ]);
    for h in ["h1", "h2"] {
        lab.weftctl_plain_ok(&[
            "certs", "issue", "--dir", &pki2_s, "--name", h, "--role", "agent",
        ]);
    }
    let old_ca = std::fs::read(pki.join("ca.pem")).unwrap();
    let new_ca = std::fs::read(pki2.join("ca.pem")).unwrap();
    let both: Vec<u8> = [old_ca.as_slice(), new_ca.as_slice()].concat();
    let dirs = ["c1", "h1", "h2"];
    let logs = [
        clog.clone(),
        lab.host(1).agent_log(),
        lab.host(2).agent_log(),
    ];
    let ping = ping_in_background(&lab, &b_ip, 400);
    let step = |what: &str, write: &dyn Fn(&Path, &Path)| {
        let counts: Vec<usize> = logs
            .iter()
            .map(|l| lines_with(l, &reloaded).len())
            .collect();
        for d in dirs {
            write(&pki.join(d), &pki2.join(d));
        }
        for (l, n) in logs.iter().zip(counts) {
            let line = await_lines(l, &reloaded, n);
            assert!(line.contains("reloaded TLS"), "{what}: {line}");
        }
    };
    step("both CAs", &|dir, _| replace(&dir.join("ca.pem"), &both));
    step("new certificates", &|dir, new| {
        // Key and certificate as one change: write both aside, then
        // rename the key and the certificate right after each other.
        let key = std::fs::read(new.join("key.pem")).unwrap();
        let cert = std::fs::read(new.join("cert.pem")).unwrap();
        replace(&dir.join("key.pem"), &key);
        replace(&dir.join("cert.pem"), &cert);
    });
    step("new CA only", &|dir, _| {
        replace(&dir.join("ca.pem"), &new_ca)
    });
    assert_no_loss(ping.join().unwrap());
    let served = served_certificate(&lab, &pki.join("h1"));
    assert_eq!(served.serial, summary_of(&pki2.join("c1")).serial);
    // New connections work only with the new CA: restart the controller,
    // the agents reconnect with their new certificates.
    let counts: Vec<usize> = lab
        .hosts()
        .iter()
        .map(|h| lines_with(&h.agent_log(), &["connected to controller"]).len())
        .collect();
    lab.kill_held("controller-c1");
    lab.start_controller(1, &[]).expect("restart controller");
    for (h, n) in lab.hosts().iter().zip(counts) {
        await_lines(&h.agent_log(), &["connected to controller"], n);
        h.wait_connected(LIMIT);
        await_lines(
            &lab.held_log("controller-c1"),
            &[&format!("host {} registered", h.name)],
            0,
        );
    }
    assert!(
        lab.ping(lab.host(1).endpoint_netns("a"), &b_ip),
        "a cannot reach b after rotation"
    );
    // A half-written set is not taken: a key without its certificate.
    let n = lines_with(&clog_after(&lab), &["not reloading TLS"]).len();
    let other = lab.dir.join("pki2").join("h2").join("key.pem");
    replace(
        &pki.join("c1").join("key.pem"),
        &std::fs::read(other).unwrap(),
    );
    let line = await_lines(&clog_after(&lab), &["not reloading TLS"], n);
    assert!(line.contains("key.pem does not match cert.pem"), "{line}");
    assert!(line.contains("keeping the certificate in use"), "{line}");
    assert_eq!(
        served_certificate(&lab, &pki.join("h1")).serial,
        summary_of(&pki2.join("c1")).serial,
        "the controller took a broken set"
    );
}

fn clog_after(lab: &Lab) -> PathBuf {
    lab.held_log("controller-c1")
}

/// Writes a certificate for `name` signed by the CA in `pki` that expired
/// on 2021-01-01, into `dir` (cert.pem, key.pem).
fn write_expired(pki: &Path, name: &str, dir: &Path) {
    let ca_pem = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca-key.pem")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    replace(&dir.join("key.pem"), key.serialize_pem().as_bytes());
    replace(&dir.join("cert.pem"), cert.pem().as_bytes());
}

#[test]
fn expired_and_foreign_agent_certificates_are_refused_on_both_sides() {
    let lab = cluster_lab(1, false);
    let pki = lab.cluster_info().pki;
    let h1 = lab.host(1);
    let dir = pki.join("h1");
    write_expired(&pki, "h1", &dir);
    let clog = lab.held_log("controller-c1");
    let mut agent = h1.spawn_agent(&[]).expect("spawn agent");
    let from = format!("refused connection from {}:", host_ip(1));
    let ctl_line = await_lines(
        &clog,
        &[&from, "certificate expired at 2021-01-01T00:00:00Z"],
        0,
    );
    assert!(ctl_line.contains("WARN"), "{ctl_line}");
    let alog = h1.agent_log();
    let want = format!(
        "controller {} refused this host's certificate h1 (valid until 2021-01-01T00:00:00Z): certificate expired at 2021-01-01T00:00:00Z; retrying with backoff",
        controller_addr(1)
    );
    let agent_line = await_lines(&alog, &[&want], 0);
    eprintln!("controller: {ctl_line}\nagent: {agent_line}");
    // It retries, with backoff (from 0.2 s, doubling), not in a tight
    // loop: by the fifth attempt the agent waits more than a second
    // between two. Read from the controller's own timestamps: a slow
    // machine can only make the gaps longer.
    await_lines(&clog, &[&from], 4);
    let times: Vec<f64> = lines_with(&clog, &[&from])
        .iter()
        .filter_map(|l| weft_tests::events::rfc3339(l.split_whitespace().next()?))
        .collect();
    assert!(times.len() >= 5, "attempts without a timestamp: {times:?}");
    let gap = times[4] - times[3];
    assert!(
        gap >= 1.0,
        "4th to 5th attempt {gap:.3} s apart: no backoff; controller log:\n{}",
        log_tail(&clog, 20)
    );
    // The expired set is not taken on reload either: the agent already
    // runs with it, so a SIGHUP only logs why it keeps it.
    let n_reload = lines_with(&alog, &["not reloading TLS"]).len();
    sighup(h1);
    let line = await_lines(&alog, &["not reloading TLS from", "(SIGHUP)"], n_reload);
    assert!(
        line.contains("expired") && line.contains("keeping the certificate in use"),
        "{line}"
    );
    agent.kill();

    // A certificate from another CA (h1's directory still trusts the lab CA).
    let other = lab.dir.join("other-pki");
    let other_s = other.display().to_string();
    lab.weftctl_plain_ok(&["certs", "init", "--dir", &other_s]);
    lab.weftctl_plain_ok(&[
        "certs", "issue", "--dir", &other_s, "--name", "h1", "--role", "agent",
    ]);
    let n_ctl = lines_with(&clog, &[&from, "not signed by the cluster CA"]).len();
    let n_agent = lines_with(&alog, &["refused this host's certificate h1"]).len();
    for f in ["key.pem", "cert.pem"] {
        replace(
            &dir.join(f),
            &std::fs::read(other.join("h1").join(f)).unwrap(),
        );
    }
    let mut agent = h1.spawn_agent(&[]).expect("spawn agent");
    let line = await_lines(&clog, &[&from, "not signed by the cluster CA"], n_ctl);
    assert!(line.contains("WARN"), "{line}");
    let line = await_lines(&alog, &["refused this host's certificate h1"], n_agent);
    assert!(line.contains("not signed by the cluster CA"), "{line}");
    // Fixing the certificate while the agent retries: SIGHUP, and it joins.
    let pki_s = pki.display().to_string();
    lab.weftctl_plain_ok(&[
        "certs", "issue", "--dir", &pki_s, "--name", "h1", "--role", "agent", "--force",
    ]);
    sighup(h1);
    await_lines(&alog, &["reloaded TLS from"], 0);
    agent
        .wait_ready(Duration::from_secs(30))
        .expect("agent joins with its new certificate");
    h1.wait_connected(LIMIT);
    // Node name = certificate name is enforced by the controller
    // (tests/tests/control_refusals.rs covers it).
}

#[test]
fn non_root_weftctl_gets_a_clear_permission_error() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h = lab.host(1);
    let _agent = h.start_agent(&[]);
    let sock = h.socket();
    let meta = std::fs::metadata(&sock).expect("agent socket");
    assert_eq!(meta.uid(), 0, "agent socket owner");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "agent socket mode"
    );
    // weftctl must be executable by nobody: copy it somewhere world-readable.
    let dir = TempDir::new("security");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("weftctl");
    std::fs::copy(bin_path("weftctl"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = command_in(
        &h.netns,
        &bin,
        SpawnOpts {
            own_group: true,
            ..Default::default()
        },
    )
    .unwrap();
    c.arg("--agent-socket").arg(&sock).arg("status");
    // After command_in's setns: drop to nobody.
    unsafe {
        c.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = netns::run_with_timeout(&mut c, netns::EXEC_TIMEOUT).expect("run weftctl");
    let want = format!(
        "weftctl: permission denied on {}: weftctl must run as root (the agent socket is 0600 root)",
        sock.display()
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), want);
    // As root it works.
    h.status();
}
