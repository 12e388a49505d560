//! Applying operations: each is resolved from names to indexes and sent.
//! Runs of overlay entries (neighbours, FDB entries, routes) are pipelined
//! on the netlink socket, [`IN_FLIGHT`] at a time, so a batch of thousands
//! of peers costs a few round trips, not thousands; everything else goes
//! one at a time, in order.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::StreamExt;

use super::netlink::{Netlink, VethSpec};
use super::observe::IN_FLIGHT;
use super::spares::Spare;
use super::{nft, LinuxKernel};
use crate::kernel::netns::{self, Namespace};
use crate::kernel::{sysctl, KernelError, OnError, Report};
use crate::model::ops::{NsOp, Op};

type Result<T> = std::result::Result<T, KernelError>;

/// What one batch has resolved so far: device indexes of the host
/// namespace (its own, and the kernel's known ones), and namespaces opened
/// (or made) by earlier operations.
struct Batch<'k> {
    known: &'k std::sync::Mutex<HashMap<String, u32>>,
    index: HashMap<String, u32>,
    netns: HashMap<String, Arc<Namespace>>,
}

impl<'k> Batch<'k> {
    fn new(k: &'k LinuxKernel) -> Batch<'k> {
        Batch {
            known: &k.indexes,
            index: HashMap::new(),
            netns: HashMap::new(),
        }
    }

    async fn index(&mut self, nl: &Netlink, name: &str) -> Result<u32> {
        if let Some(i) = self.index.get(name) {
            return Ok(*i);
        }
        let known = self.known.lock().expect("indexes").get(name).copied();
        let i = match known {
            Some(i) => i,
            None => {
                nl.link(name)
                    .await?
                    .ok_or_else(|| {
                        KernelError::other(format!("find link {name}"), "no such device")
                    })?
                    .index
            }
        };
        self.index.insert(name.to_string(), i);
        Ok(i)
    }

    /// Forgets what a name meant (a device made or deleted under it).
    fn forget(&mut self, name: &str) {
        self.index.remove(name);
        self.known.lock().expect("indexes").remove(name);
    }

    /// Forgets every index: after a failure a device may be gone or new.
    fn forget_all(&mut self) {
        self.index.clear();
        self.known.lock().expect("indexes").clear();
    }

    async fn netns(&mut self, k: &LinuxKernel, name: &str) -> Result<Arc<Namespace>> {
        if let Some(ns) = self.netns.get(name) {
            return Ok(ns.clone());
        }
        let ns = Arc::new(netns::open(&k.netns_path(name)).await?);
        self.netns.insert(name.to_string(), ns.clone());
        Ok(ns)
    }
}

pub(super) async fn apply(k: &LinuxKernel, ops: &[Op], on_error: OnError) -> Report {
    let mut b = Batch::new(k);
    let report = run(k, &mut b, ops, on_error).await;
    // What the batch learnt is kept; after a failure nothing is.
    match report.is_ok() {
        true => k.indexes.lock().expect("indexes").extend(b.index),
        false => b.forget_all(),
    }
    report
}

async fn run(k: &LinuxKernel, b: &mut Batch<'_>, ops: &[Op], on_error: OnError) -> Report {
    let mut report = Report::default();
    let mut i = 0;
    while i < ops.len() {
        let same = ops[i..]
            .iter()
            .take_while(|o| {
                o.is_overlay_entry()
                    && std::mem::discriminant(*o) == std::mem::discriminant(&ops[i])
            })
            .count();
        if same > 1 && on_error == OnError::Continue {
            pipelined(k, b, &ops[i..i + same], i, &mut report).await;
            i += same;
            continue;
        }
        match one(k, b, &ops[i]).await {
            Ok(()) => report.count(ops[i].kind()),
            Err(error) => {
                // The device may be gone or new: resolve again.
                b.forget_all();
                report
                    .failures
                    .push(crate::kernel::Failure { index: i, error });
                if on_error == OnError::Stop {
                    report.done = i;
                    return report;
                }
            }
        }
        i += 1;
    }
    report.done = ops.len();
    report
}

/// A run of overlay entries of one operation (all adds or all deletes of
/// one kind, never both: they could race), many in flight at once.
async fn pipelined(
    k: &LinuxKernel,
    b: &mut Batch<'_>,
    ops: &[Op],
    offset: usize,
    report: &mut Report,
) {
    let mut devs: Vec<&str> = ops.iter().filter_map(dev_of).collect();
    devs.sort_unstable();
    devs.dedup();
    for d in devs {
        if let Err(error) = b.index(&k.host, d).await {
            for i in 0..ops.len() {
                report.failures.push(crate::kernel::Failure {
                    index: offset + i,
                    error: KernelError::other(error.what.clone(), error.cause.to_string()),
                });
            }
            return;
        }
    }
    let index = &b.index;
    // At most IN_FLIGHT requests, and so at most that many futures, alive
    // at once: a batch of thousands costs no more memory than a few.
    let mut todo = ops.iter().enumerate();
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < IN_FLIGHT {
            let Some((i, op)) = todo.next() else { break };
            in_flight.push(async move { (i, entry(&k.host, index, op).await) });
        }
        let Some((i, r)) = in_flight.next().await else {
            break;
        };
        match r {
            Ok(()) => report.count(ops[i].kind()),
            Err(error) => report.failures.push(crate::kernel::Failure {
                index: offset + i,
                error,
            }),
        }
    }
}

