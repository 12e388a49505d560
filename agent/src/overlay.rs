//! The overlay: the vxlan device and, per remote host, a permanent
//! neighbour, an FDB entry and a route (or, with direct routing and a peer
//! on the same segment, one plain route via its public address).
//!
//! Everything is computed as a set of [`Entries`] from the peer set, and
//! every change — a snapshot, a delta, a reconcile against the kernel — is
//! the difference of two such sets, applied in one batch: all neighbours,
//! then all FDB entries, then all routes (a route never points at a tunnel
//! entry that is not there yet), then removals in the reverse order. The
//! requests of one step are pipelined on the netlink socket, so thousands
//! of peers cost a few round trips, not thousands.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use futures::StreamExt;
use ipnetwork::Ipv4Network;
use tracing::{debug, info, warn};
use weft_common::cluster::HostRecord;
use weft_common::MacAddr;

use crate::netlink::{Netlink, NetlinkError, Route, VxlanSpec, RTPROT_WEFT};

/// Netlink requests in flight at once: enough to hide the round trip,
/// few enough that the kernel's answers never overflow the socket buffer.
const IN_FLIGHT: usize = 64;
/// Peers whose every change is logged one by one; above that, a summary.
const LOG_EACH: usize = 32;

/// How a peer is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Vxlan,
    /// Plain route via the peer's public address on the underlay device.
    Direct,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Vxlan => "vxlan",
            Mode::Direct => "direct",
        }
    }
}

/// One peer as this host programs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPlan {
    pub name: String,
    pub subnet: Ipv4Network,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    pub mode: Mode,
}

/// Where a route leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTo {
    pub gateway: Ipv4Addr,
    pub oif: u32,
    pub onlink: bool,
}

/// The weft-owned kernel state of the overlay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries {
    /// Neighbours on the vxlan device: remote subnet address → VTEP MAC.
    pub neigh: BTreeMap<Ipv4Addr, MacAddr>,
    /// FDB entries on the vxlan device: VTEP MAC → public IP.
    pub fdb: BTreeSet<(MacAddr, Ipv4Addr)>,
    /// Routes (main table) to other hosts' subnets.
    pub routes: BTreeMap<Ipv4Network, RouteTo>,
}

impl Entries {
    /// What `peers` need, the vxlan device being `vxlan` and the underlay
    /// device `underlay`.
    pub fn of(peers: &BTreeMap<String, PeerPlan>, vxlan: u32, underlay: Option<u32>) -> Entries {
        let mut e = Entries::default();
        for p in peers.values() {
            match (p.mode, underlay) {
                (Mode::Direct, Some(dev)) => {
                    e.routes.insert(
                        p.subnet,
                        RouteTo {
                            gateway: p.public_ip,
                            oif: dev,
                            onlink: false,
                        },
                    );
                }
                _ => {
                    let addr = p.subnet.network();
                    e.neigh.insert(addr, p.vtep_mac);
                    e.fdb.insert((p.vtep_mac, p.public_ip));
                    e.routes.insert(
                        p.subnet,
                        RouteTo {
                            gateway: addr,
                            oif: vxlan,
                            onlink: true,
                        },
                    );
                }
            }
        }
        e
    }
}

/// The changes that take `from` to `to`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub add_neigh: Vec<(Ipv4Addr, MacAddr)>,
    pub add_fdb: Vec<(MacAddr, Ipv4Addr)>,
    pub add_routes: Vec<(Ipv4Network, RouteTo)>,
    pub del_routes: Vec<Ipv4Network>,
    pub del_fdb: Vec<(MacAddr, Ipv4Addr)>,
    pub del_neigh: Vec<Ipv4Addr>,
}

