//! Certificates as operators see them: a certificate's name, a summary
//! for logs, the complete check of a TLS directory, and verification
//! errors in words.

use std::any::Any;
use std::path::Path;

use rustls::client::danger::ServerCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::CertificateDer;

use super::error::TlsError;
use super::load::{
    identity_err, load_identity, load_roots, provider, CA_FILE, CERT_FILE, KEY_FILE,
};

/// Which end of the agent⇄controller link a TLS directory is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A controller: its certificate must be valid for server authentication.
    Server,
    /// An agent: its certificate must be valid for client authentication.
    Client,
}

/// The name of the peer: the common name of its verified leaf certificate,
/// or failing that its first DNS subject alternative name.
pub fn peer_name(conn: &quinn::Connection) -> Option<String> {
    name_from_identity(conn.peer_identity()?)
}

pub(super) fn name_from_identity(identity: Box<dyn Any>) -> Option<String> {
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

/// Seconds since the epoch, now.
fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC, RFC 3339).
pub fn utc(secs: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{secs} seconds after 1970"))
}
