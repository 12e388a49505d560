//! What the kernel holds, read into model data: devices by name (their
//! master and underlay device named too), addresses, weft's overlay
//! entries and routes, sysctls, namespace paths and weft's nftables table.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use ipnetwork::Ipv4Network;
use weft_common::MacAddr;

use super::netlink::{Netlink, RawLink, RawRoute, RouteFilter};
use super::LinuxKernel;
use crate::kernel::{netns, sysctl, KernelError};
use crate::model::observed::{
    Device, Hop, HostQuery, HostView, NetnsPresence, NsView, UnderlayView,
};
use crate::model::overlay::{Entries, RouteTo};
use crate::model::RTPROT_WEFT;

/// Lookups in flight at once: enough to hide the round trip, few enough
/// that the kernel's answers never overflow the socket buffer.
pub(super) const IN_FLIGHT: usize = 64;

/// Devices by name, with indexes turned into names.
pub(super) fn devices(links: &[RawLink]) -> BTreeMap<String, Device> {
    let names: HashMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
    let name_of = |i: Option<u32>| i.and_then(|i| names.get(&i)).map(|n| n.to_string());
    links
        .iter()
        .map(|l| {
            let d = Device {
                index: l.index,
                name: l.name.clone(),
                kind: l.kind.clone(),
                master: name_of(l.master),
                mtu: l.mtu,
                mac: l.mac,
                up: l.up,
                vxlan: l.vxlan.clone().map(|(mut v, dev)| {
                    v.dev = name_of(dev);
                    v
                }),
            };
            (d.name.clone(), d)
        })
        .collect()
}

fn addresses_by_name(
    addrs: Vec<(u32, Ipv4Addr, u8)>,
    devices: &BTreeMap<String, Device>,
) -> BTreeMap<String, std::collections::BTreeSet<(Ipv4Addr, u8)>> {
    let names: HashMap<u32, &str> = devices
        .values()
        .map(|d| (d.index, d.name.as_str()))
        .collect();
    let mut out: BTreeMap<String, std::collections::BTreeSet<(Ipv4Addr, u8)>> = BTreeMap::new();
    for (i, ip, len) in addrs {
        if let Some(n) = names.get(&i) {
            out.entry(n.to_string()).or_default().insert((ip, len));
        }
    }
    out
}

fn route_to(r: &RawRoute, names: &HashMap<u32, String>) -> Option<(Ipv4Network, RouteTo)> {
    let dst = Ipv4Network::new(r.dst, r.prefix).ok()?;
    let dev = r
        .oif
        .map(|i| names.get(&i).cloned().unwrap_or_else(|| format!("#{i}")))
        .unwrap_or_default();
    Some((
        dst,
        RouteTo {
            gateway: r.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
            dev: dev.into(),
            onlink: r.onlink,
        },
    ))
}

/// The overlay's entries: every neighbour and FDB entry of the vxlan
/// device, and the main-table routes through it or marked as weft's.
async fn overlay(
    nl: &Netlink,
    vxlan: Option<&Device>,
    devices: &BTreeMap<String, Device>,
) -> Result<Entries, KernelError> {
    let mut e = Entries::default();
    let names: HashMap<u32, String> = devices
        .values()
        .map(|d| (d.index, d.name.clone()))
        .collect();
    let mut routes = nl
        .routes(RouteFilter {
            protocol: Some(RTPROT_WEFT),
            ..Default::default()
        })
        .await?;
    if let Some(v) = vxlan {
        for (ip, mac) in nl.neighbours(v.index).await? {
            // A neighbour without an address is incomplete: stale by definition.
            e.neigh.insert(ip, mac.unwrap_or(MacAddr([0; 6])));
        }
        for (mac, dst) in nl.fdb(v.index).await? {
            e.fdb.insert((mac, dst.unwrap_or(Ipv4Addr::UNSPECIFIED)));
        }
        routes.extend(
            nl.routes(RouteFilter {
                oif: Some(v.index),
                ..Default::default()
            })
            .await?,
        );
    }
    e.routes = routes.iter().filter_map(|r| route_to(r, &names)).collect();
    Ok(e)
}

