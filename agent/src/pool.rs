//! Spare namespaces, built ahead of `ns add` so that adding one only names
//! and addresses what already exists.
//!
//! A spare is an anonymous network namespace (held by this process's file
//! descriptor and netlink socket, never bind-mounted) with `lo` up and a
//! veth pair whose inner end is `eth0` and whose host end, down and under a
//! temporary name (`wp<pid>.<n>`), is already a port of the bridge. Taking
//! one bind-mounts the namespace at its name, renames the host end to the
//! endpoint's veth name and brings it up, and gives `eth0` its MAC, address
//! and default route: a few requests instead of creating a namespace and
//! registering a new device with the bridge.
//!
//! Nothing about a spare is persisted. If the agent dies, the kernel frees
//! its spares with the last file descriptor (a veth goes with the
//! namespace holding its peer), so there is nothing to clean up after a
//! crash and no state to reconcile.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::netlink::{Netlink, NetlinkError, VethSpec};
use crate::netns::{self, Namespace, NetnsError};
use crate::sysctl;
use weft_common::MacAddr;

/// Prefix of a spare's host veth: distinct from endpoint veths (`wv…`), so
/// reconcile never takes a spare for an orphan.
pub const SPARE_PREFIX: &str = "wp";

/// The most spares `--ns-pool` may ask for.
pub const MAX_POOL: usize = 64;

pub struct Spare {
    pub ns: Namespace,
    pub host_name: String,
    pub host_index: u32,
    pub eth_index: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SpareError {
    #[error("{0}")]
    Netlink(#[from] NetlinkError),
    #[error("{0}")]
    Netns(#[from] NetnsError),
    #[error("{0}")]
    Other(String),
}

pub struct Pool {
    /// How many spares to keep ready.
    pub target: usize,
    spares: Mutex<Vec<Spare>>,
    /// Wakes the refill task.
    pub wake: Notify,
    seq: AtomicU64,
}

impl Pool {
    pub fn new(target: usize) -> Pool {
        Pool {
            target,
            spares: Mutex::new(Vec::with_capacity(target)),
            wake: Notify::new(),
            seq: AtomicU64::new(0),
        }
    }

    pub fn take(&self) -> Option<Spare> {
        self.spares.lock().expect("pool").pop()
    }

    pub fn len(&self) -> usize {
        self.spares.lock().expect("pool").len()
    }

    pub fn put(&self, s: Spare) {
        self.spares.lock().expect("pool").push(s);
    }

    /// Builds one spare on `bridge`. On error nothing is left behind (what
    /// was made lives in the dropped namespace or is deleted).
    pub async fn build(
        &self,
        host: &Netlink,
        bridge: u32,
        mtu: u32,
        iface: &str,
    ) -> Result<Spare, SpareError> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let host_name = format!(
            "{SPARE_PREFIX}{}.{}",
            std::process::id() % 100_000,
            n % 1_000_000
        );
        let ns = netns::create_anonymous().await?;
        host.create_veth(&VethSpec {
            host_name: &host_name,
            master: bridge,
            mtu,
            peer_netns: ns.fd.as_fd(),
            peer_name: iface,
            peer_mac: MacAddr::random_local(),
            up: false,
        })
        .await?;
        let finish = async {
            // A bridge port needs no addresses of its own (see netns::create).
            sysctl::set(&sysctl::dev_key("ipv6", &host_name, "disable_ipv6"), "1")
                .map_err(|e| SpareError::Other(format!("disable IPv6 on {host_name}: {e}")))?;
            let host_link = host
                .link(&host_name)
                .await?
                .ok_or_else(|| SpareError::Other(format!("{host_name} vanished")))?;
            let links = ns.netlink.links().await?;
            let find = |name: &str| {
                links
                    .iter()
                    .find(|l| l.name == name)
                    .ok_or_else(|| SpareError::Other(format!("spare namespace has no {name}")))
            };
            let lo = find("lo")?;
            ns.netlink
                .set_link(lo.index, "lo", None, None, None, true)
                .await?;
            let eth_index = find(iface)?.index;
            Ok::<_, SpareError>((host_link.index, eth_index))
        };
        match finish.await {
            Ok((host_index, eth_index)) => Ok(Spare {
                ns,
                host_name,
                host_index,
                eth_index,
            }),
            Err(e) => {
                let _ = host.delete_link_by_name(&host_name).await;
                Err(e)
            }
        }
    }
}
