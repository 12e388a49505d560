//! weftctl: the operator's command line for weft.
//!
//! Talks to the local agent over its Unix socket (`ns …`, `status`). Every
//! error is one sentence on stderr and a non-zero exit; with `-o json` it is
//! also `{"error": "..."}` on stdout.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ipnetwork::Ipv4Network;
use serde_json::Value;
use weft_common::api::{Endpoint, Request, Response, Status};
use weft_common::cluster::{HostRecord, NetworkConfig, SubnetRecord};
use weft_common::PortMapping;
use weft_controller::backup;
use weft_controller::pki::{self, Role};
use weft_controller::presence::{self, AgentPresence};
use weft_controller::store::{Store, StoreError};

#[derive(Debug, Parser)]
#[command(
    name = "weftctl",
    version,
    about = "Operate weft: the cluster (certificates, network, hosts, subnets), namespaces on this host, and the local agent's status"
)]
struct Cli {
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table",
        env = "WEFT_OUTPUT"
    )]
    output: Output,
    /// The local agent's socket.
    #[arg(
        long,
        global = true,
        env = "WEFT_AGENT_SOCKET",
        default_value = "/run/weft/agent.sock",
        value_name = "PATH"
    )]
    agent_socket: PathBuf,
    /// etcd client URLs, comma-separated (cluster, host and subnet commands).
    #[arg(
        long,
        global = true,
        env = "WEFT_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ',',
        value_name = "URL[,…]"
    )]
    etcd_endpoints: Vec<String>,
    /// Prefix of weft's keys in etcd.
    #[arg(
        long,
        global = true,
        env = "WEFT_ETCD_PREFIX",
        default_value = "/weft",
        value_name = "PREFIX"
    )]
    etcd_prefix: String,
    /// etcd TLS and user (cluster, host and subnet commands).
    #[command(flatten)]
    etcd: weft_controller::etcd_access::EtcdFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// Print a shell completion script, e.g. `weftctl completions bash > /etc/bash_completion.d/weftctl`.
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
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
enum ClusterCommand {
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
enum HostCommand {
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
enum SubnetCommand {
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
enum NsCommand {
    /// Create a namespace attached to this host's bridge.
    Add {
        name: String,
        /// Address to give it [default: the next free one of the host subnet].
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// Publish a port: [HOSTIP:]HOSTPORT:PORT[/tcp|/udp]; may be repeated.
        #[arg(long, short = 'p', value_name = "SPEC")]
        publish: Vec<PortMapping>,
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

/// Longest reply weftctl reads from the agent.
const MAX_REPLY: u64 = 256 << 20;

/// A failure to report: one sentence, and the exit code.
struct Failure(String, u8);

fn main() -> ExitCode {
    let json_requested = json_in_args();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            let first = weft_controller::one_line(&e);
            return fail(
                json_requested,
                &Failure(format!("{first} (see weftctl --help)"), 2),
            );
        }
    };
    let json = cli.output == Output::Json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => fail(json, &f),
    }
}

/// Whether `-o json` was asked for, read before clap (so argument errors
/// come out as JSON too).
fn json_in_args() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .any(|w| (w[0] == "-o" || w[0] == "--output") && w[1] == "json")
        || args.iter().any(|a| a == "-ojson" || a == "--output=json")
        || std::env::var("WEFT_OUTPUT").is_ok_and(|v| v == "json")
}

fn fail(json: bool, f: &Failure) -> ExitCode {
    let msg = f.0.trim_end_matches('.').to_string();
    eprintln!("weftctl: {msg}");
    if json {
        println!("{}", serde_json::json!({ "error": msg }));
    }
    ExitCode::from(f.1)
}

fn run(cli: Cli) -> Result<(), Failure> {
    let json = cli.output == Output::Json;
    let agent = Agent {
        socket: cli.agent_socket,
    };
    let etcd = Etcd {
        endpoints: cli.etcd_endpoints,
        prefix: cli.etcd_prefix,
        flags: cli.etcd,
    };
    match cli.command {
        Command::Completions { shell } => {
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "weftctl", &mut std::io::stdout());
            Ok(())
        }
        Command::Certs(c) => certs(json, c),
        Command::Cluster(c) => {
            // A restore's document is read and checked before etcd is
            // contacted.
            let doc = match &c {
                ClusterCommand::Restore { file, .. } => Some(read_backup(file)?),
                _ => None,
            };
            etcd.run(|s| cluster(json, s, c, doc))
        }
        Command::Host(c) => etcd.run(|s| host(json, s, c)),
        Command::Subnet(c) => etcd.run(|s| subnet(json, s, c)),
        Command::Ns(NsCommand::Add { name, ip, publish }) => {
            let v = agent.call(&Request::NsAdd { name, ip, publish })?;
            print_endpoints(json, &[decode::<Endpoint>(&v)?], &v)
        }
        Command::Ns(NsCommand::Del { name }) => {
            let v = agent.call(&Request::NsDel { name: name.clone() })?;
            if json {
                println!("{v}");
            } else {
                println!("deleted namespace {name}");
            }
            Ok(())
        }
        Command::Ns(NsCommand::List) => {
            let v = agent.call(&Request::NsList)?;
            print_endpoints(json, &decode::<Vec<Endpoint>>(&v)?, &v)
        }
        Command::Ns(NsCommand::Show { name }) => {
            let v = agent.call(&Request::NsShow { name })?;
            print_endpoints(json, &[decode::<Endpoint>(&v)?], &v)
        }
        Command::Ns(NsCommand::Exec { name, cmd }) => {
            let v = agent.call(&Request::NsShow { name })?;
            let ep: Endpoint = decode(&v)?;
            exec_in(&ep, &cmd)
        }
        Command::Status { no_probe } => {
            let v = agent.call(&Request::Status { probe: !no_probe })?;
            let s: Status = decode(&v)?;
            if json {
                println!("{v}");
            } else {
                print_status(&s);
            }
            Ok(())
        }
    }
}

