//! `weft-controller` refuses bad clients and keeps serving good ones. Real
//! etcd, a real controller process and real QUIC with mutual TLS: hand-made
//! clients in a simulated host's namespace attack the control channel
//! (no certificate, a foreign CA, malformed and oversized frames, frames out
//! of order, a certificate used for another host's name, invalid names,
//! silent connections) while a real agent stays connected, and a new agent
//! joins afterwards.
//!
//! Each refused client is matched to the controller's log line by its UDP
//! source address (`<host ip>:<port>`), so every assertion is about exactly
//! that connection.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::QuicClientConfig;
use quinn::ConnectionError;
use tokio::time::timeout;
use weft_common::client::{self, ClientError, Session};
use weft_common::tls;
use weft_common::wire::{self, AgentMsg, ControllerMsg, FrameReader, MAX_CONTROLLER_FRAME};
use weft_tests::clients::run_in;
use weft_tests::cluster::{controller_addr, controller_ip, controller_sockaddr};
use weft_tests::logfile::wait_for_line;
use weft_tests::{host_ip, log_tail, wait_until, Lab, LabOpts};

/// Bound of every single wait on the network or on a log line.
const LIMIT: Duration = Duration::from_secs(10);
/// Bound of the waits on clients the controller drops for saying nothing
/// (after its `REGISTER_WAIT`, 10 s): generous, a busy machine may be late.
const SLOW_LIMIT: Duration = Duration::from_secs(40);
/// Application close codes of the controller (`controller/src/server.rs`).
const CLOSE_PROTOCOL: u64 = 1;

/// A registration for `node` (public IP outside the lab's hosts).
fn register(node: &str) -> AgentMsg {
    AgentMsg::Register {
        node: node.into(),
        public_ip: Ipv4Addr::new(198, 18, 0, 99),
        vtep_mac: "0a:58:c6:12:00:63".parse().unwrap(),
        subnet: None,
        version: "refusal-test".into(),
    }
}

/// A TLS 1.3 client config with ALPN `weft/1` that trusts the CA in `ca`
/// (so it accepts the real controller) but presents no certificate.
fn anonymous_config(ca: &Path) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in tls::load_certs(ca).expect("lab CA") {
        roots.add(c).expect("lab CA is a trust anchor");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![wire::ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(cfg).expect("QUIC client config"),
    ))
}

/// What one hand-made client saw.
#[derive(Debug)]
struct Attempt {
    /// Its UDP source port: the controller logs it as `<host ip>:<port>`.
    port: u16,
    /// The controller's first message, or why none came.
    reply: Result<Option<ControllerMsg>, String>,
    /// How the connection ended, if it did within the linger time.
    closed: Option<ConnectionError>,
}

/// Connects to controller c1 with `tls`, opens the bidirectional stream,
/// writes `bytes` (keeping the stream open), reads the first message (at
/// most `answer` long), then waits at most `linger` for the connection to
/// end.
async fn attempt(
    tls: quinn::ClientConfig,
    bytes: Vec<u8>,
    answer: Duration,
    linger: Duration,
) -> Attempt {
    attempt_then(tls, bytes, Vec::new(), answer, linger).await
}

/// Like [`attempt`], and writes `then` after the first message came.
async fn attempt_then(
    tls: quinn::ClientConfig,
    bytes: Vec<u8>,
    then: Vec<u8>,
    answer: Duration,
    linger: Duration,
) -> Attempt {
    let ep = client::endpoint().expect("client endpoint");
    let port = ep.local_addr().expect("local address").port();
    let connecting = ep
        .connect_with(tls, controller_sockaddr(1), &controller_ip(1).to_string())
        .expect("start connecting");
    let conn = match timeout(LIMIT, connecting).await {
        Err(_) => {
            return Attempt {
                port,
                reply: Err(format!("no handshake within {LIMIT:?}")),
                closed: None,
            }
        }
        Ok(Err(e)) => {
            return Attempt {
                port,
                reply: Err(format!("handshake: {e}")),
                closed: Some(e),
            }
        }
        Ok(Ok(c)) => c,
    };
    // Kept until the end: dropping a send stream finishes it, which the
    // controller rightly takes as the end of the session.
    let mut streams = None;
    let exchange = async {
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("open stream: {e}"))?;
        send.write_all(&bytes)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut reader = FrameReader::new(recv, MAX_CONTROLLER_FRAME);
        let first = reader
            .read::<ControllerMsg>()
            .await
            .map_err(|e| format!("read: {e}"))?;
        if !then.is_empty() {
            send.write_all(&then)
                .await
                .map_err(|e| format!("write after the first reply: {e}"))?;
        }
        streams = Some((send, reader));
        Ok(first)
    };
    let reply = timeout(answer, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {answer:?}")));
    let closed = timeout(linger, conn.closed()).await.ok();
    conn.close(0u32.into(), b"done");
    drop(streams);
    Attempt {
        port,
        reply,
        closed,
    }
}

