//! The overlay's kernel objects through rtnetlink: the vxlan device, its
//! permanent neighbours and FDB entries, and weft's routes.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::link::InfoVxlan;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkVxlan, RouteMessageBuilder};
use weft_common::MacAddr;

use super::netlink::{ctx, mac_of, refused_with, Netlink, Result};
use crate::model::desired::VxlanSpec;
use crate::model::observed::VxlanInfo;
use crate::model::{RTPROT_WEFT, VXLAN_UDP_CSUM};

/// The parameters of a vxlan device, and its underlay device's index.
pub(super) fn vxlan_info(attrs: &[InfoVxlan]) -> (VxlanInfo, Option<u32>) {
    let mut v = VxlanInfo::default();
    let mut dev = None;
    for a in attrs {
        match a {
            InfoVxlan::Id(id) => v.vni = Some(*id),
            InfoVxlan::Port(p) => v.port = Some(*p),
            InfoVxlan::Local(ip) => v.local = Some(*ip),
            InfoVxlan::Link(i) => dev = Some(*i),
            InfoVxlan::Learning(l) => v.learning = Some(*l),
            InfoVxlan::UDPCsum(c) => v.udp_csum = Some(*c),
            _ => {}
        }
    }
    (v, dev)
}

/// The IPv4 destination and the MAC of a neighbour or FDB entry.
pub fn neigh_parts(m: &NeighbourMessage) -> (Option<Ipv4Addr>, Option<MacAddr>) {
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(d) => ip = dst_of(d),
            NeighbourAttribute::LinkLayerAddress(b) => mac = mac_of(b),
            _ => {}
        }
    }
    (ip, mac)
}

/// An IPv4 destination; the parser leaves addresses of family AF_BRIDGE
/// (FDB entries) as raw bytes.
fn dst_of(a: &NeighbourAddress) -> Option<Ipv4Addr> {
    match a {
        NeighbourAddress::Inet(ip) => Some(*ip),
        NeighbourAddress::Other(b) => <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from),
        _ => None,
    }
}

fn not_found_ok(r: std::result::Result<(), rtnetlink::Error>, what: String) -> Result<()> {
    match r {
        Err(e) if refused_with(&e, libc::ENOENT) || refused_with(&e, libc::ESRCH) => Ok(()),
        r => r.map_err(ctx(what)),
    }
}

impl Netlink {
    /// Creates the vxlan device, learning off, outer UDP checksums as
    /// [`VXLAN_UDP_CSUM`] says, up. `dev`: the underlay device's index.
    pub(super) async fn create_vxlan(&self, spec: &VxlanSpec, dev: Option<u32>) -> Result<()> {
        let mut b = LinkVxlan::new(&spec.name, spec.vni)
            .port(spec.port)
            .learning(false)
            .udp_csum(VXLAN_UDP_CSUM)
            .mtu(spec.mtu)
            .address(spec.mac.octets().to_vec());
        if let Some(ip) = spec.local {
            b = b.local(ip);
        }
        if let Some(dev) = dev {
            b = b.dev(dev);
        }
        self.handle
            .link()
            .add(b.up().build())
            .execute()
            .await
            .map_err(ctx(format!("create vxlan device {}", spec.name)))
    }

    /// The neighbour table of one address family, of one device (the
    /// kernel filters by device).
    async fn neighbour_table(
        &self,
        family: AddressFamily,
        ifindex: u32,
    ) -> Result<Vec<NeighbourMessage>> {
        let msgs = self
            .dump(
                format!("list {family:?} neighbours of link #{ifindex}"),
                || {
                    let mut req = self.handle.neighbours().get().set_address_family(family);
                    req.message_mut()
                        .attributes
                        .push(NeighbourAttribute::IfIndex(ifindex));
                    req.execute()
                },
            )
            .await?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.ifindex == ifindex)
            .collect())
    }

    /// IPv4 neighbours of one device: address and MAC (a neighbour without
    /// a MAC is incomplete).
    pub(super) async fn neighbours(
        &self,
        ifindex: u32,
    ) -> Result<Vec<(Ipv4Addr, Option<MacAddr>)>> {
        let msgs = self.neighbour_table(AddressFamily::Inet, ifindex).await?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let (ip, mac) = neigh_parts(m);
                Some((ip?, mac))
            })
            .collect())
    }

    /// FDB entries of one device: MAC and destination.
    pub(super) async fn fdb(&self, ifindex: u32) -> Result<Vec<(MacAddr, Option<Ipv4Addr>)>> {
        let msgs = self.neighbour_table(AddressFamily::Bridge, ifindex).await?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let (dst, mac) = neigh_parts(m);
                Some((mac?, dst))
            })
            .collect())
    }

    /// `ip neigh replace IP lladdr MAC dev IFINDEX nud permanent`.
    pub(super) async fn replace_neighbour(
        &self,
        ifindex: u32,
        ip: Ipv4Addr,
        mac: MacAddr,
    ) -> Result<()> {
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
    pub(super) async fn delete_neighbour(&self, ifindex: u32, ip: Ipv4Addr) -> Result<()> {
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
    pub(super) async fn replace_fdb(
        &self,
        ifindex: u32,
        mac: MacAddr,
        dst: Ipv4Addr,
    ) -> Result<()> {
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
    pub(super) async fn delete_fdb(
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
    pub(super) async fn replace_route(
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

    /// Removes the main-table route to `dst`, whoever made it; one already
    /// gone is not an error.
    pub(super) async fn delete_route(&self, dst: Ipv4Network) -> Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .build();
        // Any protocol: a route planted on weft's device by hand goes too.
        b.header.protocol = RouteProtocol::Unspec;
        not_found_ok(
            self.handle.route().del(b).execute().await,
            format!("delete route {dst}"),
        )
    }
}
