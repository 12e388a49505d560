//! weft-agent: the per-host daemon. See DESIGN.md, "Data plane on each host".

mod agent;
mod api;
mod config;
mod firewall;
mod ipam;
mod netlink;
mod netns;
mod state;
mod sysctl;

use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

fn main() -> ExitCode {
    let args = config::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let check_only = args.check_config;
    let cfg = match config::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        println!(
            "{}",
            serde_json::to_string_pretty(&cfg).expect("config serializes")
        );
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-agent: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: config::Config) -> anyhow::Result<()> {
    let _one_agent = lock_netns()?;
    let socket = cfg.socket_path();
    info!(
        "weft-agent {} starting: node {}, subnet {} (standalone)",
        env!("CARGO_PKG_VERSION"),
        cfg.node_name,
        cfg.subnet
    );
    netns::warn_if_private_mounts(&cfg.netns_dir);
    let listener = api::bind(&socket)?;
    let agent = match agent::Agent::start(cfg).await {
        Ok(a) => a,
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    };
    info!("listening on {}", socket.display());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = api::serve(listener, agent) => {}
        _ = term.recv() => info!("SIGTERM: stopping; namespaces and rules stay in place"),
        _ = int.recv() => info!("SIGINT: stopping; namespaces and rules stay in place"),
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// One agent per network namespace: the bridge and the nft table are per
/// namespace, while `--state-dir` (locked too) could differ between two
/// agents. Abstract Unix socket names are scoped to the network namespace
/// and vanish with the process, so binding one is that lock.
fn lock_netns() -> anyhow::Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(b"weft-agent")?;
    std::os::unix::net::UnixListener::bind_addr(&addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            anyhow::anyhow!("another weft-agent is already running in this network namespace")
        }
        _ => anyhow::anyhow!("take the one-agent-per-namespace lock: {e}"),
    })
}