/// Asserts the controller ended the connection with an application close
/// `code` whose reason contains `reason`.
fn assert_closed_by_controller(what: &str, a: &Attempt, code: u64, reason: &str) {
    match &a.closed {
        Some(ConnectionError::ApplicationClosed(c)) => {
            let r = String::from_utf8_lossy(&c.reason);
            assert_eq!(
                c.error_code.into_inner(),
                code,
                "{what}: close code (reason {r:?})"
            );
            assert!(
                r.contains(reason),
                "{what}: close reason {r:?}, expected it to contain {reason:?}"
            );
        }
        other => panic!(
            "{what}: expected the controller to close the connection ({reason}), \
             got {other:?}; first reply {:?}",
            a.reply
        ),
    }
}

/// Asserts the TLS handshake was refused: no protocol message came and the
/// connection ended with a transport-level close carrying a TLS alert (any
/// alert if `alert` is `None`), not an application close.
fn assert_tls_refused(what: &str, a: &Attempt, alert: Option<u8>) {
    assert!(
        a.reply.is_err(),
        "{what}: the controller answered: {:?}",
        a.reply
    );
    match &a.closed {
        Some(ConnectionError::ConnectionClosed(c)) => {
            let code = u64::from(c.error_code);
            // QUIC CRYPTO_ERROR range 0x0100–0x01ff carries the TLS alert.
            assert!(
                (0x100..0x200).contains(&code),
                "{what}: close is not a TLS alert: {c:?}"
            );
            if let Some(alert) = alert {
                assert_eq!(code, 0x100 + u64::from(alert), "{what}: TLS alert: {c:?}");
            }
        }
        other => panic!(
            "{what}: expected a TLS alert from the controller, got {other:?}; reply {:?}",
            a.reply
        ),
    }
}

/// Waits (at most `limit`) for a line of controller c1's log that names
/// `who` and contains `what`, and returns it.
fn await_log(lab: &Lab, who: &str, what: &str, limit: Duration) -> String {
    wait_for_line(&lab.held_log("controller-c1"), &[who, what], 0, limit)
}

/// How the controller names a client from host 1 on UDP `port`.
fn from_h1(port: u16) -> String {
    format!("{}:{port}", host_ip(1))
}

/// Host names with a record in etcd (read with etcdctl).
fn etcd_hosts(lab: &Lab) -> Vec<String> {
    lab.etcd_hosts().into_keys().collect()
}

/// Asserts controller c1 still runs and never panicked.
fn assert_controller_alive(lab: &Lab) {
    assert!(
        lab.manifest()
            .procs
            .iter()
            .any(|p| p.label == "controller-c1"),
        "controller c1 is no longer running; log:\n{}",
        log_tail(&lab.held_log("controller-c1"), 40)
    );
    let log = std::fs::read_to_string(lab.held_log("controller-c1")).unwrap();
    assert!(!log.contains("panicked"), "controller panicked:\n{log}");
}

/// (connected, subnet) as agent `i` reports in `weftctl status`.
fn agent_status(lab: &Lab, i: usize) -> (bool, String) {
    let s = lab.host(i).status();
    (s.controller.connected, s.subnet)
}

/// Agent `i`'s peers, by name.
fn peer_names(lab: &Lab, i: usize) -> Vec<String> {
    lab.host(i).peer_subnets().into_keys().collect()
}

