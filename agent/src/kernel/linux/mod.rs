//! [`Kernel`] on Linux: rtnetlink for devices, addresses, routes and the
//! overlay's entries, bind-mounted network namespaces, `/proc/sys`, and
//! nftables through the `nft` binary.
//!
//! - `netlink.rs`: the socket, devices, addresses, routes;
//! - `neigh.rs`: the vxlan device, neighbours, FDB entries, weft's routes;
//! - `observe.rs`: what the kernel holds, as model data;
//! - `apply.rs`: operations, resolved from names to indexes and applied;
//! - `spares.rs`: spare namespaces held for `ns add`.

mod apply;
pub mod neigh;
mod netlink;
mod observe;
mod spares;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use async_trait::async_trait;
use weft_common::{PortMapping, Proto};

use super::{Cause, Kernel, KernelError, OnError, Report, SpareSpec};
use crate::firewall::Table;
use crate::model::observed::{
    Device, Hop, HostQuery, HostView, NetnsPresence, NsView, PolicyView, UnderlayView,
};
use crate::model::ops::{Op, SpareId};

pub use netlink::Netlink;
use spares::Spare;

/// The kernel of the namespace the agent runs in.
pub struct LinuxKernel {
    host: Netlink,
    /// Device indexes by name, as last seen: a device keeps its index for
    /// its life (the kernel does not reuse one soon), so a batch needs no
    /// lookup for weft's bridge and tunnel. Refreshed by every observation
    /// of the host, dropped for a name made or deleted, and cleared after
    /// any failed operation.
    indexes: Mutex<HashMap<String, u32>>,
    netns_dir: PathBuf,
    firewall: Table,
    /// The network policy table (`<table>_policy`).
    policy: Table,
    spares: Mutex<HashMap<SpareId, Spare>>,
    seq: AtomicU64,
}

impl LinuxKernel {
    /// Opens a netlink socket in the calling thread's namespace (inside a
    /// tokio runtime). Endpoints' namespaces live under `netns_dir`;
    /// `table` is the nftables table (family inet) weft owns.
    pub fn new(netns_dir: PathBuf, table: &str) -> Result<LinuxKernel, KernelError> {
        let host = Netlink::connect().map_err(|e| KernelError::io("open netlink socket", e))?;
        Ok(LinuxKernel {
            host,
            indexes: Mutex::default(),
            netns_dir,
            firewall: Table::new(table),
            policy: Table::new(&format!("{table}_policy")),
            spares: Mutex::default(),
            seq: AtomicU64::new(0),
        })
    }

    fn netns_path(&self, name: &str) -> PathBuf {
        self.netns_dir.join(name)
    }
}

#[async_trait]
impl Kernel for LinuxKernel {
    async fn observe_host(&self, q: &HostQuery) -> Result<HostView, KernelError> {
        let view = observe::host(self, q).await?;
        *self.indexes.lock().expect("indexes") = view
            .devices
            .values()
            .map(|d| (d.name.clone(), d.index))
            .collect();
        Ok(view)
    }

    async fn observe_netns(&self, name: &str) -> Result<Option<NsView>, KernelError> {
        observe::netns(self, name).await
    }

    async fn netns_presence(&self, name: &str) -> NetnsPresence {
        super::netns::presence(&self.netns_path(name))
    }

    async fn observe_underlay(&self) -> Result<UnderlayView, KernelError> {
        observe::underlay(self).await
    }

    async fn route_lookups(&self, ips: &[Ipv4Addr]) -> (BTreeMap<Ipv4Addr, Hop>, Vec<KernelError>) {
        observe::route_lookups(self, ips).await
    }

    async fn port_free(&self, p: &PortMapping) -> Result<(), String> {
        port_free(p)
    }

    async fn apply(&self, ops: &[Op], on_error: OnError) -> Report {
        apply::apply(self, ops, on_error).await
    }

    async fn build_spare(&self, spec: &SpareSpec) -> Result<SpareId, KernelError> {
        spares::build(self, spec).await
    }

    fn discard_spare(&self, id: SpareId) {
        self.spares.lock().expect("spares").remove(&id);
    }

    async fn devices(&self) -> Result<Vec<Device>, KernelError> {
        Ok(observe::devices(&self.host.links().await?)
            .into_values()
            .collect())
    }

    async fn observe_policy(&self) -> Result<Option<PolicyView>, KernelError> {
        let t = self.policy.clone();
        nft("read the network policy table".into(), move || {
            t.observe_policy()
        })
        .await
    }
}

/// Runs an nft command (a child process) off the runtime's threads; a
/// failure keeps its type ([`Cause::Firewall`]).
async fn nft<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> Result<T, crate::firewall::FirewallError> + Send + 'static,
) -> Result<T, KernelError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KernelError::other(what.clone(), format!("firewall task failed: {e}")))?
        .map_err(|e| KernelError::new(what, Cause::Firewall(Box::new(e))))
}

/// A bridge port needs no addresses of its own (see `netns::create`): no
/// IPv6 on a veth's host end.
fn no_ipv6_on_port(dev: &str) -> Result<(), KernelError> {
    super::sysctl::set(
        &crate::model::desired::dev_key("ipv6", dev, "disable_ipv6"),
        "1",
    )
    .map_err(|e| KernelError::io(format!("disable IPv6 on {dev}"), e))
}

/// Whether a host port is free: nothing on this host listens on it (a
/// listener bound and dropped at once).
fn port_free(p: &PortMapping) -> Result<(), String> {
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
