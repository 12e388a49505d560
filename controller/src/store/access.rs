//! How the store reaches a secured etcd (TLS, a client certificate, an etcd
//! user), and etcd's errors in an operator's words: refused access, or
//! nobody answering.
//!
//! The kind of an error is read from types where the libraries give one:
//! the gRPC code, a rustls error or an I/O error kind somewhere in the
//! error's causes. Text is read only where nothing typed says it: etcd's
//! own refusals share gRPC codes and differ only in their message (etcd's
//! `rpctypes` strings), and a connection that etcd closed mid-handshake
//! reaches us from hyper and h2 only as words.

use std::error::Error as StdError;
use std::io;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use rustls::AlertDescription;
use tonic::Code;
use weft_common::tls::CertSummary;

/// Checked TLS material and credentials for etcd (see
/// `crate::flags::etcd` for the flags they come from).
#[derive(Clone, Default)]
pub struct EtcdAccess {
    tls: Option<TlsOptions>,
    user: Option<(String, String)>,
    /// The client certificate's summary, for logs.
    pub client_cert: Option<CertSummary>,
}

/// What to connect to: checked endpoints, the key prefix, and how.
#[derive(Debug, Clone)]
pub struct EtcdTarget {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub access: EtcdAccess,
}

impl std::fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAccess")
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|u| &u.0))
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

impl EtcdAccess {
    /// TLS trusting the CA in `ca_pem`, presenting `identity` (certificate
    /// and key PEM, and the certificate's summary) if given.
    pub fn with_tls(
        mut self,
        ca_pem: Vec<u8>,
        identity: Option<(Vec<u8>, Vec<u8>, CertSummary)>,
    ) -> EtcdAccess {
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(ca_pem));
        if let Some((cert, key, summary)) = identity {
            t = t.identity(Identity::from_pem(cert, key));
            self.client_cert = Some(summary);
        }
        self.tls = Some(t);
        self
    }

    /// Authenticates as etcd user `user`.
    pub fn with_user(mut self, user: String, password: String) -> EtcdAccess {
        self.user = Some((user, password));
        self
    }

    /// The etcd user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.0.as_str())
    }

    /// The etcd user's password, if any.
    pub fn password(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.1.as_str())
    }

    /// Whether TLS is used.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Adds TLS and credentials to connect options.
    pub fn apply(&self, mut opts: ConnectOptions) -> ConnectOptions {
        if let Some(t) = &self.tls {
            opts = opts.with_tls(t.clone());
        }
        if let Some((u, p)) = &self.user {
            opts = opts.with_user(u.clone(), p.clone());
        }
        opts
    }

    /// An etcd error in an operator's words when it is about access: a
    /// wrong password, auth not enabled, a refused TLS handshake. `None`
    /// otherwise.
    pub fn refusal(&self, e: &etcd_client::Error) -> Option<AccessFailure> {
        let causes = causes(e);
        let user = || self.user().unwrap_or("?").to_string();
        if let Some(s) = causes
            .iter()
            .find_map(|c| c.downcast_ref::<tonic::Status>())
        {
            if s.code() == Code::PermissionDenied {
                return Some(AccessFailure::PermissionDenied { user: user() });
            }
            // InvalidArgument and FailedPrecondition carry several of
            // etcd's refusals: its message tells which.
            let m = s.message();
            if m.contains("authentication failed") {
                return Some(AccessFailure::AuthFailed { user: user() });
            }
            if m.contains("authentication is not enabled") {
                return Some(AccessFailure::AuthNotEnabled { user: user() });
            }
            if m.contains("user name is empty") || m.contains("user name not found") {
                return Some(AccessFailure::AuthRequired);
            }
        }
        if !self.tls() {
            return None;
        }
        let no_cert = self.client_cert.is_none();
        let tls_error = causes
            .iter()
            .find_map(|c| c.downcast_ref::<rustls::Error>());
        // TLS 1.3: etcd checks the client certificate after the client
        // thinks the handshake is done, and then sends a bad-certificate
        // (or certificate-required) alert or just closes the connection;
        // which of these the client sees depends on timing (all were seen
        // in CI).
        let closed = causes.iter().any(|c| {
            c.downcast_ref::<io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                )
            }) || c
                .downcast_ref::<tonic::Status>()
                .is_some_and(|s| s.code() == Code::Cancelled)
                || c.to_string().to_lowercase().contains("connection closed")
        });
        let alert = matches!(
            tls_error,
            Some(rustls::Error::AlertReceived(
                AlertDescription::BadCertificate | AlertDescription::CertificateRequired
            ))
        ) || causes.iter().any(|c| is_alert_in_words(*c));
        if no_cert && (alert || closed) {
            return Some(AccessFailure::ClientCertRequired);
        }
        tls_error.map(|t| AccessFailure::Tls {
            detail: t.to_string(),
            hint: no_cert,
        })
    }
}

