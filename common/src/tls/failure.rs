//! Why a QUIC handshake failed, told from quinn's typed errors: which side
//! refused, and the TLS alert it sent.
//!
//! quinn turns a rustls handshake error into a QUIC CRYPTO_ERROR close
//! whose code is `0x100 + alert` and whose reason is the rustls error's
//! text. On the side that refused, that is a local transport error; the
//! other side receives the same code and reason in the peer's close. The
//! alert tells what is wrong with a certificate (rustls maps each
//! certificate error to one); the reason text is read only for what no
//! type carries: when an expired certificate expired, and whether "expired"
//! means not valid yet.

use std::fmt;

use rustls::AlertDescription;

use super::cert::utc;

/// A TLS handshake that one of the two sides refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailure {
    /// Whether the peer refused (it sent the alert) rather than this side.
    pub by_peer: bool,
    /// The TLS alert of the refusal.
    pub alert: AlertDescription,
    /// The refusing side's reason, as quinn carries it (rustls's text; may
    /// be empty when the peer is not quinn).
    pub reason: String,
}

/// What was wrong with a certificate, from the alert of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertProblem {
    /// Expired (`certificate_expired`); `at` is its `notAfter` when the
    /// reason says it (seconds since the epoch).
    Expired { at: Option<i64> },
    /// Not valid yet (also `certificate_expired`, told apart by the reason).
    NotValidYet,
    /// Not issued by a trusted CA (`unknown_ca`).
    UnknownIssuer,
    /// Its signature does not verify against the trusted CA
    /// (`decrypt_error`): same name, other key.
    BadSignature,
    /// Not issued for this role: extended key usage
    /// (`unsupported_certificate`).
    WrongPurpose,
    /// No certificate was presented (`certificate_required`).
    Missing,
    /// Not acceptable otherwise (`bad_certificate`, `certificate_unknown`,
    /// `certificate_revoked`, `access_denied`); `not_for_name` when the
    /// reason says it is not valid for the name dialled.
    Bad { not_for_name: bool },
}

impl TlsFailure {
    /// The TLS failure behind a connection error, if that is what it is.
    pub fn of(e: &quinn::ConnectionError) -> Option<TlsFailure> {
        match e {
            quinn::ConnectionError::TransportError(t) => Some(TlsFailure {
                by_peer: false,
                alert: alert_of(t.code)?,
                reason: t.reason.clone(),
            }),
            quinn::ConnectionError::ConnectionClosed(c) => Some(TlsFailure {
                by_peer: true,
                alert: alert_of(c.error_code)?,
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            }),
            _ => None,
        }
    }

    /// What was wrong with a certificate; `None` when the alert is not
    /// about one (e.g. no common ALPN protocol).
    pub fn problem(&self) -> Option<CertProblem> {
        use AlertDescription as A;
        Some(match self.alert {
            // The reason's text is the only place that tells these apart
            // and says when (rustls: "… is not valid after N …").
            A::CertificateExpired => {
                if let Some(at) = number_after(&self.reason, "not valid after ") {
                    CertProblem::Expired { at: Some(at) }
                } else if self.reason.contains("not valid yet")
                    || self.reason.contains("NotValidYet")
                {
                    CertProblem::NotValidYet
                } else {
                    CertProblem::Expired { at: None }
                }
            }
            A::UnknownCA => CertProblem::UnknownIssuer,
            A::DecryptError => CertProblem::BadSignature,
            A::UnsupportedCertificate => CertProblem::WrongPurpose,
            A::CertificateRequired => CertProblem::Missing,
            A::BadCertificate | A::CertificateUnknown | A::CertificateRevoked | A::AccessDenied => {
                CertProblem::Bad {
                    not_for_name: self.reason.contains("not valid for name")
                        || self.reason.contains("NotValidForName"),
                }
            }
            _ => return None,
        })
    }
}

