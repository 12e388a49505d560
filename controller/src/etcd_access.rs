//! How the controller and `weftctl` reach a secured etcd: TLS with the CA
//! that signed etcd's server certificate, an optional client certificate
//! (`--client-cert-auth` on etcd), and an etcd user whose password never
//! appears on a command line.
//!
//! Everything is checked before the first connection, and each problem is
//! one sentence naming the flag and the file or value.

use std::path::{Path, PathBuf};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use weft_common::tls::{self, CertSummary};

/// The environment variable holding the etcd password.
pub const PASSWORD_ENV: &str = "WEFT_ETCD_PASSWORD";

/// Flags for a secured etcd (flattened into the controller's and
/// `weftctl`'s arguments; global, so `weftctl` takes them before or after
/// the subcommand).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EtcdFlags {
    /// CA certificate (PEM) that signed etcd's server certificate; needed for https:// endpoints.
    #[arg(long, global = true, env = "WEFT_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth; needs --etcd-key.
    #[arg(long, global = true, env = "WEFT_ETCD_CERT", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert.
    #[arg(long, global = true, env = "WEFT_ETCD_KEY", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user (etcd auth); the password comes from WEFT_ETCD_PASSWORD or --etcd-password-file.
    #[arg(long, global = true, env = "WEFT_ETCD_USER", value_name = "NAME")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password (one line).
    #[arg(
        long,
        global = true,
        env = "WEFT_ETCD_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub etcd_password_file: Option<PathBuf>,
    /// Refused: a password on the command line is visible to every user.
    #[arg(long, global = true, hide = true, value_name = "PASSWORD")]
    pub etcd_password: Option<String>,
}

/// Checked TLS material and credentials for etcd.
#[derive(Clone, Default)]
pub struct EtcdAccess {
    tls: Option<TlsOptions>,
    user: Option<(String, String)>,
    /// The client certificate's summary, for logs.
    pub client_cert: Option<CertSummary>,
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
    /// The etcd user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.0.as_str())
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
}

impl EtcdFlags {
    /// Checks the flags against the endpoints and reads every file. The
    /// password comes from `--etcd-password-file` or, failing that, from
    /// `password_env` (the value of `WEFT_ETCD_PASSWORD`).
    pub fn resolve(
        &self,
        endpoints: &[String],
        password_env: Option<String>,
    ) -> Result<EtcdAccess, String> {
        if self.etcd_password.is_some() {
            return Err(format!(
                "--etcd-password: a password on the command line is visible to every user of this host (ps, /proc); put it in {PASSWORD_ENV} or in a file for --etcd-password-file"
            ));
        }
        let https = endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https > 0 && https < endpoints.len() {
            return Err(format!(
                "--etcd-endpoints {}: mixes http:// and https:// URLs; use https:// for every member",
                endpoints.join(",")
            ));
        }
        let https = https > 0;
        let mut access = EtcdAccess::default();
        match (&self.etcd_cert, &self.etcd_key) {
            (Some(c), None) => {
                return Err(format!(
                    "--etcd-cert {} needs --etcd-key (the certificate's private key)",
                    c.display()
                ))
            }
            (None, Some(k)) => {
                return Err(format!(
                    "--etcd-key {} needs --etcd-cert (the client certificate)",
                    k.display()
                ))
            }
            _ => {}
        }
        if !https {
            if let Some(f) = [
                ("--etcd-ca", &self.etcd_ca),
                ("--etcd-cert", &self.etcd_cert),
            ]
            .into_iter()
            .find_map(|(flag, v)| v.as_ref().map(|_| flag))
            {
                return Err(format!(
                    "{f} is for TLS, but --etcd-endpoints {} are not https:// URLs",
                    endpoints.join(",")
                ));
            }
        }
        if https {
            let Some(ca) = &self.etcd_ca else {
                return Err(format!(
                    "--etcd-endpoints {}: https:// needs --etcd-ca FILE (the CA that signed etcd's server certificate)",
                    endpoints.join(",")
                ));
            };
            tls::load_certs(ca).map_err(|e| format!("--etcd-ca: {e}"))?;
            let mut t =
                TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca, "--etcd-ca")?));
            if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
                access.client_cert = Some(check_pair(cert, key)?);
                t = t.identity(Identity::from_pem(
                    read(cert, "--etcd-cert")?,
                    read(key, "--etcd-key")?,
                ));
            }
            access.tls = Some(t);
        }
        let password = match &self.etcd_password_file {
            Some(f) => {
                let raw = std::fs::read_to_string(f).map_err(|e| {
                    format!(
                        "--etcd-password-file: cannot read {}: {}",
                        f.display(),
                        tls::io_msg(&e)
                    )
                })?;
                let p = raw.strip_suffix('\n').unwrap_or(&raw);
                let p = p.strip_suffix('\r').unwrap_or(p).to_string();
                if p.is_empty() {
                    return Err(format!("--etcd-password-file {} is empty", f.display()));
                }
                if p.contains('\n') {
                    return Err(format!(
                        "--etcd-password-file {}: more than one line (the password is the file's one line)",
                        f.display()
                    ));
                }
                Some(p)
            }
            None => password_env.filter(|p| !p.is_empty()),
        };
        match (&self.etcd_user, password) {
            (Some(u), Some(p)) => {
                if u.is_empty() {
                    return Err("--etcd-user: empty user name".into());
                }
                access.user = Some((u.clone(), p));
            }
            (Some(u), None) => {
                return Err(format!(
                    "--etcd-user {u} needs a password: set {PASSWORD_ENV} or --etcd-password-file FILE"
                ))
            }
            (None, Some(_)) => {
                return Err(format!(
                    "an etcd password is set ({PASSWORD_ENV} or --etcd-password-file) but no --etcd-user"
                ))
            }
            (None, None) => {}
        }
        Ok(access)
    }
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "{flag}: cannot read {}: {}",
            path.display(),
            tls::io_msg(&e)
        )
    })
}

