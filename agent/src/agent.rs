//! The agent's core: endpoints (namespaces on the bridge) and the host's
//! bridge, NAT and published ports, kept in line with the persisted state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnetwork::Ipv4Network;
use thiserror::Error;
use tokio::sync::Mutex;
use tracing::{debug, error, info, warn};
use weft_common::api::{ControllerLink, Endpoint, Peer, Status, PROBE_TIMEOUT_MS};
use weft_common::cluster::NetworkConfig;
use weft_common::name::{host_veth_name, is_weft_veth_name};
use weft_common::{validate_name, MacAddr, NameError, PortMapping, Proto};

use crate::config::Config;
use crate::control::PeerSet;
use crate::firewall::{Firewall, FirewallError, FirewallSpec, PortForward};
use crate::ipam::{gateway, Ipam, IpamError};
use crate::netlink::{Link, Netlink, NetlinkError, VethSpec, VxlanSpec};
use crate::netns::{self, NetnsError};
use crate::overlay::{self, Diff, Entries, Mode, Overlay, PeerPlan};
use crate::pool::{Pool, Spare};
use crate::state::{EndpointRecord, Loaded, NodeState, StateError, Store};
use crate::sysctl;

/// The bridge every namespace of this host is attached to.
pub const BRIDGE: &str = "weft0";
/// The namespace end of the veth pair.
const NS_IFACE: &str = "eth0";
/// The nftables table (family inet) weft owns.
pub const NFT_TABLE: &str = "weft";
/// Most ports one namespace may publish: bounds the work (and the time the
/// agent's lock is held) one request can cause.
pub const MAX_PUBLISH: usize = 256;
/// A Linux bridge numbers its ports 1–1023 (BR_MAX_PORTS is 1024, port 0
/// reserved); the kernel answers "Exchange full" past that.
pub const MAX_ENDPOINTS: usize = 1023;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("invalid namespace name: {0}")]
    Name(#[from] NameError),
    #[error("namespace {0:?} already exists")]
    Duplicate(String),
    #[error("namespace {0:?} does not exist")]
    NotFound(String),
    #[error("{0} already exists but was not created by weft; remove it or pick another name")]
    ForeignNetns(PathBuf),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("--publish {spec} is given twice")]
    PublishTwice { spec: PortMapping },
    #[error(
        "--publish {spec}: host port {port}/{proto} is already published by namespace {owner:?}"
    )]
    PortPublished {
        spec: PortMapping,
        port: u16,
        proto: Proto,
        owner: String,
    },
    #[error("--publish {spec}: {reason}")]
    PortUnavailable { spec: PortMapping, reason: String },
    #[error(
        "this host already has {MAX_ENDPOINTS} namespaces, the most one Linux bridge can hold"
    )]
    BridgeFull,
    #[error("{count} published ports requested; at most {MAX_PUBLISH} per namespace")]
    TooManyPorts { count: usize },
    #[error("host interface name {veth} of namespace {name:?} collides with namespace {other:?}; pick another name")]
    VethCollision {
        name: String,
        veth: String,
        other: String,
    },
    #[error("{0}")]
    Netlink(#[from] NetlinkError),
    #[error("{0}")]
    Netns(#[from] NetnsError),
    #[error("{0}")]
    Firewall(#[from] FirewallError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{error}; undoing the partial work also failed: {}", undo.join("; "))]
    RolledBackBadly {
        error: Box<AgentError>,
        undo: Vec<String>,
    },
    #[error("removing namespace {name:?} failed (run ns del again to retry): {}", errors.join("; "))]
    Teardown { name: String, errors: Vec<String> },
    #[error("{0}")]
    Other(String),
}

type Result<T> = std::result::Result<T, AgentError>;

struct Inner {
    store: Store,
    endpoints: BTreeMap<String, EndpointRecord>,
    ipam: Ipam,
    bridge: u32,
    /// The vxlan device's index (cluster mode; 0 before it exists).
    vxlan: u32,
    /// The peer set as the controller last sent it (or as saved).
    peers: PeerSet,
    /// How each peer is programmed now.
    plans: BTreeMap<String, PeerPlan>,
    /// The addresses in the nft VXLAN peer set; `None` when unknown (a
    /// failed update), which the next reconcile repairs with a full sync.
    nft_peers: Option<BTreeSet<Ipv4Addr>>,
}

/// What the netlink watch compares kernel events with: which devices and
/// overlay entries are weft's and should exist.
#[derive(Debug, Default)]
pub struct WatchView {
    pub bridge: u32,
    pub vxlan: u32,
    pub desired: Entries,
}

/// What the agent serves: from `--subnet`, or as a controller assigned it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub subnet: Ipv4Network,
    /// The cluster's config (cluster mode); `None` standalone.
    pub cluster: Option<NetworkConfig>,
    pub vtep_mac: Option<MacAddr>,
    /// This host's public (underlay) address (cluster mode).
    pub public_ip: Option<Ipv4Addr>,
    /// The saved peer set to program before any controller answers.
    pub peers: PeerSet,
}

impl Plan {
    /// Bytes the overlay takes off the underlay MTU (VXLAN over IPv4).
    fn overhead(&self) -> u32 {
        if self.cluster.is_some() {
            50
        } else {
            0
        }
    }

    /// Traffic to this range stays inside the cluster (not masqueraded).
    fn cluster_cidr(&self) -> Ipv4Network {
        self.cluster.as_ref().map(|c| c.cidr).unwrap_or(self.subnet)
    }
}

pub struct Agent {
    cfg: Config,
    plan: Plan,
    /// The controller link (cluster mode), for `status`.
    pub link: std::sync::OnceLock<Arc<crate::control::Link>>,
    gateway: Ipv4Addr,
    mtu: u32,
    host: Netlink,
    fw: Arc<Firewall>,
    /// The tunnel (cluster mode).
    overlay: Option<Overlay>,
    /// The underlay device's index, for direct routes.
    underlay: Option<u32>,
    /// Shared with the netlink watch.
    pub view: Arc<std::sync::Mutex<WatchView>>,
    /// Wakes the repair loop: something weft owns changed or failed.
    pub repair: Arc<tokio::sync::Notify>,
    /// Spare namespaces for `ns add` (`--ns-pool`).
    pool: Pool,
    inner: Mutex<Inner>,
}

impl Agent {
    /// Loads the state, then brings the kernel in line with it without
    /// disturbing anything that already works.
    pub async fn start(
        cfg: Config,
        plan: Plan,
        store: Store,
        loaded: Loaded,
    ) -> anyhow::Result<Arc<Agent>> {
        if let Some(old) = &loaded.node {
            if old.subnet != plan.subnet && !loaded.endpoints.is_empty() {
                anyhow::bail!(
                    "subnet {} differs from the subnet {} that this host's {} namespaces use (state in {}); delete them first or keep {}",
                    plan.subnet, old.subnet, loaded.endpoints.len(), cfg.state_dir.display(), old.subnet
                );
            }
        }
        let mut ipam = Ipam::new(plan.subnet);
        for rec in loaded.endpoints.values() {
            ipam.insert(rec.ip, &rec.name).map_err(|e| {
                anyhow::anyhow!(
                    "state of namespace {:?} in {}: {e}",
                    rec.name,
                    cfg.state_dir.display()
                )
            })?;
        }
        let host = Netlink::connect().map_err(|e| anyhow::anyhow!("open netlink socket: {e}"))?;
        // The interface holding the public IP carries the tunnel, so its
        // MTU is the one that counts.
        let holder = match plan.public_ip {
            Some(ip) => host.address_owner(ip).await?,
            None => None,
        };
        let underlay = underlay_link(&host, cfg.underlay_iface.as_deref(), holder).await?;
        // Without a default route (e.g. before DHCP at boot) the MTU cannot
        // be detected; the one used before then still holds.
        let mtu = match (
            plan.cluster.as_ref().and_then(|c| c.mtu),
            underlay.as_ref().map(|l| l.mtu),
        ) {
            (Some(fixed), _) => fixed,
            (None, Some(m)) => m - plan.overhead(),
            (None, None) => {
                let m = loaded
                    .node
                    .as_ref()
                    .and_then(|n| n.mtu)
                    .unwrap_or(1500 - plan.overhead());
                warn!("no default route and no --underlay-iface: keeping MTU {m}");
                m
            }
        };
        let node = NodeState {
            node: cfg.node_name.clone(),
            subnet: plan.subnet,
            mtu: Some(mtu),
            vtep_mac: plan.vtep_mac,
            cluster: plan.cluster.clone(),
        };
        if loaded.node.as_ref() != Some(&node) {
            store.save_node(&node)?;
        }
        netns::prepare_netns_dir(&cfg.netns_dir)?;
        let (overlay, underlay) = match (&plan.cluster, plan.public_ip) {
            (Some(c), Some(public_ip)) => {
                let dev = underlay;
                let holds_ip = holder.is_some() && holder == dev.as_ref().map(|d| d.index);
                if !holds_ip {
                    warn!("public ip {public_ip} is not an address of the underlay interface {}: the tunnel sends from whatever address the kernel picks", dev.as_ref().map_or("(none)", |d| d.name.as_str()));
                }
                let spec = VxlanSpec {
                    name: format!("weft.{}", c.vni),
                    vni: c.vni,
                    port: c.port,
                    local: holds_ip.then_some(public_ip),
                    dev: dev.as_ref().map(|d| d.index),
                    mtu,
                    mac: plan
                        .vtep_mac
                        .unwrap_or_else(|| MacAddr::from_ipv4(public_ip)),
                };
                let ov = Overlay::new(host.clone(), spec, plan.subnet, cfg.direct_routing);
                (Some(ov), dev.map(|d| d.index))
            }
            _ => (None, None),
        };
        let peers = plan.peers.clone();
        let agent = Arc::new(Agent {
            gateway: gateway(plan.subnet),
            plan,
            link: std::sync::OnceLock::new(),
            mtu,
            host,
            fw: Arc::new(Firewall::new(NFT_TABLE)),
            overlay,
            underlay,
            view: Default::default(),
            repair: Default::default(),
            pool: Pool::new(cfg.ns_pool),
            inner: Mutex::new(Inner {
                store,
                endpoints: loaded.endpoints,
                ipam,
                bridge: 0,
                vxlan: 0,
                peers,
                plans: BTreeMap::new(),
                nft_peers: None,
            }),
            cfg,
        });
        crate::metrics::reconcile(agent.reconcile(&loaded.pending, false)).await?;
        Ok(agent)
    }

    /// The vxlan device's name (cluster mode).
    pub fn vxlan_name(&self) -> Option<&str> {
        self.overlay.as_ref().map(|o| o.spec.name.as_str())
    }

    /// Programs a new peer set (a snapshot or delta from the controller):
    /// the difference to what is programmed now, in one batch.
    pub async fn set_peers(&self, peers: PeerSet, why: &str) {
        let Some(ov) = &self.overlay else {
            return;
        };
        let mut inner = self.inner.lock().await;
        let plans = ov.plan(&peers, self.underlay).await;
        let vx = inner.vxlan;
        let from = Entries::of(&inner.plans, vx, self.underlay);
        let to = Entries::of(&plans, vx, self.underlay);
        let d = Diff::between(&from, &to);
        ov.log_change(&inner.plans, &plans, &d, why);
        self.view.lock().expect("watch view").desired = to;
        let want: BTreeSet<Ipv4Addr> = plans.values().map(|p| p.public_ip).collect();
        // New peers' addresses go into the nft set before their tunnel
        // entries exist, so their first packets are not dropped.
        if let Some(have) = inner.nft_peers.clone() {
            let add: Vec<Ipv4Addr> = want.difference(&have).copied().collect();
            let del: Vec<Ipv4Addr> = have.difference(&want).copied().collect();
            let (a, r) = (add.clone(), del.clone());
            match self.firewall(move |fw| fw.update_peers(&add, &del)).await {
                Ok(()) => {
                    log_nft_peers(&a, &r, why);
                    inner.nft_peers = Some(want);
                }
                Err(e) => {
                    error!("{e}; repairing with a full firewall sync");
                    inner.nft_peers = None;
                    self.repair.notify_one();
                }
            }
        }
        let started = std::time::Instant::now();
        match ov.apply(vx, &d).await {
            // Each change was logged above (log_change), before it was
            // made; this line says the batch is in the kernel, and how
            // long it took (weft-bench converge times it).
            Ok(()) if !d.is_empty() => info!(
                "overlay programmed: {} peers, {} kernel changes in {:.1} ms ({d})",
                plans.len(),
                d.len(),
                started.elapsed().as_secs_f64() * 1e3
            ),
            Ok(()) => {}
            Err(e) => {
                error!("{e}; repairing with a reconcile");
                for e in e.0.iter().skip(1).take(5) {
                    debug!("also failed: {e}");
                }
                self.repair.notify_one();
            }
        }
        inner.plans = plans;
        inner.peers = peers;
        crate::metrics::set_peers(inner.plans.values().map(|p| p.mode));
    }

    /// Brings everything back in line with the state (the periodic and
    /// event-driven repair); failures are logged and retried next time.
    pub async fn repair(&self) {
        if let Err(e) = crate::metrics::reconcile(self.reconcile(&[], true)).await {
            error!("reconcile failed: {e:#}; retrying later");
        }
    }

    fn netns_path(&self, name: &str) -> PathBuf {
        self.cfg.netns_dir.join(name)
    }

    fn endpoint(&self, rec: &EndpointRecord) -> Endpoint {
        Endpoint {
            name: rec.name.clone(),
            ip: rec.ip,
            mac: rec.mac,
            netns: self.netns_path(&rec.name).display().to_string(),
            publish: rec.publish.clone(),
            host_veth: rec.host_veth.clone(),
        }
    }

    fn firewall_spec(&self) -> FirewallSpec {
        // Standalone, the cluster is this host's subnet.
        FirewallSpec {
            cluster_cidr: self.plan.cluster_cidr(),
            subnet: self.plan.subnet,
            bridge: BRIDGE.to_string(),
            vxlan_port: self.plan.cluster.as_ref().map(|c| c.port),
        }
    }

    async fn firewall<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Firewall) -> std::result::Result<T, FirewallError> + Send + 'static,
    ) -> Result<T> {
        let fw = self.fw.clone();
        tokio::task::spawn_blocking(move || f(&fw))
            .await
            .map_err(|e| AgentError::Other(format!("firewall task failed: {e}")))?
            .map_err(AgentError::from)
    }

    /// Brings the host namespace, the nft table and every endpoint in line
    /// with the state. Only what is missing or wrong is changed, so traffic
    /// of working endpoints never stops.
    async fn reconcile(&self, pending: &[String], periodic: bool) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().await;
        sysctl::ensure(
            "net.ipv4.ip_forward",
            "1",
            "namespaces route through this host",
        )?;
        inner.bridge = self.ensure_bridge(!periodic).await?;
        let bridge_conf = format!("net.ipv4.conf.{BRIDGE}");
        sysctl::ensure(
            &format!("{bridge_conf}.rp_filter"),
            "2",
            "loose reverse-path filter on weft devices",
        )?;
        sysctl::ensure(
            &format!("{bridge_conf}.route_localnet"),
            "1",
            "published ports answer on 127.0.0.1 too",
        )?;

        if let Some(ov) = &self.overlay {
            self.reconcile_overlay(ov, &mut inner, periodic).await?;
        }
        let forwards: Vec<PortForward> = inner.endpoints.values().flat_map(forwards_of).collect();
        let spec = self.firewall_spec();
        let peers: BTreeSet<Ipv4Addr> = inner.plans.values().map(|p| p.public_ip).collect();
        let p = peers.clone();
        let n_forwards = forwards.len();
        // The table is replaced whole every time (idempotent, atomic); it is
        // logged at start and when it had vanished, not every period.
        let existed = self.firewall(|fw| fw.exists()).await.unwrap_or(true);
        let cidr = spec.cluster_cidr;
        self.firewall(move |fw| fw.sync(&spec, &forwards, &p))
            .await?;
        if !existed {
            info!(
                "nft table inet {NFT_TABLE} (masquerade from {cidr}, {n_forwards} published ports, {} vxlan peers): {}",
                peers.len(),
                if periodic { "restored (deleted outside weft)" } else { "created at agent start" }
            );
        }
        inner.nft_peers = Some(peers);

        for name in pending {
            if !inner.endpoints.contains_key(name) {
                warn!("namespace {name:?} was half-built when ns add failed or the agent stopped; removing its pieces");
                self.remove_half_built(name).await?;
            }
            inner.store.clear_pending(name)?;
        }

        let links: BTreeMap<String, Link> = self
            .host
            .links()
            .await?
            .into_iter()
            .map(|l| (l.name.clone(), l))
            .collect();
        let bridge = inner.bridge;
        // One broken endpoint must not keep the others from being served.
        let mut broken = 0;
        for rec in inner.endpoints.values() {
            let host_link = links.get(&rec.host_veth);
            // Periodic runs look inside a namespace only when its host side
            // is visibly broken: three dumps per namespace every period
            // would cost more than the rare repair is worth.
            let healthy =
                host_link.is_some_and(|l| l.master == Some(bridge) && l.up && l.mtu == self.mtu);
            if periodic && healthy && netns::is_netns(&self.netns_path(&rec.name)) {
                continue;
            }
            if let Err(e) = self.ensure_endpoint(rec, host_link, bridge).await {
                broken += 1;
                error!("cannot restore namespace {:?}: {e}; the others are served, delete and re-add it to repair", rec.name);
            }
        }
        let owned: BTreeSet<&str> = inner
            .endpoints
            .values()
            .map(|r| r.host_veth.as_str())
            .collect();
        for link in links.values() {
            if is_weft_veth_name(&link.name)
                && link.kind.as_deref() == Some("veth")
                && !owned.contains(link.name.as_str())
            {
                self.host.delete_link(link.index, &link.name).await?;
                info!("deleted veth {}: no namespace owns it", link.name);
            }
        }
        self.view.lock().expect("watch view").bridge = bridge;
        crate::metrics::set_endpoints(inner.endpoints.len());
        if periodic {
            return Ok(());
        }
        info!(
            "host ready: bridge {BRIDGE} {}/{} mtu {}, {} namespaces{}{}",
            self.gateway,
            self.plan.subnet.prefix(),
            self.mtu,
            inner.endpoints.len(),
            if broken > 0 {
                format!(", {broken} of them broken (see above)")
            } else {
                String::new()
            },
            match &self.overlay {
                Some(ov) => format!(
                    ", {} {} peers ({} direct)",
                    ov.spec.name,
                    inner.plans.len(),
                    inner
                        .plans
                        .values()
                        .filter(|p| p.mode == Mode::Direct)
                        .count()
                ),
                None => String::new(),
            }
        );
        Ok(())
    }

    /// The vxlan device and the overlay entries: compared with the kernel,
    /// only the difference is changed.
    async fn reconcile_overlay(
        &self,
        ov: &Overlay,
        inner: &mut Inner,
        periodic: bool,
    ) -> anyhow::Result<()> {
        let vx = ov.ensure_device(!periodic).await?;
        let dev = &ov.spec.name;
        sysctl::ensure(
            &sysctl::dev_key("ipv4", dev, "rp_filter"),
            "2",
            "loose reverse-path filter on weft devices",
        )?;
        sysctl::set(&sysctl::dev_key("ipv6", dev, "disable_ipv6"), "1")?;
        inner.vxlan = vx;
        let plans = ov.plan(&inner.peers, self.underlay).await;
        let to = Entries::of(&plans, vx, self.underlay);
        // A plan change here (a peer switched between direct and vxlan
        // because the underlay's routes changed) is logged peer by peer;
        // its entries are then not logged again as repairs.
        let mut planned = Diff::default();
        if periodic && plans != inner.plans {
            planned = Diff::between(&Entries::of(&inner.plans, vx, self.underlay), &to);
            ov.log_change(&inner.plans, &plans, &planned, "underlay route changed");
        }
        {
            let mut view = self.view.lock().expect("watch view");
            view.vxlan = vx;
            view.desired = to.clone();
        }
        let kernel = ov.read_kernel(vx).await?;
        let d = Diff::between(&kernel, &to);
        if !d.is_empty() {
            let cause = match periodic {
                true => overlay::Cause::Outside,
                false => overlay::Cause::Start,
            };
            let repairs = d.without(&planned);
            if !repairs.is_empty() {
                overlay::log_repairs(&ov.spec.name, &kernel, &repairs, &plans, cause);
            }
            ov.apply(vx, &d).await?;
        }
        inner.plans = plans;
        crate::metrics::set_peers(inner.plans.values().map(|p| p.mode));
        Ok(())
    }

    /// Removes what a failed or interrupted `ns add` may have left: the veth
    /// and the namespace mount (only if it is one: the name was refused if
    /// something else was at that path).
    async fn remove_half_built(&self, name: &str) -> Result<()> {
        self.host.delete_link_by_name(&host_veth_name(name)).await?;
        let path = self.netns_path(name);
        if netns::is_netns(&path) {
            netns::delete(&path)?;
        }
        Ok(())
    }

    /// Creates the bridge or corrects it in place; returns its index.
    /// `start`: the agent is starting (for the log lines' reasons).
    async fn ensure_bridge(&self, start: bool) -> Result<u32> {
        let mac = MacAddr::from_ipv4(self.gateway);
        let outside = match start {
            true => "found so at agent start",
            false => "changed outside weft",
        };
        let mut created = false;
        let link = match self.host.link(BRIDGE).await? {
            None => {
                let l = self.host.create_bridge(BRIDGE, mac, self.mtu).await?;
                let why = match start {
                    true => "agent start (not present)",
                    false => "restored (deleted outside weft)",
                };
                info!("link add {BRIDGE} type bridge address {mac} mtu {}: {why}", self.mtu);
                created = true;
                l
            }
            Some(l) if l.kind.as_deref() != Some("bridge") => {
                return Err(AgentError::Other(format!(
                    "{BRIDGE} exists but is a {} device, not a bridge; remove it so weft can create its bridge",
                    l.kind.as_deref().unwrap_or("unknown")
                )))
            }
            Some(l) => {
                let mtu = (l.mtu != self.mtu).then_some(self.mtu);
                let new_mac = (l.mac != Some(mac)).then_some(mac);
                if mtu.is_some() || new_mac.is_some() || !l.up {
                    self.host.set_link(l.index, BRIDGE, mtu, new_mac, None, true).await?;
                    let old_mac = l.mac.map_or_else(|| "none".to_string(), |m| m.to_string());
                    info!("link set {BRIDGE} mtu {} address {mac} up: corrected (was mtu {} mac {old_mac} up={}; {outside})", self.mtu, l.mtu, l.up);
                }
                l
            }
        };
        let prefix = self.plan.subnet.prefix();
        let addrs = self.host.addresses_v4(link.index).await?;
        for (ip, len) in &addrs {
            if (*ip, *len) != (self.gateway, prefix) {
                self.host
                    .delete_address(link.index, *ip, *len, BRIDGE)
                    .await?;
                info!("address del {ip}/{len} dev {BRIDGE}: not this host's gateway ({outside})");
            }
        }
        if !addrs.contains(&(self.gateway, prefix)) {
            self.host
                .add_address(link.index, self.gateway, prefix, BRIDGE)
                .await?;
            let why = if created {
                "gateway of the new bridge"
            } else if start {
                "gateway missing at agent start"
            } else {
                "gateway restored (removed outside weft)"
            };
            info!("address add {}/{prefix} dev {BRIDGE}: {why}", self.gateway);
        }
        Ok(link.index)
    }

    /// Re-creates whatever an endpoint is missing: its namespace, veth pair,
    /// address or default route. Leaves working pieces alone.
    async fn ensure_endpoint(
        &self,
        rec: &EndpointRecord,
        host_link: Option<&Link>,
        bridge: u32,
    ) -> Result<()> {
        let path = self.netns_path(&rec.name);
        let mut host_link = host_link;
        let mut rebuilt = false;
        let ns = if netns::is_netns(&path) {
            netns::open(&path).await?
        } else {
            if path.exists() {
                netns::delete(&path)?;
            }
            let ns = netns::create(&path).await?;
            info!(
                "re-created namespace {} at {}: it was missing",
                rec.name,
                path.display()
            );
            rebuilt = true;
            // A host veth still present leads into the old namespace (kept
            // alive by some process): it is no longer this endpoint's.
            if let Some(old) = host_link.take() {
                self.host.delete_link(old.index, &old.name).await?;
            }
            ns
        };
        match host_link {
            Some(l) if l.master == Some(bridge) && l.up && l.mtu == self.mtu => {}
            Some(l) => {
                self.host
                    .set_link(l.index, &l.name, Some(self.mtu), None, Some(bridge), true)
                    .await?;
                info!(
                    "corrected {} of namespace {}: port of {BRIDGE}, up, mtu {}",
                    l.name, rec.name, self.mtu
                );
            }
            None => {
                // The veth pair is gone, but a stray eth0 may remain in the namespace.
                if let Some(stray) = ns.netlink.link(NS_IFACE).await? {
                    ns.netlink.delete_link(stray.index, NS_IFACE).await?;
                }
                self.create_veth(rec, &ns, bridge).await?;
                info!(
                    "re-created veth {} of namespace {}: it was missing",
                    rec.host_veth, rec.name
                );
                rebuilt = true;
            }
        }
        let done = self.ensure_ns_side(rec, &ns.netlink).await?;
        for what in done {
            // After a rebuild the inside is configured afresh: that was
            // logged as the rebuild.
            if rebuilt {
                debug!("{what} in namespace {}: new veth", rec.name);
            } else {
                info!(
                    "{what} in namespace {}: restored (changed outside weft)",
                    rec.name
                );
            }
        }
        Ok(())
    }

    async fn create_veth(
        &self,
        rec: &EndpointRecord,
        ns: &netns::Namespace,
        bridge: u32,
    ) -> Result<()> {
        use std::os::fd::AsFd;
        self.host
            .create_veth(&VethSpec {
                host_name: &rec.host_veth,
                master: bridge,
                mtu: self.mtu,
                peer_netns: ns.fd.as_fd(),
                peer_name: NS_IFACE,
                peer_mac: rec.mac,
                up: true,
            })
            .await?;
        // A bridge port needs no addresses of its own (see netns::create).
        sysctl::set(
            &format!("net.ipv6.conf.{}.disable_ipv6", rec.host_veth),
            "1",
        )
        .map_err(|e| AgentError::Other(e.to_string()))?;
        Ok(())
    }

    /// Inside the namespace: `lo` up, `eth0` up with its MTU and address,
    /// default route via the gateway. Checks first, changes only what
    /// differs; returns what it changed (for the log).
    async fn ensure_ns_side(&self, rec: &EndpointRecord, nl: &Netlink) -> Result<Vec<String>> {
        let mut done = Vec::new();
        let links = nl.links().await?;
        let find = |n: &str| links.iter().find(|l| l.name == n);
        let missing =
            |what: &str| AgentError::Other(format!("namespace {} has no {what}", rec.name));
        let lo = find("lo").ok_or_else(|| missing("lo"))?;
        let eth = find(NS_IFACE).ok_or_else(|| missing(NS_IFACE))?;
        if !lo.up {
            nl.set_link(lo.index, "lo", None, None, None, true).await?;
            done.push("link set lo up".to_string());
        }
        if !eth.up || eth.mtu != self.mtu {
            nl.set_link(
                eth.index,
                NS_IFACE,
                (eth.mtu != self.mtu).then_some(self.mtu),
                None,
                None,
                true,
            )
            .await?;
            done.push(format!("link set {NS_IFACE} mtu {} up", self.mtu));
        }
        let prefix = self.plan.subnet.prefix();
        if !nl
            .addresses_v4(eth.index)
            .await?
            .contains(&(rec.ip, prefix))
        {
            nl.add_address(eth.index, rec.ip, prefix, NS_IFACE).await?;
            done.push(format!("address add {}/{prefix} dev {NS_IFACE}", rec.ip));
        }
        let routes = nl.routes_v4().await?;
        if !routes
            .iter()
            .any(|r| r.is_default() && r.gateway == Some(self.gateway) && r.oif == Some(eth.index))
        {
            nl.replace_default_route(self.gateway, eth.index).await?;
            done.push(format!(
                "route replace default via {} dev {NS_IFACE}",
                self.gateway
            ));
        }
        Ok(done)
    }
}

