//! Observe, decide, apply: the host namespace, the overlay, weft's
//! nftables table and every endpoint are brought in line with what they
//! should be, at start (`Cause::Start`), on kernel events and periodically
//! (`Cause::Repair`), and when the peer set changes ([`Reconciler::set_peers`]).
//! Only what differs is changed, so traffic of working endpoints and peers
//! never stops.
//!
//! - `explain.rs`: the log lines of overlay changes (pure);
//! - `triggers.rs`: which kernel events need a repair (pure).
//!
//! When reconciles run (the repair loop) is the agent's business
//! (`crate::agent`).

pub mod explain;
pub mod triggers;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Mutex, Notify};
use tracing::{debug, error, info, warn};
use weft_common::events;

use crate::kernel::{Kernel, KernelError, OnError, Report};
use crate::model::desired::{self, HostSpec};
use crate::model::diff::{self, Cause, Change, DiffError, EndpointCheck};
use crate::model::endpoint::EndpointRecord;
use crate::model::observed::{HostQuery, HostView};
use crate::model::ops::{DevName, Op};
use crate::model::overlay::{self, count_modes, Diff, Entries, PathFacts, Paths, PeerSet};
use crate::model::BRIDGE;
use crate::telemetry::metrics;
use triggers::WatchView;

/// Overlay operations applied per call: enough to keep the kernel's
/// pipeline full, few enough that a large batch costs little memory.
const CHUNK: usize = 1024;

/// Why a reconcile failed; what it could do was done.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("read the kernel's state: {0}")]
    Observe(#[from] KernelError),
    #[error("{0}")]
    Refused(#[from] DiffError),
    #[error("{} change(s) failed, first: {}", .0.len(), .0[0])]
    Apply(Vec<KernelError>),
}

/// What a reconcile found and did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Endpoints that could not be restored (the others were).
    pub broken: usize,
    /// Attachments whose namespace is gone: the caller releases them.
    pub gone: Vec<String>,
}

/// The overlay as programmed now.
#[derive(Default)]
struct Programmed {
    peers: PeerSet,
    paths: Paths,
    /// The addresses in the nft VXLAN peer set; `None` when unknown (a
    /// failed update), which the next reconcile repairs.
    nft_peers: Option<BTreeSet<Ipv4Addr>>,
}

/// Keeps the host in line; see the module documentation.
pub struct Reconciler {
    kernel: Arc<dyn Kernel>,
    spec: HostSpec,
    direct_routing: bool,
    overlay: Mutex<Programmed>,
    view: std::sync::Mutex<WatchView>,
    /// Wakes the repair loop: something weft owns changed or failed.
    wake: Notify,
}

fn log_change(c: &Change) {
    if c.quiet {
        debug!("{}: {}", c.op, c.why);
    } else {
        info!("{}: {}", c.op, c.why);
    }
}

/// Counts what a batch did (metrics) and returns its failures.
fn record(report: Report) -> Vec<KernelError> {
    metrics::applied(report.by_kind(), report.kernel_failures());
    report.failures.into_iter().map(|f| f.error).collect()
}

impl Reconciler {
    /// `peers`: the peer set to program first (saved, or empty).
    pub fn new(
        kernel: Arc<dyn Kernel>,
        spec: HostSpec,
        direct_routing: bool,
        peers: PeerSet,
    ) -> Reconciler {
        Reconciler {
            kernel,
            view: std::sync::Mutex::new(WatchView {
                vxlan: spec.vxlan.as_ref().map(|v| v.name.clone()),
                ..Default::default()
            }),
            spec,
            direct_routing,
            overlay: Mutex::new(Programmed {
                peers,
                ..Default::default()
            }),
            wake: Notify::new(),
        }
    }

    pub fn spec(&self) -> &HostSpec {
        &self.spec
    }

    /// Asks the repair loop for a reconcile soon.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// The peers as programmed now.
    pub async fn paths(&self) -> Paths {
        self.overlay.lock().await.paths.clone()
    }

    /// A kernel event: wakes the repair loop when it touches what weft owns.
    pub fn event(&self, ev: &crate::kernel::watch::KernelEvent) {
        let why = triggers::needs_repair(ev, &self.view.lock().expect("watch view"));
        if let Some(why) = why {
            info!("{why}: repairing");
            self.wake();
        }
    }

