//! Command line, environment (`WEFT_<FLAG>`) and config file, merged in that
//! order of precedence, then checked.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use ipnetwork::Ipv4Network;
use serde::Deserialize;
use weft_common::logging::LogFormat;
use weft_common::validate_name;

use crate::model::MAX_POOL;

/// weft-agent: builds this host's bridge, namespaces, NAT and published ports.
#[derive(Debug, Parser, Default)]
#[command(name = "weft-agent", version, about)]
pub struct Args {
    /// TOML file with any of the options below (keys as the long flags, e.g. `node-name = "h1"`).
    #[arg(long, env = "WEFT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This host's name in the cluster [default: the hostname].
    #[arg(long, env = "WEFT_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Controllers to register with (HOST:PORT, comma-separated).
    #[arg(
        long,
        env = "WEFT_CONTROLLER",
        value_name = "HOST:PORT[,…]",
        value_delimiter = ','
    )]
    pub controller: Option<Vec<String>>,
    /// Run a single host on its own with this subnet (no controller), e.g. 10.244.1.0/24.
    #[arg(long, env = "WEFT_SUBNET", value_name = "CIDR")]
    pub subnet: Option<String>,
    /// Interface towards the other hosts [default: the one holding the default route].
    #[arg(long, env = "WEFT_UNDERLAY_IFACE", value_name = "IFACE")]
    pub underlay_iface: Option<String>,
    /// This host's address on the underlay [default: the underlay interface's].
    #[arg(long, env = "WEFT_PUBLIC_IP", value_name = "IP")]
    pub public_ip: Option<IpAddr>,
    /// Directory holding ca.pem, cert.pem, key.pem for the controller link.
    #[arg(long, env = "WEFT_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Where the agent persists its state [default: /var/lib/weft].
    #[arg(long, env = "WEFT_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where the agent's socket lives [default: /run/weft].
    #[arg(long, env = "WEFT_RUN_DIR", value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Where namespaces are bind-mounted [default: /run/netns, as `ip netns` uses].
    #[arg(long, env = "WEFT_NETNS_DIR", value_name = "DIR")]
    pub netns_dir: Option<PathBuf>,
    /// Route directly to peers on the same L2 segment instead of tunnelling.
    #[arg(long, env = "WEFT_DIRECT_ROUTING", value_parser = clap::builder::BoolishValueParser::new())]
    pub direct_routing: bool,
    /// Spare namespaces kept ready so that `ns add` only names and addresses one (0: none) [default: 4].
    #[arg(long, env = "WEFT_NS_POOL", value_name = "N")]
    pub ns_pool: Option<usize>,
    /// Address for Prometheus metrics and health checks.
    #[arg(long, env = "WEFT_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Log lines as human-readable text or one JSON object per line [default: text].
    #[arg(long, env = "WEFT_LOG_FORMAT", value_name = "text|json")]
    pub log_format: Option<LogFormat>,
    /// Check the configuration, print it and exit without changing anything.
    #[arg(long)]
    pub check_config: bool,
}

/// The config file: the same options as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    node_name: Option<String>,
    controller: Option<Vec<String>>,
    subnet: Option<String>,
    underlay_iface: Option<String>,
    public_ip: Option<IpAddr>,
    tls_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    netns_dir: Option<PathBuf>,
    direct_routing: Option<bool>,
    ns_pool: Option<usize>,
    metrics_listen: Option<String>,
    log_format: Option<LogFormat>,
}

/// How the agent serves: a host on its own, or part of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `--subnet`: this host's subnet, no controller.
    Standalone { subnet: Ipv4Network },
    /// `--controller`: the subnet comes from a controller.
    Cluster(ClusterConfig),
}

/// The settings of cluster mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `--controller` addresses, at least one.
    pub controllers: Vec<String>,
    pub tls_dir: PathBuf,
    pub public_ip: Option<Ipv4Addr>,
    /// Plain routes instead of VXLAN to peers on the same L2 segment.
    pub direct_routing: bool,
}

/// The checked configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub mode: Mode,
    pub underlay_iface: Option<String>,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub netns_dir: PathBuf,
    /// Spare namespaces to keep ready (`--ns-pool`).
    pub ns_pool: usize,
    /// `--metrics-listen`: where /metrics, /healthz and /readyz answer.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `--log-format`.
    pub log_format: LogFormat,
}

impl Config {
    pub fn socket_path(&self) -> PathBuf {
        self.run_dir.join("agent.sock")
    }