/// The port forwards an endpoint's published ports need.
fn forwards_of(rec: &EndpointRecord) -> Vec<PortForward> {
    rec.publish
        .iter()
        .map(|p| PortForward {
            host_ip: p.host_ip,
            host_port: p.host_port,
            proto: p.proto,
            target: rec.ip,
            target_port: p.port,
        })
        .collect()
}

/// Whether a host port is free: nothing on this host listens on it.
fn probe_port(p: &PortMapping) -> std::result::Result<(), String> {
    let addr = SocketAddrV4::new(p.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED), p.host_port);
    let res = match p.proto {
        Proto::Tcp => TcpListener::bind(addr).map(drop),
        Proto::Udp => UdpSocket::bind(addr).map(drop),
    };
    res.map_err(|e| match e.raw_os_error() {
        Some(libc::EADDRINUSE) => format!(
            "host port {}/{} is already in use on this host",
            p.host_port, p.proto
        ),
        Some(libc::EADDRNOTAVAIL) => format!("{} is not an address of this host", addr.ip()),
        _ => format!("cannot use host port {addr}/{}: {e}", p.proto),
    })
}

/// This host's address on the underlay: the first IPv4 address of
/// `--underlay-iface`, else of the interface holding the default route.
pub async fn underlay_address(iface: Option<&str>) -> anyhow::Result<Ipv4Addr> {
    let host = Netlink::connect().map_err(|e| anyhow::anyhow!("open netlink socket: {e}"))?;
    let link = underlay_link(&host, iface, None).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "no default route to find this host's public address: set --public-ip or --underlay-iface"
        )
    })?;
    host.addresses_v4(link.index)
        .await?
        .into_iter()
        .map(|(ip, _)| ip)
        .find(|ip| !ip.is_loopback() && !ip.is_link_local())
        .ok_or_else(|| anyhow::anyhow!("interface {} has no IPv4 address to use as this host's public address: set --public-ip", link.name))
}

