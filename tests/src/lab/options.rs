//! [`LabOpts`]: what a [`Lab`](crate::Lab) is built with.

use std::path::PathBuf;

use weft_common::logging::LogFormat;

use super::addresses::default_subnet;

/// How to build a [`Lab`](crate::Lab).
#[derive(Debug, Clone)]
pub struct LabOpts {
    /// Number of simulated hosts (1..=200). Default 1.
    pub hosts: usize,
    /// Per-host subnet overrides: `subnets[0]` is for h1, and so on. Hosts
    /// without an entry get [`default_subnet`].
    pub subnets: Vec<String>,
    /// Lab directory. Default `/tmp/weft-lab/<prefix>`. Must not exist or be
    /// empty; it is removed on teardown.
    pub dir: Option<PathBuf>,
    /// Name prefix. Default `wt<pid>x<counter>`, which [`Lab::new`](crate::Lab::new) of later
    /// runs recognises and sweeps once that pid is gone. Give a custom one
    /// (not of that form) for labs that must outlive this process.
    pub prefix: Option<String>,
    /// Start processes in their own session, so they survive this process
    /// and its terminal; needed before [`Lab::persist`](crate::Lab::persist).
    pub detachable: bool,
    /// Cluster mode: with `controllers > 0` the lab also runs etcd and that
    /// many controllers in a control namespace (`<prefix>-c`), creates the
    /// PKI and the cluster config, and agents register with the
    /// controllers instead of getting `--subnet`.
    pub controllers: usize,
    /// `--lease-ttl` of the controllers (seconds); default theirs (24 h).
    pub lease_ttl: Option<u64>,
    /// `weftctl cluster init --cidr`; default [`CLUSTER_CIDR`](super::addresses::CLUSTER_CIDR).
    pub cluster_cidr: Option<String>,
    /// `weftctl cluster init --subnet-len`; default 24.
    pub subnet_len: Option<u8>,
    /// Hosts (1-based) placed on a second segment behind the router
    /// ([`ROUTED_CIDR`](super::addresses::ROUTED_CIDR)) instead of on the shared underlay; at most 13.
    pub routed: Vec<usize>,
    /// Cluster mode: members of the etcd cluster (1 or 3, see
    /// [`crate::cluster::etcd`]); default 1.
    pub etcd_members: usize,
    /// Cluster mode: etcd over TLS with client-certificate auth and etcd
    /// users ([`crate::cluster::etcd_tls`]); single member only.
    pub etcd_tls: bool,
    /// `--log-format` of the agents and controllers. The benchmarks use
    /// JSON and read the structured events ([`crate::events`]).
    pub log_format: LogFormat,
}

impl Default for LabOpts {
    fn default() -> Self {
        LabOpts {
            hosts: 1,
            subnets: Vec::new(),
            dir: None,
            prefix: None,
            detachable: false,
            controllers: 0,
            lease_ttl: None,
            cluster_cidr: None,
            subnet_len: None,
            routed: Vec::new(),
            etcd_members: 1,
            etcd_tls: false,
            log_format: LogFormat::Text,
        }
    }
}

impl LabOpts {
    /// A lab of `n` hosts, everything else default.
    pub fn hosts(n: usize) -> Self {
        LabOpts {
            hosts: n,
            ..Default::default()
        }
    }

    /// A cluster lab: `hosts` hosts whose agents register with
    /// `controllers` controllers (and etcd) in the control namespace.
    pub fn cluster(hosts: usize, controllers: usize) -> Self {
        LabOpts {
            hosts,
            controllers,
            ..Default::default()
        }
    }

    /// Sets the subnet of host `i` (1-based).
    pub fn subnet(mut self, i: usize, cidr: &str) -> Self {
        assert!(i >= 1, "hosts are numbered from 1");
        while self.subnets.len() < i {
            let n = self.subnets.len() + 1;
            self.subnets.push(default_subnet(n));
        }
        self.subnets[i - 1] = cidr.to_string();
        self
    }
}
