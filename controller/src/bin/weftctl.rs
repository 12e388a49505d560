//! weftctl: the operator's command line for weft.
//!
//! Talks to the local agent over its Unix socket (`ns …`, `status`). Every
//! error is one sentence on stderr and a non-zero exit; with `-o json` it is
//! also `{"error": "..."}` on stdout.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;
use weft_common::api::{Endpoint, Request, Response, Status};
use weft_common::PortMapping;

#[derive(Debug, Parser)]
#[command(
    name = "weftctl",
    version,
    about = "Operate weft: namespaces on this host, and the local agent's status"
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
    /// The local agent: node, subnet, controller link, peers.
    Status,
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
            let rendered = e.render().to_string();
            // clap's message may continue on indented lines (missing arguments); keep them, drop the usage block.
            let first = rendered
                .lines()
                .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
                .trim_start_matches("error: ")
                .to_string();
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
    match cli.command {
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
        Command::Status => {
            let v = agent.call(&Request::Status)?;
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
            let hint = match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    " (the agent socket is root-only: run weftctl as root)"
                }
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
    match (&s.controller.connected, &s.controller.address) {
        (true, Some(a)) => println!("controller:  connected to {a}"),
        (false, Some(a)) => println!("controller:  not connected (last tried {a})"),
        _ => println!("controller:  none (standalone)"),
    }
    if s.peers.is_empty() {
        println!("peers:       none");
    } else {
        let rows: Vec<[String; 4]> = s
            .peers
            .iter()
            .map(|p| {
                [
                    p.name.clone(),
                    p.subnet.clone(),
                    p.public_ip.to_string(),
                    p.mode.clone(),
                ]
            })
            .collect();
        print_table(["PEER", "SUBNET", "PUBLIC IP", "MODE"], &rows);
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
