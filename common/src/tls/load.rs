//! A TLS directory's files, and reading TLS material from them:
//! certificates and keys from PEM files, the CA as a root store.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::error::TlsError;

/// The cluster CA certificate in a TLS directory.
pub const CA_FILE: &str = "ca.pem";
/// This node's certificate in a TLS directory.
pub const CERT_FILE: &str = "cert.pem";
/// This node's private key in a TLS directory.
pub const KEY_FILE: &str = "key.pem";

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

/// The crypto provider every configuration is built with.
pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of `ca` as the only trust anchors.
pub(super) fn load_roots(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: ca.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// `cert.pem` and `key.pem` of a TLS directory.
pub(super) fn load_identity(
    tls_dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = load_certs(&tls_dir.join(CERT_FILE))?;
    let key = load_key(&tls_dir.join(KEY_FILE))?;
    Ok((certs, key))
}

/// Maps errors from `with_single_cert`/`with_client_auth_cert` and from
/// matching a key to its certificate.
pub(super) fn identity_err(tls_dir: &Path, e: rustls::Error) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch(tls_dir.to_path_buf()),
        rustls::Error::General(reason) => TlsError::BadKey {
            path: tls_dir.join(KEY_FILE),
            reason,
        },
        e => TlsError::Config(e.to_string()),
    }
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
