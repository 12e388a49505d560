//! Building the lab's network: the namespaces, the underlay bridges, the
//! router and the "internet", and each host's `eth0` (see the picture in
//! [`crate::lab`]). Everything goes through `ip -batch`, inside the lab's
//! own namespaces only.

use std::fs;
use std::io::Write;
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use super::addresses::{
    INTERNET_IP, ROUTED_CIDR, ROUTED_ROUTER_IP, ROUTER_INTERNET_IP, ROUTER_IP, UNDERLAY_CIDR,
};
use super::Lab;
use crate::netns;

impl Lab {
    /// Creates the namespaces and wires them: `br0` (the underlay) and
    /// `br1` (the routed segment) in the underlay namespace, the router
    /// between them and the internet, every host's `eth0` with its address
    /// and routes, and the hosts' agent directories.
    pub(super) fn build(&self, routed: &[usize]) -> Result<()> {
        let p = &self.prefix;
        let (u, r, i) = (format!("{p}-u"), format!("{p}-r"), format!("{p}-i"));
        let names = self.namespaces();
        let add: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
        ip_batch(None, &add)?;

        let mut ub = String::from(
            "link set lo up\nlink add br0 type bridge\nlink set br0 up\nlink add br1 type bridge\nlink set br1 up\n",
        );
        for h in self.hosts() {
            let port = &h.name;
            let br = if routed.contains(&h.index) {
                "br1"
            } else {
                "br0"
            };
            ub += &format!(
                "link add {port} type veth peer name eth0 netns {}\nlink set {port} master {br}\nlink set {port} up\n",
                h.ns_name
            );
        }
        ub += &format!(
            "link add r type veth peer name eth0 netns {r}\nlink set r master br0\nlink set r up\n\
             link add r2 type veth peer name eth2 netns {r}\nlink set r2 master br1\nlink set r2 up\n"
        );
        ip_batch(Some(&u), &ub)?;

        ip_batch(
            Some(&r),
            &format!(
                "link set lo up\naddr add {ROUTER_IP}/24 dev eth0\nlink set eth0 up\n\
                 link add eth1 type veth peer name eth0 netns {i}\n\
                 addr add {ROUTER_INTERNET_IP}/24 dev eth1\nlink set eth1 up\n\
                 addr add {ROUTED_ROUTER_IP}/28 dev eth2\nlink set eth2 up\n"
            ),
        )?;
        netns::write_net_sysctl(&r, "ipv4/ip_forward", "1")?;
        ip_batch(
            Some(&i),
            &format!(
                "link set lo up\naddr add {INTERNET_IP}/24 dev eth0\nlink set eth0 up\n\
                 route add {UNDERLAY_CIDR} via {ROUTER_INTERNET_IP}\n"
            ),
        )?;
        for h in self.hosts() {
            let script = if routed.contains(&h.index) {
                format!(
                    "link set lo up\naddr add {}/28 dev eth0\nlink set eth0 up\n\
                     route add default via {ROUTED_ROUTER_IP}\n",
                    h.ip
                )
            } else {
                format!(
                    "link set lo up\naddr add {}/24 dev eth0\nlink set eth0 up\n\
                     route add default via {ROUTER_IP}\nroute add {ROUTED_CIDR} via {ROUTER_IP}\n",
                    h.ip
                )
            };
            ip_batch(Some(&h.ns_name), &script)?;
            for d in [&h.state_dir, &h.run_dir, &h.netns_dir] {
                fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            }
        }
        Ok(())
    }
}

/// Runs `ip [-n NS] -batch -` with `script` on its stdin.
pub(crate) fn ip_batch(ns: Option<&str>, script: &str) -> Result<()> {
    use std::process::Command;
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("run ip (iproute2)")?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip {}-batch failed: {}\nscript:\n{script}",
            ns.map(|n| format!("-n {n} ")).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