/// The client certificate and key: readable, belonging together, valid now.
fn check_pair(cert: &Path, key: &Path) -> Result<CertSummary, String> {
    let certs = tls::load_certs(cert).map_err(|e| format!("--etcd-cert: {e}"))?;
    let k = tls::load_key(key).map_err(|e| format!("--etcd-key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(k)
        .map_err(|e| format!("--etcd-key: unusable private key in {}: {e}", key.display()))?;
    rustls::sign::CertifiedKey::new(certs.clone(), signing)
        .keys_match()
        .map_err(|_| {
            format!(
                "--etcd-key {} does not match --etcd-cert {}",
                key.display(),
                cert.display()
            )
        })?;
    let summary = CertSummary::of(&certs[0]).ok_or_else(|| {
        format!(
            "--etcd-cert: {} is not an X.509 certificate",
            cert.display()
        )
    })?;
    if summary.expired() {
        return Err(format!(
            "--etcd-cert {}: certificate {} expired at {}",
            cert.display(),
            summary.name,
            summary.valid_until()
        ));
    }
    Ok(summary)
}

/// An etcd error in an operator's words when it is about access: a wrong
/// password, auth not enabled, a refused TLS handshake. `None` otherwise.
pub fn access_error(e: &etcd_client::Error, access: &EtcdAccess) -> Option<String> {
    use std::error::Error;
    let mut texts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        texts.push(c.to_string());
        cause = c.source();
    }
    let all = texts.join(": ");
    let user = access.user().unwrap_or("?");
    if all.contains("authentication failed") {
        return Some(format!("etcd refused user {user}: authentication failed"));
    }
    if all.contains("authentication is not enabled") {
        return Some(format!(
            "etcd has authentication disabled but --etcd-user {user} was given"
        ));
    }
    if all.contains("permission denied") {
        return Some(format!(
            "etcd refused user {user}: permission denied (grant the user a role on weft's prefix)"
        ));
    }
    if all.contains("user name is empty") || all.contains("user name not found") {
        return Some("etcd requires authentication: pass --etcd-user and a password (WEFT_ETCD_PASSWORD or --etcd-password-file), or a client certificate whose name is an etcd user".to_string());
    }
    let lower = all.to_lowercase();
    // TLS 1.3: etcd checks the client certificate after the client thinks
    // the handshake is done, and then sends a bad-certificate alert or just
    // closes the connection; which of these the client sees depends on
    // timing (all three were seen in CI).
    if access.tls()
        && access.client_cert.is_none()
        && (lower.contains("connection closed")
            || lower.contains("cancel")
            || lower.contains("broken pipe")
            || lower.contains("connection reset")
            || lower.contains("badcertificate")
            || lower.contains("bad certificate")
            || lower.contains("certificaterequired")
            || lower.contains("certificate required"))
    {
        return Some(
            "etcd closed the TLS connection: it requires a client certificate (--etcd-cert and --etcd-key)"
                .to_string(),
        );
    }
    if access.tls()
        && (lower.contains("certificate") || lower.contains("tls") || lower.contains("alert"))
    {
        let inner = texts.last().cloned().unwrap_or_default();
        let hint = if access.client_cert.is_none() {
            " (etcd may require a client certificate: --etcd-cert and --etcd-key)"
        } else {
            ""
        };
        return Some(format!("TLS handshake with etcd failed: {inner}{hint}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> EtcdFlags {
        EtcdFlags::default()
    }

    #[test]
    fn plain_http_needs_nothing() {
        let a = flags()
            .resolve(&["http://127.0.0.1:2379".into()], None)
            .unwrap();
        assert!(!a.tls() && a.user().is_none());
    }

    #[test]
    fn refusals_name_the_flag() {
        let https = vec!["https://10.0.0.1:2379".to_string()];
        let http = vec!["http://10.0.0.1:2379".to_string()];
        let e = flags().resolve(&https, None).unwrap_err();
        assert!(e.contains("https:// needs --etcd-ca"), "{e}");
        let mixed = vec![https[0].clone(), http[0].clone()];
        let e = flags().resolve(&mixed, None).unwrap_err();
        assert!(e.contains("mixes http:// and https://"), "{e}");
        let f = EtcdFlags {
            etcd_ca: Some("/nonexistent/ca.pem".into()),
            ..flags()
        };
        let e = f.resolve(&http, None).unwrap_err();
        assert!(e.starts_with("--etcd-ca is for TLS"), "{e}");
        let e = f.resolve(&https, None).unwrap_err();
        assert_eq!(
            e,
            "--etcd-ca: cannot read /nonexistent/ca.pem: No such file or directory"
        );
        let f = EtcdFlags {
            etcd_cert: Some("/x/c.pem".into()),
            ..flags()
        };
        let e = f.resolve(&https, None).unwrap_err();
        assert_eq!(
            e,
            "--etcd-cert /x/c.pem needs --etcd-key (the certificate's private key)"
        );
        let f = EtcdFlags {
            etcd_password: Some("hunter2".into()),
            ..flags()
        };
        let e = f.resolve(&http, None).unwrap_err();
        assert!(e.contains("visible to every user"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let f = EtcdFlags {
            etcd_user: Some("weft".into()),
            ..flags()
        };
        let e = f.resolve(&http, None).unwrap_err();
        assert!(e.starts_with("--etcd-user weft needs a password"), "{e}");
        let a = f.resolve(&http, Some("pw".into())).unwrap();
        assert_eq!(a.user(), Some("weft"));
        assert!(!format!("{a:?}").contains("pw\""), "{a:?}");
        let e = flags().resolve(&http, Some("pw".into())).unwrap_err();
        assert!(e.contains("no --etcd-user"), "{e}");
    }

    #[test]
    fn password_file_is_one_line() {
        let dir = std::env::temp_dir().join(format!("weft-etcd-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let f = EtcdFlags {
            etcd_user: Some("weft".into()),
            etcd_password_file: Some(p.clone()),
            ..flags()
        };
        let a = f
            .resolve(&["http://127.0.0.1:2379".into()], Some("ignored".into()))
            .unwrap();
        assert_eq!(a.user.as_ref().unwrap().1, "s3cret");
        std::fs::write(&p, "").unwrap();
        let e = f
            .resolve(&["http://127.0.0.1:2379".into()], None)
            .unwrap_err();
        assert!(e.ends_with("is empty"), "{e}");
        std::fs::write(&p, "s3cret\nextra\n").unwrap();
        let e = f
            .resolve(&["http://127.0.0.1:2379".into()], None)
            .unwrap_err();
        assert!(e.contains("more than one line"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
