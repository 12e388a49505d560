//! Mutual TLS for the QUIC links between agents and controllers.
//!
//! A `--tls-dir` holds `ca.pem` (the cluster CA), `cert.pem` (this node's
//! certificate, possibly followed by intermediates) and `key.pem`. Both sides
//! trust only the cluster CA and must present a certificate it signed; only
//! TLS 1.3 is offered, with ALPN `weft/1`. The ring crypto provider is always
//! passed explicitly, so no process-wide default is needed.

use std::any::Any;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

/// The ALPN protocol both sides speak.
pub const ALPN: &[u8] = b"weft/1";
/// The cluster CA certificate in a TLS directory.
pub const CA_FILE: &str = "ca.pem";
/// This node's certificate in a TLS directory.
pub const CERT_FILE: &str = "cert.pem";
/// This node's private key in a TLS directory.
pub const KEY_FILE: &str = "key.pem";

/// A server drops a connection silent for this long.
pub const SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A client drops a connection silent for this long (the lower of the two
/// sides' limits applies to both): how quickly an agent notices a dead
/// controller and fails over, and a controller a dead agent.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(8);
/// A client sends a keep-alive this often.
pub const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(2);

/// Why TLS material could not be loaded or a configuration built.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {}", .path.display(), io_msg(.source))]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A PEM file holds no certificate.
    #[error("no certificate in {}", .0.display())]
    NoCertificate(PathBuf),
    /// A PEM file holds no private key.
    #[error("no private key in {}", .0.display())]
    NoPrivateKey(PathBuf),
    /// A PEM file is malformed.
    #[error("cannot parse {}: {}", .path.display(), .reason)]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate in the CA file is not usable as a trust anchor.
    #[error("invalid CA certificate in {}: {}", .path.display(), .reason)]
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key is not the one the certificate was issued for.
    #[error("key.pem does not match cert.pem in {}", .0.display())]
    KeyMismatch(PathBuf),
    /// The key could not be loaded by the crypto provider.
    #[error("unusable private key in {}: {}", .path.display(), .reason)]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls or quinn refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Reads every certificate from a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, SEC1 or PKCS#1) from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = read(path)?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey(path.to_path_buf()),
        e => bad_pem(path, e),
    })
}

/// Ack-eliciting packets an agent may receive before it must acknowledge.
const ACK_EVERY: u32 = 9;

