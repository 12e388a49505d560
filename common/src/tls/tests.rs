use super::cert::name_from_identity;
use super::load::{load_roots, provider};
use super::*;
use quinn::crypto::rustls::QuicClientConfig;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);
const SERVER_NAME: &str = "ctl-1";

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "weft-tls-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d
}

impl Ca {
    fn new(cn: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// Writes a TLS dir with a leaf for `name`; `server` adds serverAuth.
    /// The leaf always has DNS SAN `name`, SAN 127.0.0.1 and clientAuth.
    fn node(&self, name: &str, server: bool) -> TempDir {
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name = dn(name);
        params
            .subject_alt_names
            .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let dir = TempDir::new();
        std::fs::write(dir.0.join(CA_FILE), self.issuer.pem()).unwrap();
        std::fs::write(dir.0.join(CERT_FILE), cert.pem()).unwrap();
        std::fs::write(dir.0.join(KEY_FILE), key.serialize_pem()).unwrap();
        dir
    }
}

fn server(dir: &Path) -> (quinn::Endpoint, SocketAddr) {
    let ep = quinn::Endpoint::server(server_config(dir).unwrap(), (Ipv4Addr::LOCALHOST, 0).into())
        .unwrap();
    let addr = ep.local_addr().unwrap();
    (ep, addr)
}

fn client_endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap()
}

/// A client that trusts `ca_dir`'s CA but presents no certificate.
fn anonymous_client_config(ca_dir: &Path) -> quinn::ClientConfig {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(load_roots(&ca_dir.join(CA_FILE)).unwrap())
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
}

/// How one side of a test connection failed: the connection's own error
/// (typed, as the daemons see it) or any other step.
#[derive(Debug)]
enum Failed {
    Connection(quinn::ConnectionError),
    Other(String),
}

impl Failed {
    fn text(&self) -> String {
        match self {
            Failed::Connection(e) => e.to_string(),
            Failed::Other(s) => s.clone(),
        }
    }

    /// The TLS failure it is (panics if it is none).
    fn tls(&self) -> TlsFailure {
        match self {
            Failed::Connection(e) => {
                TlsFailure::of(e).unwrap_or_else(|| panic!("not a TLS failure: {e}"))
            }
            Failed::Other(s) => panic!("not a connection error: {s}"),
        }
    }
}

fn other(e: impl std::fmt::Display) -> Failed {
    Failed::Other(e.to_string())
}

type ServerSide = Result<Option<String>, Failed>;
type ClientSide = Result<(Vec<u8>, Option<String>), Failed>;

/// Server side: accept one connection, echo one bidi stream, return the
/// peer name. Errors if the handshake fails.
async fn serve_one(ep: quinn::Endpoint) -> ServerSide {
    let incoming = ep.accept().await.ok_or(other("endpoint closed"))?;
    let conn = incoming.await.map_err(Failed::Connection)?;
    let name = peer_name(&conn);
    let (mut send, mut recv) = conn.accept_bi().await.map_err(Failed::Connection)?;
    let data = recv.read_to_end(1024).await.map_err(other)?;
    send.write_all(&data).await.map_err(other)?;
    send.finish().map_err(other)?;
    // Wait until the client has read the reply and closed.
    let _ = conn.closed().await;
    Ok(name)
}

/// Client side: connect, send `msg` on a bidi stream, read the echo.
async fn exchange(config: quinn::ClientConfig, addr: SocketAddr, msg: &[u8]) -> ClientSide {
    let ep = client_endpoint();
    let conn = ep
        .connect_with(config, addr, SERVER_NAME)
        .map_err(other)?
        .await
        .map_err(Failed::Connection)?;
    let server_name = peer_name(&conn);
    let (mut send, mut recv) = conn.open_bi().await.map_err(Failed::Connection)?;
    send.write_all(msg).await.map_err(other)?;
    send.finish().map_err(other)?;
    // A refused handshake shows as a lost connection; the reason is
    // the connection's close reason.
    let echoed = recv.read_to_end(1024).await.map_err(|e| {
        conn.close_reason()
            .map_or_else(|| other(e), Failed::Connection)
    })?;
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
    Ok((echoed, server_name))
}

/// Runs one server and one client and returns both outcomes.
async fn run(server_dir: &Path, client: quinn::ClientConfig) -> (ServerSide, ClientSide) {
    let (ep, addr) = server(server_dir);
    let srv = tokio::spawn(serve_one(ep.clone()));
    let cli = timeout(LIMIT, exchange(client, addr, b"hello weft"))
        .await
        .expect("client timed out");
    let srv = timeout(LIMIT, srv)
        .await
        .expect("server timed out")
        .expect("server task panicked");
    ep.close(0u32.into(), b"");
    (srv, cli)
}

