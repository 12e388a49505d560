//! The overlay's kernel objects: the vxlan device, its neighbours and FDB
//! entries, and routes to other hosts' subnets.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::link::InfoVxlan;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkVxlan, RouteMessageBuilder};
use weft_common::MacAddr;

use super::offload::VXLAN_UDP_CSUM;
use super::{ctx, Link, Netlink, Result, Route};

/// The route protocol number weft marks its routes with (`ip route` shows
/// `proto 119`), so it can tell its own routes from everyone else's.
pub const RTPROT_WEFT: u8 = 119;

/// The parameters of an existing vxlan device that weft cares about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<Ipv4Addr>,
    pub dev: Option<u32>,
    pub learning: Option<bool>,
    /// Outer UDP checksums on transmit (`udpcsum`).
    pub udp_csum: Option<bool>,
}

impl VxlanInfo {
    pub(super) fn from_attributes(attrs: &[InfoVxlan]) -> VxlanInfo {
        let mut v = VxlanInfo::default();
        for a in attrs {
            match a {
                InfoVxlan::Id(id) => v.vni = Some(*id),
                InfoVxlan::Port(p) => v.port = Some(*p),
                InfoVxlan::Local(ip) => v.local = Some(*ip),
                InfoVxlan::Link(i) => v.dev = Some(*i),
                InfoVxlan::Learning(l) => v.learning = Some(*l),
                InfoVxlan::UDPCsum(c) => v.udp_csum = Some(*c),
                _ => {}
            }
        }
        v
    }
}

/// How the vxlan device is to be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    /// The underlay interface.
    pub dev: Option<u32>,
    pub mtu: u32,
    pub mac: MacAddr,
}

impl VxlanSpec {
    /// Whether an existing device was made with these parameters (MTU, MAC
    /// and up can be changed in place; these cannot).
    pub fn matches(&self, link: &Link) -> bool {
        let Some(v) = &link.vxlan else {
            return false;
        };
        v.vni == Some(self.vni)
            && v.port == Some(self.port)
            && v.local == self.local
            && (self.dev.is_none() || v.dev == self.dev)
            && v.learning == Some(false)
            && v.udp_csum == Some(VXLAN_UDP_CSUM)
    }
}

/// An IPv4 neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neigh {
    pub ip: Ipv4Addr,
    pub mac: Option<MacAddr>,
}

/// A bridge-family FDB entry of a device (for vxlan: MAC → remote VTEP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fdb {
    pub mac: MacAddr,
    pub dst: Option<Ipv4Addr>,
}

/// The IPv4 destination and the MAC of a neighbour or FDB entry.
pub fn neigh_parts(m: &NeighbourMessage) -> (Option<Ipv4Addr>, Option<MacAddr>) {
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(d) => ip = fdb_dst(d),
            NeighbourAttribute::LinkLayerAddress(b) => mac = mac_of(b),
            _ => {}
        }
    }
    (ip, mac)
}

/// An IPv4 destination; the parser leaves addresses of family AF_BRIDGE
/// (FDB entries) as raw bytes.
fn fdb_dst(a: &NeighbourAddress) -> Option<Ipv4Addr> {
    match a {
        NeighbourAddress::Inet(ip) => Some(*ip),
        NeighbourAddress::Other(b) => <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from),
        _ => None,
    }
}

fn mac_of(bytes: &[u8]) -> Option<MacAddr> {
    let a: [u8; 6] = bytes.try_into().ok()?;
    Some(MacAddr(a))
}

impl Netlink {
    /// Creates the vxlan device, learning off, outer UDP checksums as
    /// [`VXLAN_UDP_CSUM`] says, up.
    pub async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<()> {
        let mut b = LinkVxlan::new(&spec.name, spec.vni)
            .port(spec.port)
            .learning(false)
            .udp_csum(VXLAN_UDP_CSUM)
            .mtu(spec.mtu)
            .address(spec.mac.octets().to_vec());
        if let Some(ip) = spec.local {
            b = b.local(ip);
        }
        if let Some(dev) = spec.dev {
            b = b.dev(dev);
        }
        self.handle
            .link()
            .add(b.up().build())
            .execute()
            .await
            .map_err(ctx(format!("create vxlan device {}", spec.name)))
            .inspect(|_| crate::metrics::change("link"))
    }

