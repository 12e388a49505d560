//! The end-of-test health check of a cluster lab: no subnet held twice,
//! every live namespace reaches every other, no leftover kernel objects.
//!
//! ```no_run
//! use weft_tests::{health, Lab, LabOpts};
//! let lab = Lab::new(LabOpts::cluster(3, 1));
//! let _agents: Vec<_> = lab.hosts().iter().map(|h| h.start_agent(&[])).collect();
//! let report = health::assert_healthy(&lab, &health::Opts::default());
//! println!("{report}");
//! ```
//!
//! "Live" hosts are those whose agent (started through the lab) runs. The
//! truth is etcd, read with etcdctl ([`Lab::etcd_dump`], kept as raw JSON:
//! the check must also report records that do not decode); each live
//! agent's `weftctl status` and `ns list` ([`Host::try_status`],
//! [`Host::try_endpoints`]), and its host's kernel (`ip -j`,
//! `bridge -j`, `nft -j`), are compared with it:
//!
//! - etcd: every host record's subnet is distinct, its subnet key names it
//!   (held, or reserved for it), and every subnet key held by a host has
//!   that host's record;
//! - agents: each reports its own node name and the subnet etcd gives it,
//!   and as peers exactly the other hosts of etcd with their subnets;
//! - data plane: every endpoint of every live host pings every endpoint of
//!   every other live host (in parallel, each probe bounded by 3 s);
//! - kernel, per live host: one vxlan device (`weft.<vni>`); weft's routes
//!   (protocol 119), the vxlan device's neighbours and FDB entries, and the
//!   `vxlan_peers` nft set hold exactly the current peers; the `wv…` veths
//!   are exactly those of its endpoints; at most `pool` spare `wp…` veths.
//!
//! The cheap checks are retried until they pass or [`Opts::settle`] ends
//! (a peer change takes a moment to reach every agent); the report lists
//! every problem of the last attempt.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::host::Host;
use crate::lab::Lab;
use crate::netns::describe_status;

/// What [`check`] allows.
#[derive(Debug, Clone)]
pub struct Opts {
    /// How long the etcd/agent/kernel checks may take to converge.
    pub settle: Duration,
    /// The most spare (`wp…`) veths an agent may hold: its `--ns-pool`.
    pub pool: usize,
    /// Whether to run the ping matrix.
    pub ping: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            settle: Duration::from_secs(15),
            pool: 4,
            ping: true,
        }
    }
}

/// What a passing check saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Host → subnet, from etcd.
    pub hosts: BTreeMap<String, String>,
    /// Live hosts checked.
    pub live: Vec<String>,
    /// Endpoints pinged from (host, name, ip).
    pub endpoints: Vec<(String, String, String)>,
    /// Pings that answered.
    pub pings: usize,
    /// Problems found (empty when healthy).
    pub problems: Vec<String>,
    /// How long the check took.
    pub took: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "health check: {} hosts in etcd {:?}, live {:?}, {} endpoints, {} pings answered, {:.1} s",
            self.hosts.len(),
            self.hosts,
            self.live,
            self.endpoints.len(),
            self.pings,
            self.took.as_secs_f64()
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// Runs the check and panics with the full report if anything is wrong.
pub fn assert_healthy(lab: &Lab, opts: &Opts) -> Report {
    let r = check(lab, opts);
    assert!(r.problems.is_empty(), "cluster is not healthy:\n{r}");
    r
}

