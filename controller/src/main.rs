//! weft-controller: hands out host subnets from etcd and streams the host
//! registry to agents over QUIC with mutual TLS. Stateless: run as many as
//! you like against the same etcd.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tracing::{info, warn};
use weft_controller::hub::Hub;
use weft_controller::server::{self, Controller};
use weft_controller::store::{Store, DEFAULT_PREFIX};

/// weft-controller: subnet allocation and host registry for weft agents.
#[derive(Debug, Parser)]
#[command(name = "weft-controller", version, about)]
struct Args {
    /// etcd client URLs, comma-separated (e.g. http://127.0.0.1:2379).
    #[arg(
        long,
        env = "WEFT_ETCD_ENDPOINTS",
        value_name = "URL[,…]",
        value_delimiter = ',',
        required = true
    )]
    etcd_endpoints: Vec<String>,
    /// Prefix of weft's keys in etcd.
    #[arg(long, env = "WEFT_ETCD_PREFIX", value_name = "PREFIX", default_value = DEFAULT_PREFIX)]
    etcd_prefix: String,
    /// UDP address for the agents' QUIC connections.
    #[arg(
        long,
        env = "WEFT_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:7470"
    )]
    listen: SocketAddr,
    /// Directory holding ca.pem, cert.pem and key.pem (from `weftctl certs issue --role controller`).
    #[arg(
        long,
        env = "WEFT_TLS_DIR",
        value_name = "DIR",
        default_value = "/etc/weft/tls"
    )]
    tls_dir: PathBuf,
    /// Address for Prometheus metrics and health checks.
    #[arg(long, env = "WEFT_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// How long a host keeps its subnet after its agent stops talking to every controller.
    #[arg(long, env = "WEFT_LEASE_TTL", value_name = "SECONDS", default_value_t = 86400,
          value_parser = clap::value_parser!(i64).range(2..=31_536_000))]
    lease_ttl: i64,
    /// Check the configuration (flags, TLS files), print it and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(e.kind(), DisplayHelp | DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            eprintln!(
                "weft-controller: {} (see weft-controller --help)",
                weft_controller::one_line(&e)
            );
            return ExitCode::from(2);
        }
    };
    weft_common::logging::init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-controller: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-controller: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(m) = &args.metrics_listen {
        bail!("--metrics-listen {m}: metrics are not available in this build yet");
    }
    for e in &args.etcd_endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            bail!("--etcd-endpoints {e:?}: expected a URL like http://127.0.0.1:2379");
        }
    }
    if !args.etcd_prefix.starts_with('/') || args.etcd_prefix.len() < 2 {
        bail!(
            "--etcd-prefix {:?}: expected an absolute key prefix like /weft",
            args.etcd_prefix
        );
    }
    let tls = weft_common::tls::server_config(&args.tls_dir)
        .with_context(|| format!("--tls-dir {}", args.tls_dir.display()))?;
    if args.check_config {
        println!(
            "{}",
            serde_json::json!({
                "etcd_endpoints": args.etcd_endpoints,
                "etcd_prefix": args.etcd_prefix,
                "listen": args.listen.to_string(),
                "tls_dir": args.tls_dir,
                "lease_ttl": args.lease_ttl,
            })
        );
        return Ok(());
    }
    // One socket takes every agent's packets: while a fleet registers
    // at once, bursts of handshakes and acknowledgements outran a 4 MiB
    // buffer (hundreds of thousands of drops at 5,000 agents).
    let socket = weft_common::client::udp_socket_sized(args.listen, 16 << 20)
        .with_context(|| format!("listen on udp {}", args.listen))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(tls),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .with_context(|| format!("listen on udp {}", args.listen))?;
    info!(
        "weft-controller {} listening on udp {} (etcd {}, prefix {}, lease ttl {} s)",
        env!("CARGO_PKG_VERSION"),
        args.listen,
        args.etcd_endpoints.join(","),
        args.etcd_prefix,
        args.lease_ttl
    );
    // etcd may be down at boot: keep trying rather than exit.
    let mut backoff = Duration::from_millis(200);
    let store = loop {
        match Store::connect(
            &args.etcd_endpoints,
            &args.etcd_prefix,
            Duration::from_secs(5),
        )
        .await
        {
            Ok(s) => break s,
            Err(e) => {
                warn!("connect to etcd: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let hub = Arc::new(Hub::new());
    tokio::spawn(hub.clone().run(store.clone()));
    let leases = weft_controller::leases::Leases::new(store.clone(), args.lease_ttl);
    tokio::spawn(leases.clone().run());
    let ctl = Arc::new(Controller {
        leases,
        store,
        hub,
        lease_ttl: args.lease_ttl,
        snapshots: Arc::new(tokio::sync::Semaphore::new(server::SNAPSHOTS_AT_ONCE)),
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = server::serve(endpoint.clone(), ctl) => {}
        _ = term.recv() => info!("SIGTERM: stopping; agents fail over to other controllers"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping"),
    }
    endpoint.close(0u32.into(), b"controller stopping");
    Ok(())
}
