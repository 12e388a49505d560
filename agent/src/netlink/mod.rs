//! The agent's netlink layer: links, addresses and routes, through rtnetlink.
//!
//! A [`Netlink`] is bound to the namespace it was opened in (see
//! [`crate::netns`]); every call here acts on that namespace. The overlay's
//! pieces (vxlan device, neighbours, FDB entries, routes) are in [`overlay`].

pub mod offload;
mod overlay;

pub use overlay::{neigh_parts, VxlanInfo, VxlanSpec, RTPROT_WEFT};

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};
use thiserror::Error;
use weft_common::MacAddr;

/// A kernel refusal or a broken netlink socket, with what was attempted.
#[derive(Debug, Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    pub what: String,
    #[source]
    pub source: io::Error,
}

type Result<T> = std::result::Result<T, NetlinkError>;

fn ctx(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |e| {
        crate::metrics::netlink_error();
        let source = match &e {
            rtnetlink::Error::NetlinkError(m) => m.to_io(),
            other => io::Error::other(other.to_string()),
        };
        NetlinkError {
            what: what.into(),
            source,
        }
    }
}

/// The parts of a link the agent looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub master: Option<u32>,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    pub up: bool,
    /// The vxlan parameters, for a vxlan device.
    pub vxlan: Option<VxlanInfo>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            kind: None,
            master: None,
            mtu: 0,
            mac: None,
            up: m.header.flags.contains(LinkFlags::Up),
            vxlan: None,
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(v) => link.mtu = *v,
                LinkAttribute::Controller(i) => link.master = Some(*i),
                LinkAttribute::Address(b) if b.len() == 6 => {
                    let mut a = [0u8; 6];
                    a.copy_from_slice(b);
                    link.mac = Some(MacAddr(a));
                }
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Vxlan(v)) => {
                                link.vxlan = Some(VxlanInfo::from_attributes(v))
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// What a veth pair looks like when created: the host end joins `master`,
/// the peer is created directly inside another namespace.
pub struct VethSpec<'a> {
    pub host_name: &'a str,
    pub master: u32,
    pub mtu: u32,
    pub peer_netns: BorrowedFd<'a>,
    pub peer_name: &'a str,
    pub peer_mac: MacAddr,
    /// Bring the host end up (a spare's stays down until it is renamed).
    pub up: bool,
}

