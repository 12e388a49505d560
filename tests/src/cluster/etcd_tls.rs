//! A TLS etcd with client-certificate auth and etcd users, for
//! [`LabOpts::etcd_tls`](crate::LabOpts):
//!
//! ```text
//!   <lab>/etcd-pki/ca.pem, ca-key.pem     its own CA (not the cluster CA)
//!   <lab>/etcd-pki/etcd/{cert,key}.pem    server: CN etcd, IP SAN 198.18.0.2
//!   <lab>/etcd-pki/weft/{cert,key}.pem    client: CN weft (controllers, weftctl)
//!   <lab>/etcd-pki/weft.password          the etcd user weft's password
//!   <lab>/etcd-pki/root.password          the etcd user root's password
//! ```
//!
//! etcd listens on `https://198.18.0.2:2379` with `--client-cert-auth`;
//! auth is enabled with a `root` user and a `weft` user whose role `weft`
//! may read and write the `/weft` prefix only. Every lab path that talks to
//! etcd (readiness check, controllers, [`Lab::weftctl_etcd`],
//! [`Lab::etcd_dump`]) uses [`Lab::etcd_client_flags`] or
//! [`Lab::etcdctl_flags`].

pub use crate::registry::EtcdTls;
use std::path::PathBuf;
use std::process::Output;

use anyhow::{bail, Context, Result};

use crate::bin_path;
use crate::lab::Lab;
use crate::netns::{self, command_in, describe_status, SpawnOpts};

/// The etcd user controllers and `weftctl` log in as.
pub const ETCD_USER: &str = "weft";

impl EtcdTls {
    /// The etcd CA certificate (what `--etcd-ca` takes).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// etcd's server certificate directory.
    pub fn server(&self) -> PathBuf {
        self.dir.join("etcd")
    }
    /// The client certificate directory of controllers and `weftctl`.
    pub fn client(&self) -> PathBuf {
        self.dir.join(ETCD_USER)
    }
    /// The `weft` user's password file (`--etcd-password-file`).
    pub fn password_file(&self) -> PathBuf {
        self.dir.join("weft.password")
    }
    /// The `root` user's password file.
    pub fn root_password_file(&self) -> PathBuf {
        self.dir.join("root.password")
    }
    /// The `weft` user's password.
    pub fn password(&self) -> String {
        std::fs::read_to_string(self.password_file())
            .expect("etcd password file")
            .trim()
            .to_string()
    }
}

/// 24 hex digits from /dev/urandom.
fn random_password() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("read /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn write_secret(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    writeln!(f, "{text}").with_context(|| format!("write {}", path.display()))
}

impl Lab {
    /// The TLS etcd's material, if this lab runs one.
    pub fn etcd_tls(&self) -> Option<EtcdTls> {
        self.cluster_info().etcd_tls
    }

    /// `weftctl ARGS…` in the control namespace with no etcd flags added.
    pub fn weftctl_plain(&self, args: &[&str]) -> Output {
        self.weftctl_env(args, &[])
    }