struct Agent {
    socket: PathBuf,
}

impl Agent {
    fn call(&self, req: &Request) -> Result<Value, Failure> {
        let path = self.socket.display();
        let stream = UnixStream::connect(&self.socket).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                return Failure(
                    format!("permission denied on {path}: weftctl must run as root (the agent socket is 0600 root)"),
                    1,
                );
            }
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    " (is weft-agent running? --agent-socket sets the path)"
                }
                _ => "",
            };
            Failure(format!("cannot reach weft-agent at {path}: {e}{hint}"), 1)
        })?;
        // Generous: ns add and del touch the kernel and nftables.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
        let mut line = serde_json::to_vec(req).map_err(|e| Failure(e.to_string(), 1))?;
        line.push(b'\n');
        (&stream)
            .write_all(&line)
            .map_err(|e| Failure(format!("send request to weft-agent at {path}: {e}"), 1))?;
        let mut reply = Vec::new();
        // Replies grow with the number of namespaces: bounded far above any
        // real listing, so only a runaway peer hits it.
        let mut rd = BufReader::new(std::io::Read::take(&stream, MAX_REPLY));
        rd.read_until(b'\n', &mut reply)
            .map_err(|e| Failure(format!("read reply from weft-agent at {path}: {e}"), 1))?;
        if reply.is_empty() {
            return Err(Failure(
                format!("weft-agent at {path} closed the connection without answering"),
                1,
            ));
        }
        match serde_json::from_slice::<Response>(&reply) {
            Ok(Response::Ok(v)) => Ok(v),
            Ok(Response::Error(e)) => Err(Failure(e, 1)),
            Err(e) => Err(Failure(
                format!("unreadable reply from weft-agent at {path}: {e}"),
                1,
            )),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, Failure> {
    serde_json::from_value(v.clone())
        .map_err(|e| Failure(format!("unexpected reply from weft-agent: {e}"), 1))
}

fn print_endpoints(json: bool, eps: &[Endpoint], raw: &Value) -> Result<(), Failure> {
    if json {
        println!("{raw}");
        return Ok(());
    }
    let rows: Vec<[String; 5]> = eps
        .iter()
        .map(|e| {
            let publish: Vec<String> = e.publish.iter().map(|p| p.to_string()).collect();
            [
                e.name.clone(),
                e.ip.to_string(),
                e.mac.to_string(),
                if publish.is_empty() {
                    "-".into()
                } else {
                    publish.join(",")
                },
                e.netns.clone(),
            ]
        })
        .collect();
    print_table(["NAME", "IP", "MAC", "PUBLISH", "NETNS"], &rows);
    Ok(())
}

fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths: [usize; N] = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn print_status(s: &Status) {
    println!("node:        {}", s.node);
    println!(
        "subnet:      {} (gateway {} on {}, mtu {})",
        s.subnet, s.gateway, s.bridge, s.mtu
    );
    println!("namespaces:  {}", s.endpoints);
    let now = weft_controller::store::now();
    let since = |t: Option<u64>| match t {
        Some(t) => format!(" since {}", span(now.saturating_sub(t))),
        None => String::new(),
    };
    let c = &s.controller;
    match (c.connected, &c.address) {
        (true, Some(a)) => println!("controller:  connected to {a}{}", since(c.since)),
        (false, Some(a)) => println!(
            "controller:  DISCONNECTED{} (last tried {a}; the data plane stays as it is, the agent keeps retrying)",
            since(c.since)
        ),
        (_, None) if c.since.is_some() => println!(
            "controller:  none reached yet, DISCONNECTED{}",
            since(c.since)
        ),
        _ => println!("controller:  none (standalone)"),
    }
    if s.peers.is_empty() {
        println!("peers:       none");
        return;
    }
    let down = s
        .peers
        .iter()
        .filter(|p| p.reachable == Some(false))
        .count();
    let probed = s.peers.iter().any(|p| p.reachable.is_some());
    match (probed, down) {
        (false, _) => println!("peers:       {} (not probed)", s.peers.len()),
        (true, 0) => println!("peers:       {}, all reachable", s.peers.len()),
        (true, d) => println!("peers:       {}, {d} UNREACHABLE", s.peers.len()),
    }
    let rows: Vec<[String; 6]> = s
        .peers
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.subnet.clone(),
                p.public_ip.to_string(),
                p.mode.clone(),
                match p.reachable {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "-".into(),
                },
                match p.rtt_ms {
                    Some(ms) => format!("{ms:.2} ms"),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    print_table(
        ["NAME", "SUBNET", "PUBLIC-IP", "MODE", "REACHABLE", "RTT"],
        &rows,
    );
}

/// A duration in the largest whole unit: `45s`, `3m`, `5h`, `2d`.
fn span(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// Enters the endpoint's network namespace and replaces this process with
/// `cmd`, so its exit code is the command's own.
fn exec_in(ep: &Endpoint, cmd: &[String]) -> Result<(), Failure> {
    use nix::sched::{setns, CloneFlags};
    let ns = std::fs::File::open(&ep.netns)
        .map_err(|e| Failure(format!("open namespace {}: {e}", ep.netns), 1))?;
    setns(&ns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| Failure(format!("enter namespace {}: {e}", ep.netns), 1))?;
    let args: Vec<CString> = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| Failure("command contains a NUL byte".into(), 2))?;
    let err = nix::unistd::execvp(&args[0], &args).unwrap_err();
    let code = if err == nix::Error::ENOENT { 127 } else { 126 };
    Err(Failure(
        format!(
            "cannot run {:?} in namespace {}: {}",
            cmd[0],
            ep.name,
            err.desc()
        ),
        code,
    ))
}

fn certs(json: bool, c: CertsCommand) -> Result<(), Failure> {
    match c {
        CertsCommand::Init { dir } => {
            pki::init_ca(&dir).map_err(|e| Failure(format!("{e:#}"), 1))?;
            let ca = dir.join("ca.pem");
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ca": ca, "ca_key": dir.join("ca-key.pem")})
                );
            } else {
                println!(
                    "created cluster CA {} (key {}, keep it offline)",
                    ca.display(),
                    dir.join("ca-key.pem").display()
                );
            }
            Ok(())
        }
        CertsCommand::Issue {
            dir,
            name,
            role,
            ip,
            force,
        } => {
            let out = pki::issue(&dir, &name, role, &ip, force)
                .map_err(|e| Failure(format!("{e:#}"), 1))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "name": name, "role": role.as_str(), "dir": out,
                        "ips": ip.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                    })
                );
            } else {
                println!(
                    "issued {role} certificate for {name} in {} (ca.pem, cert.pem, key.pem)",
                    out.display()
                );
            }
            Ok(())
        }
    }
}

