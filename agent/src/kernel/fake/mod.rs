//! An in-memory kernel for unit tests of the decisions: it holds devices,
//! addresses, overlay entries, routes, sysctls, namespaces, a firewall
//! table and spares, answers the observe calls from them and changes them
//! as the real kernel would (a deleted device takes its addresses, routes,
//! neighbours and veth peer along; a deleted namespace its devices). It
//! records every operation it applies, and fails the ones a test asks it
//! to, so rollbacks can be checked step by step.

mod state;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use async_trait::async_trait;
use weft_common::{MacAddr, PortMapping};

use super::{Failure, Kernel, KernelError, OnError, Report, SpareSpec};
use crate::model::observed::{
    Device, FirewallView, Hop, HostQuery, HostView, NetnsPresence, NsView, UnderlayView,
};
use crate::model::ops::{Op, SpareId};
use crate::model::RTPROT_WEFT;
use state::{device, refused};
pub use state::{FakeNs, FakeState, FakeTable};

type FailWhen = Box<dyn Fn(&Op) -> bool + Send>;

/// See the module documentation.
#[derive(Default)]
pub struct FakeKernel {
    st: Mutex<FakeState>,
    fail: Mutex<Vec<FailWhen>>,
}

impl FakeKernel {
    pub fn new() -> FakeKernel {
        FakeKernel::default()
    }

    /// A kernel with an underlay device `eth0` (MTU 1500) holding `ip`/24
    /// and the default route.
    pub fn with_underlay(ip: Ipv4Addr) -> FakeKernel {
        let k = FakeKernel::new();
        k.with(|s| {
            let mut d = device(&mut s.next_index, "eth0", None, 1500);
            d.up = true;
            s.devices.insert("eth0".into(), d);
            s.addresses
                .entry("eth0".into())
                .or_default()
                .insert((ip, 24));
            s.default_dev = Some("eth0".into());
            s.sysctls.insert("net.ipv4.ip_forward".into(), "0".into());
        });
        k
    }

    /// Reads or changes the state.
    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.st.lock().expect("fake kernel"))
    }

    pub fn state(&self) -> FakeState {
        self.with(|s| s.clone())
    }

    /// The operations applied so far, taken (so the next call sees only
    /// newer ones).
    pub fn take_applied(&self) -> Vec<Op> {
        self.with(|s| std::mem::take(&mut s.applied))
    }

    /// Makes every operation for which `f` holds fail (with EIO).
    pub fn fail_when(&self, f: impl Fn(&Op) -> bool + Send + 'static) {
        self.fail.lock().expect("fail").push(Box::new(f));
    }

    pub fn clear_failures(&self) {
        self.fail.lock().expect("fail").clear();
    }

    fn should_fail(&self, op: &Op) -> bool {
        self.fail.lock().expect("fail").iter().any(|f| f(op))
    }
}

#[async_trait]
impl Kernel for FakeKernel {
    async fn observe_host(&self, q: &HostQuery) -> Result<HostView, KernelError> {
        Ok(self.with(|s| {
            let mut v = HostView {
                devices: s.devices.clone(),
                ..Default::default()
            };
            for name in &q.addresses_of {
                if let Some(a) = s.addresses.get(name) {
                    v.addresses.insert(name.clone(), a.clone());
                }
            }
            if let Some(x) = &q.vxlan {
                for ((d, ip), mac) in &s.neigh {
                    if d == x {
                        v.overlay.neigh.insert(*ip, *mac);
                    }
                }
                for (d, mac, ip) in &s.fdb {
                    if d == x {
                        v.overlay.fdb.insert((*mac, *ip));
                    }
                }
            }
            for (dst, (to, proto)) in &s.routes {
                if *proto == RTPROT_WEFT || Some(&*to.dev) == q.vxlan.as_deref() {
                    v.overlay.routes.insert(*dst, to.clone());
                }
            }
            for key in &q.sysctls {
                if let Some(val) = s.sysctls.get(key) {
                    v.sysctls.insert(key.clone(), val.clone());
                }
            }
            for n in &q.netns {
                v.netns.insert(n.clone(), presence(s, n));
            }
            if let (Some(spec), Some(t)) = (&q.firewall, &s.firewall) {
                v.firewall = FirewallView {
                    exists: true,
                    rules_as_desired: t.spec == *spec,
                    forwards: t.forwards.iter().copied().collect(),
                    peers: t.peers.clone(),
                };
            }
            v
        }))
    }

