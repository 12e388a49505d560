//! What a cluster lab's etcd holds, read back: raw (`etcdctl get`, not
//! through weft's code) and typed into [`weft_common::cluster`] records;
//! and `weftctl host list` as [`ListedHost`]s.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::Deserialize;
use serde_json::Value;
use weft_common::cluster::{HostRecord, SubnetRecord};
use weft_common::MacAddr;

use crate::lab::Lab;

/// A host as `weftctl -o json host list` shows it: the host record, and
/// whether (and to which controller) its agent is connected.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListedHost {
    pub name: String,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    pub subnet: Ipv4Network,
    /// Unix seconds: now while connected, else when its last session ended.
    pub last_seen: u64,
    pub connected: bool,
    /// The controller its agent is connected to.
    pub controller: Option<String>,
    /// Unix seconds the session began.
    pub connected_since: Option<u64>,
}

impl Lab {
    /// Every key under `/weft/` as (key, JSON value), read with etcdctl
    /// straight from etcd (not through weft's code).
    pub fn etcd_dump(&self) -> Vec<(String, Value)> {
        let out = self.etcdctl(&["get", "--prefix", "/weft/"]);
        assert!(
            out.status.success(),
            "etcdctl get failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| {
                (
                    c[0].to_string(),
                    serde_json::from_str(c[1]).unwrap_or_else(|e| {
                        panic!("etcd value of {} is not JSON ({e}): {}", c[0], c[1])
                    }),
                )
            })
            .collect()
    }

    /// The host records (`/weft/hosts/NAME`), by name; panics if one does
    /// not decode or is filed under another name.
    pub fn etcd_hosts(&self) -> BTreeMap<String, HostRecord> {
        self.etcd_dump()
            .into_iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("/weft/hosts/")?.to_string();
                let rec: HostRecord = serde_json::from_value(v.clone())
                    .unwrap_or_else(|e| panic!("etcd {k} is not a host record ({e}): {v}"));
                assert_eq!(rec.name, name, "host record {k} names another host");
                Some((name, rec))
            })
            .collect()
    }

    /// Host name → subnet, from the host records.
    pub fn etcd_host_subnets(&self) -> BTreeMap<String, String> {
        self.etcd_hosts()
            .into_iter()
            .map(|(n, r)| (n, r.subnet.to_string()))
            .collect()
    }

    /// The subnet keys (`/weft/subnets/A.B.C.D-LEN`), by subnet; panics if
    /// one does not decode.
    pub fn etcd_subnets(&self) -> BTreeMap<Ipv4Network, SubnetRecord> {
        self.etcd_dump()
            .into_iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix("/weft/subnets/")?;
                let net = weft_common::cluster::parse_subnet_key(key)
                    .unwrap_or_else(|| panic!("etcd key {k} names no subnet"));
                let rec: SubnetRecord = serde_json::from_value(v.clone())
                    .unwrap_or_else(|e| panic!("etcd {k} is not a subnet record ({e}): {v}"));
                Some((net, rec))
            })
            .collect()
    }

    /// `weftctl host list`.
    pub fn host_list(&self) -> Vec<ListedHost> {
        let v = self.weftctl_etcd_json(&["host", "list"]);
        serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("weftctl host list: not a list of hosts ({e}): {v}"))
    }

    /// The entry of `name` in `weftctl host list`; panics if there is none.
    pub fn listed_host(&self, name: &str) -> ListedHost {
        let list = self.host_list();
        list.iter()
            .find(|h| h.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no host {name} in weftctl host list: {list:#?}"))
    }
}