impl Diff {
    pub fn between(from: &Entries, to: &Entries) -> Diff {
        Diff {
            add_neigh: to
                .neigh
                .iter()
                .filter(|(ip, mac)| from.neigh.get(ip) != Some(mac))
                .map(|(ip, mac)| (*ip, *mac))
                .collect(),
            add_fdb: to.fdb.difference(&from.fdb).copied().collect(),
            add_routes: to
                .routes
                .iter()
                .filter(|(dst, r)| from.routes.get(dst) != Some(r))
                .map(|(dst, r)| (*dst, *r))
                .collect(),
            del_routes: from
                .routes
                .keys()
                .filter(|dst| !to.routes.contains_key(dst))
                .copied()
                .collect(),
            del_fdb: from.fdb.difference(&to.fdb).copied().collect(),
            del_neigh: from
                .neigh
                .keys()
                .filter(|ip| !to.neigh.contains_key(ip))
                .copied()
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.add_neigh.len()
            + self.add_fdb.len()
            + self.add_routes.len()
            + self.del_routes.len()
            + self.del_fdb.len()
            + self.del_neigh.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The changes of `self` that are not in `other` (e.g. a reconcile's
    /// repairs without what a plan change already explains and logs).
    pub fn without(&self, other: &Diff) -> Diff {
        fn minus<T: PartialEq + Copy>(a: &[T], b: &[T]) -> Vec<T> {
            a.iter().filter(|x| !b.contains(x)).copied().collect()
        }
        Diff {
            add_neigh: minus(&self.add_neigh, &other.add_neigh),
            add_fdb: minus(&self.add_fdb, &other.add_fdb),
            add_routes: minus(&self.add_routes, &other.add_routes),
            del_routes: minus(&self.del_routes, &other.del_routes),
            del_fdb: minus(&self.del_fdb, &other.del_fdb),
            del_neigh: minus(&self.del_neigh, &other.del_neigh),
        }
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "+{} neighbours +{} fdb +{} routes, -{} routes -{} fdb -{} neighbours",
            self.add_neigh.len(),
            self.add_fdb.len(),
            self.add_routes.len(),
            self.del_routes.len(),
            self.del_fdb.len(),
            self.del_neigh.len()
        )
    }
}

/// Failures of one batch, each with what was attempted.
#[derive(Debug, thiserror::Error)]
#[error("{} of the overlay changes failed, first: {}", .0.len(), .0[0])]
pub struct ApplyError(pub Vec<NetlinkError>);

/// The host's overlay device and its per-peer entries.
pub struct Overlay {
    nl: Netlink,
    pub spec: VxlanSpec,
    /// This host's subnet: its network address goes on the vxlan device.
    subnet: Ipv4Network,
    direct_routing: bool,
}

/// Runs `jobs` with up to [`IN_FLIGHT`] of them at once; collects failures.
/// Successes count as kernel changes of `kind` (metrics).
async fn pipelined<F>(jobs: Vec<F>, errors: &mut Vec<NetlinkError>, kind: &'static str)
where
    F: std::future::Future<Output = Result<(), NetlinkError>>,
{
    let mut s = futures::stream::iter(jobs).buffer_unordered(IN_FLIGHT);
    let mut ok = 0;
    while let Some(r) = s.next().await {
        match r {
            Ok(()) => ok += 1,
            Err(e) => errors.push(e),
        }
    }
    crate::metrics::changes(kind, ok);
}

impl Overlay {
    pub fn new(nl: Netlink, spec: VxlanSpec, subnet: Ipv4Network, direct_routing: bool) -> Self {
        Overlay {
            nl,
            spec,
            subnet,
            direct_routing,
        }
    }

    /// Creates the vxlan device or corrects it in place (MTU, MAC, up, its
    /// address); re-creates it only if it was made with other parameters.
    /// Returns its index. `start`: the agent is starting (for the log
    /// lines' reasons: what is missing then was not deleted under it).
    pub async fn ensure_device(&self, start: bool) -> Result<u32, NetlinkError> {
        let name = &self.spec.name;
        let outside = if start {
            "found so at agent start"
        } else {
            "changed outside weft"
        };
        let mut created = false;
        let link = match self.nl.link(name).await? {
            Some(l) if self.spec.matches(&l) => {
                let mtu = (l.mtu != self.spec.mtu).then_some(self.spec.mtu);
                let mac = (l.mac != Some(self.spec.mac)).then_some(self.spec.mac);
                if mtu.is_some() || mac.is_some() || !l.up {
                    self.nl
                        .set_link(l.index, name, mtu, mac, None, true)
                        .await?;
                    info!(
                        "link set {name} mtu {} address {} up: corrected (was mtu {} up={}; {outside})",
                        self.spec.mtu, self.spec.mac, l.mtu, l.up
                    );
                }
                l
            }
            other => {
                let why = match &other {
                    Some(old) => {
                        warn!(
                            "{name} exists with other parameters ({:?}, kind {:?}); re-creating it as vni {} port {} local {:?}",
                            old.vxlan, old.kind, self.spec.vni, self.spec.port, self.spec.local
                        );
                        self.nl.delete_link(old.index, name).await?;
                        "re-created: it had other parameters"
                    }
                    None if start => "agent start (not present)",
                    None => "restored (deleted outside weft)",
                };
                self.nl.create_vxlan(&self.spec).await?;
                created = true;
                info!(
                    "link add {name} type vxlan id {} dstport {} local {} address {} mtu {}: {why}",
                    self.spec.vni,
                    self.spec.port,
                    self.spec
                        .local
                        .map_or_else(|| "any".to_string(), |ip| ip.to_string()),
                    self.spec.mac,
                    self.spec.mtu
                );
                self.nl.link(name).await?.ok_or_else(|| NetlinkError {
                    what: format!("create vxlan device {name}"),
                    source: std::io::Error::other("the device vanished right after creation"),
                })?
            }
        };
        let want = (self.subnet.network(), 32);
        let addrs = self.nl.addresses_v4(link.index).await?;
        for (ip, len) in &addrs {
            if (*ip, *len) != want {
                self.nl.delete_address(link.index, *ip, *len, name).await?;
                info!(
                    "address del {ip}/{len} dev {name}: not this host's subnet address ({outside})"
                );
            }
        }
        if !addrs.contains(&want) {
            self.nl.add_address(link.index, want.0, 32, name).await?;
            let why = if created {
                "new device"
            } else if start {
                "missing at agent start"
            } else {
                "restored (removed outside weft)"
            };
            info!("address add {}/32 dev {name}: {why}", want.0);
        }
        Ok(link.index)
    }

    /// Plans each peer: direct when enabled and its public address is on
    /// the underlay's segment (the kernel routes to it without a gateway),
    /// else vxlan. Peers that would clash with this host are left out.
    pub async fn plan(
        &self,
        peers: &BTreeMap<String, HostRecord>,
        underlay: Option<u32>,
    ) -> BTreeMap<String, PeerPlan> {
        let mut out = BTreeMap::new();
        let mut direct_checks = Vec::new();
        for h in peers.values() {
            if h.subnet.overlaps(self.subnet) || Some(h.public_ip) == self.spec.local {
                warn!(
                    "ignoring peer {}: its subnet {} or address {} is this host's",
                    h.name, h.subnet, h.public_ip
                );
                continue;
            }
            out.insert(
                h.name.clone(),
                PeerPlan {
                    name: h.name.clone(),
                    subnet: h.subnet,
                    public_ip: h.public_ip,
                    vtep_mac: h.vtep_mac,
                    mode: Mode::Vxlan,
                },
            );
            if self.direct_routing && underlay.is_some() {
                direct_checks.push((h.name.clone(), h.public_ip));
            }
        }
        let nl = &self.nl;
        let mut checks = futures::stream::iter(direct_checks)
            .map(|(name, ip)| async move { (name, ip, nl.route_get(ip).await) })
            .buffer_unordered(IN_FLIGHT);
        while let Some((name, ip, r)) = checks.next().await {
            match r {
                Ok(Some(Route {
                    gateway: None, oif, ..
                })) if oif.is_some() && oif == underlay => {
                    if let Some(p) = out.get_mut(&name) {
                        p.mode = Mode::Direct;
                    }
                }
                Ok(_) => {}
                Err(e) => warn!("direct routing check for peer {name} ({ip}): {e}; using vxlan"),
            }
        }
        out
    }

    /// Reads the weft-owned entries from the kernel: all neighbours and FDB
    /// entries of the vxlan device, and main-table routes through it or
    /// marked as weft's.
    pub async fn read_kernel(&self, vxlan: u32) -> Result<Entries, NetlinkError> {
        let mut e = Entries::default();
        for n in self.nl.neighbours_v4(vxlan).await? {
            // A neighbour without an address is incomplete: stale by definition.
            let mac = n.mac.unwrap_or(MacAddr([0; 6]));
            e.neigh.insert(n.ip, mac);
        }
        for f in self.nl.fdb(vxlan).await? {
            e.fdb
                .insert((f.mac, f.dst.unwrap_or(Ipv4Addr::UNSPECIFIED)));
        }
        for r in self.nl.routes_v4().await? {
            if r.oif == Some(vxlan) || r.protocol == RTPROT_WEFT {
                let Ok(dst) = Ipv4Network::new(r.dst, r.prefix) else {
                    continue;
                };
                e.routes.insert(
                    dst,
                    RouteTo {
                        gateway: r.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
                        oif: r.oif.unwrap_or(0),
                        onlink: r.onlink,
                    },
                );
            }
        }
        Ok(e)
    }

    /// Applies a diff in the safe order. Every step is attempted even if an
    /// earlier one failed; all failures are returned together.
    pub async fn apply(&self, vxlan: u32, d: &Diff) -> Result<(), ApplyError> {
        let nl = &self.nl;
        let mut errors = Vec::new();
        pipelined(
            d.add_neigh
                .iter()
                .map(|(ip, mac)| nl.replace_neighbour(vxlan, *ip, *mac))
                .collect(),
            &mut errors,
            "neigh",
        )
        .await;
        pipelined(
            d.add_fdb
                .iter()
                .map(|(mac, ip)| nl.replace_fdb(vxlan, *mac, *ip))
                .collect(),
            &mut errors,
            "fdb",
        )
        .await;
        pipelined(
            d.add_routes
                .iter()
                .map(|(dst, r)| nl.replace_route(*dst, r.gateway, r.oif, r.onlink))
                .collect(),
            &mut errors,
            "route",
        )
        .await;
        pipelined(
            d.del_routes
                .iter()
                .map(|dst| async move {
                    nl.delete_route(&Route {
                        dst: dst.network(),
                        prefix: dst.prefix(),
                        gateway: None,
                        oif: None,
                        protocol: 0,
                        onlink: false,
                    })
                    .await
                })
                .collect(),
            &mut errors,
            "route",
        )
        .await;
        pipelined(
            d.del_fdb
                .iter()
                .map(|(mac, ip)| nl.delete_fdb(vxlan, *mac, (!ip.is_unspecified()).then_some(*ip)))
                .collect(),
            &mut errors,
            "fdb",
        )
        .await;
        pipelined(
            d.del_neigh
                .iter()
                .map(|ip| nl.delete_neighbour(vxlan, *ip))
                .collect(),
            &mut errors,
            "neigh",
        )
        .await;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApplyError(errors))
        }
    }

    /// Logs what a peer-set change does, peer by peer for small changes.
    pub fn log_change(
        &self,
        from: &BTreeMap<String, PeerPlan>,
        to: &BTreeMap<String, PeerPlan>,
        d: &Diff,
        why: &str,
    ) {
        let dev = &self.spec.name;
        let added: Vec<&PeerPlan> = to
            .values()
            .filter(|p| !from.contains_key(&p.name))
            .collect();
        let removed: Vec<&PeerPlan> = from
            .values()
            .filter(|p| !to.contains_key(&p.name))
            .collect();
        let changed: Vec<(&PeerPlan, &PeerPlan)> = to
            .values()
            .filter_map(|p| from.get(&p.name).filter(|o| *o != p).map(|o| (o, p)))
            .collect();
        if added.len() + removed.len() + changed.len() > LOG_EACH {
            info!(
                "{why}: {} peers added, {} removed, {} changed ({d})",
                added.len(),
                removed.len(),
                changed.len()
            );
            return;
        }
        let via = |p: &PeerPlan| match p.mode {
            Mode::Vxlan => format!(
                "via {} dev {dev} (vxlan to {} mac {})",
                p.subnet.network(),
                p.public_ip,
                p.vtep_mac
            ),
            Mode::Direct => format!("via {} (direct)", p.public_ip),
        };
        for p in added {
            info!(
                "route add {} {}: peer {} joined ({why})",
                p.subnet,
                via(p),
                p.name
            );
        }
        for (o, p) in changed {
            info!(
                "route replace {} {}: peer {} changed (was {} {}) ({why})",
                p.subnet,
                via(p),
                p.name,
                o.subnet,
                via(o)
            );
        }
        for p in removed {
            info!(
                "route del {} {}: peer {} left ({why})",
                p.subnet,
                via(p),
                p.name
            );
        }
    }
}

/// Why a reconcile finds the kernel's overlay entries differing from the
/// plan: the agent is starting (they changed while it was down, or are
/// left over), or someone changed them under the running agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Start,
    Outside,
}