/// A TLS directory for h1 signed by another CA (made with `weftctl certs`),
/// holding the lab's CA as `ca.pem` so that the client itself accepts the
/// real controller: only its own certificate is foreign.
fn foreign_h1_dir(lab: &Lab) -> PathBuf {
    let other = lab.dir.join("other-pki");
    let other_s = other.display().to_string();
    lab.weftctl_etcd_ok(&["certs", "init", "--dir", &other_s]);
    lab.weftctl_etcd_ok(&[
        "certs", "issue", "--dir", &other_s, "--name", "h1", "--role", "agent",
    ]);
    let dir = lab.dir.join("foreign-h1");
    std::fs::create_dir_all(&dir).unwrap();
    for f in [tls::CERT_FILE, tls::KEY_FILE] {
        std::fs::copy(other.join("h1").join(f), dir.join(f)).unwrap();
    }
    let pki = lab.cluster_info().pki;
    std::fs::copy(pki.join(tls::CA_FILE), dir.join(tls::CA_FILE)).unwrap();
    // Same name as the lab's h1 certificate, different issuer.
    let foreign = &tls::load_certs(&dir.join(tls::CERT_FILE)).unwrap()[0];
    let real = &tls::load_certs(&pki.join("h1").join(tls::CERT_FILE)).unwrap()[0];
    assert_eq!(tls::cert_name(foreign).as_deref(), Some("h1"));
    assert_ne!(foreign, real);
    dir
}

/// Clients without a certificate of the cluster CA never get past the
/// handshake and leave no trace in etcd; the same client code with a lab
/// certificate registers, and so does a real agent afterwards.
#[test]
fn clients_without_a_cluster_certificate_are_refused_at_the_handshake() {
    let started = Instant::now();
    let lab = Lab::new(LabOpts::cluster(2, 1));
    let pki = lab.cluster_info().pki;
    let anonymous = anonymous_config(&pki.join(tls::CA_FILE));
    let foreign = tls::client_config(&foreign_h1_dir(&lab)).expect("foreign client config");
    let h2 = tls::client_config(&pki.join("h2")).expect("h2 client config");
    let reg = wire::encode(&register("h1"));
    let reg2 = wire::encode(&register("h2"));

    let (anon, alien) = run_in(&lab.host(1).netns, move || async move {
        (
            attempt(anonymous, reg.clone(), LIMIT, LIMIT).await,
            attempt(foreign, reg, LIMIT, LIMIT).await,
        )
    });
    // TLS alert 116: certificate_required.
    assert_tls_refused("client without certificate", &anon, Some(116));
    assert_tls_refused("client with a foreign CA's certificate", &alien, None);
    await_log(
        &lab,
        &format!("refused connection from {}", from_h1(anon.port)),
        "peer sent no certificates",
        LIMIT,
    );
    await_log(
        &lab,
        &format!("refused connection from {}", from_h1(alien.port)),
        "invalid peer certificate",
        LIMIT,
    );
    assert_eq!(
        etcd_hosts(&lab),
        Vec::<String>::new(),
        "a refused client registered"
    );

    // Control: the same client code with the lab's h2 certificate is served.
    let good = run_in(&lab.host(2).netns, move || async move {
        attempt(h2, reg2, LIMIT, Duration::from_secs(1)).await
    });
    assert!(
        matches!(good.reply, Ok(Some(ControllerMsg::Assigned { .. }))),
        "a valid client was not assigned a subnet: {good:?}"
    );
    assert!(
        good.closed.is_none(),
        "the controller dropped a valid client: {good:?}"
    );
    assert_eq!(etcd_hosts(&lab), vec!["h2".to_string()]);

    // And a real agent joins and sees h2.
    let _a1 = lab.host(1).start_agent(&[]);
    lab.host(1).wait_connected(LIMIT);
    assert!(wait_until(LIMIT, || peer_names(&lab, 1) == ["h2"]));
    assert_controller_alive(&lab);
    eprintln!("handshake refusals: {:?}", started.elapsed());
}

