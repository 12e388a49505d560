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
    /// etcd TLS and user (--etcd-ca, --etcd-cert, --etcd-key, --etcd-user, --etcd-password-file).
    #[command(flatten)]
    etcd: weft_controller::etcd_access::EtcdFlags,
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
    /// Log lines as human-readable text or one JSON object per line.
    #[arg(
        long,
        env = "WEFT_LOG_FORMAT",
        value_name = "text|json",
        default_value = "text"
    )]
    log_format: weft_common::logging::LogFormat,
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
    weft_common::logging::init(args.log_format);
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
    // SIGHUP reloads the TLS files once the endpoint is up; before that it
    // must not end the process (tokio's handler stays for the process).
    let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let metrics_listen = match &args.metrics_listen {
        Some(m) => Some(weft_common::http::parse_listen(m)?),
        None => None,
    };
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
    let etcd_access = args
        .etcd
        .resolve(
            &args.etcd_endpoints,
            std::env::var(weft_controller::etcd_access::PASSWORD_ENV).ok(),
        )
        .map_err(anyhow::Error::msg)?;
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
                "metrics_listen": metrics_listen.map(|a| a.to_string()),
                "etcd_tls": etcd_access.tls(),
                "etcd_user": etcd_access.user(),
                "etcd_ca": args.etcd.etcd_ca,
                "etcd_cert": args.etcd.etcd_cert,
                "etcd_key": args.etcd.etcd_key,
                "etcd_password_file": args.etcd.etcd_password_file,
                "log_format": args.log_format,
            })
        );
        return Ok(());
    }
    // Health checks answer from the start (not ready until etcd is).
    if let Some(addr) = metrics_listen {
        let l = weft_common::http::bind(addr).await?;
        weft_common::http::spawn(l, weft_controller::metrics::endpoints()).map_err(|e| {
            anyhow::anyhow!("--metrics-listen {addr}: cannot start the listener: {e}")
        })?;
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
    // Certificate rotation: new connections get the new certificate, the
    // sessions in progress keep theirs.
    weft_common::tls_reload::log_startup(&args.tls_dir, weft_common::tls::Side::Server);
    {
        let ep = endpoint.clone();
        weft_common::tls_reload::spawn(
            args.tls_dir.clone(),
            weft_common::tls::Side::Server,
            weft_common::tls::server_config,
            move |config, _| ep.set_server_config(Some(config)),
        );
    }
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
        match Store::connect_with(
            &args.etcd_endpoints,
            &args.etcd_prefix,
            Duration::from_secs(5),
            &etcd_access,
        )
        .await
        {
            Ok(s) => break s,
            Err(e) => {
                weft_controller::metrics::ready().connecting(format!("connect to etcd: {e}"));
                warn!("connect to etcd: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    weft_controller::metrics::ready().connected(store.clone());
    weft_controller::etcd_endpoints::spawn(store.client(), args.etcd_endpoints.clone());
    let hub = Arc::new(Hub::new());
    tokio::spawn(hub.clone().run(store.clone()));
    if metrics_listen.is_some() {
        // The fan-out backlog shrinks as sessions read: sample it.
        let h = hub.clone();
        tokio::spawn(async move {
            loop {
                weft_controller::metrics::get()
                    .fanout_queue
                    .set(h.queue_depth() as i64);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let leases = weft_controller::leases::Leases::new(store.clone(), args.lease_ttl);
    tokio::spawn(leases.clone().run());
    let presence = weft_controller::presence::Presence::new(store.clone());
    tokio::spawn(presence.clone().run());
    let ctl = Arc::new(Controller {
        presence: presence.clone(),
        listen: args.listen,
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
    // This controller's agents show disconnected at once, not after the TTL.
    let _ = tokio::time::timeout(Duration::from_secs(1), presence.revoke()).await;
    Ok(())
}
