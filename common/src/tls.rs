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
use rustls::client::danger::ServerCertVerifier;
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
    /// The certificate is well-formed but not usable (expired, not signed
    /// by the CA, wrong role).
    #[error("{}: {}", .path.display(), .reason)]
    Invalid {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
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

/// Which end of the agent⇄controller link a TLS directory is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A controller: its certificate must be valid for server authentication.
    Server,
    /// An agent: its certificate must be valid for client authentication.
    Client,
}

/// What a checked TLS directory holds, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The certificate's name (common name or first DNS SAN; "?" if none).
    pub name: String,
    /// Serial number, hex.
    pub serial: String,
    /// `notAfter`, seconds since the epoch.
    pub not_after: i64,
}

impl CertSummary {
    /// Reads name, serial and `notAfter` of a DER certificate.
    pub fn of(der: &CertificateDer<'_>) -> Option<CertSummary> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(CertSummary {
            name: cert_name(der).unwrap_or_else(|| "?".into()),
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// `notAfter` as `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn valid_until(&self) -> String {
        utc(self.not_after)
    }

    /// Whether `notAfter` has passed.
    pub fn expired(&self) -> bool {
        self.not_after < now_unix()
    }
}

/// Checks a TLS directory completely, as [`server_config`] or
/// [`client_config`] would use it, plus what those do not check: the
/// certificate chains to `ca.pem`, is valid now, and is usable for `side`.
/// A directory caught half-written (key of the new pair, certificate of the
/// old one) fails here.
pub fn check_dir(tls_dir: &Path, side: Side) -> Result<CertSummary, TlsError> {
    let provider = provider();
    let roots = load_roots(&tls_dir.join(CA_FILE))?;
    let (certs, key) = load_identity(tls_dir)?;
    let cert_path = tls_dir.join(CERT_FILE);
    let summary = CertSummary::of(&certs[0]).ok_or_else(|| TlsError::BadPem {
        path: cert_path.clone(),
        reason: "not an X.509 certificate".into(),
    })?;
    // Key and certificate belong together.
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey {
            path: tls_dir.join(KEY_FILE),
            reason: e.to_string(),
        })?;
    rustls::sign::CertifiedKey::new(certs.clone(), signing)
        .keys_match()
        .map_err(|e| identity_err(tls_dir, e))?;
    let now = rustls_pki_types::UnixTime::now();
    let verified = match side {
        Side::Client => WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .verify_client_cert(&certs[0], &certs[1..], now)
            .map(drop),
        Side::Server => {
            let name =
                rustls_pki_types::ServerName::try_from(summary.name.clone()).map_err(|e| {
                    TlsError::Invalid {
                        path: cert_path.clone(),
                        reason: format!("name {:?} is not a server name: {e}", summary.name),
                    }
                })?;
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?
                .verify_server_cert(&certs[0], &certs[1..], &name, &[], now)
                .map(drop)
        }
    };
    verified.map_err(|e| TlsError::Invalid {
        path: cert_path,
        reason: format!("certificate {}: {}", summary.name, describe_cert_error(&e)),
    })?;
    Ok(summary)
}

/// A certificate verification error in words an operator acts on.
pub fn describe_cert_error(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Expired => "expired".into(),
            C::ExpiredContext { not_after, .. } => {
                format!("expired at {}", utc(not_after.as_secs() as i64))
            }
            C::NotValidYet => "not valid yet".into(),
            C::NotValidYetContext { not_before, .. } => {
                format!("not valid before {}", utc(not_before.as_secs() as i64))
            }
            C::UnknownIssuer => "unknown issuer: not signed by the CA in ca.pem".into(),
            C::BadSignature => "bad signature: not signed by the CA in ca.pem".into(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "not issued for this role (extended key usage)".into()
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "not valid for its own name".into()
            }
            other => format!("{other:?}"),
        },
        other => other.to_string(),
    }
}

/// Why a QUIC handshake with a peer failed, from the error text quinn
/// reports on either side, in an operator's words. Handshake failures carry
/// the rustls reason on the side that refused and the TLS alert number on
/// the other side.
pub fn describe_handshake_error(text: &str) -> String {
    // rustls on the refusing side.
    if let Some(i) = text.find("certificate is not valid after ") {
        let rest = &text[i + "certificate is not valid after ".len()..];
        let secs: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(s) = secs.parse::<i64>() {
            return format!("certificate expired at {}", utc(s));
        }
    }
    for (needle, words) in [
        (
            "UnknownIssuer",
            "certificate not signed by the cluster CA (unknown issuer)",
        ),
        (
            "BadSignature",
            "certificate not signed by the cluster CA (bad signature)",
        ),
        ("certificate expired", "certificate expired"),
        ("NotValidYet", "certificate not valid yet"),
        ("peer sent no certificates", "no client certificate"),
        (
            "InvalidPurpose",
            "certificate not issued for this role (extended key usage)",
        ),
        (
            "NotValidForName",
            "certificate not valid for the address dialled",
        ),
    ] {
        if text.contains(needle) {
            return words.into();
        }
    }
    // The TLS alert the refusing side sent, as the other side sees it.
    if let Some(i) = text.find("the cryptographic handshake failed: error ") {
        let rest = &text[i + "the cryptographic handshake failed: error ".len()..];
        let code: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let words = match code.parse::<u16>().ok() {
            Some(42) => Some("bad certificate"),
            Some(45) => Some("certificate expired"),
            Some(46) => Some("certificate unusable"),
            Some(48) => Some("certificate not signed by a CA the controller trusts (unknown CA)"),
            Some(51) => Some("certificate not signed by a CA the controller trusts"),
            Some(116) => Some("certificate required"),
            _ => None,
        };
        if let Some(w) = words {
            return format!("{w} (TLS alert {code})");
        }
    }
    text.to_string()
}

/// Whether a connection error says the peer refused the TLS handshake (as
/// opposed to this side refusing the peer's certificate).
pub fn handshake_refused_by_peer(text: &str) -> bool {
    text.contains("aborted by peer") && text.contains("the cryptographic handshake failed")
}

/// Seconds since the epoch, now.
fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
        // A refused handshake shows as a lost connection; the reason is
        // the connection's close reason.
        let echoed = recv.read_to_end(1024).await.map_err(|e| {
            conn.close_reason()
                .map_or_else(|| e.to_string(), |r| r.to_string())
        })?;
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
        let srv = srv.expect_err("server accepted an expired certificate");
        assert_eq!(
            describe_handshake_error(&srv),
            "certificate expired at 2021-01-01T00:00:00Z",
            "{srv}"
        );
        let cli = cli.expect_err("client exchanged data");
        // quinn passes the refusing side's reason on to the other side.
        assert_eq!(
            describe_handshake_error(&cli),
            "certificate expired at 2021-01-01T00:00:00Z",
            "{cli}"
        );
        assert!(handshake_refused_by_peer(&cli), "{cli}");
        assert!(!handshake_refused_by_peer(&srv), "{srv}");
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
        let srv = srv.unwrap_err();
        // Same CA name, other key: the signature does not verify.
        assert_eq!(
            describe_handshake_error(&srv),
            "certificate not signed by the cluster CA (bad signature)",
            "{srv}"
        );
        let cli = cli.unwrap_err();
        assert_eq!(
            describe_handshake_error(&cli),
            "certificate not signed by the cluster CA (bad signature)",
            "{cli}"
        );
        assert!(handshake_refused_by_peer(&cli), "{cli}");
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
}
