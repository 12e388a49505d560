//! Why TLS material could not be loaded or a configuration built.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

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

/// An I/O error as a sentence fragment, without the "(os error N)" suffix.
pub fn io_msg(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
