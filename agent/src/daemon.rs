//! The agent's startup order and the wiring of its tasks: state, the
//! kernel, the controller assignment (cluster mode), the facts of the
//! host, the first reconcile, then the loops and the local API.

use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};
use weft_common::cluster::NetworkConfig;
use weft_common::events;
use weft_common::MacAddr;

use crate::agent::Agent;
use crate::config::{ClusterConfig, Config, Mode};
use crate::control::{Controllers, Identity};
use crate::endpoints::Endpoints;
use crate::firewall::FirewallSpec;
use crate::kernel::{netns, sysctl, Kernel, LinuxKernel};
use crate::model::desired::{HostSpec, VxlanSpec};
use crate::model::{facts, overlay::PeerSet, BRIDGE, NFT_TABLE, VXLAN_OVERHEAD};
use crate::state::{Loaded, NodeState, Store, Writer};
use crate::telemetry::{metrics, ready};
use crate::{api, reconcile};

/// What the agent serves, once known: from `--subnet`, or as a controller
/// assigned it.
struct Assignment {
    subnet: ipnetwork::Ipv4Network,
    /// The cluster's config (cluster mode).
    cluster: Option<NetworkConfig>,
    /// Cluster mode: the controllers, the session that assigned the subnet
    /// (a first start) and where failover goes on.
    link: Option<(
        Arc<Controllers>,
        Option<weft_common::client::Session>,
        usize,
    )>,
    public_ip: Option<std::net::Ipv4Addr>,
    vtep_mac: Option<MacAddr>,
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // SIGHUP (`systemctl reload`) never ends the agent: in cluster mode it
    // reloads --tls-dir (tls_reload), standalone there is nothing to reload.
    // tokio keeps a handler installed for the life of the process.
    let _ = signal(SignalKind::hangup());
    let _one_agent = lock_netns()?;
    if let Mode::Cluster(_) = cfg.mode {
        // Readiness says so from the first answer of /readyz on.
        ready::get().cluster_mode();
        ready::get().stage("starting in cluster mode: no controller has answered yet");
    }
    if let Some(addr) = cfg.metrics_listen {
        let l = weft_common::http::bind(addr).await?;
        weft_common::http::spawn(l, metrics::endpoints()).map_err(|e| {
            anyhow::anyhow!("--metrics-listen {addr}: cannot start the listener: {e}")
        })?;
    }
    let socket = cfg.socket_path();
    netns::warn_if_private_mounts(&cfg.netns_dir);
    let store = Store::open(&cfg.state_dir)?;
    let loaded = store.load()?;
    let saved_link = match cfg.mode {
        Mode::Cluster(_) => store.load_link()?,
        Mode::Standalone { .. } => Default::default(),
    };
    let writer = Writer::start(store).context("start the state writer")?;
    let kernel: Arc<dyn Kernel> = Arc::new(
        LinuxKernel::new(cfg.netns_dir.clone(), NFT_TABLE).map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    if loaded.node.is_none() {
        // Before any controller contact: a host whose state was lost must
        // not register as a new host (and be allocated a subnet) first.
        refuse_lost_state(kernel.as_ref(), &cfg).await?;
    }
    let a = match &cfg.mode {
        Mode::Standalone { subnet } => {
            info!(
                "weft-agent {} starting: node {}, subnet {subnet} (standalone)",
                env!("CARGO_PKG_VERSION"),
                cfg.node_name,
            );
            Assignment {
                subnet: *subnet,
                cluster: None,
                link: None,
                public_ip: None,
                vtep_mac: loaded.node.as_ref().and_then(|n| n.vtep_mac),
            }
        }
        Mode::Cluster(c) => assign(&cfg, c, kernel.as_ref(), &loaded, &writer, saved_link).await?,
    };

    let underlay_view = kernel
        .observe_underlay()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let underlay = facts::underlay(&underlay_view, cfg.underlay_iface.as_deref(), a.public_ip)?;
    let overhead = if a.cluster.is_some() {
        VXLAN_OVERHEAD
    } else {
        0
    };
    let saved_mtu = loaded.node.as_ref().and_then(|n| n.mtu);
    let fixed = a.cluster.as_ref().and_then(|c| c.mtu);
    let (mtu, guessed) = facts::mtu(fixed, underlay.as_ref(), saved_mtu, overhead);
    if guessed {
        warn!("no default route and no --underlay-iface: keeping MTU {mtu}");
    }
    let spec = host_spec(&a, underlay.as_ref(), mtu);
    if let Some(old) = &loaded.node {
        if old.subnet != a.subnet && !loaded.endpoints.is_empty() {
            bail!(
                "subnet {} differs from the subnet {} that this host's {} namespaces use (state in {}); delete them first or keep {}",
                a.subnet, old.subnet, loaded.endpoints.len(), cfg.state_dir.display(), old.subnet
            );
        }
    }
    let node = NodeState {
        node: cfg.node_name.clone(),
        subnet: a.subnet,
        mtu: Some(mtu),
        vtep_mac: a.vtep_mac,
        cluster: a.cluster.clone(),
    };
    if loaded.node.as_ref() != Some(&node) {
        writer.save_node(&node).await?;
    }
    netns::prepare_netns_dir(&cfg.netns_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let endpoints = Endpoints::new(
        kernel.clone(),
        writer.clone(),
        spec.clone(),
        cfg.netns_dir.clone(),
        loaded.endpoints.clone(),
        cfg.ns_pool,
    )
    .map_err(|(name, e)| {
        anyhow::anyhow!(
            "state of namespace {name:?} in {}: {e}",
            cfg.state_dir.display()
        )
    })?;
    let (controllers, first, next) = match a.link {
        Some((c, first, next)) => (Some(c), first, next),
        None => (None, None, 0),
    };
    let peers: PeerSet = controllers
        .as_ref()
        .map(|c| c.peer_set())
        .unwrap_or_default();
    let direct = matches!(&cfg.mode, Mode::Cluster(c) if c.direct_routing);
    let agent = Arc::new(Agent {
        node: cfg.node_name.clone(),
        reconciler: reconcile::Reconciler::new(kernel.clone(), spec, direct, peers),
        endpoints,
        enforcer: controllers
            .as_ref()
            .map(|_| Arc::new(crate::enforce::Enforcer::new(kernel.clone()))),
        controllers: controllers.clone(),
    });

    let listener = api::bind(&socket)?;
    ready::get().stage("programming the data plane");
    if agent.enforcer.is_some() {
        // The saved policy is in the kernel before any endpoint is
        // (re)built: fail static across restarts and reboots.
        if !crate::kernel::sysctl::has_bridge_netfilter() {
            warn!("bridge netfilter (br_netfilter) is not loaded: network policy does not see traffic between two namespaces of this host (modprobe br_netfilter)");
        }
        agent.enforce_now().await;
    }
    if let Err(e) = agent.start(&loaded.pending).await {
        let _ = std::fs::remove_file(&socket);
        bail!("{e}");
    }
    ready::get().data_plane_programmed();

    if let (Some(c), Some(e)) = (&controllers, &agent.enforcer) {
        // Then every change.
        let (policy, directory) = (c.policy_watch(), agent.endpoints.directory());
        tokio::spawn(crate::enforce::run(e.clone(), policy, directory));
    }
    if let Some(c) = &controllers {
        spawn_peer_loop(agent.clone(), c.clone());
        let (c, serving) = (c.clone(), a.subnet);
        let directory = agent.endpoints.directory();
        tokio::spawn(async move { c.run(serving, first, next, directory).await });
    }
    crate::agent::watch_kernel(agent.clone());
    tokio::spawn(crate::agent::repair_loop(agent.clone()));
    {
        let a = agent.clone();
        tokio::spawn(async move { a.endpoints.keep_spares().await });
    }
    info!("listening on {}", socket.display());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = api::serve(listener, agent.clone()) => {}
        _ = term.recv() => info!("SIGTERM: stopping; namespaces and rules stay in place"),
        _ = int.recv() => info!("SIGINT: stopping; namespaces and rules stay in place"),
    }
    if let Some(c) = controllers {
        c.close().await;
    }
    if let Err(e) = writer.flush().await {
        warn!("{e}");
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Cluster mode: the controllers, and this host's subnet — saved, or
/// assigned by a controller (a first start waits for that).
async fn assign(
    cfg: &Config,
    c: &ClusterConfig,
    kernel: &dyn Kernel,
    loaded: &Loaded,
    writer: &Writer,
    saved: crate::state::SavedLink,
) -> anyhow::Result<Assignment> {
    let tls = weft_common::tls::client_config(&c.tls_dir)
        .with_context(|| format!("--tls-dir {}", c.tls_dir.display()))?;
    let vtep_mac = loaded
        .node
        .as_ref()
        .and_then(|n| n.vtep_mac)
        .unwrap_or_else(MacAddr::random_local);
    let public_ip = match c.public_ip {
        Some(ip) => ip,
        None => {
            let view = kernel
                .observe_underlay()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            facts::public_address(&view, cfg.underlay_iface.as_deref())?
        }
    };
    let me = Identity {
        node: cfg.node_name.clone(),
        public_ip,
        vtep_mac,
    };
    let controllers = Arc::new(Controllers::new(
        c.controllers.clone(),
        tls.clone(),
        me,
        cfg.state_dir.clone(),
        writer.clone(),
        saved,
    )?);
    // Certificate rotation: the next connection uses the new certificate;
    // the session and the data plane are not touched.
    let cert = weft_common::tls_reload::log_startup(&c.tls_dir, weft_common::tls::Side::Client);
    controllers.set_tls(tls, cert);
    {
        let l = controllers.clone();
        weft_common::tls_reload::spawn(
            c.tls_dir.clone(),
            weft_common::tls::Side::Client,
            weft_common::tls::client_config,
            move |config, summary| l.set_tls(config, Some(summary.clone())),
        );
    }
    info!(
        "weft-agent {} starting: node {}, public ip {public_ip}, controllers {}",
        env!("CARGO_PKG_VERSION"),
        cfg.node_name,
        c.controllers.join(",")
    );
    let saved = loaded
        .node
        .as_ref()
        .filter(|n| n.node == cfg.node_name)
        .and_then(|n| n.cluster.clone().map(|c| (n.subnet, c)));
    let mut next = controllers.first();
    let (subnet, cluster, first) = match saved {
        Some((subnet, cluster)) => {
            info!("serving the saved subnet {subnet} while connecting to a controller");
            (subnet, cluster, None)
        }
        None => {
            // Saved state of another mode or name: its subnet is asked for
            // only when namespaces use it (the controller then gives that
            // one or none; without namespaces any subnet will do).
            let want = loaded
                .node
                .as_ref()
                .filter(|_| !loaded.endpoints.is_empty())
                .map(|n| n.subnet);
            info!("waiting for a controller to assign this host's subnet");
            ready::get().stage("waiting for a controller to assign this host's subnet");
            let s = controllers.until_assigned(&mut next, want).await;
            info!(
                event = events::SUBNET_ASSIGNED,
                controller = %s.controller,
                subnet = %s.subnet,
                "controller {} assigned subnet {}",
                s.controller,
                s.subnet
            );
            (s.subnet, s.config.clone(), Some(s))
        }
    };
    Ok(Assignment {
        subnet,
        cluster: Some(cluster),
        link: Some((controllers, first, next)),
        public_ip: Some(public_ip),
        vtep_mac: Some(vtep_mac),
    })
}

/// The host's fixed settings from the assignment and the facts found.
fn host_spec(a: &Assignment, underlay: Option<&facts::Underlay>, mtu: u32) -> HostSpec {
    let vxlan = match (&a.cluster, a.public_ip) {
        (Some(c), Some(public_ip)) => {
            let holds = underlay.is_some_and(|u| u.holds_public_ip);
            if !holds {
                warn!(
                    "public ip {public_ip} is not an address of the underlay interface {}: the tunnel sends from whatever address the kernel picks",
                    underlay.map_or("(none)", |u| u.device.name.as_str())
                );
            }
            Some(VxlanSpec {
                name: format!("weft.{}", c.vni),
                vni: c.vni,
                port: c.port,
                local: holds.then_some(public_ip),
                dev: underlay.map(|u| u.device.name.clone()),
                mtu,
                mac: a.vtep_mac.unwrap_or_else(|| MacAddr::from_ipv4(public_ip)),
            })
        }
        _ => None,
    };
    HostSpec {
        subnet: a.subnet,
        mtu,
        underlay: vxlan.as_ref().and(underlay.map(|u| u.device.name.clone())),
        firewall: FirewallSpec {
            // Standalone, the cluster is this host's subnet.
            cluster_cidr: a.cluster.as_ref().map_or(a.subnet, |c| c.cidr),
            subnet: a.subnet,
            bridge: BRIDGE.to_string(),
            vxlan_port: a.cluster.as_ref().map(|c| c.port),
        },
        vxlan,
        ipv6: sysctl::has_ipv6(),
    }
}

/// The data plane follows the peer set: each change is applied as one
/// batch; changes that arrive meanwhile are taken together.
fn spawn_peer_loop(agent: Arc<Agent>, controllers: Arc<Controllers>) {
    let mut peers = controllers.subscribe();
    tokio::spawn(async move {
        while peers.changed().await.is_ok() {
            // Read before taking the set: then the set holds the snapshot.
            let snapshot = ready::get().has_snapshot();
            let set = peers.borrow_and_update().clone();
            agent.reconciler.set_peers(set, "controller").await;
            if snapshot {
                ready::get().snapshot_applied();
            } else if ready::get().has_snapshot() {
                // It may have come with the set just programmed: once more to be sure.
                peers.mark_changed();
            }
        }
    });
}

/// A first start (no `node.json`) on a host whose kernel still holds
/// namespaces' veths (`wv…`) means the state was lost or `--state-dir`
/// points elsewhere: starting empty would delete every one of them.
async fn refuse_lost_state(kernel: &dyn Kernel, cfg: &Config) -> anyhow::Result<()> {
    let devices = kernel.devices().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let veths = facts::namespace_veths(devices);
    if let Some(first) = veths.first() {
        bail!(
            "state directory {} holds no node.json, but this host has {} weft namespace veth(s) ({first}…): the state was lost or --state-dir is wrong; nothing was changed: point --state-dir at the right directory or restore it, or delete the leftover veths (ip link del {first}) to start afresh",
            cfg.state_dir.display(),
            veths.len()
        );
    }
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
