use super::files::unique_suffix;
use super::*;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{ServerName, UnixTime};
use std::os::unix::fs::PermissionsExt;
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
        0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x08, 0x30, 0x06, 0x01, 0x01, 0xff,
        0x02, 0x01, 0x00,
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
