//! A netlink socket bound to one network namespace, through rtnetlink:
//! devices, addresses and routes.
//!
//! Every socket asks for extended acknowledgements (`NETLINK_EXT_ACK`), so
//! a refusal carries the kernel's own sentence ("Nexthop has invalid
//! gateway"), and for strict checking of dump requests
//! (`NETLINK_GET_STRICT_CHK`), so the kernel filters dumps (routes by
//! protocol and device, neighbours by device) instead of the agent
//! reading every entry of the host. The overlay's entries (neighbours,
//! FDB entries, the vxlan device) are in `neigh.rs`.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use futures::TryStreamExt;
use rtnetlink::packet_core::ErrorMessage;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoBridge, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::sys::AsyncSocket;
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};
use weft_common::MacAddr;

use super::neigh::vxlan_info;
use crate::kernel::{Cause, KernelError};
use crate::model::observed::VxlanInfo;

pub(super) type Result<T> = std::result::Result<T, KernelError>;

/// The kernel's sentence in an extended acknowledgement: the error
/// message's payload is the original request (its whole length, as this
/// socket does not cap acknowledgements) followed by attributes, of which
/// `NLMSGERR_ATTR_MSG` (1) holds a NUL-terminated string.
pub(super) fn ext_ack_message(e: &ErrorMessage) -> Option<String> {
    let p = &e.header;
    let orig_len = u32::from_ne_bytes(p.get(..4)?.try_into().ok()?) as usize;
    let mut at = orig_len.max(16).checked_add(3)? & !3;
    while at + 4 <= p.len() {
        let len = u16::from_ne_bytes([p[at], p[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([p[at + 2], p[at + 3]]) & 0x3fff;
        if len < 4 || at + len > p.len() {
            return None;
        }
        if kind == 1 {
            let v = &p[at + 4..at + len];
            let v = v.split(|b| *b == 0).next().unwrap_or(v);
            return Some(String::from_utf8_lossy(v).into_owned()).filter(|s| !s.is_empty());
        }
        at += (len + 3) & !3;
    }
    None
}

/// An rtnetlink failure as a kernel error, with what was attempted.
pub(super) fn ctx(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    move |e| {
        let cause = match &e {
            rtnetlink::Error::NetlinkError(m) => Cause::Refused {
                errno: m.raw_code().abs(),
                message: ext_ack_message(m),
            },
            other => Cause::Other(other.to_string()),
        };
        KernelError::new(what, cause)
    }
}

/// Whether `e` is a refusal with errno `code`.
pub(super) fn refused_with(e: &rtnetlink::Error, code: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -code)
}

/// A device as the kernel reports it: indexes, not names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawLink {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub master: Option<u32>,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    pub up: bool,
    /// The vxlan parameters (the underlay device as an index).
    pub vxlan: Option<(VxlanInfo, Option<u32>)>,
}

impl RawLink {
    fn from_message(m: &LinkMessage) -> RawLink {
        let mut link = RawLink {
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
                LinkAttribute::Address(b) => link.mac = mac_of(b),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Vxlan(v)) => link.vxlan = Some(vxlan_info(v)),
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

pub(super) fn mac_of(bytes: &[u8]) -> Option<MacAddr> {
    let a: [u8; 6] = bytes.try_into().ok()?;
    Some(MacAddr(a))
}

/// The parts of an IPv4 route weft looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawRoute {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub protocol: u8,
    pub onlink: bool,
}

impl RawRoute {
    fn from_message(m: &RouteMessage) -> RawRoute {
        let mut r = RawRoute {
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
}

/// What a route dump is narrowed to (in the kernel).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RouteFilter {
    pub protocol: Option<u8>,
    pub oif: Option<u32>,
    /// Only default routes (filtered here: the kernel cannot).
    pub default_only: bool,
}

/// A veth pair to create: its host end and the peer in another namespace.
pub(super) struct VethSpec<'a> {
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
    pub(super) handle: rtnetlink::Handle,
    /// The kernel runs one dump at a time per socket and answers EBUSY to a
    /// second one started meanwhile; dumps queue here instead.
    dump_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Netlink {
    /// Opens a socket in the calling thread's namespace. Must run inside a
    /// tokio runtime context (the connection task is spawned on it).
    pub fn connect() -> io::Result<Netlink> {
        let (mut conn, handle, _) = rtnetlink::new_connection()?;
        let sock = conn.socket_mut().socket_mut();
        sock.set_ext_ack(true)?;
        sock.set_netlink_get_strict_chk(true)?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            dump_lock: Arc::default(),
        })
    }

    /// Runs one dump request, never two at once on this socket. The request
    /// is built only once the lock is held: rtnetlink sends it at `execute()`.
    pub(super) async fn dump<T, S>(
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

    /// Every device of the namespace, in one dump.
    pub(super) async fn links(&self) -> Result<Vec<RawLink>> {
        let msgs = self
            .dump("list links", || self.handle.link().get().execute())
            .await?;
        Ok(msgs.iter().map(RawLink::from_message).collect())
    }

    /// The device called `name`, if there is one.
    pub(super) async fn link(&self, name: &str) -> Result<Option<RawLink>> {
        let res: std::result::Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_collect()
            .await;
        match res {
            Ok(msgs) => Ok(msgs.first().map(RawLink::from_message)),
            Err(e) if refused_with(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(ctx(format!("look up link {name}"))(e)),
        }
    }

    /// Creates a bridge, up, with a fixed MAC.
    pub(super) async fn create_bridge(&self, name: &str, mac: MacAddr, mtu: u32) -> Result<()> {
        // Bridged traffic through the IP hooks (br_netfilter), where network
        // policy is enforced: set on weft's own bridge, whatever the
        // host-wide default is.
        let msg = LinkBridge::new(name)
            .append_info_data(InfoBridge::NfCallIpTables(true))
            .mtu(mtu)
            .address(mac.octets().to_vec())
            .up()
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(ctx(format!("create bridge {name}")))
    }

    /// Changes only what is given. `name` is for the error message.
    pub(super) async fn set_link(
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
    }

    /// Renames a (down) link, makes it a port of `master` and brings it up,
    /// in one request.
    pub(super) async fn rename_up(
        &self,
        index: u32,
        from: &str,
        to: &str,
        master: u32,
    ) -> Result<()> {
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
    }

    /// Creates a veth pair in one request: the host end a port of
    /// `master`, the peer created directly in its namespace. The peer
    /// stays down: asking for it up in the same request makes the kernel
    /// (6.x) answer ENOTCONN, so it is brought up from inside.
    pub(super) async fn create_veth(&self, v: VethSpec<'_>) -> Result<()> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(v.peer_name.to_string())
            .mtu(v.mtu)
            .address(v.peer_mac.octets().to_vec())
            .setns_by_fd(v.peer_netns.as_raw_fd())
            .build();
        let mut b = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(v.host_name.to_string())
            .mtu(v.mtu)
            .controller(v.master);
        if v.up {
            b = b.up();
        }
        let msg = b
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(ctx(format!(
                "create veth {} (peer {})",
                v.host_name, v.peer_name
            )))
    }

    /// Deletes a link; one that is already gone is not an error.
    pub(super) async fn delete_link(&self, index: u32, name: &str) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Err(e) if refused_with(&e, libc::ENODEV) => Ok(()),
            r => r.map_err(ctx(format!("delete link {name}"))),
        }
    }

    /// Deletes the link called `name`; one that is already gone is not an error.
    pub(super) async fn delete_link_by_name(&self, name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_name(name).build();
        match self.handle.link().del_with_message(msg).execute().await {
            Err(e) if refused_with(&e, libc::ENODEV) => Ok(()),
            r => r.map_err(ctx(format!("delete link {name}"))),
        }
    }

    /// IPv4 addresses with prefix lengths, by device index: of one device
    /// (filtered by the kernel) or of all.
    pub(super) async fn addresses(&self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let what = match index {
            Some(i) => format!("list addresses of link #{i}"),
            None => "list addresses".to_string(),
        };
        let msgs = self
            .dump(what, || {
                let mut req = self.handle.address().get();
                if let Some(i) = index {
                    req = req.set_link_index_filter(i);
                }
                req.execute()
            })
            .await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.family == AddressFamily::Inet)
            .filter(|m| index.is_none_or(|i| m.header.index == i))
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => {
                        Some((m.header.index, *ip, m.header.prefix_len))
                    }
                    _ => None,
                })
            })
            .collect())
    }

    pub(super) async fn add_address(
        &self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
        dev: &str,
    ) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .execute()
            .await
            .map_err(ctx(format!("add address {ip}/{prefix} to {dev}")))
    }

    pub(super) async fn delete_address(
        &self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
        dev: &str,
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
            .map_err(ctx(format!("delete address {ip}/{prefix} from {dev}")))
    }

    /// IPv4 routes of the main table, narrowed by `f` in the kernel.
    pub(super) async fn routes(&self, f: RouteFilter) -> Result<Vec<RawRoute>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        if let Some(p) = f.protocol {
            msg.header.protocol = RouteProtocol::from(p);
        }
        if let Some(oif) = f.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        let msgs: Vec<RouteMessage> = self
            .dump("list routes", || self.handle.route().get(msg).execute())
            .await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.table == RouteHeader::RT_TABLE_MAIN)
            .filter(|m| !f.default_only || m.header.destination_prefix_length == 0)
            .map(RawRoute::from_message)
            .filter(|r| f.protocol.is_none_or(|p| r.protocol == p))
            .filter(|r| f.oif.is_none_or(|o| r.oif == Some(o)))
            .collect())
    }

    /// `default via <gateway> dev <oif> onlink`, replacing any other default
    /// route; onlink so it does not depend on the address being there first.
    pub(super) async fn replace_default_route(&self, gateway: Ipv4Addr, oif: u32) -> Result<()> {
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

    /// The route the kernel would use to reach `ip` (`ip route get`); `None`
    /// when it has none.
    pub(super) async fn route_get(&self, ip: Ipv4Addr) -> Result<Option<RawRoute>> {
        // A get request under strict checking carries nothing but the
        // destination.
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 32;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(ip)));
        let res: std::result::Result<Vec<RouteMessage>, _> =
            self.handle.route().get(msg).execute().try_collect().await;
        match res {
            Ok(msgs) => Ok(msgs.first().map(RawRoute::from_message)),
            Err(e)
                if refused_with(&e, libc::ENETUNREACH) || refused_with(&e, libc::EHOSTUNREACH) =>
            {
                Ok(None)
            }
            Err(e) => Err(ctx(format!("look up the route to {ip}"))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_with(payload: Vec<u8>) -> ErrorMessage {
        let mut e = ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(-libc::EINVAL);
        e.header = payload;
        e
    }

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = 4 + value.len();
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn the_kernels_sentence_is_read_from_the_extended_ack() {
        // The original request: a 20-byte message (header and 4 bytes).
        let mut p = Vec::new();
        p.extend_from_slice(&20u32.to_ne_bytes());
        p.extend_from_slice(&[0; 16]);
        p.extend(nla(4, &7u32.to_ne_bytes())); // NLMSGERR_ATTR_OFFS
        p.extend(nla(1, b"Nexthop has invalid gateway\0"));
        assert_eq!(
            ext_ack_message(&error_with(p)).as_deref(),
            Some("Nexthop has invalid gateway")
        );
        // Without attributes, or with broken ones: no sentence.
        let mut bare = Vec::new();
        bare.extend_from_slice(&16u32.to_ne_bytes());
        bare.extend_from_slice(&[0; 12]);
        assert_eq!(ext_ack_message(&error_with(bare.clone())), None);
        bare.extend_from_slice(&[200, 0, 1, 0]);
        assert_eq!(ext_ack_message(&error_with(bare)), None);
        assert_eq!(ext_ack_message(&error_with(vec![1, 2])), None);
    }
}