/// Logs, entry by entry (up to a limit), what a reconcile is about to fix
/// (`kernel` is what it found, `plans` the peers the entries are for).
pub fn log_repairs(
    dev: &str,
    kernel: &Entries,
    d: &Diff,
    plans: &BTreeMap<String, PeerPlan>,
    cause: Cause,
) {
    if d.len() > LOG_EACH {
        let why = match cause {
            Cause::Start => "agent start: they changed while it was down",
            Cause::Outside => "they were changed outside weft",
        };
        info!(
            "reconcile: repairing {} overlay entries ({d}): {why}",
            d.len()
        );
    } else {
        for line in repair_lines(dev, kernel, d, plans, cause) {
            info!("{line}");
        }
    }
    debug!("reconcile diff: {d:?}");
}

/// One line per entry of `d`: what is done to the kernel, then why.
pub fn repair_lines(
    dev: &str,
    kernel: &Entries,
    d: &Diff,
    plans: &BTreeMap<String, PeerPlan>,
    cause: Cause,
) -> Vec<String> {
    let (missing, wrong, stale) = match cause {
        Cause::Start => (
            "restored at agent start (missing)",
            "corrected at agent start (changed while the agent was down)",
            "left over (its peer is gone)",
        ),
        Cause::Outside => (
            "restored (deleted outside weft)",
            "corrected (changed outside weft)",
            "no peer has it (added outside weft, or left over)",
        ),
    };
    let peer = |f: &dyn Fn(&PeerPlan) -> bool| {
        plans
            .values()
            .find(|p| f(p))
            .map_or_else(String::new, |p| format!(" for peer {}", p.name))
    };
    let mut out = Vec::new();
    for (ip, mac) in &d.add_neigh {
        let (verb, why) = match kernel.neigh.contains_key(ip) {
            true => ("replace", wrong),
            false => ("add", missing),
        };
        let of = peer(&|p| p.subnet.network() == *ip);
        out.push(format!(
            "neigh {verb} {ip} lladdr {mac} dev {dev} nud permanent{of}: {why}"
        ));
    }
    for (mac, ip) in &d.add_fdb {
        let of = peer(&|p| p.vtep_mac == *mac);
        out.push(format!(
            "fdb append {mac} dst {ip} dev {dev}{of}: {missing}"
        ));
    }
    for (dst, r) in &d.add_routes {
        let (verb, why) = match kernel.routes.contains_key(dst) {
            true => ("replace", wrong),
            false => ("add", missing),
        };
        let via = match r.onlink {
            true => format!("via {} dev {dev} onlink", r.gateway),
            false => format!("via {}", r.gateway),
        };
        let of = peer(&|p| p.subnet == *dst);
        out.push(format!("route {verb} {dst} {via}{of}: {why}"));
    }
    for dst in &d.del_routes {
        out.push(format!("route del {dst}: {stale}"));
    }
    for (mac, ip) in &d.del_fdb {
        out.push(format!("fdb del {mac} dst {ip} dev {dev}: {stale}"));
    }
    for ip in &d.del_neigh {
        out.push(format!("neigh del {ip} dev {dev}: {stale}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8, mode: Mode) -> PeerPlan {
        PeerPlan {
            name: format!("h{n}"),
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: Ipv4Addr::new(198, 18, 0, 10 + n),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, n]),
            mode,
        }
    }

    fn set(ps: &[PeerPlan]) -> BTreeMap<String, PeerPlan> {
        ps.iter().map(|p| (p.name.clone(), p.clone())).collect()
    }

    #[test]
    fn entries_per_mode() {
        let e = Entries::of(
            &set(&[peer(2, Mode::Vxlan), peer(3, Mode::Direct)]),
            7,
            Some(2),
        );
        assert_eq!(e.neigh.len(), 1);
        assert_eq!(
            e.neigh[&Ipv4Addr::new(10, 244, 2, 0)],
            MacAddr([2, 0, 0, 0, 0, 2])
        );
        assert_eq!(
            e.fdb.iter().copied().collect::<Vec<_>>(),
            vec![(MacAddr([2, 0, 0, 0, 0, 2]), Ipv4Addr::new(198, 18, 0, 12))]
        );
        let r2 = e.routes[&"10.244.2.0/24".parse().unwrap()];
        assert_eq!(
            (r2.gateway, r2.oif, r2.onlink),
            (Ipv4Addr::new(10, 244, 2, 0), 7, true)
        );
        let r3 = e.routes[&"10.244.3.0/24".parse().unwrap()];
        assert_eq!(
            (r3.gateway, r3.oif, r3.onlink),
            (Ipv4Addr::new(198, 18, 0, 13), 2, false)
        );
        // Without an underlay device, direct falls back to vxlan.
        let e = Entries::of(&set(&[peer(3, Mode::Direct)]), 7, None);
        assert_eq!(e.neigh.len(), 1);
    }

    #[test]
    fn diff_adds_removes_and_updates_in_place() {
        let a = Entries::of(&set(&[peer(2, Mode::Vxlan), peer(3, Mode::Vxlan)]), 7, None);
        assert!(Diff::between(&a, &a).is_empty());
        let mut moved = peer(3, Mode::Vxlan);
        moved.vtep_mac = MacAddr([2, 0, 0, 0, 0, 0x33]);
        moved.public_ip = Ipv4Addr::new(198, 18, 0, 99);
        let b = Entries::of(&set(&[moved.clone(), peer(4, Mode::Vxlan)]), 7, None);
        let d = Diff::between(&a, &b);
        // h3 changes in place: its neighbour is replaced, its route stays.
        assert_eq!(
            d.add_neigh,
            vec![
                (Ipv4Addr::new(10, 244, 3, 0), moved.vtep_mac),
                (Ipv4Addr::new(10, 244, 4, 0), MacAddr([2, 0, 0, 0, 0, 4]))
            ]
        );
        assert_eq!(d.add_fdb.len(), 2);
        assert_eq!(d.add_routes.len(), 1, "{d:?}");
        assert_eq!(d.del_routes, vec!["10.244.2.0/24".parse().unwrap()]);
        assert_eq!(d.del_fdb.len(), 2, "h2's and h3's old fdb entries");
        assert_eq!(d.del_neigh, vec![Ipv4Addr::new(10, 244, 2, 0)]);
        // Applying the diff to a gives b.
        let mut c = a.clone();
        for (ip, mac) in &d.add_neigh {
            c.neigh.insert(*ip, *mac);
        }
        c.fdb.extend(d.add_fdb.iter().copied());
        for (dst, r) in &d.add_routes {
            c.routes.insert(*dst, *r);
        }
        for dst in &d.del_routes {
            c.routes.remove(dst);
        }
        for f in &d.del_fdb {
            c.fdb.remove(f);
        }
        for ip in &d.del_neigh {
            c.neigh.remove(ip);
        }
        assert_eq!(c, b);
    }

    #[test]
    fn repair_lines_say_what_and_why() {
        let plans = set(&[peer(2, Mode::Vxlan), peer(3, Mode::Vxlan)]);
        let want = Entries::of(&plans, 7, None);
        // h3's route deleted outside weft, a stray route added, h2's
        // neighbour changed.
        let mut kernel = want.clone();
        kernel.routes.remove(&"10.244.3.0/24".parse().unwrap());
        kernel.routes.insert(
            "10.244.9.0/24".parse().unwrap(),
            RouteTo {
                gateway: Ipv4Addr::new(10, 244, 9, 0),
                oif: 7,
                onlink: true,
            },
        );
        kernel
            .neigh
            .insert(Ipv4Addr::new(10, 244, 2, 0), MacAddr([2, 0, 0, 0, 0, 9]));
        let d = Diff::between(&kernel, &want);
        let lines = repair_lines("weft.1", &kernel, &d, &plans, Cause::Outside);
        assert_eq!(
            lines,
            [
                "neigh replace 10.244.2.0 lladdr 02:00:00:00:00:02 dev weft.1 nud permanent for peer h2: corrected (changed outside weft)",
                "route add 10.244.3.0/24 via 10.244.3.0 dev weft.1 onlink for peer h3: restored (deleted outside weft)",
                "route del 10.244.9.0/24: no peer has it (added outside weft, or left over)",
            ]
        );
        let start = repair_lines("weft.1", &kernel, &d, &plans, Cause::Start);
        assert!(
            start[1].ends_with(": restored at agent start (missing)"),
            "{start:?}"
        );
        // A plan change's own entries are not repairs.
        assert!(d.without(&d).is_empty());
        assert_eq!(d.without(&Diff::default()), d);
    }

    #[test]
    fn mode_switch_replaces_route_and_drops_tunnel_entries() {
        let a = Entries::of(&set(&[peer(2, Mode::Vxlan)]), 7, Some(2));
        let b = Entries::of(&set(&[peer(2, Mode::Direct)]), 7, Some(2));
        let d = Diff::between(&a, &b);
        assert_eq!(d.add_routes.len(), 1);
        assert!(d.del_routes.is_empty());
        assert_eq!((d.del_fdb.len(), d.del_neigh.len()), (1, 1));
    }
}
