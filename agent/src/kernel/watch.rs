//! Kernel events: a netlink listener for link, address, neighbour and route
//! changes, each turned into a plain [`KernelEvent`]. Which of them need a
//! repair is decided elsewhere (`reconcile::triggers`).

use std::net::Ipv4Addr;

use futures::StreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::AsyncSocket;
use rtnetlink::MulticastGroup;
use weft_common::MacAddr;

use super::linux::neigh::neigh_parts;

/// A change the kernel announced, as far as weft looks at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    LinkDeleted {
        name: String,
    },
    /// An IPv4 address was removed from the device with this index.
    AddressRemoved {
        index: u32,
    },
    /// A neighbour (`fdb`: an FDB entry) appeared, changed or went.
    Neigh {
        new: bool,
        fdb: bool,
        ifindex: u32,
        ip: Option<Ipv4Addr>,
        mac: Option<MacAddr>,
    },
    /// A main-table IPv4 route appeared, changed or went.
    Route {
        new: bool,
        dst: Ipv4Network,
        oif: Option<u32>,
        gateway: Option<Ipv4Addr>,
        protocol: u8,
    },
}

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn route(new: bool, r: &RouteMessage) -> Option<KernelEvent> {
    if r.header.address_family != AddressFamily::Inet
        || r.header.table != RouteHeader::RT_TABLE_MAIN
    {
        return None;
    }
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut oif = None;
    let mut gateway = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            _ => {}
        }
    }
    Some(KernelEvent::Route {
        new,
        dst: Ipv4Network::new(dst, r.header.destination_prefix_length).ok()?,
        oif,
        gateway,
        protocol: r.header.protocol.into(),
    })
}

/// The event a netlink message announces, if weft looks at its kind.
pub fn parse(m: &RouteNetlinkMessage) -> Option<KernelEvent> {
    match m {
        RouteNetlinkMessage::DelLink(l) => Some(KernelEvent::LinkDeleted {
            name: link_name(l)?.to_string(),
        }),
        RouteNetlinkMessage::DelAddress(a) if a.header.family == AddressFamily::Inet => {
            Some(KernelEvent::AddressRemoved {
                index: a.header.index,
            })
        }
        RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
            let fdb = match n.header.family {
                AddressFamily::Bridge => true,
                AddressFamily::Inet => false,
                _ => return None,
            };
            let (ip, mac) = neigh_parts(n);
            Some(KernelEvent::Neigh {
                new: matches!(m, RouteNetlinkMessage::NewNeighbour(_)),
                fdb,
                ifindex: n.header.ifindex,
                ip,
                mac,
            })
        }
        RouteNetlinkMessage::NewRoute(r) => route(true, r),
        RouteNetlinkMessage::DelRoute(r) => route(false, r),
        _ => None,
    }
}

/// Listens for kernel changes in the calling thread's namespace and hands
/// each event to `on_event`. Ends when the stream does (it is logged).
pub fn spawn(
    on_event: impl Fn(KernelEvent) + Send + 'static,
    on_end: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    let (mut conn, _handle, mut events) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Neigh,
        MulticastGroup::Ipv4Route,
    ])?;
    // Programming thousands of peers makes thousands of events; a lost
    // event is caught by the periodic reconcile, but rarely lose one.
    let sock = conn.socket_mut().socket_mut();
    let _ = sock.set_rx_buf_sz(8 << 20);
    tokio::spawn(conn);
    tokio::spawn(async move {
        while let Some((msg, _)) = events.next().await {
            if let NetlinkPayload::InnerMessage(m) = msg.payload {
                if let Some(ev) = parse(&m) {
                    on_event(ev);
                }
            }
        }
        on_end();
    });
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rtnetlink::packet_route::neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourMessage,
    };
    use rtnetlink::packet_route::route::RouteProtocol;

    pub fn link(name: &str) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.attributes.push(LinkAttribute::IfName(name.into()));
        l
    }

    pub fn route_msg(dst: &str, gw: Ipv4Addr, oif: u32, proto: u8) -> RouteMessage {
        let net: Ipv4Network = dst.parse().unwrap();
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.table = 254;
        r.header.destination_prefix_length = net.prefix();
        r.header.protocol = RouteProtocol::from(proto);
        r.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                net.network(),
            )));
        r.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        r.attributes.push(RouteAttribute::Oif(oif));
        r
    }

    pub fn neigh_msg(
        family: AddressFamily,
        ifindex: u32,
        ip: Ipv4Addr,
        mac: MacAddr,
    ) -> NeighbourMessage {
        let mut n = NeighbourMessage::default();
        n.header.family = family;
        n.header.ifindex = ifindex;
        let dst = match family {
            AddressFamily::Inet => NeighbourAddress::Inet(ip),
            _ => NeighbourAddress::Other(ip.octets().to_vec()),
        };
        n.attributes.push(NeighbourAttribute::Destination(dst));
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.octets().to_vec()));
        n
    }

    #[test]
    fn messages_become_events() {
        assert_eq!(
            parse(&RouteNetlinkMessage::DelLink(link("weft0"))),
            Some(KernelEvent::LinkDeleted {
                name: "weft0".into()
            })
        );
        assert_eq!(parse(&RouteNetlinkMessage::NewLink(link("weft0"))), None);
        let gw = Ipv4Addr::new(10, 244, 2, 0);
        assert_eq!(
            parse(&RouteNetlinkMessage::DelRoute(route_msg(
                "10.244.2.0/24",
                gw,
                7,
                119
            ))),
            Some(KernelEvent::Route {
                new: false,
                dst: "10.244.2.0/24".parse().unwrap(),
                oif: Some(7),
                gateway: Some(gw),
                protocol: 119
            })
        );
        let mut other_table = route_msg("10.244.2.0/24", gw, 7, 119);
        other_table.header.table = 255;
        assert_eq!(parse(&RouteNetlinkMessage::NewRoute(other_table)), None);
        let mac = MacAddr([2, 0, 0, 0, 0, 2]);
        let pub_ip = Ipv4Addr::new(198, 18, 0, 12);
        assert_eq!(
            parse(&RouteNetlinkMessage::NewNeighbour(neigh_msg(
                AddressFamily::Bridge,
                7,
                pub_ip,
                mac
            ))),
            Some(KernelEvent::Neigh {
                new: true,
                fdb: true,
                ifindex: 7,
                ip: Some(pub_ip),
                mac: Some(mac)
            })
        );
    }
}