/// The underlay interface: `--underlay-iface`, else `holder` (the interface
/// holding the public IP), else the one of the default route; `None` when
/// there is none.
async fn underlay_link(
    host: &Netlink,
    iface: Option<&str>,
    holder: Option<u32>,
) -> anyhow::Result<Option<Link>> {
    if let Some(name) = iface {
        return match host.link(name).await? {
            Some(l) => Ok(Some(l)),
            None => anyhow::bail!("--underlay-iface {name}: no such interface"),
        };
    }
    let index = match holder {
        Some(i) => Some(i),
        None => host
            .routes_v4()
            .await?
            .iter()
            .find(|r| r.is_default())
            .and_then(|r| r.oif),
    };
    let Some(index) = index else {
        return Ok(None);
    };
    Ok(host.links().await?.into_iter().find(|l| l.index == index))
}

impl Agent {
    /// `weftctl ns add`: builds a namespace on the bridge. On any failure,
    /// everything created so far is removed again.
    pub async fn ns_add(
        &self,
        name: String,
        ip: Option<Ipv4Addr>,
        publish: Vec<PortMapping>,
    ) -> Result<Endpoint> {
        validate_name(&name)?;
        if publish.len() > MAX_PUBLISH {
            return Err(AgentError::TooManyPorts {
                count: publish.len(),
            });
        }
        let mut inner = self.inner.lock().await;
        if inner.endpoints.contains_key(&name) {
            return Err(AgentError::Duplicate(name));
        }
        if inner.endpoints.len() >= MAX_ENDPOINTS {
            return Err(AgentError::BridgeFull);
        }
        if inner.store.is_pending(&name) {
            // An earlier ns add of this name could not be undone completely.
            self.remove_half_built(&name).await?;
            inner.store.clear_pending(&name)?;
            info!("removed the leftovers of an earlier failed ns add {name}");
        }
        let path = self.netns_path(&name);
        if path.symlink_metadata().is_ok() {
            return Err(AgentError::ForeignNetns(path));
        }
        let host_veth = host_veth_name(&name);
        if let Some(other) = inner.endpoints.values().find(|r| r.host_veth == host_veth) {
            return Err(AgentError::VethCollision {
                name,
                veth: host_veth,
                other: other.name.clone(),
            });
        }
        for (i, p) in publish.iter().enumerate() {
            if publish[..i].iter().any(|q| q.conflicts_with(p)) {
                return Err(AgentError::PublishTwice { spec: *p });
            }
            if let Some((owner, _)) = inner
                .endpoints
                .values()
                .flat_map(|r| r.publish.iter().map(move |q| (&r.name, q)))
                .find(|(_, q)| q.conflicts_with(p))
            {
                return Err(AgentError::PortPublished {
                    spec: *p,
                    port: p.host_port,
                    proto: p.proto,
                    owner: owner.clone(),
                });
            }
            probe_port(p).map_err(|reason| AgentError::PortUnavailable { spec: *p, reason })?;
        }
        let ip = inner.ipam.allocate(&name, ip)?;
        let rec = EndpointRecord {
            name: name.clone(),
            ip,
            mac: MacAddr::from_ipv4(ip),
            host_veth,
            publish,
        };
        let built = self.build_endpoint(&inner, &rec).await;
        self.pool.wake.notify_one();
        match built {
            Ok(()) => {
                info!(
                    "added namespace {name}: {ip}/{} on {BRIDGE} via {}{}",
                    self.plan.subnet.prefix(),
                    rec.host_veth,
                    published(&rec)
                );
                let ep = self.endpoint(&rec);
                inner.endpoints.insert(name, rec);
                crate::metrics::set_endpoints(inner.endpoints.len());
                Ok(ep)
            }
            // Pieces that could not be removed may still hold the address
            // (an eth0 on the bridge): keep it until they are gone.
            Err(e @ AgentError::RolledBackBadly { .. }) => Err(e),
            Err(e) => {
                inner.ipam.release(ip);
                Err(e)
            }
        }
    }