#[tokio::test]
async fn mutual_tls_connects_and_names_peers() {
    let ca = Ca::new("test CA");
    let ctl = ca.node(SERVER_NAME, true);
    let agent = ca.node("agent-7", false);
    let (srv, cli) = run(&ctl.0, client_config(&agent.0).unwrap()).await;
    let (echoed, server_name) = cli.expect("client failed");
    assert_eq!(echoed, b"hello weft");
    assert_eq!(server_name.as_deref(), Some(SERVER_NAME));
    assert_eq!(srv.expect("server failed").as_deref(), Some("agent-7"));
}

/// Asserts the server refused the handshake because of `reason`, and
/// the client could not exchange data.
fn assert_refused(srv: ServerSide, cli: ClientSide, reason: &str) {
    let err = srv.expect_err("server accepted the connection").text();
    assert!(err.contains(reason), "{err}");
    assert!(cli.is_err(), "client exchanged data: {cli:?}");
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let ca = Ca::new("test CA");
    let ctl = ca.node(SERVER_NAME, true);
    let (srv, cli) = run(&ctl.0, anonymous_client_config(&ctl.0)).await;
    assert_refused(srv, cli, "peer sent no certificates");
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    let ca = Ca::new("test CA");
    let other = Ca::new("test CA"); // same name, different key
    let ctl = ca.node(SERVER_NAME, true);
    let agent = other.node("agent-7", false);
    // The client trusts the right CA, only its own certificate is foreign.
    std::fs::copy(ctl.0.join(CA_FILE), agent.0.join(CA_FILE)).unwrap();
    let (srv, cli) = run(&ctl.0, client_config(&agent.0).unwrap()).await;
    assert_refused(srv, cli, "invalid peer certificate");
}

#[tokio::test]
async fn server_from_another_ca_is_refused() {
    let ca = Ca::new("test CA");
    let other = Ca::new("test CA");
    let ctl = other.node(SERVER_NAME, true);
    let agent = ca.node("agent-7", false);
    // The server trusts the agent's CA, only its own certificate is foreign.
    std::fs::copy(agent.0.join(CA_FILE), ctl.0.join(CA_FILE)).unwrap();
    let (srv, cli) = run(&ctl.0, client_config(&agent.0).unwrap()).await;
    let err = cli
        .expect_err("client accepted a server from another CA")
        .text();
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(srv.is_err(), "server side completed: {srv:?}");
}

#[tokio::test]
async fn client_only_certificate_cannot_serve() {
    let ca = Ca::new("test CA");
    // Right CA, right name, but extended key usage clientAuth only.
    let fake_ctl = ca.node(SERVER_NAME, false);
    let agent = ca.node("agent-7", false);
    let (srv, cli) = run(&fake_ctl.0, client_config(&agent.0).unwrap()).await;
    let err = cli
        .expect_err("client accepted a clientAuth-only server certificate")
        .text();
    assert!(
        err.contains("extended key usage for server authentication"),
        "{err}"
    );
    assert!(srv.is_err(), "server side completed: {srv:?}");
}

#[test]
fn load_errors_name_the_file() {
    let ca = Ca::new("test CA");
    let node = ca.node("n1", false);
    let missing = node.0.join("nope.pem");
    let err = load_certs(&missing).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "cannot read {}: No such file or directory",
            missing.display()
        )
    );

    let empty = node.0.join("empty.pem");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(
        load_certs(&empty).unwrap_err().to_string(),
        format!("no certificate in {}", empty.display())
    );
    // A certificate file holds no key.
    let cert = node.0.join(CERT_FILE);
    assert_eq!(
        load_key(&cert).unwrap_err().to_string(),
        format!("no private key in {}", cert.display())
    );
    assert_eq!(load_certs(&cert).unwrap().len(), 1);
    load_key(&node.0.join(KEY_FILE)).unwrap();

    let err = client_config(&missing).unwrap_err().to_string();
    assert!(err.starts_with("cannot read "), "{err}");
    assert!(err.contains(CA_FILE), "{err}");
}

#[test]
fn mismatched_key_is_reported() {
    let ca = Ca::new("test CA");
    let a = ca.node("a", true);
    let b = ca.node("b", true);
    std::fs::copy(b.0.join(KEY_FILE), a.0.join(KEY_FILE)).unwrap();
    let want = format!("key.pem does not match cert.pem in {}", a.0.display());
    assert_eq!(server_config(&a.0).unwrap_err().to_string(), want);
    assert_eq!(client_config(&a.0).unwrap_err().to_string(), want);
    // The untouched directory is fine.
    server_config(&b.0).unwrap();
    client_config(&b.0).unwrap();
}

