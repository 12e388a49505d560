//! Unit tests of the agent's decisions, whole: the reconciler, `ns add`
//! and `ns del` run against the fake kernel (`kernel::fake`) and a state
//! directory in a temporary folder. No root, no real kernel: what they
//! prove is what the agent decides to change, and that it changes nothing
//! else.

mod attachments;
mod endpoints;
mod enforce;
mod reconcile;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use weft_common::cluster::HostRecord;
use weft_common::MacAddr;

use crate::agent::Agent;
use crate::endpoints::Endpoints;
use crate::firewall::FirewallSpec;
use crate::kernel::fake::FakeKernel;
use crate::kernel::Kernel;
use crate::model::desired::{HostSpec, VxlanSpec};
use crate::model::overlay::PeerSet;
use crate::model::BRIDGE;
use crate::reconcile::Reconciler;
use crate::state::{Store, Writer};

/// A temporary state directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d =
            std::env::temp_dir().join(format!("weft-agent-unit-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);

pub fn standalone() -> HostSpec {
    let subnet = "10.244.1.0/24".parse().unwrap();
    HostSpec {
        subnet,
        mtu: 1500,
        vxlan: None,
        underlay: None,
        firewall: FirewallSpec {
            cluster_cidr: subnet,
            subnet,
            bridge: BRIDGE.into(),
            vxlan_port: None,
        },
        ipv6: true,
    }
}

pub fn cluster() -> HostSpec {
    let subnet = "10.244.1.0/24".parse().unwrap();
    HostSpec {
        subnet,
        mtu: 1450,
        vxlan: Some(VxlanSpec {
            name: "weft.1".into(),
            vni: 1,
            port: 4789,
            local: Some(UNDERLAY_IP),
            dev: Some("eth0".into()),
            mtu: 1450,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
        }),
        underlay: Some("eth0".into()),
        firewall: FirewallSpec {
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            subnet,
            bridge: BRIDGE.into(),
            vxlan_port: Some(4789),
        },
        ipv6: true,
    }
}

/// Peer `hN`: subnet 10.244.N.0/24, address 198.18.0.(10+N).
pub fn peer(n: u8) -> HostRecord {
    HostRecord {
        name: format!("h{n}"),
        public_ip: Ipv4Addr::new(198, 18, 0, 10 + n),
        vtep_mac: MacAddr([2, 0, 0, 0, 0, n]),
        subnet: format!("10.244.{n}.0/24").parse().unwrap(),
        last_seen: 0,
    }
}

pub fn peers(hosts: &[HostRecord]) -> PeerSet {
    Arc::new(
        hosts
            .iter()
            .map(|h| (h.name.clone(), h.clone()))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// An agent on the fake kernel, as it would be after loading `dir`.
pub fn agent(kernel: &Arc<FakeKernel>, dir: &TempDir, spec: HostSpec, peers: PeerSet) -> Agent {
    let store = Store::open(&dir.0).expect("state dir");
    let loaded = store.load().expect("state");
    let writer = Writer::start(store).expect("writer");
    let k: Arc<dyn Kernel> = kernel.clone();
    let endpoints = Endpoints::new(
        k.clone(),
        writer,
        spec.clone(),
        PathBuf::from("/run/netns"),
        loaded.endpoints,
        0,
    )
    .expect("endpoints");
    Agent {
        node: "h1".into(),
        reconciler: Reconciler::new(k, spec, false, peers),
        endpoints,
        controllers: None,
        enforcer: None,
    }
}

/// The operations applied since the last call, as `ip`-like lines.
pub fn applied(k: &FakeKernel) -> Vec<String> {
    k.take_applied().iter().map(|o| o.to_string()).collect()
}

/// Waits until the writer thread of a dropped agent let go of the
/// directory's lock (it finishes its queue first).
pub fn released(dir: &TempDir) {
    for _ in 0..500 {
        if Store::open(&dir.0).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the state directory stayed locked");
}