/// etcd access for the cluster, host and subnet commands.
struct Etcd {
    endpoints: Vec<String>,
    prefix: String,
    flags: weft_controller::etcd_access::EtcdFlags,
}

impl Etcd {
    fn run<F, Fut>(&self, f: F) -> Result<(), Failure>
    where
        F: FnOnce(Store) -> Fut,
        Fut: std::future::Future<Output = Result<(), Failure>>,
    {
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(Failure(
                    format!("--etcd-endpoints {e:?}: expected a URL like http://127.0.0.1:2379"),
                    2,
                ));
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.len() < 2 {
            return Err(Failure(
                format!(
                    "--etcd-prefix {:?}: expected an absolute key prefix like /weft",
                    self.prefix
                ),
                2,
            ));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure(format!("start runtime: {e}"), 1))?;
        let access = self
            .flags
            .resolve(
                &self.endpoints,
                std::env::var(weft_controller::etcd_access::PASSWORD_ENV).ok(),
            )
            .map_err(|e| Failure(e, 2))?;
        let eps = self.endpoints.join(",");
        let _ = ETCD_ENDPOINTS.set(eps.clone());
        let _ = ETCD_ACCESS.set(access.clone());
        rt.block_on(async {
            let store = Store::connect_with(
                &self.endpoints,
                &self.prefix,
                Duration::from_secs(5),
                &access,
            )
            .await
            .map_err(|e| match &e {
                // The client connects lazily: failing here means a URL it cannot use.
                StoreError::Etcd(etcd_client::Error::InvalidUri(u)) => Failure(
                    format!("--etcd-endpoints {eps:?}: not a usable URL ({u})"),
                    2,
                ),
                StoreError::Refused(why) => Failure(format!("{why} (etcd at {eps})"), 1),
                _ => Failure(
                    format!("cannot reach etcd at {eps}: {}", etcd_reason(&e)),
                    1,
                ),
            })?;
            f(store).await
        })
    }
}

