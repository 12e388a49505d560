//! weftctl: the operator's command line for weft.
//!
//! Talks to the local agent over its Unix socket (`ns …`, `status`) and to
//! etcd (`cluster …`, `host …`, `subnet …`); `certs …` works on files.
//! Every error is one sentence on stderr and a non-zero exit; with `-o json`
//! it is also `{"error": "..."}` on stdout.
//!
//! - `cli`: the flags and commands (clap);
//! - `cmd/`: one file per command group;
//! - `etcd`: the connection to etcd and its errors in words;
//! - `output`: tables, JSON, durations, failures.

use std::process::ExitCode;

use clap::Parser;
use weft_common::agent_client::AgentClient;

mod cli;
mod cmd;
mod etcd;
mod output;

use cli::{Cli, Command, CompletionShell, Output};
use output::{fail, Failure};

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
            let first = weft_controller::flags::one_line(&e);
            return fail(
                json_requested,
                &Failure::usage(format!("{first} (see weftctl --help)")),
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

fn run(cli: Cli) -> Result<(), Failure> {
    let json = cli.output == Output::Json;
    let agent = || AgentClient::new(&cli.agent_socket);
    let etcd = etcd::Etcd {
        endpoints: cli.etcd_endpoints.clone(),
        prefix: cli.etcd_prefix.clone(),
        flags: cli.etcd.clone(),
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
        Command::Certs(c) => cmd::certs::run(json, c),
        Command::Cluster(c) => cmd::cluster::run(json, &etcd, c),
        Command::Host(c) => etcd.run(|cl| cmd::host::run(json, cl, c)),
        Command::Subnet(c) => etcd.run(|cl| cmd::subnet::run(json, cl, c)),
        Command::Policy(c) => cmd::policy::run(json, &etcd, c),
        Command::Ns(c) => cmd::ns::run(json, &mut agent(), c),
        Command::Status { no_probe } => cmd::status::run(json, &mut agent(), no_probe),
    }
}