    async fn observe_netns(&self, name: &str) -> Result<Option<NsView>, KernelError> {
        Ok(self.with(|s| {
            s.netns.get(name).map(|n| NsView {
                devices: n.devices.clone(),
                addresses: n.addresses.clone(),
                default_routes: n
                    .default_route
                    .iter()
                    .map(|(gw, dev)| (Some(*gw), Some(dev.clone())))
                    .collect(),
            })
        }))
    }

    async fn netns_presence(&self, name: &str) -> NetnsPresence {
        self.with(|s| presence(s, name))
    }

    async fn observe_underlay(&self) -> Result<UnderlayView, KernelError> {
        Ok(self.with(|s| UnderlayView {
            devices: s.devices.clone(),
            addresses: s.addresses.clone(),
            default_dev: s.default_dev.clone(),
        }))
    }

    async fn route_lookups(&self, ips: &[Ipv4Addr]) -> (BTreeMap<Ipv4Addr, Hop>, Vec<KernelError>) {
        let hops = self.with(|s| {
            ips.iter()
                .filter_map(|ip| s.hops.get(ip).map(|h| (*ip, h.clone())))
                .collect()
        });
        (hops, Vec::new())
    }

    async fn port_free(&self, p: &PortMapping) -> Result<(), String> {
        self.with(|s| {
            if s.busy_ports.contains(&(p.host_ip, p.host_port, p.proto)) {
                Err(format!(
                    "host port {}/{} is already in use on this host",
                    p.host_port, p.proto
                ))
            } else {
                Ok(())
            }
        })
    }

    async fn apply(&self, ops: &[Op], on_error: OnError) -> Report {
        let mut report = Report::default();
        for (index, op) in ops.iter().enumerate() {
            let r = if self.should_fail(op) {
                Err(refused(op.to_string(), libc::EIO))
            } else {
                self.with(|s| {
                    let r = s.one(op);
                    if r.is_ok() {
                        s.applied.push(op.clone());
                    }
                    r
                })
            };
            match r {
                Ok(()) => report.count(op.kind()),
                Err(error) => {
                    report.failures.push(Failure { index, error });
                    if on_error == OnError::Stop {
                        report.done = index;
                        return report;
                    }
                }
            }
        }
        report.done = ops.len();
        report
    }

    async fn build_spare(&self, spec: &SpareSpec) -> Result<SpareId, KernelError> {
        self.with(|s| {
            if !s.devices.contains_key(&spec.master) {
                return Err(refused(format!("find link {}", spec.master), libc::ENODEV));
            }
            let id = SpareId(s.next_spare);
            s.next_spare += 1;
            let mut ns = FakeNs::new(&mut s.next_index);
            ns.devices.get_mut("lo").expect("lo").up = true;
            let mut eth = device(&mut s.next_index, &spec.iface, Some("veth"), spec.mtu);
            eth.mac = Some(MacAddr([2, 0, 0, 0, 0, 1]));
            ns.devices.insert(spec.iface.clone(), eth);
            let mut host = device(
                &mut s.next_index,
                &format!("wp.{}", id.0),
                Some("veth"),
                spec.mtu,
            );
            host.master = Some(spec.master.clone());
            s.devices.insert(host.name.clone(), host);
            s.spares.insert(id, ns);
            Ok(id)
        })
    }

    fn discard_spare(&self, id: SpareId) {
        self.with(|s| {
            s.spares.remove(&id);
            s.devices.remove(&format!("wp.{}", id.0));
        });
    }

    async fn devices(&self) -> Result<Vec<Device>, KernelError> {
        Ok(self.with(|s| s.devices.values().cloned().collect()))
    }

    async fn observe_policy(
        &self,
    ) -> Result<Option<crate::model::observed::PolicyView>, KernelError> {
        Ok(self.with(|s| {
            s.policy
                .as_ref()
                .map(|t| crate::model::observed::PolicyView {
                    fingerprint: Some(crate::firewall::policy::fingerprint(t)),
                    sets: t.sets.clone(),
                    counters: t
                        .policies
                        .iter()
                        .flat_map(|p| {
                            [true, false].map(|a| (crate::model::policy::counter_name(a, p), 0))
                        })
                        .collect(),
                })
        }))
    }
}

fn presence(s: &FakeState, name: &str) -> NetnsPresence {
    if s.netns.contains_key(name) {
        NetnsPresence::Mounted
    } else if s.stray_files.contains(name) {
        NetnsPresence::Other
    } else {
        NetnsPresence::Absent
    }
}