    /// `weftctl ARGS…` in the control namespace with exactly `args` (no
    /// etcd flags added) and the variables `env` set.
    pub fn weftctl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.weftctl_run(args, env, None)
    }

    /// [`Lab::weftctl_env`] with `input` on its stdin (else none).
    pub(crate) fn weftctl_run(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        input: Option<&[u8]>,
    ) -> Output {
        let bin = bin_path("weftctl");
        let mut c = command_in(
            self.control(),
            &bin,
            SpawnOpts {
                own_group: true,
                ..Default::default()
            },
        )
        .expect("control namespace");
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        netns::run_with_input(&mut c, input, netns::EXEC_TIMEOUT).expect("run weftctl")
    }

    /// [`Lab::weftctl_plain`], or an error naming the command, its exit
    /// and its stderr; its stdout if it succeeds.
    pub(crate) fn try_weftctl_plain(&self, args: &[&str]) -> Result<String> {
        let out = self.weftctl_plain(args);
        if !out.status.success() {
            bail!(
                "weftctl {} failed ({}): {}",
                args.join(" "),
                describe_status(&out.status),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// [`Lab::weftctl_plain`], panicking (with its stderr) unless it
    /// succeeds; its stdout.
    pub fn weftctl_plain_ok(&self, args: &[&str]) -> String {
        self.try_weftctl_plain(args)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Creates the etcd PKI and passwords (first start of a TLS lab).
    pub(crate) fn make_etcd_pki(&self) -> Result<EtcdTls> {
        let t = EtcdTls {
            dir: self.dir.join("etcd-pki"),
        };
        let dir = t.dir.display().to_string();
        let ip = crate::cluster::ETCD_IP.to_string();
        for args in [
            vec!["certs", "init", "--dir", &dir],
            // serverAuth, IP SAN of etcd.
            vec![
                "certs",
                "issue",
                "--dir",
                &dir,
                "--name",
                "etcd",
                "--role",
                "controller",
                "--ip",
                &ip,
            ],
            // clientAuth, CN weft (etcd maps a certificate's CN to a user).
            vec![
                "certs", "issue", "--dir", &dir, "--name", ETCD_USER, "--role", "agent",
            ],
        ] {
            self.try_weftctl_plain(&args)?;
        }
        write_secret(&t.password_file(), &random_password()?)?;
        write_secret(&t.root_password_file(), &random_password()?)?;
        Ok(t)
    }

    /// `--etcd-endpoints` for weft's binaries and etcdctl: https:// with
    /// a TLS etcd.
    pub fn etcd_client_endpoints(&self) -> String {
        let eps = self.etcd_endpoints();
        match self.etcd_tls() {
            Some(_) => eps.replace("http://", "https://"),
            None => eps,
        }
    }

    /// Flags for `weft-controller` and `weftctl` to reach this lab's etcd
    /// (empty without TLS).
    pub fn etcd_client_flags(&self) -> Vec<String> {
        let Some(t) = self.etcd_tls() else {
            return Vec::new();
        };
        let p = |p: PathBuf| p.display().to_string();
        vec![
            "--etcd-ca".into(),
            p(t.ca()),
            "--etcd-cert".into(),
            p(t.client().join("cert.pem")),
            "--etcd-key".into(),
            p(t.client().join("key.pem")),
            "--etcd-user".into(),
            ETCD_USER.into(),
            "--etcd-password-file".into(),
            p(t.password_file()),
        ]
    }

    /// Flags for etcdctl as `root` (empty without TLS).
    pub fn etcdctl_flags(&self) -> Vec<String> {
        let Some(t) = self.etcd_tls() else {
            return Vec::new();
        };
        let root = std::fs::read_to_string(t.root_password_file()).expect("root password");
        let mut f = self.etcdctl_tls_flags();
        f.push(format!("--user=root:{}", root.trim()));
        f
    }

    /// etcdctl's TLS flags with the client certificate, no user (empty
    /// without TLS): enough for `endpoint health` and before auth is on.
    pub fn etcdctl_tls_flags(&self) -> Vec<String> {
        let Some(t) = self.etcd_tls() else {
            return Vec::new();
        };
        let p = |p: PathBuf| p.display().to_string();
        vec![
            format!("--cacert={}", p(t.ca())),
            format!("--cert={}", p(t.client().join("cert.pem"))),
            format!("--key={}", p(t.client().join("key.pem"))),
        ]
    }

    /// etcd's own flags for TLS (empty without TLS).
    pub(crate) fn etcd_server_flags(&self) -> Vec<String> {
        let Some(t) = self.etcd_tls() else {
            return Vec::new();
        };
        let p = |p: PathBuf| p.display().to_string();
        vec![
            "--cert-file".into(),
            p(t.server().join("cert.pem")),
            "--key-file".into(),
            p(t.server().join("key.pem")),
            "--trusted-ca-file".into(),
            p(t.ca()),
            "--client-cert-auth".into(),
        ]
    }

    /// `etcdctl --endpoints … <TLS and root flags> ARGS…` in the control
    /// namespace.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let eps = self.etcd_client_endpoints();
        let flags = self.etcdctl_flags();
        let mut cmd: Vec<&str> = vec!["etcdctl", "--endpoints", &eps];
        cmd.extend(flags.iter().map(String::as_str));
        cmd.extend_from_slice(args);
        self.exec(self.control(), &cmd)
    }

    /// Users `root` and `weft` (role `weft`: read and write `/weft`), then
    /// `auth enable`. Once per lab: the data dir keeps it.
    pub(crate) fn enable_etcd_auth(&self) -> Result<()> {
        let Some(t) = self.etcd_tls() else {
            return Ok(());
        };
        let root = std::fs::read_to_string(t.root_password_file())?;
        let root = format!("root:{}", root.trim());
        let weft = format!("{ETCD_USER}:{}", t.password());
        let steps: Vec<Vec<&str>> = vec![
            vec!["user", "add", &root],
            vec!["user", "add", &weft],
            vec!["role", "add", ETCD_USER],
            vec![
                "role",
                "grant-permission",
                ETCD_USER,
                "--prefix=true",
                "readwrite",
                "/weft",
            ],
            vec!["user", "grant-role", ETCD_USER, ETCD_USER],
            vec!["auth", "enable"],
        ];
        let eps = self.etcd_client_endpoints();
        // Before auth is enabled no user is needed; the client certificate is.
        let tls = self.etcdctl_tls_flags();
        for step in steps {
            let mut cmd: Vec<&str> = vec!["etcdctl", "--endpoints", &eps];
            cmd.extend(tls.iter().map(String::as_str));
            cmd.extend(step.iter().copied());
            let out = self.exec(self.control(), &cmd);
            if !out.status.success() {
                bail!(
                    "etcdctl {} failed: {}",
                    step.first().copied().unwrap_or_default(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }
}
