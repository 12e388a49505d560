//! Cluster mode of the test bed: etcd (the Debian `etcd-server` package) and
//! controllers in a control namespace `<prefix>-c` on the underlay, a PKI in
//! `<lab dir>/pki`, and the cluster config written with `weftctl`.
//!
//! ```text
//!   <prefix>-c eth0 198.18.0.2 (etcd :2379), 198.18.0.3 (c1 :7470), 198.18.0.4 (c2 :7470), …
//! ```
//!
//! Here: the control namespace, the PKI, starting controllers and `weftctl`
//! against the lab's etcd. A three-member etcd is in [`etcd`], etcd over
//! TLS with users in [`etcd_tls`], reading what etcd holds in [`records`].

pub mod etcd;
pub mod etcd_tls;
pub mod records;

pub use records::ListedHost;

pub use crate::registry::ClusterInfo;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::bin_path;
use crate::lab::underlay::ip_batch;
use crate::lab::{log_tail, Lab, LabOpts, CLUSTER_CIDR, ROUTED_CIDR, ROUTER_IP};
use crate::netns::describe_status;
use crate::registry::process::{spawn_logged, Process};

/// Address of etcd in the control namespace.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// How long etcd and a controller may take to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
pub const CONTROLLER_PORT: u16 = 7470;

/// Address of controller `j` (1-based).
pub fn controller_ip(j: usize) -> Ipv4Addr {
    assert!((1..=6).contains(&j), "controllers are numbered 1..=6");
    Ipv4Addr::new(198, 18, 0, 2 + j as u8)
}

pub fn controller_addr(j: usize) -> String {
    controller_sockaddr(j).to_string()
}

/// Where controller `j` listens (UDP, QUIC).
pub fn controller_sockaddr(j: usize) -> std::net::SocketAddr {
    (controller_ip(j), CONTROLLER_PORT).into()
}

/// Where controller `j` serves `/metrics`, `/healthz` and `/readyz`
/// (`--metrics-listen`, always given by [`Lab::start_controller`]).
pub fn controller_metrics_addr(j: usize) -> std::net::SocketAddr {
    (controller_ip(j), crate::http::CONTROLLER_METRICS_PORT).into()
}

pub fn etcd_url() -> String {
    format!("http://{ETCD_IP}:2379")
}

/// A client of the lab's etcd for tests and benchmarks that write keys as
/// an outside writer would (hand-made records, fake peers); run it inside
/// a namespace that reaches etcd.
pub async fn raw_etcd() -> anyhow::Result<etcd_client::Client> {
    Ok(etcd_client::Client::connect([etcd_url()], None).await?)
}

impl Lab {
    /// The control namespace (etcd and controllers).
    pub fn control(&self) -> PathBuf {
        self.ns("c")
    }

    pub fn cluster_info(&self) -> ClusterInfo {
        self.shared
            .cluster
            .lock()
            .unwrap()
            .clone()
            .expect("this lab has no cluster (LabOpts::controllers is 0)")
    }