    /// What `--check-config` prints: one key per flag, every key in either
    /// mode (`subnet` null in a cluster, `controllers` empty standalone).
    pub fn printed(&self) -> serde_json::Value {
        let (subnet, cluster) = match &self.mode {
            Mode::Standalone { subnet } => (Some(*subnet), None),
            Mode::Cluster(c) => (None, Some(c)),
        };
        serde_json::json!({
            "node_name": self.node_name,
            "subnet": subnet,
            "controllers": cluster.map(|c| c.controllers.clone()).unwrap_or_default(),
            "tls_dir": cluster.map_or_else(|| PathBuf::from(DEFAULT_TLS_DIR), |c| c.tls_dir.clone()),
            "public_ip": cluster.and_then(|c| c.public_ip),
            "underlay_iface": self.underlay_iface,
            "direct_routing": cluster.is_some_and(|c| c.direct_routing),
            "state_dir": self.state_dir,
            "run_dir": self.run_dir,
            "netns_dir": self.netns_dir,
            "ns_pool": self.ns_pool,
            "metrics_listen": self.metrics_listen,
            "log_format": self.log_format,
        })
    }
}

/// `--tls-dir` unless given.
pub const DEFAULT_TLS_DIR: &str = "/etc/weft/tls";

/// Spare namespaces kept by default: enough for a burst of a few `ns add`,
/// few enough that their bridge ports and memory do not matter.
pub const DEFAULT_NS_POOL: usize = 4;

pub fn resolve(args: Args) -> Result<Config> {
    let file = match &args.config {
        Some(p) => load_file(p)?,
        None => FileConfig::default(),
    };
    let controllers = args.controller.or(file.controller).unwrap_or_default();
    let tls_dir = args.tls_dir.or(file.tls_dir);
    let metrics = args.metrics_listen.or(file.metrics_listen);
    let direct = args.direct_routing || file.direct_routing.unwrap_or(false);
    let public_ip = args.public_ip.or(file.public_ip);
    let ns_pool = args.ns_pool.or(file.ns_pool).unwrap_or(DEFAULT_NS_POOL);
    let log_format = args.log_format.or(file.log_format).unwrap_or_default();
    if ns_pool > MAX_POOL {
        bail!("--ns-pool {ns_pool}: at most {MAX_POOL} spare namespaces");
    }
    let metrics_listen = match metrics {
        Some(m) => Some(weft_common::http::parse_listen(&m)?),
        None => None,
    };
    let public_ip = match public_ip {
        None => None,
        Some(IpAddr::V4(ip))
            if !ip.is_unspecified() && !ip.is_multicast() && !ip.is_broadcast() =>
        {
            Some(ip)
        }
        Some(ip) => {
            bail!("--public-ip {ip}: expected this host's IPv4 unicast address on the underlay")
        }
    };
    for c in &controllers {
        if weft_common::client::split_controller(c).is_none() {
            bail!("--controller {c:?}: expected HOST:PORT or NAME@HOST:PORT, e.g. 198.18.0.2:7470");
        }
    }
    let node_name = match args.node_name.or(file.node_name) {
        Some(n) => {
            validate_name(&n).context("invalid --node-name")?;
            n
        }
        None => {
            let h = hostname()?;
            validate_name(&h).with_context(|| {
                format!("the hostname {h:?} is not a valid node name; set --node-name")
            })?;
            h
        }
    };

    let mode = match (args.subnet.or(file.subnet), controllers.is_empty()) {
        (Some(_), false) => bail!(
            "--subnet and --controller exclude each other: with a controller, the subnet comes from the cluster"
        ),
        (None, true) => bail!(
            "either --controller HOST:PORT (cluster mode) or --subnet CIDR (standalone) is required"
        ),
        (Some(_), true) if tls_dir.is_some() || public_ip.is_some() || direct => {
            bail!("--tls-dir, --public-ip and --direct-routing only apply with --controller")
        }
        (Some(s), true) => Mode::Standalone {
            subnet: parse_subnet(&s)?,
        },
        (None, false) => Mode::Cluster(ClusterConfig {
            controllers,
            tls_dir: tls_dir.unwrap_or_else(|| DEFAULT_TLS_DIR.into()),
            public_ip,
            direct_routing: direct,
        }),
    };

    Ok(Config {
        node_name,
        mode,
        underlay_iface: args.underlay_iface.or(file.underlay_iface),
        state_dir: args
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| "/var/lib/weft".into()),
        run_dir: args
            .run_dir
            .or(file.run_dir)
            .unwrap_or_else(|| "/run/weft".into()),
        netns_dir: args
            .netns_dir
            .or(file.netns_dir)
            .unwrap_or_else(|| "/run/netns".into()),
        ns_pool,
        metrics_listen,
        log_format,
    })
}

