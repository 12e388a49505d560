//! The QUIC configurations: the controller's server side and the agent's
//! client side, both mutual TLS 1.3 with ALPN `weft/1`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::server::WebPkiClientVerifier;

use super::error::TlsError;
use super::load::{identity_err, load_identity, load_roots, provider, CA_FILE};

/// The ALPN protocol both sides speak.
pub const ALPN: &[u8] = b"weft/1";

/// A server drops a connection silent for this long.
pub const SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A client drops a connection silent for this long (the lower of the two
/// sides' limits applies to both): how quickly an agent notices a dead
/// controller and fails over, and a controller a dead agent.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(8);
/// A client sends a keep-alive this often.
pub const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(2);

/// Ack-eliciting packets an agent may receive before it must acknowledge.
const ACK_EVERY: u32 = 9;

/// The QUIC server side: presents `cert.pem`/`key.pem`, requires a client
/// certificate signed by `ca.pem`, TLS 1.3 only, ALPN `weft/1`, idle timeout
/// [`SERVER_IDLE_TIMEOUT`] (30 s; agents ask for less, and the lower one
/// applies).
pub fn server_config(tls_dir: &Path) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let roots = load_roots(&tls_dir.join(CA_FILE))?;
    let (certs, key) = load_identity(tls_dir)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
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
    // turns (controller/src/server/session.rs) measure real transmission.
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
/// TLS 1.3 only, ALPN `weft/1`, a keep-alive every [`CLIENT_KEEP_ALIVE`]
/// (2 s), idle timeout [`CLIENT_IDLE_TIMEOUT`] (8 s).
pub fn client_config(tls_dir: &Path) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let roots = load_roots(&tls_dir.join(CA_FILE))?;
    let (certs, key) = load_identity(tls_dir)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
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

fn idle(d: Duration) -> Result<quinn::IdleTimeout, TlsError> {
    quinn::IdleTimeout::try_from(d).map_err(|e| TlsError::Config(e.to_string()))
}