/// Writes a TLS dir for client `name` whose certificate expired a day ago.
fn expired_node(ca: &Ca, name: &str) -> TempDir {
    let dir = ca.node(name, false);
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.distinguished_name = dn(name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    std::fs::write(dir.0.join(CERT_FILE), cert.pem()).unwrap();
    std::fs::write(dir.0.join(KEY_FILE), key.serialize_pem()).unwrap();
    dir
}

#[tokio::test]
async fn expired_client_is_refused_and_both_sides_say_why() {
    let ca = Ca::new("test CA");
    let ctl = ca.node(SERVER_NAME, true);
    let agent = expired_node(&ca, "agent-7");
    let (srv, cli) = run(&ctl.0, client_config(&agent.0).unwrap()).await;
    let srv = srv
        .expect_err("server accepted an expired certificate")
        .tls();
    assert_eq!(
        srv.to_string(),
        "certificate expired at 2021-01-01T00:00:00Z",
        "{srv:?}"
    );
    let cli = cli.expect_err("client exchanged data").tls();
    // quinn passes the refusing side's reason on to the other side.
    assert_eq!(
        cli.to_string(),
        "certificate expired at 2021-01-01T00:00:00Z",
        "{cli:?}"
    );
    assert!(cli.by_peer, "{cli:?}");
    assert!(!srv.by_peer, "{srv:?}");
    // The agent's own check says the same before it even connects.
    let e = check_dir(&agent.0, Side::Client).unwrap_err().to_string();
    assert!(
        e.ends_with("cert.pem: certificate agent-7: expired at 2021-01-01T00:00:00Z"),
        "{e}"
    );
}

#[tokio::test]
async fn foreign_client_refusal_is_described() {
    let ca = Ca::new("test CA");
    let other = Ca::new("test CA");
    let ctl = ca.node(SERVER_NAME, true);
    let agent = other.node("agent-7", false);
    std::fs::copy(ctl.0.join(CA_FILE), agent.0.join(CA_FILE)).unwrap();
    let (srv, cli) = run(&ctl.0, client_config(&agent.0).unwrap()).await;
    let srv = srv.unwrap_err().tls();
    // Same CA name, other key: the signature does not verify.
    assert_eq!(
        srv.to_string(),
        "certificate not signed by the cluster CA (bad signature)",
        "{srv:?}"
    );
    assert_eq!(srv.problem(), Some(CertProblem::BadSignature));
    let cli = cli.unwrap_err().tls();
    assert_eq!(
        cli.to_string(),
        "certificate not signed by the cluster CA (bad signature)",
        "{cli:?}"
    );
    assert!(cli.by_peer, "{cli:?}");
    let e = check_dir(&agent.0, Side::Client).unwrap_err().to_string();
    assert!(e.contains("bad signature"), "{e}");
}

#[test]
fn check_dir_accepts_good_sets_and_refuses_half_written_ones() {
    let ca = Ca::new("test CA");
    let ctl = ca.node(SERVER_NAME, true);
    let s = check_dir(&ctl.0, Side::Server).unwrap();
    assert_eq!(s.name, SERVER_NAME);
    assert!(!s.expired());
    assert!(!s.serial.is_empty());
    // A client-only certificate is no server certificate.
    let agent = ca.node("agent-7", false);
    check_dir(&agent.0, Side::Client).unwrap();
    let e = check_dir(&agent.0, Side::Server).unwrap_err().to_string();
    assert!(e.contains("extended key usage"), "{e}");
    // New key, old certificate: refused.
    let other = ca.node(SERVER_NAME, true);
    std::fs::copy(other.0.join(KEY_FILE), ctl.0.join(KEY_FILE)).unwrap();
    let e = check_dir(&ctl.0, Side::Server).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("key.pem does not match cert.pem in {}", ctl.0.display())
    );
}

#[test]
fn utc_formats_dates() {
    assert_eq!(utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(utc(1_609_459_200), "2021-01-01T00:00:00Z");
    assert_eq!(utc(951_782_400 + 3661), "2000-02-29T01:01:01Z");
    assert_eq!(utc(4_102_444_799), "2099-12-31T23:59:59Z");
}

#[test]
fn cert_name_prefers_common_name() {
    let ca = Ca::new("test CA");
    let n = ca.node("node-3", false);
    let cert = &load_certs(&n.0.join(CERT_FILE)).unwrap()[0];
    assert_eq!(cert_name(cert).as_deref(), Some("node-3"));

    // Without a CN, the first DNS SAN is used.
    let mut params = CertificateParams::new(vec!["san-only".to_string()]).unwrap();
    params.distinguished_name = DistinguishedName::new();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    assert_eq!(cert_name(cert.der()).as_deref(), Some("san-only"));
    assert_eq!(
        name_from_identity(Box::new(vec![cert.der().clone()])).as_deref(),
        Some("san-only")
    );
    assert_eq!(name_from_identity(Box::new(42u32)), None);
}