    /// Each peer's path, asking the kernel how it reaches the peers when
    /// direct routing is on.
    async fn paths_of(&self, peers: &PeerSet) -> Paths {
        let underlay = self
            .spec
            .underlay
            .as_deref()
            .filter(|_| self.direct_routing);
        let hops = match underlay {
            Some(_) => {
                let ips: Vec<Ipv4Addr> = peers.values().map(|h| h.public_ip).collect();
                let (hops, errors) = self.kernel.route_lookups(&ips).await;
                for e in errors {
                    warn!("direct routing check: {e}; using vxlan");
                }
                Some(hops)
            }
            None => None,
        };
        let facts = PathFacts {
            subnet: Some(self.spec.subnet),
            local: self.spec.vxlan.as_ref().and_then(|v| v.local),
            underlay,
            hops: hops.as_ref(),
        };
        let (paths, ignored) = overlay::paths(peers, &facts);
        for i in ignored {
            warn!(
                "ignoring peer {}: its subnet {} or address {} is this host's",
                i.name, i.subnet, i.public_ip
            );
        }
        paths
    }

    fn entries(&self, paths: &Paths) -> Entries {
        match &self.spec.vxlan {
            Some(v) => Entries::of(paths, &v.name, self.spec.underlay.as_deref()),
            None => Entries::default(),
        }
    }

    /// Programs a new peer set (a snapshot or delta from the controller):
    /// the difference to what is programmed now, in one batch.
    pub async fn set_peers(&self, peers: PeerSet, why: &str) {
        let Some(vx) = self.spec.vxlan.as_ref().map(|v| v.name.clone()) else {
            return;
        };
        let mut st = self.overlay.lock().await;
        let paths = self.paths_of(&peers).await;
        let to = self.entries(&paths);
        let d = Diff::between(&self.entries(&st.paths), &to);
        match explain::peer_changes(&vx, &st.paths, &paths, &d, why) {
            Ok(lines) => {
                for c in lines {
                    info!(event = events::PEER_CHANGE, peer = %c.peer, subnet = %c.subnet, change = c.change, why, "{}", c.line);
                }
            }
            Err(summary) => info!("{summary}"),
        }
        self.view.lock().expect("watch view").desired = to;
        let started = Instant::now();
        // New peers' addresses go into the nft set before their tunnel
        // entries exist, so their first packets are not dropped.
        let want: BTreeSet<Ipv4Addr> = paths.values().map(|p| p.public_ip).collect();
        let nft = st.nft_peers.clone().and_then(|have| {
            let add: Vec<Ipv4Addr> = want.difference(&have).copied().collect();
            let del: Vec<Ipv4Addr> = have.difference(&want).copied().collect();
            (!add.is_empty() || !del.is_empty()).then_some(Op::UpdatePeers { add, del })
        });
        if let Some(op) = nft {
            if let Op::UpdatePeers { add, del } = &op {
                let who = match (add.len(), del.len()) {
                    (1, 0) => "peer joined",
                    (_, 0) => "peers joined",
                    (0, 1) => "peer left",
                    (0, _) => "peers left",
                    _ => "peers joined and left",
                };
                info!("{op}: {who} ({why})");
            }
            let failed = record(
                self.kernel
                    .apply(std::slice::from_ref(&op), OnError::Stop)
                    .await,
            );
            match failed.first() {
                None => st.nft_peers = Some(want),
                Some(e) => {
                    error!("{e}; repairing with a full firewall sync");
                    st.nft_peers = None;
                    self.wake();
                }
            }
        }
        let failed = self.apply_overlay(&d, &vx).await;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if let Some(first) = failed.first() {
            error!(
                "{} of the overlay changes failed, first: {first}; repairing with a reconcile",
                failed.len()
            );
            for e in failed.iter().skip(1).take(5) {
                debug!("also failed: {e}");
            }
            self.wake();
        } else if !d.is_empty() {
            // Each change was logged above, before it was made; this says
            // the batch is in the kernel, and how long it took.
            info!(
                event = events::OVERLAY_PROGRAMMED,
                peers = paths.len(),
                changes = d.len(),
                ms,
                why,
                "overlay programmed: {} peers, {} kernel changes in {ms:.1} ms ({d})",
                paths.len(),
                d.len(),
            );
        }
        let (vxlan, direct) = count_modes(&paths);
        metrics::set_peers(vxlan, direct);
        st.paths = paths;
        st.peers = peers;
    }

