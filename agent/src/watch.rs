//! Repairs without waiting: a netlink listener for link, address,
//! neighbour and route changes, and the loop that reconciles when one of
//! them touches what weft owns (or every [`PERIOD`] regardless).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::AsyncSocket;
use rtnetlink::MulticastGroup;
use tracing::{debug, info, warn};

use crate::agent::{Agent, WatchView, BRIDGE};
use crate::netlink::{neigh_parts, RTPROT_WEFT};

/// A full reconcile at least this often, whatever the events said.
pub const PERIOD: Duration = Duration::from_secs(30);
/// Events are gathered this long before one reconcile handles them all.
const SETTLE: Duration = Duration::from_millis(100);

/// Runs the reconcile loop: on every wake-up of `agent.repair` (after
/// [`SETTLE`]) and every [`PERIOD`].
pub async fn repair_loop(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = agent.repair.notified() => tokio::time::sleep(SETTLE).await,
            _ = tick.tick() => {}
        }
        agent.repair().await;
    }
}

/// Listens for kernel changes and wakes the repair loop when one of them
/// removes or alters something weft owns, or adds an entry weft does not
/// want on its devices.
pub fn spawn_listener(agent: Arc<Agent>) -> std::io::Result<()> {
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
    let vxlan = agent.vxlan_name().map(str::to_string);
    tokio::spawn(async move {
        while let Some((msg, _)) = events.next().await {
            let NetlinkPayload::InnerMessage(m) = msg.payload else {
                continue;
            };
            let why = {
                let view = agent.view.lock().expect("watch view");
                concerns_weft(&m, &view, vxlan.as_deref())
            };
            if let Some(why) = why {
                info!("{why}: repairing");
                agent.repair.notify_one();
            }
        }
        warn!("netlink event stream ended; repairs now only every {PERIOD:?}");
    });
    Ok(())
}

/// Why a kernel event needs a repair, if it does.
pub fn concerns_weft(
    m: &RouteNetlinkMessage,
    view: &WatchView,
    vxlan: Option<&str>,
) -> Option<String> {
    match m {
        RouteNetlinkMessage::DelLink(l) => {
            let name = link_name(l)?;
            // A deleted endpoint veth is left to the periodic reconcile:
            // ns del deletes them all the time.
            let ours = name == BRIDGE || Some(name) == vxlan;
            ours.then(|| format!("link {name} was deleted"))
        }
        RouteNetlinkMessage::DelAddress(a) => {
            let idx = a.header.index;
            (idx != 0 && (idx == view.bridge || idx == view.vxlan) && is_v4(a))
                .then(|| format!("an address of link #{idx} was removed"))
        }
        RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
            if view.vxlan == 0 || n.header.ifindex != view.vxlan {
                return None;
            }
            let new = matches!(m, RouteNetlinkMessage::NewNeighbour(_));
            let (ip, mac) = neigh_parts(n);
            if n.header.family == AddressFamily::Bridge {
                let key = (mac?, ip.unwrap_or(Ipv4Addr::UNSPECIFIED));
                let wanted = view.desired.fdb.contains(&key);
                (new != wanted).then(|| {
                    format!(
                        "fdb entry {} dst {} {} on the vxlan device",
                        key.0,
                        key.1,
                        if new { "appeared" } else { "was removed" }
                    )
                })
            } else if n.header.family == AddressFamily::Inet {
                let ip = ip?;
                let want = view.desired.neigh.get(&ip);
                let ok = if new {
                    want.is_some() && want == mac.as_ref()
                } else {
                    want.is_none()
                };
                (!ok).then(|| {
                    format!(
                        "neighbour {ip} {} on the vxlan device",
                        if new { "changed" } else { "was removed" }
                    )
                })
            } else {
                None
            }
        }
        RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
            let (dst, oif, gw) = route_parts(r)?;
            let ours = (view.vxlan != 0 && oif == Some(view.vxlan))
                || u8::from(r.header.protocol) == RTPROT_WEFT;
            let want = view.desired.routes.get(&dst);
            if !ours {
                // Someone else's route for a peer's subnet shadows ours only
                // if it replaced it; that shows up as our route's removal.
                return None;
            }
            let new = matches!(m, RouteNetlinkMessage::NewRoute(_));
            let ok = if new {
                want.is_some_and(|w| Some(w.oif) == oif && Some(w.gateway) == gw)
            } else {
                want.is_none()
            };
            (!ok).then(|| {
                format!(
                    "route {dst} {}",
                    if new {
                        "appeared or changed"
                    } else {
                        "was removed"
                    }
                )
            })
        }
        _ => None,
    }
    .inspect(|why| debug!("kernel event: {why}"))
}

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn is_v4(a: &AddressMessage) -> bool {
    a.header.family == AddressFamily::Inet
}