/// The QUIC server side: presents `cert.pem`/`key.pem`, requires a client
/// certificate signed by `ca.pem`, TLS 1.3 only, ALPN `weft/1`, idle timeout
/// 30 s.
pub fn server_config(tls_dir: &Path) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let roots = load_roots(&tls_dir.join(CA_FILE))?;
    let (certs, key) = load_identity(tls_dir)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| identity_err(tls_dir, e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(idle(SERVER_IDLE_TIMEOUT)?));
    // One agent session is one bidirectional stream of small frames: allow
    // exactly that, and keep per-connection buffers small, so a controller
    // holds thousands of sessions in little memory.
    transport.max_concurrent_bidi_streams(1u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.stream_receive_window((256u32 << 10).into());
    transport.receive_window((512u32 << 10).into());
    transport.datagram_receive_buffer_size(None);
    // Unacknowledged bytes in flight per connection: a snapshot write
    // returns once most of it has arrived, so the controller's snapshot
    // turns (controller/src/server.rs) measure real transmission.
    transport.send_window(256 << 10);
    // No segmentation offload: with it every connection keeps a transmit
    // buffer of ten datagrams (~22 KiB measured) for life, which at 5,000
    // agents is a third of the controller's memory; a session's frames are
    // mostly one datagram anyway.
    transport.enable_segmentation_offload(false);
    // Ask agents to acknowledge every tenth packet (or after 25 ms) rather
    // than every other one: while thousands of snapshots stream out at
    // once, their acknowledgements were the bulk of what the controller's
    // one socket receives, and enough of them overflowed its buffer that
    // handshakes and heartbeats were dropped with them.
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(ACK_EVERY.into())
        .max_ack_delay(Some(Duration::from_millis(25)));
    transport.ack_frequency_config(Some(acks));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The QUIC client side: trusts only `ca.pem`, presents `cert.pem`/`key.pem`,
/// TLS 1.3 only, ALPN `weft/1`, keep-alive every 5 s, idle timeout 20 s.
pub fn client_config(tls_dir: &Path) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let roots = load_roots(&tls_dir.join(CA_FILE))?;
    let (certs, key) = load_identity(tls_dir)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| identity_err(tls_dir, e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(CLIENT_KEEP_ALIVE));
    transport.max_idle_timeout(Some(idle(CLIENT_IDLE_TIMEOUT)?));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The name of the peer: the common name of its verified leaf certificate,
/// or failing that its first DNS subject alternative name.
pub fn peer_name(conn: &quinn::Connection) -> Option<String> {
    name_from_identity(conn.peer_identity()?)
}

fn name_from_identity(identity: Box<dyn Any>) -> Option<String> {
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    cert_name(certs.first()?)
}

/// The common name, or the first DNS SAN, of a DER certificate.
pub fn cert_name(der: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
    {
        return Some(cn.to_string());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_roots(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: ca.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

fn load_identity(
    tls_dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = load_certs(&tls_dir.join(CERT_FILE))?;
    let key = load_key(&tls_dir.join(KEY_FILE))?;
    Ok((certs, key))
}

/// Maps errors from `with_single_cert`/`with_client_auth_cert`.
fn identity_err(tls_dir: &Path, e: rustls::Error) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch(tls_dir.to_path_buf()),
        rustls::Error::General(reason) => TlsError::BadKey {
            path: tls_dir.join(KEY_FILE),
            reason,
        },
        e => config_err(e),
    }
}

fn config_err(e: rustls::Error) -> TlsError {
    TlsError::Config(e.to_string())
}

fn idle(d: Duration) -> Result<quinn::IdleTimeout, TlsError> {
    quinn::IdleTimeout::try_from(d).map_err(|e| TlsError::Config(e.to_string()))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn bad_pem(path: &Path, e: pem::Error) -> TlsError {
    TlsError::BadPem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// An I/O error as a sentence fragment, without the "(os error N)" suffix.
pub fn io_msg(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::atomic::{AtomicU64, Ordering};
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
        let ep =
            quinn::Endpoint::server(server_config(dir).unwrap(), (Ipv4Addr::LOCALHOST, 0).into())
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

    /// Server side: accept one connection, echo one bidi stream, return the
    /// peer name. Errors if the handshake fails.
    async fn serve_one(ep: quinn::Endpoint) -> Result<Option<String>, String> {
        let incoming = ep.accept().await.ok_or("endpoint closed")?;
        let conn = incoming.await.map_err(|e| e.to_string())?;
        let name = peer_name(&conn);
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let data = recv.read_to_end(1024).await.map_err(|e| e.to_string())?;
        send.write_all(&data).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        // Wait until the client has read the reply and closed.
        let _ = conn.closed().await;
        Ok(name)
    }

    /// Client side: connect, send `msg` on a bidi stream, read the echo.
    async fn exchange(
        config: quinn::ClientConfig,
        addr: SocketAddr,
        msg: &[u8],
    ) -> Result<(Vec<u8>, Option<String>), String> {
        let ep = client_endpoint();
        let conn = ep
            .connect_with(config, addr, SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let server_name = peer_name(&conn);
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(msg).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let echoed = recv.read_to_end(1024).await.map_err(|e| e.to_string())?;
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;
        Ok((echoed, server_name))
    }

    /// Runs one server and one client and returns both outcomes.
    async fn run(
        server_dir: &Path,
        client: quinn::ClientConfig,
    ) -> (
        Result<Option<String>, String>,
        Result<(Vec<u8>, Option<String>), String>,
    ) {
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

    /// Asserts both sides failed (the handshake was refused).
    /// Asserts the server refused the handshake because of `reason`, and
    /// the client could not exchange data.
    fn assert_refused(
        srv: Result<Option<String>, String>,
        cli: Result<(Vec<u8>, Option<String>), String>,
        reason: &str,
    ) {
        let err = srv.expect_err("server accepted the connection");
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
        let err = cli.expect_err("client accepted a server from another CA");
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
        let err = cli.expect_err("client accepted a clientAuth-only server certificate");
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
}
