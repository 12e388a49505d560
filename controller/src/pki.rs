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
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use weft_common::tls::io_msg;
use weft_common::validate_name;

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
        force,
    );
    if stage.symlink_metadata().is_ok() {
        let _ = fs::remove_dir_all(&stage);
    }
    result?;
    sync_dir(dir);
    Ok(node_dir)
}

/// Writes `files` into `stage`, then moves them to `node_dir`: by renaming
/// the whole directory if `node_dir` does not exist yet (atomic), otherwise
/// file by file (each file atomically; key before certificate).
fn stage_and_install(
    stage: &Path,
    node_dir: &Path,
    files: &[(&str, &[u8], u32)],
    force: bool,
) -> anyhow::Result<()> {
    set_mode(stage, 0o700)?;
    for (file, contents, mode) in files {
        write_file(&stage.join(file), contents, *mode)?;
    }
    sync_dir(stage);

    match node_dir.symlink_metadata() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::rename(stage, node_dir).with_context(|| {
                format!("cannot move {} to {}", stage.display(), node_dir.display())
            })?;
        }
        Err(e) => bail!("cannot inspect {}: {}", node_dir.display(), io_msg(&e)),
        Ok(meta) => {
            if !meta.is_dir() {
                bail!("{} exists and is not a directory", node_dir.display());
            }
            if !force && node_dir.join(CERT_FILE).symlink_metadata().is_ok() {
                bail!(
                    "{} already exists; pass --force to replace it",
                    node_dir.join(CERT_FILE).display()
                );
            }
            set_mode(node_dir, 0o700)?;
            for (file, _, _) in files {
                let (from, to) = (stage.join(file), node_dir.join(file));
                fs::rename(&from, &to).with_context(|| {
                    format!("cannot move {} to {}", from.display(), to.display())
                })?;
            }
            sync_dir(node_dir);
        }
    }
    Ok(())
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

/// `mkdir -p` with mode 0700 for every directory it creates.
fn create_private_dir_all(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow!("cannot create {}: {}", dir.display(), io_msg(&e)))?;
    // The umask may have removed bits; make the mode exact.
    set_mode(dir, 0o700)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| anyhow!("cannot chmod {}: {}", path.display(), io_msg(&e)))
}

/// Creates `path` (must not exist) with `mode` and `contents`, synced.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| anyhow!("cannot create {}: {}", path.display(), io_msg(&e)))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| f.write_all(contents))
        .and_then(|()| f.sync_all())
        .map_err(|e| anyhow!("cannot write {}: {}", path.display(), io_msg(&e)))
}

