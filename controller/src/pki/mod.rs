//! The cluster PKI behind `weftctl certs`: one self-signed CA per cluster and
//! a certificate per node, signed by it, for mutual TLS between agents and
//! controllers.
//!
//! Layout of a PKI directory:
//!
//! ```text
//! PKI/ca.pem, PKI/ca-key.pem          (certs init)
//! PKI/NAME/{ca.pem,cert.pem,key.pem}  (certs issue; NAME/ is a --tls-dir)
//! ```

use std::fmt;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use weft_common::tls::io_msg;
use weft_common::validate_name;

mod files;
#[cfg(test)]
mod tests;

use files::{create_private_dir_all, stage_and_install, sync_dir, unique_suffix, write_new};

/// The CA certificate, in the PKI directory and in every node directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key; only in the PKI directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// A node's certificate, in its node directory.
pub const CERT_FILE: &str = "cert.pem";
/// A node's private key, in its node directory.
pub const KEY_FILE: &str = "key.pem";

/// Common name of the cluster CA.
pub const CA_COMMON_NAME: &str = "weft cluster CA";
/// How long the CA is valid (10 years).
pub const CA_VALIDITY: Duration = Duration::from_secs(3653 * 24 * 3600);
/// How long a node certificate is valid (1 year).
pub const NODE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// `notBefore` is set this far in the past to tolerate clock skew between hosts.
const BACKDATE: Duration = Duration::from_secs(3600);

/// What a node certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Client-only certificate (extended key usage clientAuth).
    Agent,
    /// Server and client certificate (serverAuth and clientAuth).
    Controller,
}

impl Role {
    /// The spelling used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Controller => "controller",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role other than `agent` or `controller`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected \"agent\" or \"controller\"")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(Role::Agent),
            "controller" => Ok(Role::Controller),
            _ => Err(UnknownRole(s.to_string())),
        }
    }
}

/// Creates a new cluster CA in `dir`: `ca.pem` (0644) and `ca-key.pem`
/// (0600), ECDSA P-256, valid for 10 years. `dir` is created with mode 0700
/// if missing. Refuses if either file already exists: a CA is never
/// overwritten.
pub fn init_ca(dir: &Path) -> anyhow::Result<()> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    for path in [&cert_path, &key_path] {
        if path.symlink_metadata().is_ok() {
            bail!(
                "{} already exists; refusing to overwrite the cluster CA",
                path.display()
            );
        }
    }
    create_private_dir_all(dir)?;

    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("cannot generate the CA key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, CA_VALIDITY)?;
    let cert = params
        .self_signed(&key)
        .context("cannot create the CA certificate")?;

    // Key first: if the certificate cannot be written, the key is removed
    // again and the directory is as it was.
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    if let Err(e) = write_new(&cert_path, cert.pem().as_bytes(), 0o644) {
        let _ = fs::remove_file(&key_path);
        return Err(e);
    }
    sync_dir(dir);
    Ok(())
}

/// Issues a certificate for node `name` signed by the CA in `dir` and writes
/// `dir/<name>/{ca.pem,cert.pem,key.pem}` (directory 0700, key 0600,
/// certificates 0644), valid for 1 year. Subject CN and a DNS SAN are `name`;
/// every address in `ips` is added as an IP SAN. Refuses to replace an
/// existing `dir/<name>/cert.pem` unless `force`. Returns the node directory.
pub fn issue(
    dir: &Path,
    name: &str,
    role: Role,
    ips: &[IpAddr],
    force: bool,
) -> anyhow::Result<PathBuf> {
    validate_name(name).map_err(|e| anyhow!("invalid node name: {e}"))?;
    let ca = load_ca(dir)?;

    let node_dir = dir.join(name);
    let cert_path = node_dir.join(CERT_FILE);
    if !force && cert_path.symlink_metadata().is_ok() {
        bail!(
            "{} already exists; pass --force to replace it",
            cert_path.display()
        );
    }

    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("cannot generate the node key")?;
    let mut params = CertificateParams::new(vec![name.to_string()])
        .with_context(|| format!("cannot use {name:?} as a DNS name"))?;
    params.distinguished_name = common_name(name);
    let mut seen = Vec::new();
    for ip in ips {
        if !seen.contains(ip) {
            seen.push(*ip);
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Agent => vec![ExtendedKeyUsagePurpose::ClientAuth],
        // Server only: a controller's certificate cannot be used to
        // register as a host (the controller requires clientAuth).
        Role::Controller => vec![ExtendedKeyUsagePurpose::ServerAuth],
    };
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, NODE_VALIDITY)?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .with_context(|| format!("cannot sign the certificate for {name}"))?;

    // Everything is written into a staging directory next to the node
    // directory first; only complete files are moved into place.
    let stage = dir.join(format!(".{name}.tmp-{}", unique_suffix()));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&stage)
        .with_context(|| format!("cannot create {}", stage.display()))?;
    let result = stage_and_install(
        &stage,
        &node_dir,
        &[
            (CA_CERT_FILE, ca.cert_pem.as_bytes(), 0o644),
            (KEY_FILE, key.serialize_pem().as_bytes(), 0o600),
            (CERT_FILE, cert.pem().as_bytes(), 0o644),
        ],
        (!force).then_some(CERT_FILE),
    );
    if stage.symlink_metadata().is_ok() {
        let _ = fs::remove_dir_all(&stage);
    }
    result?;
    sync_dir(dir);
    Ok(node_dir)
}

/// The cluster CA, loaded from a PKI directory.
struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn load_ca(dir: &Path) -> anyhow::Result<Ca> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let has_cert = cert_path.symlink_metadata().is_ok();
    let has_key = key_path.symlink_metadata().is_ok();
    if !has_cert && !has_key {
        let d = dir.display();
        bail!("no CA in {d}: run `weftctl certs init --dir {d}` first");
    }
    if !has_cert || !has_key {
        let missing = if has_cert { &key_path } else { &cert_path };
        bail!(
            "incomplete CA in {}: {} is missing",
            dir.display(),
            missing.display()
        );
    }

    let cert_pem = fs::read_to_string(&cert_path)
        .map_err(|e| anyhow!("cannot read {}: {}", cert_path.display(), io_msg(&e)))?;
    let key_pem = fs::read_to_string(&key_path)
        .map_err(|e| anyhow!("cannot read {}: {}", key_path.display(), io_msg(&e)))?;
    let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| anyhow!("no certificate in {}: {e}", cert_path.display()))?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| anyhow!("no usable private key in {}: {e}", key_path.display()))?;
    // The certificate embeds the CA's SubjectPublicKeyInfo verbatim.
    let spki = key.subject_public_key_info();
    if !cert_der.windows(spki.len()).any(|w| w == spki.as_slice()) {
        bail!(
            "{} does not match {}",
            key_path.display(),
            cert_path.display()
        );
    }
    let issuer = Issuer::from_ca_cert_der(&cert_der, key)
        .map_err(|e| anyhow!("cannot use {} as a CA: {e}", cert_path.display()))?;
    Ok(Ca { cert_pem, issuer })
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Valid from a little before now for `validity`.
fn set_validity(params: &mut CertificateParams, validity: Duration) -> anyhow::Result<()> {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| anyhow!("the system clock is before 1970"))?;
    let start = since_epoch.saturating_sub(BACKDATE);
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + start;
    params.not_after = epoch + since_epoch + validity;
    Ok(())
}