    /// Brings the host namespace, the overlay, the nft table and every
    /// endpoint in `endpoints` in line; `pending` names endpoints whose
    /// `ns add` may have left pieces behind. Everything that can be done is
    /// done; the failures come back together.
    pub async fn reconcile(
        &self,
        cause: Cause,
        endpoints: &BTreeMap<String, EndpointRecord>,
        pending: &[String],
    ) -> Result<Outcome, ReconcileError> {
        let started = Instant::now();
        let mut st = self.overlay.lock().await;
        let peers = st.peers.clone();
        let paths = self.paths_of(&peers).await;
        let want = desired::host(&self.spec, endpoints.values(), &paths);
        let vxlan = self.spec.vxlan.as_ref().map(|v| v.name.clone());
        let q = HostQuery {
            addresses_of: [Some(BRIDGE.to_string()), vxlan.clone()]
                .into_iter()
                .flatten()
                .collect(),
            vxlan: vxlan.clone(),
            sysctls: want.sysctls.iter().map(|s| s.key.clone()).collect(),
            netns: endpoints
                .values()
                .map(|r| r.netns().to_string())
                .chain(pending.iter().cloned())
                .collect(),
            firewall: Some(self.spec.firewall.clone()),
        };
        let mut seen = self.kernel.observe_host(&q).await?;
        let mut failed = Vec::new();

        // The host namespace: sysctls, the bridge, the vxlan device.
        let (host, vxlan_new) = diff::host(&self.spec, &want.sysctls, &seen, cause)?;
        for c in &host {
            log_change(c);
        }
        let created = host
            .iter()
            .any(|c| matches!(c.op, Op::CreateBridge { .. } | Op::CreateVxlan(_)));
        let host_ops: Vec<Op> = host.into_iter().map(|c| c.op).collect();
        let host_failed = record(self.kernel.apply(&host_ops, OnError::Stop).await);
        if !host_failed.is_empty() {
            // Nothing else can work without the bridge and the tunnel.
            return Err(ReconcileError::Apply(host_failed));
        }
        if created {
            seen.devices = self
                .kernel
                .devices()
                .await?
                .into_iter()
                .map(|d| (d.name.clone(), d))
                .collect();
        }

        // The overlay's entries.
        if let Some(vx) = &vxlan {
            let mut kernel = seen.overlay.clone();
            if vxlan_new {
                // A new device has no entries, and no routes through it.
                kernel.neigh.clear();
                kernel.fdb.clear();
                kernel.routes.retain(|_, r| &*r.dev != vx.as_str());
            }
            let d = Diff::between(&kernel, &want.overlay);
            // A path change here (a peer switched between direct and vxlan
            // because the underlay's routes changed) is logged peer by
            // peer; its entries are then not logged again as repairs.
            let mut planned = Diff::default();
            if cause == Cause::Repair && paths != st.paths {
                planned = Diff::between(&self.entries(&st.paths), &want.overlay);
                match explain::peer_changes(
                    vx,
                    &st.paths,
                    &paths,
                    &planned,
                    "underlay route changed",
                ) {
                    Ok(lines) => lines.iter().for_each(|c| info!("{}", c.line)),
                    Err(summary) => info!("{summary}"),
                }
            }
            let repairs = d.without(&planned);
            if !repairs.is_empty() {
                match explain::repairs(vx, &kernel, &repairs, &paths, cause) {
                    Ok(lines) => lines.iter().for_each(|l| info!("{l}")),
                    Err(summary) => info!("{summary}"),
                }
                debug!("reconcile diff: {d:?}");
            }
            failed.extend(self.apply_overlay(&d, vx).await);
        }
        {
            let mut view = self.view.lock().expect("watch view");
            view.desired = want.overlay.clone();
            let names = [
                Some(BRIDGE),
                vxlan.as_deref(),
                self.spec.underlay.as_deref(),
            ];
            view.devices = names
                .into_iter()
                .flatten()
                .filter_map(|n| seen.devices.get(n).map(|d| (d.index, n.to_string())))
                .collect();
        }

        // weft's nftables table.
        let fw = diff::firewall(&want.firewall, &seen.firewall, cause);
        for c in &fw {
            log_change(c);
        }
        let fw_ops: Vec<Op> = fw.into_iter().map(|c| c.op).collect();
        let fw_failed = record(self.kernel.apply(&fw_ops, OnError::Stop).await);
        st.nft_peers = fw_failed.is_empty().then(|| want.firewall.peers.clone());
        failed.extend(fw_failed);

        // What a failed or interrupted ns add left.
        for name in pending.iter().filter(|n| !endpoints.contains_key(*n)) {
            let veth = weft_common::name::host_veth_name(name);
            let changes = diff::leftovers(name, &veth, &seen);
            failed.extend(self.apply_changes(changes).await);
            // Gone now: not an orphan to delete again below.
            seen.devices.remove(&veth);
        }

        // Every endpoint: one broken endpoint must not keep the others
        // from being served.
        let mut outcome = Outcome::default();
        for e in &want.endpoints {
            let changes = match self.check_endpoint(e, &seen, cause).await {
                Ok(None) => {
                    outcome.gone.push(e.name.clone());
                    continue;
                }
                Ok(Some(c)) => c,
                Err(err) => {
                    outcome.broken += 1;
                    error!(
                        "cannot look into namespace {:?}: {err}; the others are served",
                        e.name
                    );
                    continue;
                }
            };
            let errs = self.apply_changes(changes).await;
            if let Some(first) = errs.first() {
                outcome.broken += 1;
                error!("cannot restore namespace {:?}: {first}; the others are served, delete and re-add it to repair", e.name);
            }
        }
        failed.extend(
            self.apply_changes(diff::orphan_veths(&want.endpoints, &seen))
                .await,
        );

        let (vx_peers, direct) = count_modes(&paths);
        metrics::set_peers(vx_peers, direct);
        st.paths = paths;
        if cause == Cause::Start {
            self.host_ready(endpoints.len(), &st.paths, &outcome, started);
        }
        if failed.is_empty() {
            Ok(outcome)
        } else {
            Err(ReconcileError::Apply(failed))
        }
    }