fn etcd_reason(e: &StoreError) -> String {
    let s = e.to_string();
    s.strip_prefix("etcd: ").unwrap_or(&s).to_string()
}

/// The `--etcd-endpoints` of this run, for error messages.
static ETCD_ENDPOINTS: OnceLock<String> = OnceLock::new();
/// The etcd TLS and user of this run, for error messages.
static ETCD_ACCESS: OnceLock<weft_controller::etcd_access::EtcdAccess> = OnceLock::new();

/// Why etcd could not be reached, if that is what `e` is: the client
/// connects lazily, so a refused connection, a failed name lookup or a
/// timeout surfaces on the first request as gRPC Unavailable,
/// DeadlineExceeded or Cancelled (tonic's request timeout).
fn unreachable_reason(e: &etcd_client::Error) -> Option<String> {
    use std::error::Error;
    let (mut why, mut cause) = match e {
        etcd_client::Error::GRpcStatus(s) if matches!(s.code() as i32, 1 | 4 | 14) => {
            (s.message().to_string(), s.source())
        }
        etcd_client::Error::TransportError(t) => (t.to_string(), t.source()),
        etcd_client::Error::IoError(io) => (io.to_string(), io.source()),
        _ => return None,
    };
    // The innermost cause says it best (e.g. "Connection refused (os error 111)").
    while let Some(c) = cause {
        why = c.to_string();
        cause = c.source();
    }
    Some(why)
}

