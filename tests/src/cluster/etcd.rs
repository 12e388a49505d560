//! A three-member etcd cluster in the control namespace,
//! for [`LabOpts::etcd_members`](crate::LabOpts) > 1:
//!
//! ```text
//!   <prefix>-c eth0 198.18.0.2 (m1), 198.18.0.9 (m2), 198.18.0.10 (m3)
//!   client URL http://IP:2379, peer URL http://IP:2380, data <lab>/etcd-mK
//! ```
//!
//! m1 keeps the single etcd's address, so [`crate::cluster::ETCD_IP`] still
//! names a member; .9 and .10 sit between the controllers (.3–.8) and the
//! hosts (.11–). Controllers, `weftctl` and [`Lab::etcd_dump`] are given
//! every member's URL ([`Lab::etcd_endpoints`]). Members are held as
//! `etcd-m1`, `etcd-m2`, … ([`Lab::kill_held`]); [`Lab::start_etcd_member`]
//! restarts one on its data dir.

use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;

use crate::cluster::{etcd_url, START_TIMEOUT};
use crate::lab::underlay::ip_batch;
use crate::lab::{log_tail, Lab};
use crate::registry::process::spawn_logged;

/// The most members [`LabOpts::etcd_members`](crate::LabOpts) may ask for.
pub const MAX_MEMBERS: usize = 3;

/// Address of etcd member `k` (1-based).
pub fn member_ip(k: usize) -> Ipv4Addr {
    match k {
        1 => crate::cluster::ETCD_IP,
        2 => Ipv4Addr::new(198, 18, 0, 9),
        3 => Ipv4Addr::new(198, 18, 0, 10),
        _ => panic!("etcd members are numbered 1..={MAX_MEMBERS}"),
    }
}

/// Client URL of member `k`.
pub fn member_url(k: usize) -> String {
    format!("http://{}:2379", member_ip(k))
}

/// etcd's command line for member `name` with its data dir, client URL
/// (listened on and advertised), peer URL (likewise) and initial cluster.
pub(crate) fn etcd_command(
    name: &str,
    data: &str,
    client_url: &str,
    peer_url: &str,
    initial_cluster: &str,
) -> Vec<String> {
    [
        "etcd",
        "--name",
        name,
        "--data-dir",
        data,
        "--listen-client-urls",
        client_url,
        "--advertise-client-urls",
        client_url,
        "--listen-peer-urls",
        peer_url,
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster",
        initial_cluster,
        "--log-level",
        "warn",
    ]
    .map(String::from)
    .to_vec()
}

impl Lab {
    /// Number of etcd members (1 unless built with `etcd_members`).
    pub fn etcd_members(&self) -> usize {
        self.cluster_info().etcd_members.max(1)
    }

    /// Every etcd client URL, comma-separated (what `--etcd-endpoints`
    /// takes).
    pub fn etcd_endpoints(&self) -> String {
        match self.etcd_members() {
            1 => etcd_url(),
            n => (1..=n).map(member_url).collect::<Vec<_>>().join(","),
        }
    }

    /// Starts every member of a multi-member etcd cluster (first start:
    /// adds their addresses) and waits until all are healthy.
    pub(crate) fn start_etcd_cluster(&self) -> Result<()> {
        let n = self.etcd_members();
        if !(2..=MAX_MEMBERS).contains(&n) {
            bail!("etcd_members must be 1..={MAX_MEMBERS}, not {n}");
        }
        let c = format!("{}-c", self.prefix);
        let script: String = (2..=n)
            .map(|k| format!("addr add {}/24 dev eth0\n", member_ip(k)))
            .collect();
        ip_batch(Some(&c), &script)?;
        // A new cluster has no quorum until a majority runs: start all,
        // then wait.
        for k in 1..=n {
            self.spawn_member(k)?;
        }
        self.wait_etcd_healthy(&self.etcd_endpoints())
    }

    /// Restarts member `k` on its data dir (after [`Lab::kill_held`]
    /// `("etcd-mK")`) and waits until it is healthy.
    pub fn start_etcd_member(&self, k: usize) -> Result<()> {
        self.spawn_member(k)?;
        self.wait_etcd_healthy(&member_url(k))
    }

    fn spawn_member(&self, k: usize) -> Result<()> {
        let n = self.etcd_members();
        let data = self.dir.join(format!("etcd-m{k}")).display().to_string();
        let url = member_url(k);
        let peer = format!("http://{}:2380", member_ip(k));
        let initial: Vec<String> = (1..=n)
            .map(|j| format!("m{j}=http://{}:2380", member_ip(j)))
            .collect();
        let initial = initial.join(",");
        let name = format!("m{k}");
        let mut args = etcd_command(&name, &data, &url, &peer, &initial);
        args.extend([
            "--initial-cluster-token".to_string(),
            format!("{}-etcd", self.prefix),
            "--initial-cluster-state".to_string(),
            "new".to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let label = format!("etcd-m{k}");
        let p = spawn_logged(&self.shared, None, &label, &self.control(), &args, &[])?;
        self.hold(&label, p);
        Ok(())
    }

    /// Waits until every etcd in `endpoints` answers `endpoint health`
    /// (with the lab's etcdctl TLS flags, if any); on timeout, the error
    /// carries the tail of each held etcd's log.
    pub(crate) fn wait_etcd_healthy(&self, endpoints: &str) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let tls = self.etcdctl_tls_flags();
        let mut cmd = vec![
            "etcdctl",
            "--endpoints",
            endpoints,
            "--dial-timeout=1s",
            "--command-timeout=2s",
        ];
        cmd.extend(tls.iter().map(String::as_str));
        cmd.extend(["endpoint", "health"]);
        loop {
            let out = self.exec(self.control(), &cmd);
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .held
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(label, _)| *label == "etcd" || label.starts_with("etcd-m"))
                    .map(|(label, p)| {
                        format!("--- {label} {}:\n{}", p.log.display(), log_tail(&p.log, 15))
                    })
                    .collect();
                bail!(
                    "etcd {endpoints} did not become healthy within {START_TIMEOUT:?}: {}\n{}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    logs.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `etcdctl endpoint status` of every member: (member index, is
    /// leader) for those that answer.
    pub fn etcd_status(&self) -> Vec<(usize, bool)> {
        let mut r = Vec::new();
        for k in 1..=self.etcd_members() {
            let url = member_url(k);
            let out = self.exec(
                self.control(),
                &[
                    "etcdctl",
                    "--endpoints",
                    &url,
                    "--dial-timeout=1s",
                    "--command-timeout=2s",
                    "-w",
                    "json",
                    "endpoint",
                    "status",
                ],
            );
            if !out.status.success() {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else {
                continue;
            };
            let Some(s) = v.get(0).map(|s| &s["Status"]) else {
                continue;
            };
            let leader = s["leader"].as_u64();
            let me = s["header"]["member_id"].as_u64();
            r.push((k, leader.is_some() && leader == me));
        }
        r
    }

    /// The member that is leader now, if one answers as leader.
    pub fn etcd_leader(&self) -> Option<usize> {
        self.etcd_status()
            .into_iter()
            .find(|(_, l)| *l)
            .map(|(k, _)| k)
    }
}