    /// The neighbour table of one address family, for one device.
    async fn neighbour_table(
        &self,
        family: AddressFamily,
        ifindex: u32,
    ) -> Result<Vec<NeighbourMessage>> {
        let msgs = self
            .dump(format!("list {family:?} neighbours"), || {
                self.handle
                    .neighbours()
                    .get()
                    .set_address_family(family)
                    .execute()
            })
            .await?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.ifindex == ifindex)
            .collect())
    }

    /// IPv4 neighbours of one device.
    pub async fn neighbours_v4(&self, ifindex: u32) -> Result<Vec<Neigh>> {
        let msgs = self.neighbour_table(AddressFamily::Inet, ifindex).await?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let (ip, mac) = neigh_parts(m);
                Some(Neigh { ip: ip?, mac })
            })
            .collect())
    }

    /// FDB entries of one device.
    pub async fn fdb(&self, ifindex: u32) -> Result<Vec<Fdb>> {
        let msgs = self.neighbour_table(AddressFamily::Bridge, ifindex).await?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let (dst, mac) = neigh_parts(m);
                Some(Fdb { mac: mac?, dst })
            })
            .collect())
    }

    /// `ip neigh replace IP lladdr MAC dev IFINDEX nud permanent`.
    pub async fn replace_neighbour(&self, ifindex: u32, ip: Ipv4Addr, mac: MacAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add(ifindex, IpAddr::V4(ip))
            .link_layer_address(&mac.octets())
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(ctx(format!("add neighbour {ip} lladdr {mac}")))
    }

    /// Removes a neighbour; one already gone is not an error.
    pub async fn delete_neighbour(&self, ifindex: u32, ip: Ipv4Addr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = ifindex;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        not_found_ok(
            self.handle.neighbours().del(m).execute().await,
            format!("delete neighbour {ip}"),
        )
    }

    /// `bridge fdb replace MAC dev IFINDEX dst IP self permanent`.
    pub async fn replace_fdb(&self, ifindex: u32, mac: MacAddr, dst: Ipv4Addr) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(ifindex, &mac.octets())
            .destination(IpAddr::V4(dst))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(ctx(format!("add fdb entry {mac} dst {dst}")))
    }

    /// Removes an FDB entry (with its destination, as a vxlan device keeps
    /// one per destination); one already gone is not an error.
    pub async fn delete_fdb(
        &self,
        ifindex: u32,
        mac: MacAddr,
        dst: Option<Ipv4Addr>,
    ) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = ifindex;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.octets().to_vec()));
        if let Some(ip) = dst {
            m.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        }
        not_found_ok(
            self.handle.neighbours().del(m).execute().await,
            format!("delete fdb entry {mac}"),
        )
    }

    /// `ip route replace DST via GW dev OIF [onlink] proto weft`.
    pub async fn replace_route(
        &self,
        dst: Ipv4Network,
        gateway: Ipv4Addr,
        oif: u32,
        onlink: bool,
    ) -> Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .gateway(gateway)
            .output_interface(oif)
            .protocol(RouteProtocol::from(RTPROT_WEFT));
        if onlink {
            b = b.onlink();
        }
        self.handle
            .route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(ctx(format!("add route {dst} via {gateway}")))
    }

    /// Removes a route of the main table; one already gone is not an error.
    pub async fn delete_route(&self, r: &Route) -> Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dst, r.prefix)
            .protocol(RouteProtocol::from(r.protocol));
        if let Some(oif) = r.oif {
            b = b.output_interface(oif);
        }
        if let Some(gw) = r.gateway {
            b = b.gateway(gw);
        }
        not_found_ok(
            self.handle.route().del(b.build()).execute().await,
            format!("delete route {}/{}", r.dst, r.prefix),
        )
    }

    /// The route the kernel would use to reach `ip` (`ip route get`).
    pub async fn route_get(&self, ip: Ipv4Addr) -> Result<Option<Route>> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .build();
        let res: std::result::Result<Vec<RouteMessage>, _> =
            self.handle.route().get(msg).execute().try_collect().await;
        match res {
            Ok(msgs) => Ok(msgs.first().map(Route::from_message)),
            Err(rtnetlink::Error::NetlinkError(m))
                if m.raw_code() == -libc::ENETUNREACH || m.raw_code() == -libc::EHOSTUNREACH =>
            {
                Ok(None)
            }
            Err(e) => Err(ctx(format!("look up the route to {ip}"))(e)),
        }
    }
}

fn not_found_ok(r: std::result::Result<(), rtnetlink::Error>, what: String) -> Result<()> {
    match r {
        Err(rtnetlink::Error::NetlinkError(m))
            if m.raw_code() == -libc::ENOENT || m.raw_code() == -libc::ESRCH =>
        {
            Ok(())
        }
        r => r.map_err(ctx(what)),
    }
}