fn store_err(e: StoreError) -> Failure {
    if let StoreError::Etcd(err) = &e {
        let access = ETCD_ACCESS.get().cloned().unwrap_or_default();
        if let Some(why) = weft_controller::etcd_access::access_error(err, &access) {
            return Failure(
                format!(
                    "{why} (etcd at {})",
                    ETCD_ENDPOINTS.get().map_or("?", String::as_str)
                ),
                1,
            );
        }
    }
    match &e {
        StoreError::Etcd(err) => match unreachable_reason(err) {
            Some(why) => Failure(
                format!(
                    "cannot reach etcd at {}: {why}",
                    ETCD_ENDPOINTS.get().map_or("?", String::as_str)
                ),
                1,
            ),
            None => Failure(format!("etcd request failed: {}", etcd_reason(&e)), 1),
        },
        _ => Failure(e.to_string(), 1),
    }
}

fn backup_err(e: backup::BackupError) -> Failure {
    use backup::BackupError as B;
    match e {
        B::Store(e) => store_err(e),
        B::Etcd(e) => store_err(StoreError::Etcd(e)),
        B::Invalid(_) | B::NotEmpty { .. } => Failure(e.to_string(), 2),
        other => Failure(other.to_string(), 1),
    }
}

/// Reads and checks a backup document before anything talks to etcd.
fn read_backup(file: &std::path::Path) -> Result<backup::Backup, Failure> {
    let name = file.display();
    let text = if file.as_os_str() == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .map_err(|e| Failure(format!("read backup from stdin: {e}"), 1))?;
        t
    } else {
        std::fs::read_to_string(file).map_err(|e| Failure(format!("read backup {name}: {e}"), 1))?
    };
    let b: backup::Backup = serde_json::from_str(&text)
        .map_err(|e| Failure(format!("backup {name} is not a weft backup: {e}"), 2))?;
    backup::check(&b).map_err(|e| Failure(format!("backup {name} refused: {e}"), 2))?;
    Ok(b)
}

/// `doc`: the backup a restore writes, already read and checked.
async fn cluster(
    json: bool,
    store: Store,
    c: ClusterCommand,
    doc: Option<backup::Backup>,
) -> Result<(), Failure> {
    match c {
        ClusterCommand::Backup { file } => {
            let b = backup::take(&store).await.map_err(backup_err)?;
            let doc = serde_json::to_string_pretty(&b).expect("backup serializes") + "\n";
            let summary = format!(
                "backed up {} at revision {}: config, {} hosts, {} subnets",
                b.prefix,
                b.revision,
                b.hosts.len(),
                b.subnets.len()
            );
            match file {
                None => {
                    print!("{doc}");
                    eprintln!("weftctl: {summary}");
                }
                Some(f) => {
                    // FILE.tmp beside it, renamed over FILE once complete.
                    let mut tmp = f.clone().into_os_string();
                    tmp.push(".tmp");
                    let tmp = PathBuf::from(tmp);
                    std::fs::write(&tmp, &doc)
                        .and_then(|_| std::fs::rename(&tmp, &f))
                        .map_err(|e| {
                            let _ = std::fs::remove_file(&tmp);
                            Failure(format!("write backup {}: {e}", f.display()), 1)
                        })?;
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "file": f, "prefix": b.prefix, "revision": b.revision,
                                "hosts": b.hosts.len(), "subnets": b.subnets.len(),
                            })
                        );
                    } else {
                        println!("{summary} → {}", f.display());
                    }
                }
            }
            Ok(())
        }
        ClusterCommand::Restore { file, lease_ttl } => {
            let b = match doc {
                Some(b) => b,
                None => read_backup(&file)?,
            };
            let r = backup::restore(&store, &b, lease_ttl)
                .await
                .map_err(backup_err)?;
            if json {
                println!("{}", serde_json::to_string(&r).expect("summary serializes"));
            } else {
                println!(
                    "restored {} hosts and {} subnets into {} (backup of {} at revision {}); each host keeps its subnet for {} s unless its agent returns",
                    r.hosts, r.subnets, r.prefix, b.prefix, b.revision, r.lease_ttl
                );
            }
            Ok(())
        }
        ClusterCommand::Init {
            cidr,
            subnet_len,
            vni,
            port,
            mtu,
        } => {
            let cfg = NetworkConfig {
                cidr,
                subnet_len,
                vni,
                port,
                mtu,
            };
            cfg.validate().map_err(|e| Failure(e.to_string(), 2))?;
            let old = store.init_config(&cfg).await.map_err(store_err)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&cfg).expect("config serializes")
                );
            } else {
                match old {
                    Some(o) if o == cfg => println!("cluster config unchanged"),
                    Some(_) => {
                        println!("updated cluster config; agents apply it when they next register")
                    }
                    None => println!("initialised cluster"),
                }
                print_config(&cfg, None);
            }
            Ok(())
        }
        ClusterCommand::Show => {
            let cfg = store.require_config().await.map_err(store_err)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&cfg).expect("config serializes")
                );
            } else {
                let held = store.subnets().await.map_err(store_err)?.len();
                print_config(&cfg, Some(held));
            }
            Ok(())
        }
    }
}