/// etcd refused access.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessFailure {
    #[error("etcd refused user {user}: authentication failed")]
    AuthFailed { user: String },
    #[error("etcd has authentication disabled but --etcd-user {user} was given")]
    AuthNotEnabled { user: String },
    #[error(
        "etcd refused user {user}: permission denied (grant the user a role on weft's prefix)"
    )]
    PermissionDenied { user: String },
    #[error("etcd requires authentication: pass --etcd-user and a password (WEFT_ETCD_PASSWORD or --etcd-password-file), or a client certificate whose name is an etcd user")]
    AuthRequired,
    #[error("etcd closed the TLS connection: it requires a client certificate (--etcd-cert and --etcd-key)")]
    ClientCertRequired,
    /// `hint`: no client certificate was given, and etcd may want one.
    #[error("TLS handshake with etcd failed: {detail}{}", if *.hint { " (etcd may require a client certificate: --etcd-cert and --etcd-key)" } else { "" })]
    Tls { detail: String, hint: bool },
}

/// An alert that h2 passed on: h2 keeps an I/O error only as its kind and
/// its text, so a rustls alert arrives as `InvalidData` with rustls's words
/// ("received fatal alert: BadCertificate"). Seen in CI.
fn is_alert_in_words(c: &(dyn StdError + 'static)) -> bool {
    c.downcast_ref::<io::Error>().is_some_and(|io| {
        let text = io.to_string();
        io.kind() == io::ErrorKind::InvalidData
            && text.contains("received fatal alert")
            && (text.contains("BadCertificate") || text.contains("CertificateRequired"))
    })
}

/// Why etcd could not be reached, if that is what `e` is: the client
/// connects lazily, so a refused connection, a failed name lookup or a
/// timeout surfaces on the first request as gRPC Unavailable,
/// DeadlineExceeded or Cancelled (tonic's request timeout). The innermost
/// cause says it best (e.g. "Connection refused (os error 111)").
pub fn unreachable_reason(e: &etcd_client::Error) -> Option<String> {
    let first = match e {
        etcd_client::Error::GRpcStatus(s)
            if matches!(
                s.code(),
                Code::Cancelled | Code::DeadlineExceeded | Code::Unavailable
            ) =>
        {
            s.message().to_string()
        }
        etcd_client::Error::TransportError(t) => t.to_string(),
        etcd_client::Error::IoError(io) => io.to_string(),
        _ => return None,
    };
    let inner = causes(e).into_iter().skip(1).last();
    Some(inner.map_or(first, |c| c.to_string()))
}

/// The error inside `e` and everything it was caused by, including the
/// errors an `io::Error` wraps (its `source()` skips them).
fn causes(e: &etcd_client::Error) -> Vec<&(dyn StdError + 'static)> {
    let mut cur: Option<&(dyn StdError + 'static)> = match e {
        etcd_client::Error::GRpcStatus(s) => Some(s),
        etcd_client::Error::TransportError(t) => Some(t),
        etcd_client::Error::IoError(io) => Some(io),
        _ => None,
    };
    let mut out = Vec::new();
    while let Some(c) = cur {
        out.push(c);
        if let Some(inner) = c.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            out.push(inner);
        }
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_access() -> EtcdAccess {
        EtcdAccess {
            tls: Some(TlsOptions::new()),
            ..EtcdAccess::default()
        }
    }

    fn status(code: Code, msg: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg))
    }

    #[test]
    fn etcd_refusals_in_words() {
        let a = EtcdAccess::default().with_user("weft".into(), "pw".into());
        let r = |e| a.refusal(&e).map(|f| f.to_string());
        assert_eq!(
            r(status(
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password"
            ))
            .as_deref(),
            Some("etcd refused user weft: authentication failed")
        );
        assert_eq!(
            r(status(Code::PermissionDenied, "etcdserver: permission denied")).as_deref(),
            Some("etcd refused user weft: permission denied (grant the user a role on weft's prefix)")
        );
        assert_eq!(
            r(status(
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled"
            ))
            .as_deref(),
            Some("etcd has authentication disabled but --etcd-user weft was given")
        );
        assert_eq!(
            a.refusal(&status(
                Code::InvalidArgument,
                "etcdserver: user name is empty"
            )),
            Some(AccessFailure::AuthRequired)
        );
        assert_eq!(
            a.refusal(&status(Code::Unavailable, "connection refused")),
            None
        );
    }

    /// Without a client certificate, each way etcd's refusal of the
    /// handshake shows is the same refusal; with TLS off none is.
    #[test]
    fn a_refused_client_certificate_in_any_form() {
        let alert = || {
            let io = io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
            );
            let mut s = tonic::Status::new(Code::Unavailable, "error trying to connect");
            s.set_source(std::sync::Arc::new(io));
            etcd_client::Error::GRpcStatus(s)
        };
        let alert_in_words = {
            let io = io::Error::new(
                io::ErrorKind::InvalidData,
                "received fatal alert: BadCertificate",
            );
            let mut s = tonic::Status::new(Code::Unknown, "transport error");
            s.set_source(std::sync::Arc::new(io));
            etcd_client::Error::GRpcStatus(s)
        };
        let forms = [
            alert(),
            alert_in_words,
            etcd_client::Error::IoError(io::Error::from(io::ErrorKind::BrokenPipe)),
            status(Code::Cancelled, "operation was canceled"),
            status(
                Code::Unknown,
                "transport error: connection closed before message completed",
            ),
        ];
        for e in &forms {
            assert_eq!(
                tls_access().refusal(e),
                Some(AccessFailure::ClientCertRequired),
                "{e}"
            );
            assert_eq!(EtcdAccess::default().refusal(e), None, "{e}");
        }
        let bad_ca = {
            let io = io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            );
            let mut s = tonic::Status::new(Code::Unavailable, "error trying to connect");
            s.set_source(std::sync::Arc::new(io));
            etcd_client::Error::GRpcStatus(s)
        };
        assert_eq!(
            tls_access().refusal(&bad_ca).map(|f| f.to_string()).as_deref(),
            Some("TLS handshake with etcd failed: invalid peer certificate: UnknownIssuer (etcd may require a client certificate: --etcd-cert and --etcd-key)")
        );
    }

    #[test]
    fn unreachable_names_the_innermost_cause() {
        let io = io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        let mut s = tonic::Status::new(Code::Unavailable, "error trying to connect");
        s.set_source(std::sync::Arc::new(io));
        assert_eq!(
            unreachable_reason(&etcd_client::Error::GRpcStatus(s)).as_deref(),
            Some("Connection refused (os error 111)")
        );
        assert_eq!(
            unreachable_reason(&status(Code::DeadlineExceeded, "timeout")).as_deref(),
            Some("timeout")
        );
        assert_eq!(
            unreachable_reason(&status(Code::InvalidArgument, "no")),
            None
        );
    }
}