    async fn build_endpoint(&self, inner: &Inner, rec: &EndpointRecord) -> Result<()> {
        inner.store.mark_pending(&rec.name)?;
        let path = self.netns_path(&rec.name);
        let mut made_ns = false;
        let mut made_veth = false;
        let mut made_fw = false;
        let mut saved = false;
        let forwards = forwards_of(rec);
        let mut phases = Phases::start();
        let spare = self.pool.take();
        let built: Result<()> = async {
            if let Some(s) = spare {
                // The record's write (and fsync) overlaps the kernel work;
                // a failure below removes it again. A crash in between
                // leaves a saved endpoint that the next start completes.
                let writer = inner.store.endpoint_writer();
                let r = rec.clone();
                let save = tokio::task::spawn_blocking(move || writer.save(&r));
                match self.use_spare(s, rec, &path, inner.bridge).await {
                    Ok(()) => {
                        made_ns = true;
                        made_veth = true;
                        phases.mark("spare");
                    }
                    Err(e) => warn!(
                        "spare namespace unusable ({e}); building {} from scratch",
                        rec.name
                    ),
                }
                // Whatever the outcome, the record may exist: undo removes it.
                saved = true;
                save.await
                    .map_err(|e| AgentError::Other(format!("state writer: {e}")))??;
            }
            if !made_ns {
                let ns = netns::create(&path).await?;
                made_ns = true;
                phases.mark("namespace");
                self.create_veth(rec, &ns, inner.bridge).await?;
                made_veth = true;
                phases.mark("veth");
                self.ensure_ns_side(rec, &ns.netlink).await?;
                phases.mark("inside");
            }
            if !forwards.is_empty() {
                let f = forwards.clone();
                self.firewall(move |fw| fw.add_forwards(&f)).await?;
                made_fw = true;
                phases.mark("nft");
            }
            if !saved {
                inner.store.save_endpoint(rec)?;
                saved = true;
                phases.mark("state");
            }
            Ok(())
        }
        .await;
        debug!("ns add {}: {phases}", rec.name);
        let Err(error) = built else {
            // The endpoint is complete and saved; a stale marker is harmless
            // (the next start sees the saved endpoint and drops the marker).
            if let Err(e) = inner.store.clear_pending(&rec.name) {
                warn!("{e}");
            }
            return Ok(());
        };
        let mut undo = Vec::new();
        if saved {
            if let Err(e) = inner.store.remove_endpoint(&rec.name) {
                undo.push(e.to_string());
            }
        }
        if made_fw {
            let f = forwards.clone();
            if let Err(e) = self.firewall(move |fw| fw.del_forwards(&f)).await {
                undo.push(e.to_string());
            }
        }
        if made_veth {
            if let Err(e) = self.host.delete_link_by_name(&rec.host_veth).await {
                undo.push(e.to_string());
            }
        }
        if made_ns {
            if let Err(e) = netns::delete(&path) {
                undo.push(e.to_string());
            }
        }
        if undo.is_empty() {
            if let Err(e) = inner.store.clear_pending(&rec.name) {
                warn!("{e}");
            }
            warn!("ns add {} failed and was rolled back: {error}", rec.name);
            Err(error)
        } else {
            // The pending marker stays: the next ns add of this name, or the
            // next start, removes what is left.
            error!(
                "ns add {} failed ({error}) and could not be fully rolled back: {}",
                rec.name,
                undo.join("; ")
            );
            Err(AgentError::RolledBackBadly {
                error: Box::new(error),
                undo,
            })
        }
    }