fn print_config(cfg: &NetworkConfig, held: Option<usize>) {
    println!("cidr:        {}", cfg.cidr);
    match held {
        Some(h) => println!(
            "subnet-len:  {} ({} subnets, {h} held or reserved)",
            cfg.subnet_len,
            cfg.subnet_count()
        ),
        None => println!(
            "subnet-len:  {} ({} subnets)",
            cfg.subnet_len,
            cfg.subnet_count()
        ),
    }
    println!("vni:         {}", cfg.vni);
    println!("port:        {}", cfg.port);
    match cfg.mtu {
        Some(m) => println!("mtu:         {m}"),
        None => println!("mtu:         derived (each host's underlay MTU - 50)"),
    }
}

/// A host record with whether its agent is connected (`<prefix>/agents/`):
/// the record's keys plus `connected`, `controller` (the controller it is
/// connected to, or null) and `connected_since` (unix seconds, or null);
/// `last_seen` is now while connected, else when its last session ended
/// (or it registered).
fn host_json(h: &HostRecord, p: Option<&AgentPresence>, now: u64) -> Value {
    let mut v = serde_json::to_value(h).expect("host serializes");
    let o = v.as_object_mut().expect("host record is an object");
    o.insert("connected".into(), Value::Bool(p.is_some()));
    o.insert(
        "controller".into(),
        p.map_or(Value::Null, |p| Value::String(p.controller.clone())),
    );
    o.insert(
        "connected_since".into(),
        p.map_or(Value::Null, |p| Value::from(p.since)),
    );
    if p.is_some() {
        o.insert("last_seen".into(), Value::from(now));
    }
    v
}

fn last_seen(h: &HostRecord, p: Option<&AgentPresence>, now: u64) -> String {
    match p {
        Some(_) => "now".into(),
        None => ago(now.saturating_sub(h.last_seen)),
    }
}

fn print_hosts(json: bool, hosts: &[HostRecord], present: &HashMap<String, AgentPresence>) {
    let now = weft_controller::store::now();
    if json {
        let v: Vec<Value> = hosts
            .iter()
            .map(|h| host_json(h, present.get(&h.name), now))
            .collect();
        println!("{}", Value::Array(v));
        return;
    }
    let rows: Vec<[String; 7]> = hosts
        .iter()
        .map(|h| {
            let p = present.get(&h.name);
            [
                h.name.clone(),
                h.subnet.to_string(),
                h.public_ip.to_string(),
                h.vtep_mac.to_string(),
                if p.is_some() { "yes" } else { "NO" }.into(),
                p.map_or_else(|| "-".into(), |p| p.controller.clone()),
                last_seen(h, p, now),
            ]
        })
        .collect();
    print_table(
        [
            "NAME",
            "SUBNET",
            "PUBLIC-IP",
            "VTEP-MAC",
            "CONNECTED",
            "CONTROLLER",
            "LAST-SEEN",
        ],
        &rows,
    );
}