    /// Applies an overlay diff step by step, each step in chunks of
    /// [`CHUNK`] operations made only when they are applied (a snapshot of
    /// thousands of peers never holds all its operations at once); every
    /// step is attempted, and a step ends before the next begins.
    async fn apply_overlay(&self, d: &Diff, vxlan: &str) -> Vec<KernelError> {
        let vxlan: DevName = vxlan.into();
        let mut failed = Vec::new();
        for n in 0..Diff::STEPS {
            let len = d.step_len(n);
            for from in (0..len).step_by(CHUNK) {
                let ops = d.step(&vxlan, n, from..(from + CHUNK).min(len));
                failed.extend(record(self.kernel.apply(&ops, OnError::Continue).await));
            }
        }
        failed
    }

    /// What an endpoint needs, looking inside its namespace when its host
    /// side says it must; `None` for an attachment whose namespace is gone.
    async fn check_endpoint(
        &self,
        e: &crate::model::endpoint::EndpointSpec,
        seen: &HostView,
        cause: Cause,
    ) -> Result<Option<Vec<Change>>, KernelError> {
        match diff::endpoint(e, seen, None, cause) {
            EndpointCheck::Healthy => Ok(Some(Vec::new())),
            EndpointCheck::Repair(c) => Ok(Some(c)),
            EndpointCheck::Gone => Ok(None),
            EndpointCheck::LookInside => {
                let inside = self.kernel.observe_netns(&e.netns).await?;
                match diff::endpoint(e, seen, inside.as_ref(), cause) {
                    EndpointCheck::Repair(c) => Ok(Some(c)),
                    EndpointCheck::Gone => Ok(None),
                    _ => Ok(Some(Vec::new())),
                }
            }
        }
    }

    /// Logs and applies changes in order, stopping at the first failure.
    async fn apply_changes(&self, changes: Vec<Change>) -> Vec<KernelError> {
        if changes.is_empty() {
            return Vec::new();
        }
        for c in &changes {
            log_change(c);
        }
        let ops: Vec<Op> = changes.into_iter().map(|c| c.op).collect();
        record(self.kernel.apply(&ops, OnError::Stop).await)
    }

    fn host_ready(&self, endpoints: usize, paths: &Paths, o: &Outcome, started: Instant) {
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let broken = match o.broken {
            0 => String::new(),
            n => format!(", {n} of them broken (see above)"),
        };
        let overlay = match &self.spec.vxlan {
            Some(v) => format!(
                ", {} {} peers ({} direct)",
                v.name,
                paths.len(),
                count_modes(paths).1
            ),
            None => String::new(),
        };
        info!(
            event = events::HOST_READY,
            endpoints,
            peers = paths.len(),
            ms,
            "host ready: bridge {BRIDGE} {}/{} mtu {}, {endpoints} namespaces{broken}{overlay}",
            self.spec.gateway(),
            self.spec.subnet.prefix(),
            self.spec.mtu,
        );
    }
}