    /// Turns a spare into the endpoint `rec`: names its namespace, renames
    /// and raises its host veth, and gives `eth0` its MAC, address and
    /// default route. On error it removes what it named and drops the spare.
    async fn use_spare(
        &self,
        s: Spare,
        rec: &EndpointRecord,
        path: &Path,
        bridge: u32,
    ) -> Result<()> {
        netns::attach(&s.ns, path)?;
        // The host end and the inside are independent: both at once.
        let host = self
            .host
            .rename_up(s.host_index, &s.host_name, &rec.host_veth, bridge);
        let inside = async {
            let nl = &s.ns.netlink;
            nl.set_link(s.eth_index, NS_IFACE, None, Some(rec.mac), None, true)
                .await?;
            nl.add_address(s.eth_index, rec.ip, self.plan.subnet.prefix(), NS_IFACE)
                .await?;
            nl.replace_default_route(self.gateway, s.eth_index).await
        };
        let done: Result<()> = match tokio::join!(host, inside) {
            (Err(e), _) | (_, Err(e)) => Err(e.into()),
            _ => Ok(()),
        };
        if done.is_err() {
            // By index: the spare's veth, renamed or not, never a device
            // that merely has the endpoint's name.
            let _ = self.host.delete_link(s.host_index, &s.host_name).await;
            let _ = netns::delete(path);
        }
        done
    }

