//! weft-agent: the per-host daemon. See DESIGN.md, "Data plane on each host".

mod agent;
mod api;
mod config;
mod control;
mod firewall;
mod ipam;
mod metrics;
mod netlink;
mod netns;
mod overlay;
mod pool;
mod probe;
mod state;
mod sysctl;
mod watch;

#[cfg(test)]
mod fuzz;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

fn main() -> ExitCode {
    let args = config::Args::parse();
    let check_only = args.check_config;
    let cfg = match config::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    weft_common::logging::init(cfg.log_format);
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
    // SIGHUP (`systemctl reload`) never ends the agent: in cluster mode it
    // reloads --tls-dir (tls_reload), standalone there is nothing to reload.
    // tokio keeps a handler installed for the life of the process.
    let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let _one_agent = lock_netns()?;
    if let Some(addr) = cfg.metrics_listen {
        let l = weft_common::http::bind(addr).await?;
        weft_common::http::spawn(l, metrics::endpoints()).map_err(|e| {
            anyhow::anyhow!("--metrics-listen {addr}: cannot start the listener: {e}")
        })?;
    }
    let socket = cfg.socket_path();
    netns::warn_if_private_mounts(&cfg.netns_dir);
    let store = state::Store::open(&cfg.state_dir)?;
    let loaded = store.load()?;
    if loaded.node.is_none() {
        // Before any controller contact: a host whose state was lost must
        // not register as a new host (and be allocated a subnet) first.
        agent::refuse_lost_state(&cfg).await?;
    }
    let saved_vtep = loaded.node.as_ref().and_then(|n| n.vtep_mac);
    let (plan, link) = match cfg.subnet {
        Some(subnet) => {
            info!(
                "weft-agent {} starting: node {}, subnet {subnet} (standalone)",
                env!("CARGO_PKG_VERSION"),
                cfg.node_name,
            );
            let plan = agent::Plan {
                subnet,
                cluster: None,
                vtep_mac: saved_vtep,
                public_ip: None,
                peers: Default::default(),
            };
            (plan, None)
        }
        None => {
            metrics::ready().cluster_mode();
            let tls = weft_common::tls::client_config(&cfg.tls_dir)
                .with_context(|| format!("--tls-dir {}", cfg.tls_dir.display()))?;
            let vtep_mac = saved_vtep.unwrap_or_else(weft_common::MacAddr::random_local);
            let public_ip = match cfg.public_ip {
                Some(ip) => ip,
                None => agent::underlay_address(cfg.underlay_iface.as_deref()).await?,
            };
            let link = Arc::new(control::Link::new(
                cfg.controllers.clone(),
                tls.clone(),
                cfg.node_name.clone(),
                public_ip,
                vtep_mac,
                cfg.state_dir.clone(),
                store.load_peers()?,
            )?);
            // Certificate rotation: the next connection uses the new
            // certificate; the session and the data plane are not touched.
            let cert =
                weft_common::tls_reload::log_startup(&cfg.tls_dir, weft_common::tls::Side::Client);
            link.set_tls(tls, cert);
            {
                let l = link.clone();
                weft_common::tls_reload::spawn(
                    cfg.tls_dir.clone(),
                    weft_common::tls::Side::Client,
                    weft_common::tls::client_config,
                    move |config, summary| l.set_tls(config, Some(summary.clone())),
                );
            }
            info!(
                "weft-agent {} starting: node {}, public ip {public_ip}, controllers {}",
                env!("CARGO_PKG_VERSION"),
                cfg.node_name,
                cfg.controllers.join(",")
            );
            let saved = loaded
                .node
                .as_ref()
                .filter(|n| n.node == cfg.node_name)
                .and_then(|n| n.cluster.clone().map(|c| (n.subnet, c)));
            // Spread hosts over the controllers; failover goes round from there.
            let mut next = weft_common::name::host_veth_name(&cfg.node_name)
                .bytes()
                .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize))
                % cfg.controllers.len();
            let (subnet, cluster, first) = match saved {
                Some((subnet, cluster)) => {
                    info!("serving the saved subnet {subnet} while connecting to a controller");
                    (subnet, cluster, None)
                }
                None => {
                    // Saved state of another mode or name: its subnet is
                    // asked for only when namespaces use it (the controller
                    // then gives that one or none; without namespaces any
                    // subnet will do).
                    let want = loaded
                        .node
                        .as_ref()
                        .filter(|_| !loaded.endpoints.is_empty())
                        .map(|n| n.subnet);
                    info!("waiting for a controller to assign this host's subnet");
                    metrics::ready().stage("waiting for a controller to assign this host's subnet");
                    let s = link.until_assigned(&mut next, want).await;
                    info!("controller {} assigned subnet {}", s.controller, s.subnet);
                    (s.subnet, s.config.clone(), Some(s))
                }
            };
            let plan = agent::Plan {
                subnet,
                cluster: Some(cluster),
                vtep_mac: Some(vtep_mac),
                public_ip: Some(public_ip),
                peers: link.peer_set(),
            };
            (plan, Some((link, first, next)))
        }
    };
    let listener = api::bind(&socket)?;
    let serving = plan.subnet;
    metrics::ready().stage("programming the data plane");
    let agent = match agent::Agent::start(cfg, plan, store, loaded).await {
        Ok(a) => {
            metrics::ready().data_plane_programmed();
            a
        }
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    };
    let link = link.map(|(link, first, next)| {
        let _ = agent.link.set(link.clone());
        // The data plane follows the peer set: each change is applied as
        // one batch; changes that arrive meanwhile are taken together.
        let mut peers = link.subscribe();
        let a = agent.clone();
        tokio::spawn(async move {
            while peers.changed().await.is_ok() {
                // Read before taking the set: then the set holds the snapshot.
                let snapshot = metrics::ready().has_snapshot();
                let set = peers.borrow_and_update().clone();
                a.set_peers(set, "controller").await;
                if snapshot {
                    metrics::ready().snapshot_applied();
                } else if metrics::ready().has_snapshot() {
                    // It may have come with the set just programmed: once more to be sure.
                    peers.mark_changed();
                }
            }
        });
        let l = link.clone();
        tokio::spawn(async move { l.run(serving, first, next).await });
        link
    });
    if let Err(e) = watch::spawn_listener(agent.clone()) {
        warn!(
            "cannot watch netlink for changes ({e}); repairs only every {:?}",
            watch::PERIOD
        );
    }
    tokio::spawn(watch::repair_loop(agent.clone()));
    tokio::spawn(agent.clone().keep_spares());
    info!("listening on {}", socket.display());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = api::serve(listener, agent) => {}
        _ = term.recv() => info!("SIGTERM: stopping; namespaces and rules stay in place"),
        _ = int.recv() => info!("SIGINT: stopping; namespaces and rules stay in place"),
    }
    if let Some(l) = link {
        l.close().await;
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
