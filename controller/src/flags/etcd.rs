//! The etcd flags both binaries take, and their checks: `--etcd-endpoints`
//! and `--etcd-prefix`, TLS with the CA that signed etcd's server
//! certificate, an optional client certificate (`--client-cert-auth` on
//! etcd), and an etcd user whose password never appears on a command line.
//!
//! Everything is checked before the first connection, and each problem is
//! one sentence naming the flag and the file or value. The clap fields of
//! `--etcd-endpoints` and `--etcd-prefix` differ between the binaries (the
//! controller requires endpoints, `weftctl` defaults them), their checks
//! do not: [`target`].

use std::path::{Path, PathBuf};

use weft_common::tls::{self, CertSummary};

use crate::store::{EtcdAccess, EtcdTarget};

/// The environment variable holding the etcd password.
pub const PASSWORD_ENV: &str = "WEFT_ETCD_PASSWORD";

/// Checks `--etcd-endpoints` and `--etcd-prefix` and resolves the etcd TLS
/// and user flags (the password from `--etcd-password-file`, else from
/// `password_env`, the value of `WEFT_ETCD_PASSWORD`), in that order.
pub fn target(
    endpoints: &[String],
    prefix: &str,
    flags: &EtcdFlags,
    password_env: Option<String>,
) -> Result<EtcdTarget, String> {
    check_endpoints(endpoints)?;
    check_prefix(prefix)?;
    let access = flags.resolve(endpoints, password_env)?;
    Ok(EtcdTarget {
        endpoints: endpoints.to_vec(),
        prefix: prefix.to_string(),
        access,
    })
}

/// Every endpoint is an http:// or https:// URL of a host (a name or an
/// address) and a port. A `$(VAR)` left in one (a Kubernetes variable
/// that was not defined when the pod started) is named as such: retrying
/// it would never work.
pub fn check_endpoints(endpoints: &[String]) -> Result<(), String> {
    for e in endpoints {
        let bad = |why: &str| {
            Err(format!(
                "--etcd-endpoints {e:?}: {why}expected a URL like http://127.0.0.1:2379"
            ))
        };
        let Some(rest) = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"))
        else {
            return bad("");
        };
        if e.contains("$(") {
            return bad("it holds an unexpanded $(VARIABLE) (in Kubernetes: the Service it names did not exist when the pod started); ");
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let host_ok = |h: &str| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        };
        match weft_common::client::split_host_port(authority) {
            Some((host, _)) if host_ok(host) => {}
            _ => return bad("not HOST:PORT after the scheme; "),
        }
    }
    Ok(())
}

/// The prefix is an absolute key prefix.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') || prefix.len() < 2 {
        return Err(format!(
            "--etcd-prefix {prefix:?}: expected an absolute key prefix like /weft"
        ));
    }
    Ok(())
}

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
            let ca_pem = read(ca, "--etcd-ca")?;
            let identity = match (&self.etcd_cert, &self.etcd_key) {
                (Some(cert), Some(key)) => {
                    let summary = check_pair(cert, key)?;
                    Some((
                        read(cert, "--etcd-cert")?,
                        read(key, "--etcd-key")?,
                        summary,
                    ))
                }
                _ => None,
            };
            access = access.with_tls(ca_pem, identity);
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
                access = access.with_user(u.clone(), p);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> EtcdFlags {
        EtcdFlags::default()
    }

    #[test]
    fn endpoints_and_prefix_are_checked_first() {
        let e = target(&["notaurl".into()], "/weft", &flags(), None).unwrap_err();
        assert_eq!(
            e,
            "--etcd-endpoints \"notaurl\": expected a URL like http://127.0.0.1:2379"
        );
        let e = target(&["http://etcd".into()], "/weft", &flags(), None).unwrap_err();
        assert!(e.contains("not HOST:PORT"), "{e}");
        let e = target(
            &["http://$(WEFT_ETCD_SERVICE_HOST):12379".into()],
            "/weft",
            &flags(),
            None,
        )
        .unwrap_err();
        assert!(e.contains("unexpanded $(VARIABLE)"), "{e}");
        for ok in [
            "http://etcd-0.weft-etcd:2379",
            "https://[2001:db8::1]:2379/",
            "http://10.0.0.1:2379",
        ] {
            assert_eq!(check_endpoints(&[ok.to_string()]), Ok(()), "{ok}");
        }
        let e = target(&["http://127.0.0.1:2379".into()], "weft", &flags(), None).unwrap_err();
        assert_eq!(
            e,
            "--etcd-prefix \"weft\": expected an absolute key prefix like /weft"
        );
        let t = target(&["http://127.0.0.1:2379".into()], "/w", &flags(), None).unwrap();
        assert_eq!(t.prefix, "/w");
        assert!(!t.access.tls());
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
        assert_eq!(a.password(), Some("s3cret"));
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