    pub(crate) fn build_cluster(&self, opts: &LabOpts) -> Result<()> {
        let n = opts.controllers;
        if n > 6 {
            bail!("at most 6 controllers, not {n}");
        }
        let c = format!("{}-c", self.prefix);
        let mut script = format!(
            "link add c type veth peer name eth0 netns {c}\nlink set c master br0\nlink set c up\n"
        );
        ip_batch(Some(&format!("{}-u", self.prefix)), &script)?;
        script = format!("link set lo up\naddr add {ETCD_IP}/24 dev eth0\n");
        for j in 1..=n {
            script += &format!("addr add {}/24 dev eth0\n", controller_ip(j));
        }
        script += &format!("link set eth0 up\nroute add {ROUTED_CIDR} via {ROUTER_IP}\n");
        ip_batch(Some(&c), &script)?;
        let pki = self.dir.join("pki");
        let info = ClusterInfo {
            controllers: (1..=n).map(controller_addr).collect(),
            pki: pki.clone(),
            lease_ttl: opts.lease_ttl,
            etcd_data: self.dir.join("etcd"),
            etcd_members: opts.etcd_members,
            etcd_tls: None,
        };
        if opts.etcd_tls && opts.etcd_members > 1 {
            bail!("etcd_tls is for a single etcd member");
        }
        *self.shared.cluster.lock().unwrap() = Some(info);
        if opts.etcd_tls {
            let t = self.make_etcd_pki()?;
            if let Some(i) = self.shared.cluster.lock().unwrap().as_mut() {
                i.etcd_tls = Some(t);
            }
        }
        self.write_manifest()?;
        self.try_weftctl_etcd(&["certs", "init", "--dir", &pki.display().to_string()])?;
        for j in 1..=n {
            self.issue_cert(&format!("c{j}"), "controller", &[controller_ip(j)])?;
        }
        for h in self.hosts() {
            self.issue_cert(&h.name, "agent", &[])?;
        }
        if opts.etcd_members > 1 {
            self.start_etcd_cluster()?;
        } else {
            self.start_etcd()?;
            self.enable_etcd_auth()?;
        }
        let cidr = opts
            .cluster_cidr
            .clone()
            .unwrap_or(CLUSTER_CIDR.to_string());
        let len = opts.subnet_len.unwrap_or(24).to_string();
        self.try_weftctl_etcd(&["cluster", "init", "--cidr", &cidr, "--subnet-len", &len])?;
        for j in 1..=n {
            self.start_controller(j, &[])?;
        }
        self.write_manifest()?;
        Ok(())
    }

    /// `weftctl certs issue` for a node into the lab's PKI.
    pub fn issue_cert(&self, name: &str, role: &str, ips: &[Ipv4Addr]) -> Result<()> {
        let pki = self.cluster_info().pki.display().to_string();
        let ips: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
        let mut a = vec![
            "certs", "issue", "--dir", &pki, "--name", name, "--role", role,
        ];
        for ip in &ips {
            a.extend(["--ip", ip.as_str()]);
        }
        self.try_weftctl_etcd(&a).map(drop)
    }

    /// Kills (SIGKILL) a process the lab holds: `etcd` or `controller-cJ`.
    /// Returns false if it was not running.
    pub fn kill_held(&self, label: &str) -> bool {
        match self.held.lock().unwrap().remove(label) {
            Some(mut p) => {
                let running = p.is_running();
                p.kill();
                running
            }
            None => false,
        }
    }

    /// Pid of a held process.
    pub fn held_pid(&self, label: &str) -> u32 {
        self.held
            .lock()
            .unwrap()
            .get(label)
            .map(|p| p.pid())
            .unwrap_or_else(|| panic!("no process {label} held by the lab"))
    }

    /// Log file of a held process.
    pub fn held_log(&self, label: &str) -> PathBuf {
        self.held
            .lock()
            .unwrap()
            .get(label)
            .map(|p| p.log.clone())
            .unwrap_or_else(|| panic!("no process {label} held by the lab"))
    }

    pub(crate) fn hold(&self, label: &str, p: Process) {
        if let Some(mut old) = self.held.lock().unwrap().insert(label.to_string(), p) {
            old.kill();
        }
    }

    /// Starts etcd (again: its data dir persists) and waits until it serves.
    pub fn start_etcd(&self) -> Result<()> {
        let data = self.cluster_info().etcd_data.display().to_string();
        let url = self.etcd_client_endpoints();
        let mut args = etcd::etcd_command(
            "lab",
            &data,
            &url,
            "http://127.0.0.1:2380",
            "lab=http://127.0.0.1:2380",
        );
        args.extend(self.etcd_server_flags());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = spawn_logged(&self.shared, None, "etcd", &self.control(), &args, &[])?;
        self.hold("etcd", p);
        self.wait_etcd_healthy(&url)
    }