    /// Keeps `--ns-pool` spare namespaces ready; woken after every `ns add`.
    /// Spares count against the bridge's port limit, so the pool shrinks
    /// as the host fills up.
    pub async fn keep_spares(self: Arc<Self>) {
        let target = self.pool.target;
        if target == 0 {
            return;
        }
        info!("keeping {target} spare namespaces ready for ns add (--ns-pool)");
        let mut failures: u32 = 0;
        loop {
            loop {
                let (bridge, endpoints) = {
                    let inner = self.inner.lock().await;
                    (inner.bridge, inner.endpoints.len())
                };
                let have = self.pool.len();
                if have >= target || endpoints + have >= MAX_ENDPOINTS || bridge == 0 {
                    break;
                }
                match self
                    .pool
                    .build(&self.host, bridge, self.mtu, NS_IFACE)
                    .await
                {
                    Ok(spare) => {
                        debug!("spare namespace ready ({})", spare.host_name);
                        self.pool.put(spare);
                        failures = 0;
                    }
                    Err(e) => {
                        failures += 1;
                        if failures <= 3 || failures.is_power_of_two() {
                            warn!("cannot build a spare namespace ({e}); ns add builds its own meanwhile");
                        }
                        let pause = std::time::Duration::from_millis(100)
                            .saturating_mul(1 << failures.min(9));
                        tokio::time::sleep(pause).await;
                        break;
                    }
                }
            }
            self.pool.wake.notified().await;
        }
    }