fn dev_of(op: &Op) -> Option<&str> {
    match op {
        Op::ReplaceNeigh { dev, .. }
        | Op::DelNeigh { dev, .. }
        | Op::ReplaceFdb { dev, .. }
        | Op::DelFdb { dev, .. } => Some(dev),
        Op::ReplaceRoute { to, .. } => Some(&to.dev),
        _ => None,
    }
}

/// One overlay entry, its device already resolved.
async fn entry(nl: &Netlink, index: &HashMap<String, u32>, op: &Op) -> Result<()> {
    let idx = |d: &str| index.get(d).copied().unwrap_or(0);
    match op {
        Op::ReplaceNeigh { dev, ip, mac } => nl.replace_neighbour(idx(dev), *ip, *mac).await,
        Op::DelNeigh { dev, ip } => nl.delete_neighbour(idx(dev), *ip).await,
        Op::ReplaceFdb { dev, mac, dst } => nl.replace_fdb(idx(dev), *mac, *dst).await,
        Op::DelFdb { dev, mac, dst } => nl.delete_fdb(idx(dev), *mac, *dst).await,
        Op::ReplaceRoute { dst, to } => {
            nl.replace_route(*dst, to.gateway, idx(&to.dev), to.onlink)
                .await
        }
        Op::DelRoute { dst } => nl.delete_route(*dst).await,
        other => Err(KernelError::other(
            other.to_string(),
            "not an overlay entry",
        )),
    }
}

async fn one(k: &LinuxKernel, b: &mut Batch<'_>, op: &Op) -> Result<()> {
    let nl = &k.host;
    match op {
        Op::Sysctl { key, value } => sysctl::set(key, value)
            .map_err(|e| KernelError::io(format!("set sysctl {key}={value}"), e)),
        Op::CreateBridge { name, mac, mtu } => {
            nl.create_bridge(name, *mac, *mtu).await?;
            b.forget(name);
            Ok(())
        }
        Op::CreateVxlan(spec) => {
            let dev = match &spec.dev {
                Some(d) => Some(b.index(nl, d).await?),
                None => None,
            };
            nl.create_vxlan(spec, dev).await?;
            b.forget(&spec.name);
            Ok(())
        }
        Op::SetDevice(c) => {
            let i = b.index(nl, &c.name).await?;
            let master = match &c.master {
                Some(m) => Some(b.index(nl, m).await?),
                None => None,
            };
            nl.set_link(i, &c.name, c.mtu, c.mac, master, c.up).await
        }
        Op::DeleteDevice { name, index } => {
            let r = match index {
                Some(i) => nl.delete_link(*i, name).await,
                None => nl.delete_link_by_name(name).await,
            };
            b.forget(name);
            r
        }
        Op::AddAddress { dev, addr, prefix } => {
            let i = b.index(nl, dev).await?;
            nl.add_address(i, *addr, *prefix, dev).await
        }
        Op::DelAddress { dev, addr, prefix } => {
            let i = b.index(nl, dev).await?;
            nl.delete_address(i, *addr, *prefix, dev).await
        }
        Op::ReplaceNeigh { .. }
        | Op::DelNeigh { .. }
        | Op::ReplaceFdb { .. }
        | Op::DelFdb { .. }
        | Op::ReplaceRoute { .. }
        | Op::DelRoute { .. } => {
            if let Some(d) = dev_of(op) {
                b.index(nl, d).await?;
            }
            entry(nl, &b.index, op).await
        }
        Op::CreateNetns { name } => {
            let ns = netns::create(&k.netns_path(name)).await?;
            b.netns.insert(name.clone(), Arc::new(ns));
            Ok(())
        }
        Op::DeleteNetns { name } => {
            b.netns.remove(name);
            netns::delete(&k.netns_path(name))
        }
        Op::CreateVeth(v) => {
            let ns = b.netns(k, &v.netns).await?;
            let master = b.index(nl, &v.master).await?;
            nl.create_veth(VethSpec {
                host_name: &v.host,
                master,
                mtu: v.mtu,
                peer_netns: ns.fd.as_fd(),
                peer_name: &v.peer,
                peer_mac: v.peer_mac,
                up: true,
            })
            .await?;
            super::no_ipv6_on_port(&v.host)
        }
        Op::InNetns { netns, op } => {
            let ns = b.netns(k, netns).await?;
            inside(&ns.netlink, op, None).await
        }
        Op::AdoptSpare {
            spare,
            netns,
            host,
            master,
            inside: ops,
        } => {
            let taken = k.spares.lock().expect("spares").remove(spare);
            let s = taken.ok_or_else(|| {
                KernelError::other(format!("take spare namespace for {netns}"), "no such spare")
            })?;
            let master = b.index(nl, master).await?;
            let ns = adopt(k, s, netns, host, master, ops).await?;
            b.netns.insert(netns.clone(), Arc::new(ns));
            Ok(())
        }
        Op::FirewallSync {
            spec,
            forwards,
            peers,
        } => {
            let (t, spec, f, p) = (
                k.firewall.clone(),
                spec.clone(),
                forwards.clone(),
                peers.clone(),
            );
            nft(op.to_string(), move || t.sync(&spec, &f, &p)).await
        }
        Op::AddForwards(f) => {
            let (t, f) = (k.firewall.clone(), f.clone());
            nft(op.to_string(), move || t.add_forwards(&f)).await
        }
        Op::DelForwards(f) => {
            let (t, f) = (k.firewall.clone(), f.clone());
            nft(op.to_string(), move || t.del_forwards(&f)).await
        }
        Op::UpdatePeers { add, del } => {
            let (t, a, d) = (k.firewall.clone(), add.clone(), del.clone());
            nft(op.to_string(), move || t.update_peers(&a, &d)).await
        }
        Op::PolicyReplace(t) => {
            let (table, t) = (k.policy.clone(), t.clone());
            nft(op.to_string(), move || table.replace_policy(&t)).await
        }
        Op::PolicySets(edits) => {
            let (table, e) = (k.policy.clone(), edits.clone());
            nft(op.to_string(), move || table.update_policy_sets(&e)).await
        }
    }
}