fn ago(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        7200..=172_799 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

async fn host(json: bool, store: Store, c: HostCommand) -> Result<(), Failure> {
    match c {
        HostCommand::List => {
            let (_, hosts) = store.hosts().await.map_err(store_err)?;
            let present = presence::list(&store).await.map_err(store_err)?;
            let list: Vec<HostRecord> = hosts.into_values().collect();
            print_hosts(json, &list, &present);
            Ok(())
        }
        HostCommand::Show { name } => {
            weft_common::validate_name(&name).map_err(|e| Failure(e.to_string(), 2))?;
            let h = store
                .host(&name)
                .await
                .map_err(store_err)?
                .ok_or_else(|| Failure(format!("no host named {name:?}"), 1))?;
            let present = presence::list(&store).await.map_err(store_err)?;
            let p = present.get(&name);
            let now = weft_controller::store::now();
            if json {
                println!("{}", host_json(&h, p, now));
            } else {
                println!("name:        {}", h.name);
                println!("subnet:      {}", h.subnet);
                println!("public ip:   {}", h.public_ip);
                println!("vtep mac:    {}", h.vtep_mac);
                match p {
                    Some(p) => println!(
                        "connected:   yes, to controller {} since {} (agent at {})",
                        p.controller,
                        span(now.saturating_sub(p.since)),
                        p.remote
                    ),
                    None => println!("connected:   NO"),
                }
                println!("last seen:   {}", last_seen(&h, p, now));
            }
            Ok(())
        }
        HostCommand::Rm { name } => {
            weft_common::validate_name(&name).map_err(|e| Failure(e.to_string(), 2))?;
            let h = store.remove_host(&name).await.map_err(store_err)?;
            if json {
                println!("{}", serde_json::to_string(&h).expect("host serializes"));
            } else {
                println!(
                    "removed host {name}; subnet {} is free unless reserved (an agent still running there registers again)",
                    h.subnet
                );
            }
            Ok(())
        }
    }
}

fn subnet_json(net: Ipv4Network, rec: &SubnetRecord) -> Value {
    serde_json::json!({"subnet": net.to_string(), "host": rec.host, "reserved": rec.reserved})
}

async fn subnet(json: bool, store: Store, c: SubnetCommand) -> Result<(), Failure> {
    match c {
        SubnetCommand::List => {
            let subnets = store.subnets().await.map_err(store_err)?;
            if json {
                let v: Vec<Value> = subnets
                    .iter()
                    .map(|(n, (r, _))| subnet_json(*n, r))
                    .collect();
                println!("{}", Value::Array(v));
            } else {
                let rows: Vec<[String; 3]> = subnets
                    .iter()
                    .map(|(n, (r, _))| {
                        [
                            n.to_string(),
                            r.host.clone().unwrap_or_else(|| "-".into()),
                            if r.reserved { "yes" } else { "no" }.into(),
                        ]
                    })
                    .collect();
                print_table(["SUBNET", "HOST", "RESERVED"], &rows);
            }
            Ok(())
        }
        SubnetCommand::Reserve { cidr, host } => {
            if let Some(h) = &host {
                weft_common::validate_name(h).map_err(|e| Failure(e.to_string(), 2))?;
            }
            let rec = store
                .reserve(cidr, host.as_deref())
                .await
                .map_err(store_err)?;
            if json {
                println!("{}", subnet_json(cidr, &rec));
            } else {
                match &rec.host {
                    Some(h) => println!("reserved subnet {cidr} for host {h}"),
                    None => println!("reserved subnet {cidr}: it will not be allocated"),
                }
            }
            Ok(())
        }
        SubnetCommand::Release { cidr } => {
            store.release(cidr).await.map_err(store_err)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"subnet": cidr.to_string(), "host": null, "reserved": false})
                );
            } else {
                println!("released subnet {cidr}: it can be allocated again");
            }
            Ok(())
        }
    }
}