/// Everything that gets past TLS but breaks the protocol ends that session
/// only, with the reason logged (and sent as the close reason); a
/// certificate cannot register another host's name or an invalid one. Meanwhile the
/// real agent on h1 stays connected on its one session, and a new agent on
/// h2 registers afterwards.
#[test]
fn protocol_violations_end_only_their_session() {
    let started = Instant::now();
    let lab = Lab::new(LabOpts::cluster(2, 1));
    let _a1 = lab.host(1).start_agent(&[]);
    let subnet1 = lab.host(1).wait_connected(LIMIT).subnet;
    // A spare agent certificate for the double-register case.
    lab.issue_cert("h9", "agent", &[]).expect("issue h9");
    let pki = lab.cluster_info().pki;
    let h1 = tls::client_config(&pki.join("h1")).expect("h1 client config");
    let h9 = tls::client_config(&pki.join("h9")).expect("h9 client config");

    struct Seen {
        idle: (u16, Duration, Option<ConnectionError>),
        partial: Attempt,
        garbage: Attempt,
        huge: Attempt,
        heartbeat: Attempt,
        twice: Attempt,
        mismatch: (u16, Result<(), ClientError>),
        bad_name: (u16, Result<(), ClientError>),
        burst: Vec<Attempt>,
    }

    let seen = run_in(&lab.host(1).netns, move || async move {
        // The slow ones run alongside everything else.
        let idle = tokio::spawn({
            let h1 = h1.clone();
            async move {
                // Connects (keep-alives on) and never opens a stream.
                let ep = client::endpoint().unwrap();
                let port = ep.local_addr().unwrap().port();
                let conn = timeout(
                    LIMIT,
                    ep.connect_with(h1, controller_sockaddr(1), &controller_ip(1).to_string())
                        .unwrap(),
                )
                .await
                .expect("handshake timed out")
                .expect("valid client could not connect");
                let t = Instant::now();
                let closed = timeout(SLOW_LIMIT, conn.closed()).await.ok();
                (port, t.elapsed(), closed)
            }
        });
        // Two bytes of a frame header, then nothing.
        let partial = tokio::spawn(attempt(h1.clone(), vec![0, 0], SLOW_LIMIT, LIMIT));

        // A well-formed header with a body that is not JSON.
        let mut garbage = 16u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(b"\x00\xffnot json at all");
        let garbage = attempt(h1.clone(), garbage, LIMIT, LIMIT).await;
        // A header announcing 4 GiB.
        let huge = attempt(h1.clone(), vec![0xff; 4], LIMIT, LIMIT).await;
        let heartbeat = attempt(
            h1.clone(),
            wire::encode(&AgentMsg::Heartbeat {}),
            LIMIT,
            LIMIT,
        )
        .await;
        // A valid registration, and once it is served a second one.
        let twice = attempt_then(
            h9,
            wire::encode(&register("h9")),
            wire::encode(&register("h9")),
            LIMIT,
            LIMIT,
        )
        .await;

        // The real client code, with h1's certificate, as another host and
        // under an invalid name.
        let mut refused = Vec::new();
        for node in ["h2", "Bad_Name"] {
            let ep = client::endpoint().unwrap();
            let port = ep.local_addr().unwrap().port();
            let r = timeout(
                LIMIT,
                Session::open(&ep, &controller_addr(1), h1.clone(), &register(node)),
            )
            .await
            .expect("Session::open timed out")
            .map(|_| ());
            refused.push((port, r));
        }
        let bad_name = refused.pop().unwrap();
        let mismatch = refused.pop().unwrap();

        // Twenty bad clients at once.
        let burst: Vec<_> = (0..20u8)
            .map(|i| {
                let bytes = match i % 3 {
                    0 => vec![0xff; 4],
                    1 => wire::encode(&AgentMsg::Heartbeat {}),
                    _ => vec![0, 0, 0, 3, b'{', b'{', b'{'],
                };
                tokio::spawn(attempt(h1.clone(), bytes, LIMIT, LIMIT))
            })
            .collect();
        let mut burst_seen = Vec::new();
        for b in burst {
            burst_seen.push(b.await.expect("burst client panicked"));
        }

        Seen {
            idle: timeout(SLOW_LIMIT + LIMIT, idle)
                .await
                .expect("idle client timed out")
                .expect("idle client panicked"),
            partial: timeout(SLOW_LIMIT + LIMIT, partial)
                .await
                .expect("partial client timed out")
                .expect("partial client panicked"),
            garbage,
            huge,
            heartbeat,
            twice,
            mismatch,
            bad_name,
            burst: burst_seen,
        }
    });

    // Malformed first frame: session closed, reason logged.
    assert_closed_by_controller("garbage", &seen.garbage, CLOSE_PROTOCOL, "bad first frame");
    let line = await_log(&lab, &from_h1(seen.garbage.port), "bad first frame", LIMIT);
    assert!(line.contains("malformed message"), "{line}");
    assert!(line.contains("certificate h1"), "{line}");

    // Oversized frame header.
    assert_closed_by_controller("huge", &seen.huge, CLOSE_PROTOCOL, "exceeds the limit");
    let line = await_log(&lab, &from_h1(seen.huge.port), "bad first frame", LIMIT);
    assert!(
        line.contains("frame of 4294967295 bytes exceeds the limit of 65536"),
        "{line}"
    );

    // Heartbeat before register.
    assert_closed_by_controller(
        "heartbeat first",
        &seen.heartbeat,
        CLOSE_PROTOCOL,
        "out-of-order frame",
    );
    await_log(
        &lab,
        &from_h1(seen.heartbeat.port),
        "out-of-order frame: heartbeat before register",
        LIMIT,
    );

    // Register twice on one session: the first is served, the second ends it.
    assert!(
        matches!(seen.twice.reply, Ok(Some(ControllerMsg::Assigned { .. }))),
        "first registration of h9 not served: {:?}",
        seen.twice
    );
    assert_closed_by_controller(
        "register twice",
        &seen.twice,
        CLOSE_PROTOCOL,
        "register on a registered session",
    );
    await_log(
        &lab,
        &format!("host h9 ({})", from_h1(seen.twice.port)),
        "out-of-order frame: register on a registered session",
        LIMIT,
    );

    // h1's certificate cannot register h2.
    match &seen.mismatch.1 {
        Err(ClientError::Refused { message: m, .. }) => {
            assert!(m.contains("does not match the certificate"), "{m}");
            assert!(m.contains("\"h2\"") && m.contains("\"h1\""), "{m}");
        }
        other => panic!("registering h2 with h1's certificate: {other:?}"),
    }
    await_log(
        &lab,
        &format!("refused {}", from_h1(seen.mismatch.0)),
        "does not match the certificate's name",
        LIMIT,
    );

    // Nor an invalid name.
    match &seen.bad_name.1 {
        Err(ClientError::Refused { message: m, .. }) => {
            assert!(m.contains("invalid node name"), "{m}");
            assert!(m.contains("Bad_Name"), "{m}");
        }
        other => panic!("registering Bad_Name: {other:?}"),
    }
    await_log(
        &lab,
        &format!("refused {}", from_h1(seen.bad_name.0)),
        "invalid node name",
        LIMIT,
    );

    // The silent connection is dropped after REGISTER_WAIT, not before
    // (and not never: the wait for it is bounded by SLOW_LIMIT).
    let (port, after, closed) = &seen.idle;
    match closed {
        Some(ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(c.error_code.into_inner(), CLOSE_PROTOCOL);
            assert!(
                String::from_utf8_lossy(&c.reason).contains("opened no stream"),
                "{c:?}"
            );
        }
        other => panic!("silent connection not closed by the controller: {other:?}"),
    }
    assert!(
        *after >= Duration::from_secs(9),
        "silent connection dropped after {after:?}, before the controller's REGISTER_WAIT"
    );
    await_log(&lab, &from_h1(*port), "opened no stream within 10s", LIMIT);

    // A half-sent header is dropped too.
    assert_closed_by_controller(
        "partial header",
        &seen.partial,
        CLOSE_PROTOCOL,
        "sent no registration",
    );
    await_log(
        &lab,
        &from_h1(seen.partial.port),
        "sent no registration within 10s",
        LIMIT,
    );

    // Every client of the burst was closed with a protocol error.
    for (i, a) in seen.burst.iter().enumerate() {
        assert_closed_by_controller(&format!("burst client {i}"), a, CLOSE_PROTOCOL, "frame");
        await_log(&lab, &from_h1(a.port), "ended session with", LIMIT);
    }

    // Nothing was registered for the refused names.
    let mut hosts = etcd_hosts(&lab);
    hosts.sort();
    assert_eq!(hosts, ["h1", "h9"], "hosts in etcd after the attacks");
    lab.weftctl_etcd_ok(&["host", "rm", "h9"]);

    // The controller still runs, and h1's agent kept its one session all along.
    assert_controller_alive(&lab);
    assert_eq!(agent_status(&lab, 1), (true, subnet1.clone()));
    let log = std::fs::read_to_string(lab.held_log("controller-c1")).unwrap();
    assert_eq!(
        log.matches("host h1 registered").count(),
        1,
        "h1's agent had to register again:\n{log}"
    );

    // A new agent registers and gets its own subnet; both see each other.
    let _a2 = lab.host(2).start_agent(&[]);
    let subnet2 = lab.host(2).wait_connected(LIMIT).subnet;
    assert_ne!(subnet1, subnet2);
    assert!(
        wait_until(LIMIT, || peer_names(&lab, 1) == ["h2"]),
        "h1 peers: {:?}",
        peer_names(&lab, 1)
    );
    assert!(
        wait_until(LIMIT, || peer_names(&lab, 2) == ["h1"]),
        "h2 peers: {:?}",
        peer_names(&lab, 2)
    );
    assert_eq!(agent_status(&lab, 1), (true, subnet1));
    assert_controller_alive(&lab);
    eprintln!("protocol refusals: {:?}", started.elapsed());
}