pub(super) async fn host(k: &LinuxKernel, q: &HostQuery) -> Result<HostView, KernelError> {
    let nl = &k.host;
    let devices = devices(&nl.links().await?);
    let mut addrs = Vec::new();
    for name in &q.addresses_of {
        if let Some(d) = devices.get(name) {
            addrs.extend(nl.addresses(Some(d.index)).await?);
        }
    }
    let vxlan = q.vxlan.as_ref().and_then(|n| devices.get(n));
    let overlay = overlay(nl, vxlan, &devices).await?;
    let sysctls = q
        .sysctls
        .iter()
        .filter_map(|key| sysctl::read(key).map(|v| (key.clone(), v)))
        .collect();
    let netns = q
        .netns
        .iter()
        .map(|n| (n.clone(), netns::presence(&k.netns_path(n))))
        .collect();
    let firewall = match &q.firewall {
        None => Default::default(),
        Some(spec) => {
            let (table, spec) = (k.firewall.clone(), spec.clone());
            super::nft("read the nftables table".into(), move || {
                table.observe(&spec)
            })
            .await?
        }
    };
    Ok(HostView {
        addresses: addresses_by_name(addrs, &devices),
        devices,
        overlay,
        sysctls,
        netns,
        firewall,
    })
}

/// Default routes as (gateway, device name).
fn default_routes(
    routes: &[RawRoute],
    devices: &BTreeMap<String, Device>,
) -> Vec<(Option<Ipv4Addr>, Option<String>)> {
    routes
        .iter()
        .map(|r| {
            let dev = r
                .oif
                .and_then(|i| devices.values().find(|d| d.index == i))
                .map(|d| d.name.clone());
            (r.gateway, dev)
        })
        .collect()
}

pub(super) async fn netns(k: &LinuxKernel, name: &str) -> Result<Option<NsView>, KernelError> {
    let path = k.netns_path(name);
    if netns::presence(&path) != NetnsPresence::Mounted {
        return Ok(None);
    }
    let ns = netns::open(&path).await?;
    let (devices, addresses, default_routes) = layout(&ns.netlink).await?;
    Ok(Some(NsView {
        devices,
        addresses,
        default_routes,
    }))
}

type Addresses = BTreeMap<String, std::collections::BTreeSet<(Ipv4Addr, u8)>>;

/// A namespace's devices, their addresses and its default routes.
async fn layout(
    nl: &Netlink,
) -> Result<
    (
        BTreeMap<String, Device>,
        Addresses,
        Vec<(Option<Ipv4Addr>, Option<String>)>,
    ),
    KernelError,
> {
    let devices = devices(&nl.links().await?);
    let addrs = nl.addresses(None).await?;
    let routes = nl
        .routes(RouteFilter {
            default_only: true,
            ..Default::default()
        })
        .await?;
    let addresses = addresses_by_name(addrs, &devices);
    let defaults = default_routes(&routes, &devices);
    Ok((devices, addresses, defaults))
}

pub(super) async fn underlay(k: &LinuxKernel) -> Result<UnderlayView, KernelError> {
    let (devices, addresses, defaults) = layout(&k.host).await?;
    Ok(UnderlayView {
        devices,
        addresses,
        default_dev: defaults.into_iter().find_map(|(_, dev)| dev),
    })
}

/// How the kernel reaches each address. Output devices are named from the
/// index cache the last observation filled; links are dumped only when a
/// route leaves through a device that cache does not know.
pub(super) async fn route_lookups(
    k: &LinuxKernel,
    ips: &[Ipv4Addr],
) -> (BTreeMap<Ipv4Addr, Hop>, Vec<KernelError>) {
    let nl = &k.host;
    let mut todo = ips.iter().copied();
    let mut in_flight = FuturesUnordered::new();
    let mut found = Vec::new();
    let mut errors = Vec::new();
    loop {
        while in_flight.len() < IN_FLIGHT {
            let Some(ip) = todo.next() else { break };
            in_flight.push(async move { (ip, nl.route_get(ip).await) });
        }
        let Some((ip, r)) = in_flight.next().await else {
            break;
        };
        match r {
            Ok(Some(r)) => found.push((ip, r.gateway, r.oif)),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    let mut names: HashMap<u32, String> = k
        .indexes
        .lock()
        .expect("indexes")
        .iter()
        .map(|(name, &i)| (i, name.clone()))
        .collect();
    if found
        .iter()
        .any(|(_, _, oif)| oif.is_some_and(|i| !names.contains_key(&i)))
    {
        match nl.links().await {
            Ok(l) => names = l.into_iter().map(|l| (l.index, l.name)).collect(),
            Err(e) => return (BTreeMap::new(), vec![e]),
        }
    }
    let hops = found
        .into_iter()
        .map(|(ip, gateway, oif)| {
            let dev = oif.and_then(|i| names.get(&i).cloned());
            (ip, Hop { gateway, dev })
        })
        .collect();
    (hops, errors)
}