/// Runs the check; the report's `problems` is empty when all is well.
pub fn check(lab: &Lab, opts: &Opts) -> Report {
    let t0 = Instant::now();
    let deadline = t0 + opts.settle;
    let mut r;
    loop {
        r = Report::default();
        check_state(lab, opts, &mut r);
        if r.problems.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if r.problems.is_empty() && opts.ping {
        ping_matrix(lab, &mut r);
    }
    r.took = t0.elapsed();
    r
}

/// Hosts whose agent (started through the lab) is running.
pub fn live_hosts(lab: &Lab) -> Vec<&Host> {
    lab.hosts()
        .iter()
        .filter(|h| h.agent_pid().is_some())
        .collect()
}

#[derive(Debug, Clone)]
struct Rec {
    subnet: String,
    public_ip: String,
    vtep_mac: String,
}

fn check_state(lab: &Lab, opts: &Opts, r: &mut Report) {
    let p = &mut r.problems;
    // (a) etcd: host records and subnet keys agree, nothing held twice.
    let mut recs: BTreeMap<String, Rec> = BTreeMap::new();
    let mut subnets: BTreeMap<String, Value> = BTreeMap::new();
    let mut vni = None;
    let mut endpoint_lists = Vec::new();
    for (k, v) in lab.etcd_dump() {
        if let Some(name) = k.strip_prefix("/weft/hosts/") {
            if v["name"] != name {
                p.push(format!("etcd: host record {k} names {}", v["name"]));
            }
            let s = |f: &str| v[f].as_str().unwrap_or_default().to_string();
            recs.insert(
                name.to_string(),
                Rec {
                    subnet: s("subnet"),
                    public_ip: s("public_ip"),
                    vtep_mac: s("vtep_mac").to_lowercase(),
                },
            );
        } else if let Some(s) = k.strip_prefix("/weft/subnets/") {
            subnets.insert(s.replace('-', "/"), v);
        } else if k == "/weft/config" {
            vni = v["vni"].as_u64();
        } else if let Some(host) = k.strip_prefix("/weft/endpoints/") {
            endpoint_lists.push(host.to_string());
        }
    }
    for host in endpoint_lists {
        if !recs.contains_key(&host) {
            p.push(format!(
                "etcd: an endpoint list for {host}, which has no host record"
            ));
        }
    }
    r.hosts = recs
        .iter()
        .map(|(n, x)| (n.clone(), x.subnet.clone()))
        .collect();
    let mut holder: BTreeMap<&str, &str> = BTreeMap::new();
    for (n, x) in &recs {
        if let Some(other) = holder.insert(&x.subnet, n) {
            p.push(format!(
                "etcd: subnet {} held twice, by {other} and {n}",
                x.subnet
            ));
        }
        match subnets.get(&x.subnet) {
            None => p.push(format!(
                "etcd: {n} holds {} but there is no subnet key for it",
                x.subnet
            )),
            Some(s) if s["host"] != n.as_str() => p.push(format!(
                "etcd: {n} holds {} but its subnet key says {s}",
                x.subnet
            )),
            _ => {}
        }
    }
    for (s, v) in &subnets {
        if let Some(h) = v["host"].as_str() {
            if v["reserved"] != true && recs.get(h).map(|x| x.subnet.as_str()) != Some(s) {
                p.push(format!(
                    "etcd: subnet key {s} names {h}, which has no host record holding it"
                ));
            }
        }
    }
    let vxlan = format!("weft.{}", vni.unwrap_or(1));

    // Agents and their kernels.
    r.live.clear();
    let mut seen_subnets: BTreeMap<String, String> = BTreeMap::new();
    for h in live_hosts(lab) {
        r.live.push(h.name.clone());
        let st = match h.try_status() {
            Ok(v) => v,
            Err(e) => {
                p.push(e);
                continue;
            }
        };
        let subnet = st.subnet.clone();
        if st.node != h.name {
            p.push(format!("{}: status names node {}", h.name, st.node));
        }
        if let Some(other) = seen_subnets.insert(subnet.clone(), h.name.clone()) {
            p.push(format!(
                "agents {other} and {} both serve subnet {subnet}",
                h.name
            ));
        }
        match recs.get(&h.name) {
            Some(x) if x.subnet == subnet => {}
            Some(x) => p.push(format!(
                "{}: serves {subnet} but etcd gives it {}",
                h.name, x.subnet
            )),
            None => p.push(format!(
                "{}: serves {subnet} but has no host record in etcd",
                h.name
            )),
        }
        let want: BTreeMap<&String, &Rec> = recs.iter().filter(|(n, _)| **n != h.name).collect();
        let mut modes = BTreeMap::new();
        let have: BTreeMap<String, String> = st
            .peers
            .iter()
            .map(|x| {
                modes.insert(x.name.clone(), x.mode.clone());
                (x.name.clone(), x.subnet.clone())
            })
            .collect();
        let want_peers: BTreeMap<String, String> = want
            .iter()
            .map(|(n, x)| ((*n).clone(), x.subnet.clone()))
            .collect();
        if have != want_peers {
            p.push(format!(
                "{}: status peers {have:?}, etcd says {want_peers:?}",
                h.name
            ));
        }
        let ep_names: Vec<String> = match h.try_endpoints() {
            Ok(v) => v.into_iter().map(|e| e.name).collect(),
            Err(e) => {
                p.push(e);
                continue;
            }
        };
        kernel(h, &vxlan, &want, &modes, &ep_names, opts.pool, p);
    }
}

/// `cmd` in the host's namespace, parsed as JSON (an empty output is `[]`).
fn host_json(h: &Host, cmd: &[&str]) -> Result<Value, String> {
    let out = h.exec(cmd);
    if !out.status.success() {
        return Err(format!(
            "{}: `{}` failed ({}): {}",
            h.name,
            cmd.join(" "),
            describe_status(&out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&text).map_err(|e| format!("{}: `{}`: {e}: {text}", h.name, cmd.join(" ")))
}

fn kernel(
    h: &Host,
    vxlan: &str,
    want: &BTreeMap<&String, &Rec>,
    modes: &BTreeMap<String, String>,
    endpoints: &[String],
    pool: usize,
    p: &mut Vec<String>,
) {
    let name = &h.name;
    let mut try_json = |cmd: &[&str]| match host_json(h, cmd) {
        Ok(v) => v,
        Err(e) => {
            p.push(e);
            Value::Array(Vec::new())
        }
    };
    let links = try_json(&["ip", "-j", "-d", "link", "show"]);
    let routes = try_json(&[
        "ip", "-j", "-4", "route", "show", "table", "all", "proto", "119",
    ]);
    let on_vx = try_json(&[
        "ip", "-j", "-4", "route", "show", "table", "all", "dev", vxlan,
    ]);
    let neigh = try_json(&["ip", "-j", "-4", "neigh", "show", "dev", vxlan]);
    let fdb = try_json(&["bridge", "-j", "fdb", "show", "dev", vxlan]);
    let nft = try_json(&["nft", "-j", "list", "set", "inet", "weft", "vxlan_peers"]);

    // Devices: one vxlan device, the endpoints' veths, a bounded pool.
    let links = links.as_array().cloned().unwrap_or_default();
    let kind = |l: &Value| {
        l["linkinfo"]["info_kind"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let ifname = |l: &Value| l["ifname"].as_str().unwrap_or("").to_string();
    let vx: Vec<String> = links
        .iter()
        .filter(|l| kind(l) == "vxlan")
        .map(ifname)
        .collect();
    if vx != [vxlan.to_string()] {
        p.push(format!(
            "{name}: vxlan devices {vx:?}, expected exactly [{vxlan}]"
        ));
    }
    let want_veths: BTreeSet<String> = endpoints
        .iter()
        .map(|e| weft_common::name::host_veth_name(e))
        .collect();
    let veths: BTreeSet<String> = links
        .iter()
        .map(ifname)
        .filter(|n| n.starts_with(weft_common::name::VETH_PREFIX))
        .collect();
    if veths != want_veths {
        p.push(format!(
            "{name}: endpoint veths {veths:?}, expected {want_veths:?} (endpoints {endpoints:?})"
        ));
    }
    let spares = links.iter().filter(|l| ifname(l).starts_with("wp")).count();
    if spares > pool {
        p.push(format!("{name}: {spares} spare wp… veths, pool is {pool}"));
    }

    // Expected per-peer entries.
    let mut want_routes = BTreeSet::new();
    let mut want_neigh = BTreeSet::new();
    let mut want_fdb = BTreeSet::new();
    let mut want_set = BTreeSet::new();
    for (n, x) in want {
        want_routes.insert(x.subnet.clone());
        want_set.insert(x.public_ip.clone());
        if modes.get(*n).map(String::as_str) != Some("direct") {
            let net = x.subnet.split('/').next().unwrap_or_default().to_string();
            want_neigh.insert((net, x.vtep_mac.clone()));
            want_fdb.insert((x.vtep_mac.clone(), x.public_ip.clone()));
        }
    }
    let dst = |v: &Value| v["dst"].as_str().unwrap_or("").to_string();
    let mut seen_routes: Vec<String> = routes.as_array().into_iter().flatten().map(dst).collect();
    seen_routes.sort();
    let unique: BTreeSet<String> = seen_routes.iter().cloned().collect();
    if unique.len() != seen_routes.len() || unique != want_routes {
        p.push(format!(
            "{name}: weft routes {seen_routes:?}, expected {want_routes:?}"
        ));
    }
    // Nothing else routed over the vxlan device (the host's own subnet
    // address is a /32 on it: no route besides the local table's).
    let stray: Vec<String> = on_vx
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["table"].as_str().unwrap_or("main") != "local")
        .map(dst)
        .filter(|d| !want_routes.contains(d))
        .collect();
    if !stray.is_empty() {
        p.push(format!("{name}: stray routes on {vxlan}: {stray:?}"));
    }
    let seen_neigh: BTreeSet<(String, String)> = neigh
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["dst"].as_str().unwrap_or("").to_string(),
                n["lladdr"].as_str().unwrap_or("").to_lowercase(),
            )
        })
        .collect();
    if seen_neigh != want_neigh {
        p.push(format!(
            "{name}: neighbours on {vxlan} {seen_neigh:?}, expected {want_neigh:?}"
        ));
    }
    let seen_fdb: BTreeSet<(String, String)> = fdb
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f.get("dst").is_some())
        .map(|f| {
            (
                f["mac"].as_str().unwrap_or("").to_lowercase(),
                f["dst"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    if seen_fdb != want_fdb {
        p.push(format!(
            "{name}: fdb on {vxlan} {seen_fdb:?}, expected {want_fdb:?}"
        ));
    }
    let seen_set: BTreeSet<String> = nft["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("set"))
        .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    if seen_set != want_set {
        p.push(format!(
            "{name}: nft set vxlan_peers {seen_set:?}, expected {want_set:?}"
        ));
    }
}

/// Every endpoint of every live host pings every endpoint of every other
/// live host; one thread per source endpoint.
fn ping_matrix(lab: &Lab, r: &mut Report) {
    let mut eps: Vec<(String, PathBuf, String, String)> = Vec::new();
    for h in live_hosts(lab) {
        let list = match h.try_endpoints() {
            Ok(v) => v,
            Err(e) => {
                r.problems.push(e);
                continue;
            }
        };
        for e in list {
            eps.push((
                h.name.clone(),
                h.endpoint_netns(&e.name),
                e.name,
                e.ip.to_string(),
            ));
        }
    }
    r.endpoints = eps
        .iter()
        .map(|(h, _, n, ip)| (h.clone(), n.clone(), ip.clone()))
        .collect();
    let results: Vec<(usize, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = eps
            .iter()
            .map(|(host, path, name, _)| {
                let eps = &eps;
                s.spawn(move || {
                    let mut ok = 0;
                    let mut bad = Vec::new();
                    for (h2, _, n2, ip2) in eps.iter().filter(|e| &e.0 != host) {
                        if lab.ping(path, ip2) {
                            ok += 1;
                        } else {
                            bad.push(format!("{host}/{name} does not reach {h2}/{n2} ({ip2})"));
                        }
                    }
                    (ok, bad)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ping thread"))
            .collect()
    });
    for (ok, bad) in results {
        r.pings += ok;
        r.problems.extend(bad);
    }
}