    /// Starts controller `j` (1-based) with the lab's settings plus `extra`
    /// and waits until it listens.
    pub fn start_controller(&self, j: usize, extra: &[&str]) -> Result<()> {
        let info = self.cluster_info();
        let bin = bin_path("weft-controller");
        let bin = bin.to_string_lossy();
        let tls = info.pki.join(format!("c{j}")).display().to_string();
        let listen = controller_addr(j);
        let metrics = controller_metrics_addr(j).to_string();
        let url = self.etcd_client_endpoints();
        let etcd_flags = self.etcd_client_flags();
        let ttl = info.lease_ttl.map(|t| t.to_string());
        let mut cmd: Vec<&str> = vec![
            &bin,
            "--etcd-endpoints",
            &url,
            "--listen",
            &listen,
            "--tls-dir",
            &tls,
            "--metrics-listen",
            &metrics,
        ];
        if let Some(t) = &ttl {
            cmd.extend(["--lease-ttl", t.as_str()]);
        }
        let log_format = self.shared.log_format_args();
        cmd.extend(log_format.iter().map(String::as_str));
        cmd.extend(etcd_flags.iter().map(String::as_str));
        cmd.extend_from_slice(extra);
        let mut p = spawn_logged(
            &self.shared,
            None,
            &format!("controller-c{j}"),
            &self.control(),
            &cmd,
            &[],
        )?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if std::fs::read_to_string(&p.log).is_ok_and(|l| l.contains("listening on udp")) {
                self.hold(&format!("controller-c{j}"), p);
                return Ok(());
            }
            if let Some(st) = p.wait_timeout(Duration::ZERO) {
                bail!(
                    "controller c{j} exited ({}); log {}:\n{}",
                    describe_status(&st),
                    p.log.display(),
                    log_tail(&p.log, 30)
                );
            }
            if Instant::now() > deadline {
                bail!("controller c{j} did not start within {START_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `weftctl --etcd-endpoints <lab etcd> ARGS…` in the control
    /// namespace.
    pub fn weftctl_etcd(&self, args: &[&str]) -> Output {
        let a = self.with_etcd_flags(args);
        self.weftctl_plain(&a.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// [`Lab::weftctl_etcd`] with `input` on its stdin.
    pub fn weftctl_etcd_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        let a = self.with_etcd_flags(args);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        self.weftctl_run(&a, &[], Some(input))
    }

    /// `--etcd-endpoints <lab etcd>`, the TLS flags if any, then `args`.
    fn with_etcd_flags(&self, args: &[&str]) -> Vec<String> {
        let mut a = vec!["--etcd-endpoints".to_string(), self.etcd_client_endpoints()];
        a.extend(self.etcd_client_flags());
        a.extend(args.iter().map(|s| s.to_string()));
        a
    }

    /// [`Lab::weftctl_etcd`], or an error naming the command, its exit
    /// and its stderr; its stdout if it succeeds.
    pub(crate) fn try_weftctl_etcd(&self, args: &[&str]) -> Result<String> {
        let a = self.with_etcd_flags(args);
        self.try_weftctl_plain(&a.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// [`Lab::weftctl_etcd`], panicking (with its stderr) unless it
    /// succeeds; its stdout.
    pub fn weftctl_etcd_ok(&self, args: &[&str]) -> String {
        self.try_weftctl_etcd(args)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `weftctl -o json ARGS…` against the lab's etcd; panics unless it
    /// succeeds with one JSON document.
    pub fn weftctl_etcd_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["-o", "json"];
        a.extend_from_slice(args);
        let out = self.weftctl_etcd(&a);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "weftctl {} failed ({}):\nstderr: {}\nstdout: {stdout}",
            a.join(" "),
            describe_status(&out.status),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("weftctl {}: not JSON ({e}): {stdout}", a.join(" ")))
    }
}