    /// `weftctl ns del`: removes the namespace, its veth pair (and so its
    /// address and routes) and its published ports.
    pub async fn ns_del(&self, name: &str) -> Result<Endpoint> {
        let mut inner = self.inner.lock().await;
        let rec = inner
            .endpoints
            .get(name)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(name.to_string()))?;
        let mut errors = Vec::new();
        let forwards = forwards_of(&rec);
        if !forwards.is_empty() {
            if let Err(e) = self.firewall(move |fw| fw.del_forwards(&forwards)).await {
                errors.push(e.to_string());
            }
        }
        if let Err(e) = self.host.delete_link_by_name(&rec.host_veth).await {
            errors.push(e.to_string());
        }
        if let Err(e) = netns::delete(&self.netns_path(name)) {
            errors.push(e.to_string());
        }
        if !errors.is_empty() {
            return Err(AgentError::Teardown {
                name: name.to_string(),
                errors,
            });
        }
        inner.store.remove_endpoint(name)?;
        inner.endpoints.remove(name);
        crate::metrics::set_endpoints(inner.endpoints.len());
        inner.ipam.release(rec.ip);
        info!("deleted namespace {name} ({}){}", rec.ip, published(&rec));
        Ok(self.endpoint(&rec))
    }

    pub async fn ns_list(&self) -> Vec<Endpoint> {
        self.inner
            .lock()
            .await
            .endpoints
            .values()
            .map(|r| self.endpoint(r))
            .collect()
    }

    pub async fn ns_show(&self, name: &str) -> Result<Endpoint> {
        let inner = self.inner.lock().await;
        inner
            .endpoints
            .get(name)
            .map(|r| self.endpoint(r))
            .ok_or_else(|| AgentError::NotFound(name.to_string()))
    }

    /// `weftctl status`. With `probe`, every peer's gateway is pinged
    /// through the tunnel (concurrently, at most [`PROBE_TIMEOUT_MS`]); the
    /// agent's lock is not held meanwhile, so other requests go on.
    pub async fn status(&self, probe: bool) -> Status {
        let mut status = {
            let inner = self.inner.lock().await;
            Status {
                node: self.cfg.node_name.clone(),
                subnet: self.plan.subnet.to_string(),
                gateway: self.gateway,
                bridge: BRIDGE.to_string(),
                mtu: self.mtu,
                endpoints: inner.endpoints.len(),
                controller: match self.link.get() {
                    Some(l) => l.controller_link(),
                    None => ControllerLink {
                        connected: false,
                        address: None,
                        since: None,
                    },
                },
                peers: inner
                    .plans
                    .values()
                    .map(|p| Peer {
                        name: p.name.clone(),
                        subnet: p.subnet.to_string(),
                        public_ip: p.public_ip,
                        mode: p.mode.as_str().into(),
                        reachable: None,
                        rtt_ms: None,
                    })
                    .collect(),
            }
        };
        if probe && !status.peers.is_empty() {
            let targets: Vec<Ipv4Addr> = status
                .peers
                .iter()
                .map(|p| {
                    p.subnet
                        .parse::<Ipv4Network>()
                        .map_or(Ipv4Addr::UNSPECIFIED, gateway)
                })
                .collect();
            let timeout = std::time::Duration::from_millis(PROBE_TIMEOUT_MS);
            let res = tokio::task::spawn_blocking(move || crate::probe::probe(&targets, timeout))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r);
            match res {
                Ok(rtts) => {
                    for (p, rtt) in status.peers.iter_mut().zip(rtts) {
                        p.reachable = Some(rtt.is_some());
                        p.rtt_ms = rtt.map(|d| d.as_secs_f64() * 1e3);
                    }
                }
                // Reported as not probed (null), not as unreachable.
                Err(e) => warn!("peer probe failed: {e}"),
            }
        }
        status
    }
}

