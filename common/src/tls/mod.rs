//! Mutual TLS for the QUIC links between agents and controllers.
//!
//! A `--tls-dir` holds `ca.pem` (the cluster CA), `cert.pem` (this node's
//! certificate, possibly followed by intermediates) and `key.pem`. Both sides
//! trust only the cluster CA and must present a certificate it signed; only
//! TLS 1.3 is offered, with ALPN `weft/1`. The ring crypto provider is always
//! passed explicitly, so no process-wide default is needed.
//!
//! - `load`: a TLS directory's files, certificates and keys from PEM;
//! - `config`: the QUIC server and client configurations and timeouts;
//! - `cert`: names and summaries of certificates, the full check of a TLS
//!   directory, verification errors in words;
//! - `failure`: why a handshake failed, told from quinn's typed errors;
//! - `error`: why material could not be loaded or a config built.

mod cert;
mod config;
mod error;
mod failure;
mod load;
#[cfg(test)]
mod tests;

pub use cert::{cert_name, check_dir, describe_cert_error, peer_name, utc, CertSummary, Side};
pub use config::{
    client_config, server_config, ALPN, CLIENT_IDLE_TIMEOUT, CLIENT_KEEP_ALIVE, SERVER_IDLE_TIMEOUT,
};
pub use error::{io_msg, TlsError};
pub use failure::{CertProblem, TlsFailure};
pub use load::{load_certs, load_key, CA_FILE, CERT_FILE, KEY_FILE};
