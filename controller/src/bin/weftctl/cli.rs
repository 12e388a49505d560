//! weftctl's command line (clap): global flags and one enum per command
//! group.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use ipnetwork::Ipv4Network;
use weft_common::agent_client::DEFAULT_SOCKET;
use weft_common::labels::LabelEdit;
use weft_common::PortMapping;
use weft_controller::flags::etcd::EtcdFlags;
use weft_controller::pki::Role;
use weft_controller::store::DEFAULT_PREFIX;

#[derive(Debug, clap::Parser)]
#[command(
    name = "weftctl",
    version,
    about = "Operate weft: the cluster (certificates, network, hosts, subnets), namespaces on this host, and the local agent's status"
)]
pub struct Cli {
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table",
        env = "WEFT_OUTPUT"
    )]
    pub output: Output,
    /// The local agent's socket.
    #[arg(
        long,
        global = true,
        env = "WEFT_AGENT_SOCKET",
        default_value = DEFAULT_SOCKET,
        value_name = "PATH"
    )]
    pub agent_socket: PathBuf,
    /// etcd client URLs, comma-separated (cluster, host and subnet commands).
    #[arg(
        long,
        global = true,
        env = "WEFT_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ',',
        value_name = "URL[,…]"
    )]
    pub etcd_endpoints: Vec<String>,
    /// Prefix of weft's keys in etcd.
    #[arg(
        long,
        global = true,
        env = "WEFT_ETCD_PREFIX",
        default_value = DEFAULT_PREFIX,
        value_name = "PREFIX"
    )]
    pub etcd_prefix: String,
    /// etcd TLS and user (cluster, host and subnet commands).
    #[command(flatten)]
    pub etcd: EtcdFlags,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Namespaces on this host.
    #[command(subcommand)]
    Ns(NsCommand),
    /// The local agent: node, subnet, controller link, peers and whether each is reachable through the tunnel.
    Status {
        /// Report the state only: do not probe the peers (no waiting for unreachable ones).
        #[arg(long, env = "WEFT_NO_PROBE", value_parser = clap::builder::BoolishValueParser::new())]
        no_probe: bool,
    },
    /// The cluster CA and node certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// The cluster's network config in etcd.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Hosts registered in etcd.
    #[command(subcommand)]
    Host(HostCommand),
    /// Host subnets: who holds which, reservations.
    #[command(subcommand)]
    Subnet(SubnetCommand),
    /// Network policies in etcd: who may talk to whom (enforcement is not built yet).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Print a shell completion script, e.g. `weftctl completions bash > /etc/bash_completion.d/weftctl`.
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create the cluster CA: DIR/ca.pem and DIR/ca-key.pem (never overwrites).
    Init {
        #[arg(long, value_name = "PKI")]
        dir: PathBuf,
    },
    /// Issue a node certificate signed by the CA: DIR/NAME/{ca.pem,cert.pem,key.pem}.
    Issue {
        #[arg(long, value_name = "PKI")]
        dir: PathBuf,
        /// The node name (agents must register under this name).
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: Role,
        /// An address the certificate is valid for (controllers: every address agents dial); may be repeated.
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// Replace an existing certificate for NAME.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Write the network config (cidr and subnet-len cannot change while hosts hold subnets).
    Init {
        /// The cluster CIDR all host subnets come from, e.g. 10.244.0.0/16.
        #[arg(long)]
        cidr: Ipv4Network,
        /// Prefix length of each host's subnet.
        #[arg(long, default_value_t = weft_common::cluster::DEFAULT_SUBNET_LEN)]
        subnet_len: u8,
        /// VXLAN network identifier.
        #[arg(long, default_value_t = weft_common::cluster::DEFAULT_VNI)]
        vni: u32,
        /// VXLAN UDP port.
        #[arg(long, default_value_t = weft_common::cluster::DEFAULT_PORT)]
        port: u16,
        /// Overlay MTU [default: each host's underlay MTU − 50].
        #[arg(long)]
        mtu: Option<u32>,
    },
    /// Show the network config.
    Show,
    /// Write the config, every subnet and every host record (one etcd revision) as one JSON document.
    Backup {
        /// Write it here (atomically) instead of to stdout.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Write a backup into an empty prefix; each host gets a fresh lease and keeps its subnet if its agent returns.
    Restore {
        /// The backup (`-`: stdin).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Lease of each restored host: how long it keeps its subnet if its agent does not return.
        #[arg(long, value_name = "SECONDS", default_value_t = 86400,
              value_parser = clap::value_parser!(i64).range(2..=31_536_000))]
        lease_ttl: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// List registered hosts.
    #[command(alias = "ls")]
    List,
    /// Show one host.
    Show { name: String },
    /// Remove a host: frees its subnet (a reservation stays) and drops it from every agent's peers.
    #[command(alias = "del")]
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create or replace the policies in FILE (YAML or JSON; one policy, a
    /// list, or several YAML documents), all checked before any is written.
    Apply {
        /// The file, or - for standard input.
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
    },
    /// List the policies.
    #[command(alias = "ls")]
    List,
    /// Show one policy as it is stored.
    Show { name: String },
    /// Delete a policy.
    #[command(alias = "rm")]
    Delete { name: String },
    /// Say whether FROM may open a connection to TO, and which policy and
    /// rule decide, from the policies and the endpoints agents reported.
    /// FROM and TO: HOST/NAME, a NAME only one host has, or an IPv4
    /// address. Without PORT/PROTO: traffic without ports (a ping).
    Explain {
        from: String,
        to: String,
        /// `80/tcp`, `53/udp`, `80` (TCP).
        #[arg(value_name = "PORT/PROTO")]
        traffic: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SubnetCommand {
    /// List held and reserved subnets.
    #[command(alias = "ls")]
    List,
    /// Keep a subnet out of allocation, or pin it to a host with --host.
    Reserve {
        cidr: Ipv4Network,
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
    },
    /// Free a reservation.
    Release { cidr: Ipv4Network },
}

#[derive(Debug, Subcommand)]
pub enum NsCommand {
    /// Create a namespace attached to this host's bridge.
    Add {
        name: String,
        /// Address to give it [default: the next free one of the host subnet].
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// Publish a port: [HOSTIP:]HOSTPORT:PORT[/tcp|/udp]; may be repeated.
        #[arg(long, short = 'p', value_name = "SPEC")]
        publish: Vec<PortMapping>,
        /// A label: KEY=VALUE (Kubernetes label syntax); may be repeated.
        #[arg(long, short = 'l', value_name = "KEY=VALUE")]
        label: Vec<LabelEdit>,
    },
    /// Set labels (KEY=VALUE) and remove them (KEY-) on a namespace or a
    /// container's attachment, all at once or not at all.
    Label {
        name: String,
        #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
        edits: Vec<LabelEdit>,
    },
    /// Delete a namespace, its interfaces and its published ports.
    #[command(alias = "rm")]
    Del { name: String },
    /// List the namespaces of this host.
    #[command(alias = "ls")]
    List,
    /// Show one namespace.
    Show { name: String },
    /// Run a command inside a namespace; its exit code is passed through.
    Exec {
        name: String,
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
}