/// Writes `path` completely under a temporary name, then links it into place;
/// fails without touching anything if `path` appears meanwhile.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        unique_suffix()
    ));
    let result = write_file(&tmp, contents, mode).and_then(|()| {
        fs::hard_link(&tmp, path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                anyhow!(
                    "{} already exists; refusing to overwrite the cluster CA",
                    path.display()
                )
            } else {
                anyhow!("cannot create {}: {}", path.display(), io_msg(&e))
            }
        })
    });
    let _ = fs::remove_file(&tmp);
    result
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;
    use rustls_pki_types::{ServerName, UnixTime};
    use std::sync::Arc;

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("weft-pki-{tag}-{}", unique_suffix()));
            fs::create_dir(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn cert(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(ca: &Path) -> Arc<RootCertStore> {
        let mut r = RootCertStore::empty();
        r.add(cert(ca)).unwrap();
        Arc::new(r)
    }

    fn verify_as_server(ca: &Path, leaf: &Path, server_name: &str) -> Result<(), rustls::Error> {
        let v = WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap();
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        v.verify_server_cert(&cert(leaf), &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    fn verify_as_client(ca: &Path, leaf: &Path) -> Result<(), rustls::Error> {
        let v = WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap();
        v.verify_client_cert(&cert(leaf), &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn init_ca_creates_files_with_modes() {
        let t = TempDir::new("init");
        let dir = t.0.join("pki");
        init_ca(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(CA_CERT_FILE)), 0o644);
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(listing(&dir), vec!["ca-key.pem", "ca.pem"]);
        let pem = fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(
            weft_common::tls::cert_name(&cert(&dir.join(CA_CERT_FILE))).as_deref(),
            Some(CA_COMMON_NAME)
        );
        let key = fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap();
        let key = KeyPair::from_pem(&key).unwrap();
        assert_eq!(key.algorithm(), &PKCS_ECDSA_P256_SHA256);
        let issuer = Issuer::from_ca_cert_pem(&pem, key).unwrap();
        assert_eq!(
            issuer.key_usages(),
            &[KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]
        );
    }

    /// The CA carries a critical basicConstraints extension with cA=TRUE
    /// and pathLenConstraint 0 (webpki ignores a trust anchor's constraints,
    /// so this is checked on the encoding), and it signs verifiable leaves.
    #[test]
    fn ca_is_constrained_to_leaves() {
        let t = TempDir::new("pathlen");
        init_ca(&t.0).unwrap();
        let der = cert(&t.0.join(CA_CERT_FILE));
        // OID 2.5.29.19, critical, OCTET STRING { SEQUENCE { TRUE, INTEGER 0 } }
        let basic_constraints: &[u8] = &[
            0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x08, 0x30, 0x06, 0x01, 0x01,
            0xff, 0x02, 0x01, 0x00,
        ];
        assert!(der
            .windows(basic_constraints.len())
            .any(|w| w == basic_constraints));
        let leaf = issue(&t.0, "good", Role::Agent, &[], false).unwrap();
        verify_as_client(&t.0.join(CA_CERT_FILE), &leaf.join(CERT_FILE)).unwrap();
    }

    #[test]
    fn init_ca_refuses_to_overwrite() {
        let t = TempDir::new("reinit");
        init_ca(&t.0).unwrap();
        let cert_before = fs::read(t.0.join(CA_CERT_FILE)).unwrap();
        let key_before = fs::read(t.0.join(CA_KEY_FILE)).unwrap();
        let err = init_ca(&t.0).unwrap_err().to_string();
        assert!(
            err.contains(&t.0.join(CA_CERT_FILE).display().to_string()),
            "{err}"
        );
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(fs::read(t.0.join(CA_CERT_FILE)).unwrap(), cert_before);
        assert_eq!(fs::read(t.0.join(CA_KEY_FILE)).unwrap(), key_before);
        assert_eq!(listing(&t.0), vec!["ca-key.pem", "ca.pem"]);

        // A lone key counts as a CA too.
        let t2 = TempDir::new("lonekey");
        fs::write(t2.0.join(CA_KEY_FILE), b"secret").unwrap();
        let err = init_ca(&t2.0).unwrap_err().to_string();
        assert!(err.contains("ca-key.pem already exists"), "{err}");
        assert_eq!(fs::read(t2.0.join(CA_KEY_FILE)).unwrap(), b"secret");
        assert_eq!(listing(&t2.0), vec!["ca-key.pem"]);
    }

    #[test]
    fn issue_agent_and_controller() {
        let t = TempDir::new("issue");
        init_ca(&t.0).unwrap();
        let ca = t.0.join(CA_CERT_FILE);

        let agent = issue(&t.0, "node-1", Role::Agent, &[], false).unwrap();
        assert_eq!(agent, t.0.join("node-1"));
        assert_eq!(mode(&agent), 0o700);
        assert_eq!(listing(&agent), vec!["ca.pem", "cert.pem", "key.pem"]);
        assert_eq!(mode(&agent.join(CA_CERT_FILE)), 0o644);
        assert_eq!(mode(&agent.join(CERT_FILE)), 0o644);
        assert_eq!(mode(&agent.join(KEY_FILE)), 0o600);
        assert_eq!(
            fs::read(agent.join(CA_CERT_FILE)).unwrap(),
            fs::read(&ca).unwrap()
        );
        // Valid client certificate, but not usable as a server certificate.
        verify_as_client(&ca, &agent.join(CERT_FILE)).unwrap();
        assert!(verify_as_server(&ca, &agent.join(CERT_FILE), "node-1").is_err());
        assert_eq!(
            weft_common::tls::cert_name(&cert(&agent.join(CERT_FILE))).as_deref(),
            Some("node-1")
        );

        let ips: [IpAddr; 2] = ["198.18.0.10".parse().unwrap(), "::1".parse().unwrap()];
        let ctl = issue(&t.0, "ctl-1", Role::Controller, &ips, false).unwrap();
        let leaf = ctl.join(CERT_FILE);
        // A controller's certificate cannot act as an agent's.
        assert!(verify_as_client(&ca, &leaf).is_err());
        verify_as_server(&ca, &leaf, "ctl-1").unwrap();
        verify_as_server(&ca, &leaf, "198.18.0.10").unwrap();
        verify_as_server(&ca, &leaf, "::1").unwrap();
        assert!(verify_as_server(&ca, &leaf, "198.18.0.11").is_err());
        assert!(verify_as_server(&ca, &leaf, "node-1").is_err());

        // The key matches the certificate.
        let key = KeyPair::from_pem(&fs::read_to_string(ctl.join(KEY_FILE)).unwrap()).unwrap();
        let der = cert(&leaf);
        let spki = key.subject_public_key_info();
        assert!(der.windows(spki.len()).any(|w| w == spki.as_slice()));

        // Nothing but the CA and the node directories (no staging leftovers).
        assert_eq!(
            listing(&t.0),
            vec!["ca-key.pem", "ca.pem", "ctl-1", "node-1"]
        );

        // A certificate from another CA does not verify against this one.
        let other = TempDir::new("other");
        init_ca(&other.0).unwrap();
        assert!(verify_as_server(&other.0.join(CA_CERT_FILE), &leaf, "ctl-1").is_err());
        assert!(verify_as_client(&other.0.join(CA_CERT_FILE), &agent.join(CERT_FILE)).is_err());
    }

    #[test]
    fn issue_refuses_overwrite_unless_forced() {
        let t = TempDir::new("force");
        init_ca(&t.0).unwrap();
        let node = issue(&t.0, "n1", Role::Agent, &[], false).unwrap();
        let before = fs::read(node.join(CERT_FILE)).unwrap();
        let key_before = fs::read(node.join(KEY_FILE)).unwrap();
        let err = issue(&t.0, "n1", Role::Agent, &[], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&node.join(CERT_FILE).display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read(node.join(CERT_FILE)).unwrap(), before);
        assert_eq!(fs::read(node.join(KEY_FILE)).unwrap(), key_before);

        let again = issue(&t.0, "n1", Role::Controller, &[], true).unwrap();
        assert_eq!(again, node);
        assert_ne!(fs::read(node.join(CERT_FILE)).unwrap(), before);
        assert_ne!(fs::read(node.join(KEY_FILE)).unwrap(), key_before);
        assert_eq!(mode(&node.join(KEY_FILE)), 0o600);
        verify_as_server(&t.0.join(CA_CERT_FILE), &node.join(CERT_FILE), "n1").unwrap();
        assert_eq!(listing(&t.0), vec!["ca-key.pem", "ca.pem", "n1"]);
        assert_eq!(listing(&node), vec!["ca.pem", "cert.pem", "key.pem"]);
    }

    #[test]
    fn issue_refuses_bad_names_and_writes_nothing() {
        let t = TempDir::new("badname");
        init_ca(&t.0).unwrap();
        for bad in ["", "Node1", "-x", "a/b", "..", "a.b", &"x".repeat(64)] {
            let err = issue(&t.0, bad, Role::Agent, &[], true)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("invalid node name"), "{bad:?}: {err}");
            assert_eq!(listing(&t.0), vec!["ca-key.pem", "ca.pem"], "{bad:?}");
        }
    }

    #[test]
    fn issue_without_ca_is_refused() {
        let t = TempDir::new("noca");
        let err = issue(&t.0, "n1", Role::Agent, &[], false)
            .unwrap_err()
            .to_string();
        let d = t.0.display();
        assert_eq!(
            err,
            format!("no CA in {d}: run `weftctl certs init --dir {d}` first")
        );
        assert!(listing(&t.0).is_empty());

        // A CA certificate without its key is reported as such.
        fs::write(t.0.join(CA_CERT_FILE), b"x").unwrap();
        let err = issue(&t.0, "n1", Role::Agent, &[], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca-key.pem is missing"), "{err}");
    }

    #[test]
    fn issue_refuses_mismatched_ca_key() {
        let a = TempDir::new("mis-a");
        let b = TempDir::new("mis-b");
        init_ca(&a.0).unwrap();
        init_ca(&b.0).unwrap();
        fs::copy(b.0.join(CA_KEY_FILE), a.0.join(CA_KEY_FILE)).unwrap();
        let err = issue(&a.0, "n1", Role::Agent, &[], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match"), "{err}");
        assert_eq!(listing(&a.0), vec!["ca-key.pem", "ca.pem"]);
    }

    /// Certificates from `issue` work end to end with the QUIC configs in
    /// `weft_common::tls`, by DNS name and by IP SAN.
    #[tokio::test]
    async fn issued_certs_work_with_quic() {
        use std::net::Ipv4Addr;
        use weft_common::tls;

        let t = TempDir::new("quic");
        init_ca(&t.0).unwrap();
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let ctl = issue(&t.0, "ctl-1", Role::Controller, &[lo], false).unwrap();
        let agent = issue(&t.0, "node-1", Role::Agent, &[], false).unwrap();

        let server =
            quinn::Endpoint::server(tls::server_config(&ctl).unwrap(), (lo, 0).into()).unwrap();
        let addr = server.local_addr().unwrap();
        let accept = {
            let server = server.clone();
            tokio::spawn(async move {
                let mut names = Vec::new();
                for _ in 0..2 {
                    let conn = server.accept().await.unwrap().await.unwrap();
                    names.push(tls::peer_name(&conn));
                }
                names
            })
        };
        let client = quinn::Endpoint::client((lo, 0).into()).unwrap();
        let config = tls::client_config(&agent).unwrap();
        // Kept open until the server has seen both handshakes complete.
        let mut conns = Vec::new();
        for server_name in ["ctl-1", "127.0.0.1"] {
            let conn = tokio::time::timeout(
                Duration::from_secs(10),
                client
                    .connect_with(config.clone(), addr, server_name)
                    .unwrap(),
            )
            .await
            .expect("handshake timed out")
            .unwrap_or_else(|e| panic!("connecting to {server_name}: {e}"));
            assert_eq!(tls::peer_name(&conn).as_deref(), Some("ctl-1"));
            conns.push(conn);
        }
        let names = tokio::time::timeout(Duration::from_secs(10), accept)
            .await
            .expect("accept timed out")
            .unwrap();
        assert_eq!(names, vec![Some("node-1".into()), Some("node-1".into())]);
        drop(conns);
        client.close(0u32.into(), b"");
        server.close(0u32.into(), b"");
    }

    #[test]
    fn role_round_trips() {
        for r in [Role::Agent, Role::Controller] {
            assert_eq!(r.to_string().parse::<Role>().unwrap(), r);
        }
        assert_eq!("agent".parse::<Role>().unwrap(), Role::Agent);
        assert_eq!("controller".parse::<Role>().unwrap(), Role::Controller);
        assert!("Agent".parse::<Role>().is_err());
        assert!("server".parse::<Role>().is_err());
    }
}
