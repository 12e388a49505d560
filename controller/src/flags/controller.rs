//! weft-controller's flags (each also read from `WEFT_<FLAG>`), their
//! checks, and what `--check-config` prints.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::etcd::EtcdFlags;
use crate::store::{EtcdTarget, DEFAULT_PREFIX};

/// weft-controller: subnet allocation and host registry for weft agents.
#[derive(Debug, clap::Parser)]
#[command(name = "weft-controller", version, about)]
pub struct Args {
    /// etcd client URLs, comma-separated (e.g. http://127.0.0.1:2379).
    #[arg(
        long,
        env = "WEFT_ETCD_ENDPOINTS",
        value_name = "URL[,…]",
        value_delimiter = ',',
        required = true
    )]
    pub etcd_endpoints: Vec<String>,
    /// etcd TLS and user (--etcd-ca, --etcd-cert, --etcd-key, --etcd-user, --etcd-password-file).
    #[command(flatten)]
    pub etcd: EtcdFlags,
    /// Prefix of weft's keys in etcd.
    #[arg(long, env = "WEFT_ETCD_PREFIX", value_name = "PREFIX", default_value = DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// UDP address for the agents' QUIC connections.
    #[arg(
        long,
        env = "WEFT_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:7470"
    )]
    pub listen: SocketAddr,
    /// Directory holding ca.pem, cert.pem and key.pem (from `weftctl certs issue --role controller`).
    #[arg(
        long,
        env = "WEFT_TLS_DIR",
        value_name = "DIR",
        default_value = "/etc/weft/tls"
    )]
    pub tls_dir: PathBuf,
    /// Address for Prometheus metrics and health checks.
    #[arg(long, env = "WEFT_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// How long a host keeps its subnet after its agent stops talking to every controller.
    #[arg(long, env = "WEFT_LEASE_TTL", value_name = "SECONDS", default_value_t = 86400,
          value_parser = clap::value_parser!(i64).range(2..=31_536_000))]
    pub lease_ttl: i64,
    /// Log lines as human-readable text or one JSON object per line.
    #[arg(
        long,
        env = "WEFT_LOG_FORMAT",
        value_name = "text|json",
        default_value = "text"
    )]
    pub log_format: weft_common::logging::LogFormat,
    /// Check the configuration (flags, TLS files), print it and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// The flags, checked: what the daemon starts with.
#[derive(Debug)]
pub struct Checked {
    pub etcd: EtcdTarget,
    pub metrics_listen: Option<SocketAddr>,
    pub tls: quinn::ServerConfig,
}

impl Args {
    /// Checks every flag and reads the TLS files; one sentence naming the
    /// flag on the first problem.
    pub fn check(&self) -> anyhow::Result<Checked> {
        use anyhow::Context;
        let metrics_listen = match &self.metrics_listen {
            Some(m) => Some(weft_common::http::parse_listen(m)?),
            None => None,
        };
        let etcd = super::etcd::target(
            &self.etcd_endpoints,
            &self.etcd_prefix,
            &self.etcd,
            std::env::var(super::etcd::PASSWORD_ENV).ok(),
        )
        .map_err(anyhow::Error::msg)?;
        let tls = weft_common::tls::server_config(&self.tls_dir)
            .with_context(|| format!("--tls-dir {}", self.tls_dir.display()))?;
        Ok(Checked {
            etcd,
            metrics_listen,
            tls,
        })
    }

    /// What `--check-config` prints: every setting, one JSON object.
    pub fn summary(&self, c: &Checked) -> serde_json::Value {
        serde_json::json!({
            "etcd_endpoints": self.etcd_endpoints,
            "etcd_prefix": self.etcd_prefix,
            "listen": self.listen.to_string(),
            "tls_dir": self.tls_dir,
            "lease_ttl": self.lease_ttl,
            "metrics_listen": c.metrics_listen.map(|a| a.to_string()),
            "etcd_tls": c.etcd.access.tls(),
            "etcd_user": c.etcd.access.user(),
            "etcd_ca": self.etcd.etcd_ca,
            "etcd_cert": self.etcd.etcd_cert,
            "etcd_key": self.etcd.etcd_key,
            "etcd_password_file": self.etcd.etcd_password_file,
            "log_format": self.log_format,
        })
    }
}