/// Destination, output device and gateway of a main-table IPv4 route.
fn route_parts(r: &RouteMessage) -> Option<(Ipv4Network, Option<u32>, Option<Ipv4Addr>)> {
    if r.header.address_family != AddressFamily::Inet || r.header.table != 254 {
        return None;
    }
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut oif = None;
    let mut gw = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(*ip),
            _ => {}
        }
    }
    let net = Ipv4Network::new(dst, r.header.destination_prefix_length).ok()?;
    Some((net, oif, gw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::{Entries, RouteTo};
    use rtnetlink::packet_route::neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourMessage,
    };
    use rtnetlink::packet_route::route::RouteProtocol;
    use rtnetlink::packet_route::AddressFamily;
    use weft_common::MacAddr;

    const VX: u32 = 7;
    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    fn view() -> WatchView {
        let mut desired = Entries::default();
        desired.neigh.insert(Ipv4Addr::new(10, 244, 2, 0), MAC);
        desired.fdb.insert((MAC, Ipv4Addr::new(198, 18, 0, 12)));
        desired.routes.insert(
            "10.244.2.0/24".parse().unwrap(),
            RouteTo {
                gateway: Ipv4Addr::new(10, 244, 2, 0),
                oif: VX,
                onlink: true,
            },
        );
        WatchView {
            bridge: 3,
            vxlan: VX,
            desired,
        }
    }

    fn link(name: &str) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.attributes.push(LinkAttribute::IfName(name.into()));
        l
    }

    fn route(dst: &str, gw: Ipv4Addr, oif: u32, proto: u8) -> RouteMessage {
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

    fn neigh(family: AddressFamily, ip: Ipv4Addr, mac: MacAddr) -> NeighbourMessage {
        let mut n = NeighbourMessage::default();
        n.header.family = family;
        n.header.ifindex = VX;
        let dst = match family {
            AddressFamily::Inet => NeighbourAddress::Inet(ip),
            _ => NeighbourAddress::Other(ip.octets().to_vec()),
        };
        n.attributes.push(NeighbourAttribute::Destination(dst));
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.octets().to_vec()));
        n
    }

    fn check(m: RouteNetlinkMessage) -> bool {
        concerns_weft(&m, &view(), Some("weft.1")).is_some()
    }

    #[test]
    fn deleted_weft_devices_need_repair_others_do_not() {
        assert!(check(RouteNetlinkMessage::DelLink(link("weft0"))));
        assert!(check(RouteNetlinkMessage::DelLink(link("weft.1"))));
        assert!(!check(RouteNetlinkMessage::DelLink(link("eth1"))));
        assert!(!check(RouteNetlinkMessage::NewLink(link("weft0"))));
    }

    #[test]
    fn routes_compared_with_the_desired_set() {
        let gw = Ipv4Addr::new(10, 244, 2, 0);
        // Our own route appearing as wanted, or a foreign route: nothing.
        assert!(!check(RouteNetlinkMessage::NewRoute(route(
            "10.244.2.0/24",
            gw,
            VX,
            RTPROT_WEFT
        ))));
        assert!(!check(RouteNetlinkMessage::NewRoute(route(
            "192.168.0.0/16",
            Ipv4Addr::new(198, 18, 0, 1),
            2,
            4
        ))));
        // Wanted route removed, stale route planted on the vxlan device,
        // a weft route pointing elsewhere: repair.
        assert!(check(RouteNetlinkMessage::DelRoute(route(
            "10.244.2.0/24",
            gw,
            VX,
            RTPROT_WEFT
        ))));
        assert!(check(RouteNetlinkMessage::NewRoute(route(
            "10.244.9.0/24",
            Ipv4Addr::new(10, 244, 9, 0),
            VX,
            4
        ))));
        assert!(check(RouteNetlinkMessage::NewRoute(route(
            "10.244.2.0/24",
            Ipv4Addr::new(198, 18, 0, 99),
            2,
            RTPROT_WEFT
        ))));
        // Removing a route nobody wants any more (a peer left): nothing.
        assert!(!check(RouteNetlinkMessage::DelRoute(route(
            "10.244.9.0/24",
            Ipv4Addr::new(10, 244, 9, 0),
            VX,
            RTPROT_WEFT
        ))));
    }

    #[test]
    fn neighbours_and_fdb_compared_with_the_desired_set() {
        let n = Ipv4Addr::new(10, 244, 2, 0);
        let pub_ip = Ipv4Addr::new(198, 18, 0, 12);
        let other = MacAddr([2, 0, 0, 0, 0, 9]);
        let inet = AddressFamily::Inet;
        let br = AddressFamily::Bridge;
        assert!(!check(RouteNetlinkMessage::NewNeighbour(neigh(
            inet, n, MAC
        ))));
        assert!(check(RouteNetlinkMessage::NewNeighbour(neigh(
            inet, n, other
        ))));
        assert!(check(RouteNetlinkMessage::DelNeighbour(neigh(
            inet, n, MAC
        ))));
        assert!(!check(RouteNetlinkMessage::NewNeighbour(neigh(
            br, pub_ip, MAC
        ))));
        assert!(check(RouteNetlinkMessage::NewNeighbour(neigh(
            br, pub_ip, other
        ))));
        assert!(check(RouteNetlinkMessage::DelNeighbour(neigh(
            br, pub_ip, MAC
        ))));
        // Another device's neighbours are not weft's business.
        let mut foreign = neigh(inet, n, other);
        foreign.header.ifindex = 2;
        assert!(!check(RouteNetlinkMessage::NewNeighbour(foreign)));
    }
}