impl fmt::Display for CertProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertProblem::Expired { at: Some(t) } => write!(f, "certificate expired at {}", utc(*t)),
            CertProblem::Expired { at: None } => f.write_str("certificate expired"),
            CertProblem::NotValidYet => f.write_str("certificate not valid yet"),
            CertProblem::UnknownIssuer => {
                f.write_str("certificate not signed by the cluster CA (unknown issuer)")
            }
            CertProblem::BadSignature => {
                f.write_str("certificate not signed by the cluster CA (bad signature)")
            }
            CertProblem::WrongPurpose => {
                f.write_str("certificate not issued for this role (extended key usage)")
            }
            CertProblem::Missing => f.write_str("no client certificate"),
            CertProblem::Bad { not_for_name: true } => {
                f.write_str("certificate not valid for the address dialled")
            }
            CertProblem::Bad {
                not_for_name: false,
            } => f.write_str("bad certificate"),
        }
    }
}

/// In an operator's words: the certificate problem, or else the refusing
/// side's reason (or the alert when there is none).
impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = u8::from(self.alert);
        match self.problem() {
            Some(
                p @ CertProblem::Bad {
                    not_for_name: false,
                },
            ) => write!(f, "{p} (TLS alert {code})"),
            Some(p) => p.fmt(f),
            None if self.reason.is_empty() => write!(f, "TLS alert {code} ({:?})", self.alert),
            None => write!(f, "{} (TLS alert {code})", self.reason),
        }
    }
}

/// The TLS alert a QUIC close code carries (the CRYPTO_ERROR range).
fn alert_of(code: quinn::TransportErrorCode) -> Option<AlertDescription> {
    let v = u64::from(code);
    (0x100..0x200)
        .contains(&v)
        .then(|| AlertDescription::from((v & 0xff) as u8))
}

/// The decimal number after the first `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> Option<i64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::{ConnectionClose, ConnectionError, TransportErrorCode};

    fn closed_by_peer(alert: u8, reason: &str) -> ConnectionError {
        ConnectionError::ConnectionClosed(ConnectionClose {
            error_code: TransportErrorCode::crypto(alert),
            frame_type: None,
            reason: reason.as_bytes().to_vec().into(),
        })
    }

    #[test]
    fn alerts_tell_the_problem() {
        let expired = "invalid peer certificate: certificate expired: verification time 1700000000 (UNIX), but certificate is not valid after 1609459200 (90540800 seconds ago)";
        let f = TlsFailure::of(&closed_by_peer(45, expired)).unwrap();
        assert!(f.by_peer);
        assert_eq!(f.alert, AlertDescription::CertificateExpired);
        assert_eq!(
            f.problem(),
            Some(CertProblem::Expired {
                at: Some(1_609_459_200)
            })
        );
        assert_eq!(f.to_string(), "certificate expired at 2021-01-01T00:00:00Z");
        for (alert, reason, want) in [
            (45, "", "certificate expired"),
            (45, "invalid peer certificate: certificate not valid yet: verification time 1 (UNIX), but certificate is not valid before 9 (8 seconds in future)", "certificate not valid yet"),
            (48, "invalid peer certificate: UnknownIssuer", "certificate not signed by the cluster CA (unknown issuer)"),
            (51, "invalid peer certificate: BadSignature", "certificate not signed by the cluster CA (bad signature)"),
            (43, "", "certificate not issued for this role (extended key usage)"),
            (116, "peer sent no certificates", "no client certificate"),
            (42, "invalid peer certificate: certificate not valid for name \"10.0.0.9\"; certificate is only valid for 10.0.0.5", "certificate not valid for the address dialled"),
            (42, "", "bad certificate (TLS alert 42)"),
            (120, "", "TLS alert 120 (NoApplicationProtocol)"),
            (120, "peer doesn't support any known protocol", "peer doesn't support any known protocol (TLS alert 120)"),
        ] {
            let f = TlsFailure::of(&closed_by_peer(alert, reason)).unwrap();
            assert_eq!(f.to_string(), want, "alert {alert}");
        }
    }

    /// Which side refused comes from the error's kind; anything that is
    /// not a CRYPTO_ERROR close is no TLS failure.
    #[test]
    fn only_crypto_closes_are_tls_failures() {
        assert!(TlsFailure::of(&ConnectionError::TimedOut).is_none());
        assert!(
            TlsFailure::of(&ConnectionError::ConnectionClosed(ConnectionClose {
                error_code: TransportErrorCode::PROTOCOL_VIOLATION,
                frame_type: None,
                reason: Default::default(),
            }))
            .is_none()
        );
        assert!(TlsFailure::of(&closed_by_peer(48, "")).unwrap().by_peer);
    }
}