/// A netlink socket bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    /// The kernel runs one dump at a time per socket and answers EBUSY to a
    /// second one started meanwhile; dumps queue here instead.
    dump_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Netlink {
    /// Opens a socket in the calling thread's namespace. Must run inside a
    /// tokio runtime context (the connection task is spawned on it).
    pub fn connect() -> io::Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            dump_lock: Arc::default(),
        })
    }

    /// All links of the namespace, in one dump.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs = self
            .dump("list links", || self.handle.link().get().execute())
            .await?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    /// Runs one dump request, never two at once on this socket. The request
    /// is built only once the lock is held: rtnetlink sends it at `execute()`.
    async fn dump<T, S>(
        &self,
        what: impl Into<String>,
        request: impl FnOnce() -> S,
    ) -> Result<Vec<T>>
    where
        S: futures::Stream<Item = std::result::Result<T, rtnetlink::Error>>,
    {
        let _one_dump = self.dump_lock.lock().await;
        request().try_collect().await.map_err(ctx(what))
    }

    /// The link called `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let res: std::result::Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_collect()
            .await;
        match res {
            Ok(msgs) => Ok(msgs.first().map(Link::from_message)),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(ctx(format!("look up link {name}"))(e)),
        }
    }

    /// Creates a bridge, up, with a fixed MAC: the kernel otherwise gives a
    /// bridge the lowest MAC of its ports, which changes as ports come and go
    /// and makes every neighbour's ARP entry for the gateway stale.
    pub async fn create_bridge(&self, name: &str, mac: MacAddr, mtu: u32) -> Result<Link> {
        let msg = LinkBridge::new(name)
            .mtu(mtu)
            .address(mac.octets().to_vec())
            .up()
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(ctx(format!("create bridge {name}")))?;
        crate::metrics::change("link");
        self.link(name).await?.ok_or_else(|| NetlinkError {
            what: format!("create bridge {name}"),
            source: io::Error::other("the bridge vanished right after creation"),
        })
    }

    /// Changes only what is given; an unchanged link is left untouched.
    /// `name` is for the error message.
    pub async fn set_link(
        &self,
        index: u32,
        name: &str,
        mtu: Option<u32>,
        mac: Option<MacAddr>,
        master: Option<u32>,
        up: bool,
    ) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        if let Some(m) = mac {
            b = b.address(m.octets().to_vec());
        }
        if let Some(m) = master {
            b = b.controller(m);
        }
        if up {
            b = b.up();
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(ctx(format!("set link {name}")))
            .inspect(|_| crate::metrics::change("link"))
    }

    /// Renames a (down) link, makes it a port of `master` and brings it up,
    /// in one request.
    pub async fn rename_up(&self, index: u32, from: &str, to: &str, master: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .name(to.to_string())
            .controller(master)
            .up()
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(ctx(format!("rename {from} to {to}")))
            .inspect(|_| crate::metrics::change("link"))
    }

    /// Creates a veth pair in one request, the host end up if `spec.up`. The peer stays
    /// down: asking for it up in the same request makes the kernel (6.x)
    /// answer ENOTCONN, so the caller brings it up from inside its namespace.
    pub async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<()> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.peer_name.to_string())
            .mtu(spec.mtu)
            .address(spec.peer_mac.octets().to_vec())
            .setns_by_fd(spec.peer_netns.as_raw_fd())
            .build();
        let mut b = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(spec.host_name.to_string())
            .mtu(spec.mtu)
            .controller(spec.master);
        if spec.up {
            b = b.up();
        }
        let msg = b
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(ctx(format!(
                "create veth {} (peer {})",
                spec.host_name, spec.peer_name
            )))
            .inspect(|_| crate::metrics::change("link"))
    }

    /// Deletes a link; one that is already gone is not an error.
    pub async fn delete_link(&self, index: u32, name: &str) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => Ok(()),
            r => r
                .map_err(ctx(format!("delete link {name}")))
                .inspect(|_| crate::metrics::change("link")),
        }
    }

    /// Deletes the link called `name`; one that is already gone is not an error.
    pub async fn delete_link_by_name(&self, name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_name(name).build();
        match self.handle.link().del_with_message(msg).execute().await {
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => Ok(()),
            r => r
                .map_err(ctx(format!("delete link {name}")))
                .inspect(|_| crate::metrics::change("link")),
        }
    }

    /// IPv4 addresses on a link, with prefix lengths.
    pub async fn addresses_v4(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let what = format!("list addresses of link #{index}");
        let msgs = self
            .dump(what, || {
                self.handle
                    .address()
                    .get()
                    .set_link_index_filter(index)
                    .execute()
            })
            .await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.family == AddressFamily::Inet && m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }

    /// The link holding IPv4 address `ip`, if any (one dump of all addresses).
    pub async fn address_owner(&self, ip: Ipv4Addr) -> Result<Option<u32>> {
        let msgs = self
            .dump("list addresses", || self.handle.address().get().execute())
            .await?;
        Ok(msgs
            .iter()
            .find(|m| {
                m.attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(a)) if *a == ip))
            })
            .map(|m| m.header.index))
    }

    pub async fn add_address(
        &self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
        link_name: &str,
    ) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .execute()
            .await
            .map_err(ctx(format!("add address {ip}/{prefix} to {link_name}")))
            .inspect(|_| crate::metrics::change("address"))
    }

    pub async fn delete_address(
        &self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
        link_name: &str,
    ) -> Result<()> {
        let msg = rtnetlink::AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(ip, prefix)
            .build();
        self.handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(ctx(format!(
                "delete address {ip}/{prefix} from {link_name}"
            )))
            .inspect(|_| crate::metrics::change("address"))
    }

    /// IPv4 routes of the main table.
    pub async fn routes_v4(&self) -> Result<Vec<Route>> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let msgs: Vec<RouteMessage> = self
            .dump("list routes", || self.handle.route().get(filter).execute())
            .await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.table == 254)
            .map(Route::from_message)
            .collect())
    }

    /// `default via <gateway> dev <oif> onlink`, replacing any other default
    /// route; onlink so it does not depend on the interface's address being
    /// configured first.
    pub async fn replace_default_route(&self, gateway: Ipv4Addr, oif: u32) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(oif)
            .onlink()
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(ctx(format!("add default route via {gateway}")))
    }
}

/// The parts of an IPv4 route the agent looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    /// Who installed it (`RTPROT_*`); weft's own are [`RTPROT_WEFT`].
    pub protocol: u8,
    pub onlink: bool,
}

impl Route {
    fn from_message(m: &RouteMessage) -> Route {
        let mut r = Route {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix: m.header.destination_prefix_length,
            gateway: None,
            oif: None,
            protocol: m.header.protocol.into(),
            onlink: m.header.flags.contains(RouteFlags::Onlink),
        };
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => r.dst = *ip,
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => r.gateway = Some(*ip),
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                _ => {}
            }
        }
        r
    }

    pub fn is_default(&self) -> bool {
        self.prefix == 0
    }
}