fn load_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read config file {}", path.display()))?;
    toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), e.message()))
}

fn hostname() -> Result<String> {
    let h = nix::unistd::gethostname().context("read hostname")?;
    let h = h.to_string_lossy().to_ascii_lowercase();
    Ok(h.split('.').next().unwrap_or_default().to_string())
}

/// A host subnet: an IPv4 network address with room for the gateway and at
/// least one namespace.
pub fn parse_subnet(s: &str) -> Result<Ipv4Network> {
    let net: Ipv4Network = s
        .parse()
        .map_err(|_| anyhow::anyhow!("--subnet {s:?} is not an IPv4 CIDR like 10.244.1.0/24"))?;
    if net.network() != net.ip() {
        bail!(
            "--subnet {s}: host bits are set; did you mean {}/{}?",
            net.network(),
            net.prefix()
        );
    }
    if net.prefix() > 30 {
        bail!(
            "--subnet {s}: a /{} leaves no address for namespaces; use /30 or shorter",
            net.prefix()
        );
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_errors_name_the_value() {
        assert!(parse_subnet("10.244.1.0/24").is_ok());
        let e = parse_subnet("10.244.1.5/24").unwrap_err().to_string();
        assert!(e.contains("10.244.1.0/24"), "{e}");
        assert!(parse_subnet("10.244.1.0/31")
            .unwrap_err()
            .to_string()
            .contains("/31"));
        assert!(parse_subnet("nope")
            .unwrap_err()
            .to_string()
            .contains("\"nope\""));
    }

    #[test]
    fn file_and_flags_merge() {
        let dir = std::env::temp_dir().join(format!("weft-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("agent.toml");
        std::fs::write(
            &f,
            "node-name = \"h7\"\nsubnet = \"10.244.7.0/24\"\nstate-dir = \"/x\"\n",
        )
        .unwrap();
        let args = Args {
            config: Some(f.clone()),
            state_dir: Some("/y".into()),
            ..Default::default()
        };
        let c = resolve(args).unwrap();
        assert_eq!(c.node_name, "h7");
        assert_eq!(
            c.mode,
            Mode::Standalone {
                subnet: "10.244.7.0/24".parse().unwrap()
            }
        );
        assert_eq!(c.state_dir, PathBuf::from("/y"));
        assert_eq!(c.netns_dir, PathBuf::from("/run/netns"));
        std::fs::write(&f, "node-nam = \"h7\"\n").unwrap();
        let e = resolve(Args {
            config: Some(f),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("node-nam"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ns_pool_defaults_and_bounds() {
        let args = |n: Option<usize>| Args {
            node_name: Some("h1".into()),
            subnet: Some("10.244.1.0/24".into()),
            ns_pool: n,
            ..Default::default()
        };
        assert_eq!(resolve(args(None)).unwrap().ns_pool, DEFAULT_NS_POOL);
        assert_eq!(resolve(args(Some(0))).unwrap().ns_pool, 0);
        let e = resolve(args(Some(65))).unwrap_err().to_string();
        assert!(e.contains("--ns-pool 65") && e.contains("64"), "{e}");
    }

    #[test]
    fn check_config_prints_every_key_in_either_mode() {
        let standalone = resolve(Args {
            node_name: Some("h1".into()),
            subnet: Some("10.244.1.0/24".into()),
            ..Default::default()
        })
        .unwrap()
        .printed();
        let cluster = resolve(Args {
            node_name: Some("h1".into()),
            controller: Some(vec!["198.18.0.2:7470".into()]),
            direct_routing: true,
            ..Default::default()
        })
        .unwrap()
        .printed();
        let keys =
            |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&standalone), keys(&cluster));
        assert_eq!(standalone["subnet"], "10.244.1.0/24");
        assert_eq!(standalone["controllers"], serde_json::json!([]));
        assert!(cluster["subnet"].is_null());
        assert_eq!(
            cluster["controllers"],
            serde_json::json!(["198.18.0.2:7470"])
        );
        assert_eq!(cluster["direct_routing"], true);
        assert_eq!(cluster["tls_dir"], DEFAULT_TLS_DIR);
    }
}