/// One line for a change of the nft VXLAN peer set.
fn log_nft_peers(add: &[Ipv4Addr], del: &[Ipv4Addr], why: &str) {
    fn list(ips: &[Ipv4Addr]) -> String {
        const MAX: usize = 8;
        let mut s: Vec<String> = ips.iter().take(MAX).map(|ip| ip.to_string()).collect();
        if ips.len() > MAX {
            s.push(format!("and {} more", ips.len() - MAX));
        }
        s.join(", ")
    }
    let set = format!("inet {NFT_TABLE} {}", crate::firewall::PEERS_SET);
    match (add.is_empty(), del.is_empty()) {
        (true, true) => {}
        (false, true) => info!(
            "nft add element {set} {{ {} }}: {} joined ({why})",
            list(add),
            if add.len() == 1 { "peer" } else { "peers" }
        ),
        (true, false) => info!(
            "nft delete element {set} {{ {} }}: {} left ({why})",
            list(del),
            if del.len() == 1 { "peer" } else { "peers" }
        ),
        (false, false) => info!(
            "nft add element {set} {{ {} }}, delete {{ {} }}: peers joined and left ({why})",
            list(add),
            list(del)
        ),
    }
}

fn published(rec: &EndpointRecord) -> String {
    if rec.publish.is_empty() {
        return String::new();
    }
    let list: Vec<String> = rec.publish.iter().map(|p| p.to_string()).collect();
    format!(", publishing {}", list.join(" "))
}

/// Time spent in each step of an operation, for debug logs.
struct Phases {
    last: std::time::Instant,
    done: Vec<(&'static str, std::time::Duration)>,
}

impl Phases {
    fn start() -> Self {
        Phases {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    fn mark(&mut self, what: &'static str) {
        let now = std::time::Instant::now();
        self.done.push((what, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: std::time::Duration = self.done.iter().map(|(_, d)| *d).sum();
        write!(f, "{:.2} ms", total.as_secs_f64() * 1e3)?;
        for (what, d) in &self.done {
            write!(f, ", {what} {:.2}", d.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

/// A first start (no `node.json`) on a host whose kernel still holds
/// namespaces' veths (`wv…`) means the state was lost or `--state-dir`
/// points elsewhere: starting empty would delete every one of them. Checked
/// before anything else (in cluster mode before the controller is asked
/// for a subnet, so a refused start allocates nothing).
pub async fn refuse_lost_state(cfg: &Config) -> anyhow::Result<()> {
    let host = Netlink::connect().map_err(|e| anyhow::anyhow!("open netlink socket: {e}"))?;
    let veths: Vec<String> = host
        .links()
        .await?
        .into_iter()
        .filter(|l| is_weft_veth_name(&l.name) && l.kind.as_deref() == Some("veth"))
        .map(|l| l.name)
        .collect();
    if let Some(first) = veths.first() {
        anyhow::bail!(
            "state directory {} holds no node.json, but this host has {} weft namespace veth(s) ({first}…): the state was lost or --state-dir is wrong; nothing was changed: point --state-dir at the right directory or restore it, or delete the leftover veths (ip link del {first}) to start afresh",
            cfg.state_dir.display(),
            veths.len()
        );
    }
    Ok(())
}
