//! weft-controller: hands out host subnets from etcd and streams the host
//! registry to agents over QUIC with mutual TLS. Stateless: run as many as
//! you like against the same etcd.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tracing::{info, warn};
use weft_controller::flags::controller::Args;
use weft_controller::hub::Hub;
use weft_controller::leases::Leases;
use weft_controller::policy_hub::PolicyHub;
use weft_controller::presence::Presence;
use weft_controller::server::{self, Controller};
use weft_controller::store::Store;
use weft_controller::telemetry::{self, metrics};

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
                weft_controller::flags::one_line(&e)
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
    let checked = args.check()?;
    if args.check_config {
        println!("{}", args.summary(&checked));
        return Ok(());
    }
    let etcd = &checked.etcd;
    // Health checks answer from the start (not ready until etcd is).
    if let Some(addr) = checked.metrics_listen {
        let l = weft_common::http::bind(addr).await?;
        weft_common::http::spawn(l, telemetry::endpoints()).map_err(|e| {
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
        Some(checked.tls.clone()),
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
        match Store::connect_to(etcd, Duration::from_secs(5)).await {
            Ok(s) => break s,
            Err(e) => {
                telemetry::ready().connecting(format!("connect to etcd: {e}"));
                warn!("connect to etcd: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    {
        let store = store.clone();
        telemetry::ready().connected(Arc::new(move || {
            let store = store.clone();
            Box::pin(async move { store.readiness().await })
        }));
    }
    store.watch_members(args.etcd_endpoints.clone());
    let hub = Arc::new(Hub::new());
    tokio::spawn(hub.clone().run(store.clone()));
    let policy = Arc::new(PolicyHub::new());
    tokio::spawn(policy.clone().run(store.clone()));
    if checked.metrics_listen.is_some() {
        // The fan-out backlog shrinks as sessions read: sample it.
        let h = hub.clone();
        tokio::spawn(async move {
            loop {
                metrics::get().fanout_queue.set(h.queue_depth() as i64);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let leases = Leases::new(store.clone(), args.lease_ttl);
    tokio::spawn(leases.clone().run());
    let presence = Presence::new(store.clone());
    tokio::spawn(presence.clone().run());
    let ctl = Arc::new(Controller {
        presence: presence.clone(),
        listen: args.listen,
        leases,
        store,
        hub,
        policy,
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
