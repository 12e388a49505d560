//! Spare namespaces: anonymous network namespaces (held by this process's
//! file descriptor and netlink socket, never bind-mounted) with `lo` up and
//! a veth pair whose inner end is `eth0` and whose host end, down and under
//! a temporary name (`wp<pid>.<n>`), is already a port of the bridge.
//! Nothing about a spare is persisted: if the agent dies, the kernel frees
//! it with the last file descriptor (a veth goes with the namespace holding
//! its peer). `Op::AdoptSpare` turns one into an endpoint.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use weft_common::MacAddr;

use super::netlink::VethSpec;
use super::LinuxKernel;
use crate::kernel::netns::{self, Namespace};
use crate::kernel::{KernelError, SpareSpec};
use crate::model::ops::SpareId;

/// Prefix of a spare's host veth: distinct from endpoint veths (`wv…`), so
/// reconcile never takes a spare for an orphan.
pub const SPARE_PREFIX: &str = "wp";

pub(super) struct Spare {
    pub ns: Namespace,
    pub host_name: String,
    pub host_index: u32,
    pub eth_index: u32,
}

/// Builds one spare. On error nothing is left behind (what was made lives
/// in the dropped namespace or is deleted).
pub(super) async fn build(k: &LinuxKernel, spec: &SpareSpec) -> Result<SpareId, KernelError> {
    let n = k.seq.fetch_add(1, Ordering::Relaxed);
    let host_name = format!(
        "{SPARE_PREFIX}{}.{}",
        std::process::id() % 100_000,
        n % 1_000_000
    );
    let host = &k.host;
    let master = host
        .link(&spec.master)
        .await?
        .ok_or_else(|| KernelError::other(format!("find link {}", spec.master), "no such device"))?
        .index;
    let ns = netns::create_anonymous().await?;
    host.create_veth(VethSpec {
        host_name: &host_name,
        master,
        mtu: spec.mtu,
        peer_netns: ns.fd.as_fd(),
        peer_name: &spec.iface,
        peer_mac: MacAddr::random_local(),
        up: false,
    })
    .await?;
    let finish = async {
        super::no_ipv6_on_port(&host_name)?;
        let host_link = host
            .link(&host_name)
            .await?
            .ok_or_else(|| KernelError::other(format!("find link {host_name}"), "it vanished"))?;
        let links = ns.netlink.links().await?;
        let find = |name: &str| {
            links.iter().find(|l| l.name == name).ok_or_else(|| {
                KernelError::other("build a spare namespace", format!("it has no {name}"))
            })
        };
        let lo = find("lo")?;
        ns.netlink
            .set_link(lo.index, "lo", None, None, None, true)
            .await?;
        let eth_index = find(&spec.iface)?.index;
        Ok::<_, KernelError>((host_link.index, eth_index))
    };
    match finish.await {
        Ok((host_index, eth_index)) => {
            let id = SpareId(n);
            k.spares.lock().expect("spares").insert(
                id,
                Spare {
                    ns,
                    host_name,
                    host_index,
                    eth_index,
                },
            );
            Ok(id)
        }
        Err(e) => {
            let _ = host.delete_link_by_name(&host_name).await;
            Err(e)
        }
    }
}