/// One operation inside a namespace; `eth` is the index of the device
/// named in it when already known (a spare's `eth0`).
async fn inside(nl: &Netlink, op: &NsOp, eth: Option<u32>) -> Result<()> {
    let index = |name: &str| {
        let name = name.to_string();
        async move {
            if let Some(i) = eth {
                return Ok(i);
            }
            Ok(nl
                .link(&name)
                .await?
                .ok_or_else(|| KernelError::other(format!("find link {name}"), "no such device"))?
                .index)
        }
    };
    match op {
        NsOp::SetDevice(c) => {
            let i = index(&c.name).await?;
            nl.set_link(i, &c.name, c.mtu, c.mac, None, c.up).await
        }
        NsOp::DeleteDevice { name } => match nl.link(name).await? {
            Some(l) => nl.delete_link(l.index, name).await,
            None => Ok(()),
        },
        NsOp::AddAddress { dev, addr, prefix } => {
            let i = index(dev).await?;
            nl.add_address(i, *addr, *prefix, dev).await
        }
        NsOp::ReplaceDefaultRoute { gateway, dev } => {
            let i = index(dev).await?;
            nl.replace_default_route(*gateway, i).await
        }
    }
}

/// Turns a spare into a named endpoint: bind-mounts its namespace at the
/// endpoint's path, renames and raises its host end, and configures its
/// `eth0`, the two sides at once. On error, what was named is removed (by
/// index: the spare's veth, renamed or not, never a device that merely
/// has the endpoint's name).
async fn adopt(
    k: &LinuxKernel,
    s: Spare,
    name: &str,
    host: &str,
    master: u32,
    ops: &[NsOp],
) -> Result<Namespace> {
    let path = k.netns_path(name);
    netns::attach(&s.ns, &path)?;
    let host_side = k.host.rename_up(s.host_index, &s.host_name, host, master);
    let inner = async {
        for op in ops {
            inside(&s.ns.netlink, op, Some(s.eth_index)).await?;
        }
        Ok(())
    };
    let done: Result<()> = match tokio::join!(host_side, inner) {
        (Err(e), _) | (_, Err(e)) => Err(e),
        _ => Ok(()),
    };
    match done {
        Ok(()) => Ok(s.ns),
        Err(e) => {
            let _ = k.host.delete_link(s.host_index, &s.host_name).await;
            let _ = netns::delete(&path);
            Err(e)
        }
    }
}
