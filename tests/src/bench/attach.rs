//! `weft-bench attach`: create-and-attach a namespace (and delete it) with
//! `weftctl ns add` vs the CNI reference plugins vs netavark (podman's
//! network backend), at several counts of existing endpoints.
//!
//! Each tool runs on its own simulated host (weft on h1, CNI on h2,
//! netavark on h3), so none sees the others' devices or firewall rules; all
//! share the kernel. The two peers create the namespace themselves the same
//! way (`unshare --net=FILE`, the bind mount `ip netns add` makes) before
//! their plugin runs, and delete it (unmount) after.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use weft_tests::netns::{command_in, SpawnOpts};
use weft_tests::{bin_path, require_root, Host, Lab, LabOpts};

use super::common::{command_line, machine, ms, stats};

const CNI_DIR: &str = "/usr/lib/cni";
/// Where Debian's `netavark` package puts it (podman calls it from there).
const NETAVARK: &str = "/usr/lib/podman/netavark";

/// The tools, in the order of the table and the JSON.
const TOOLS: [&str; 3] = ["weft", "cni-bridge", "netavark"];

#[derive(Serialize)]
struct Series {
    tool: &'static str,
    op: &'static str,
    existing: usize,
    samples_ms: Vec<f64>,
}

/// Runs a command to completion, failing with its stderr.
fn exec(mut c: Command, what: &str) -> Result<Duration> {
    let t = Instant::now();
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {what}"))?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(took)
}

/// Runs a command with `input` on its stdin; fails with its output.
fn exec_stdin(mut c: Command, input: &[u8], what: &str) -> Result<()> {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {what}"))?;
    child.stdin.take().expect("stdin").write_all(input)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Creates a bind-mounted network namespace at `path` (`unshare
/// --net=FILE`, what `ip netns add` does).
fn create_netns(path: &Path) -> Result<()> {
    fs::File::create(path)?;
    let mut c = Command::new("unshare");
    c.arg(format!("--net={}", path.display())).arg("true");
    exec(c, "unshare --net")?;
    Ok(())
}

fn remove_netns(path: &Path) -> Result<()> {
    nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
        .with_context(|| format!("umount {}", path.display()))?;
    fs::remove_file(path)?;
    Ok(())
}

/// One way of attaching a namespace.
trait Attach {
    fn add(&mut self, name: &str) -> Result<Duration>;
    fn del(&mut self, name: &str) -> Result<Duration>;
}

struct Weft<'a> {
    host: &'a Host,
}

impl Weft<'_> {
    fn weftctl(&self, op: &str, name: &str) -> Result<Duration> {
        let mut c = Command::new(bin_path("weftctl"));
        c.arg("--agent-socket")
            .arg(self.host.socket())
            .args(["ns", op, name])
            .stdout(Stdio::null());
        exec(c, &format!("weftctl ns {op} {name}"))
    }
}

impl Attach for Weft<'_> {
    fn add(&mut self, name: &str) -> Result<Duration> {
        self.weftctl("add", name)
    }
    fn del(&mut self, name: &str) -> Result<Duration> {
        self.weftctl("del", name)
    }
}

/// The CNI reference path: create a namespace, then `bridge` ADD with
/// `host-local` IPAM; delete is `bridge` DEL, then unmount.
struct Cni<'a> {
    host: &'a Host,
    netns_dir: PathBuf,
    conf: String,
}

impl<'a> Cni<'a> {
    fn new(host: &'a Host, dir: &Path) -> Result<Self> {
        let netns_dir = dir.join("cni-netns");
        fs::create_dir_all(&netns_dir)?;
        let conf = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "weftbench",
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "host-local",
                "subnet": "10.88.0.0/16",
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": dir.join("cni-ipam"),
            }
        })
        .to_string();
        Ok(Cni {
            host,
            netns_dir,
            conf,
        })
    }

    fn call(&self, command: &str, name: &str) -> Result<()> {
        let mut c = command_in(
            &self.host.netns,
            Path::new(CNI_DIR).join("bridge"),
            SpawnOpts::default(),
        )?;
        c.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", name)
            .env("CNI_NETNS", self.netns_dir.join(name))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_DIR);
        exec_stdin(
            c,
            self.conf.as_bytes(),
            &format!("CNI bridge {command} {name}"),
        )
    }
}

impl Attach for Cni<'_> {
    fn add(&mut self, name: &str) -> Result<Duration> {
        let t = Instant::now();
        create_netns(&self.netns_dir.join(name))?;
        self.call("ADD", name)?;
        Ok(t.elapsed())
    }

    fn del(&mut self, name: &str) -> Result<Duration> {
        let t = Instant::now();
        self.call("DEL", name)?;
        remove_netns(&self.netns_dir.join(name))?;
        Ok(t.elapsed())
    }
}

/// netavark as podman drives it for its default network: a bridge
/// (`podman0`) with NAT (masquerade of the subnet, through iptables — the
/// default firewall driver of Debian 12's netavark 1.4 without firewalld),
/// no DNS, no published ports. Podman does the IPAM itself and passes the
/// address in `static_ips`; so does this, from a free list. Add is: create
/// the namespace, `netavark setup NETNS` with the options on stdin; delete
/// is `netavark teardown NETNS` with the same options, then unmount.
struct Netavark<'a> {
    host: &'a Host,
    netns_dir: PathBuf,
    /// Address of each attached namespace.
    ips: HashMap<String, Ipv4Addr>,
    free: Vec<Ipv4Addr>,
    next: u32,
    /// Container ids handed out so far (podman's are 64 hex digits).
    ids: u64,
    id_of: HashMap<String, String>,
}

impl<'a> Netavark<'a> {
    const SUBNET: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 0);

    fn new(host: &'a Host, dir: &Path) -> Result<Self> {
        let netns_dir = dir.join("netavark-netns");
        fs::create_dir_all(&netns_dir)?;
        Ok(Netavark {
            host,
            netns_dir,
            ips: HashMap::new(),
            free: Vec::new(),
            next: 2,
            ids: 0,
            id_of: HashMap::new(),
        })
    }

    /// The network options podman would pass for container `name`.
    fn options(&self, name: &str) -> String {
        serde_json::json!({
            "container_id": self.id_of[name],
            "container_name": name,
            "networks": {
                "podman": {
                    "interface_name": "eth0",
                    "static_ips": [self.ips[name].to_string()],
                }
            },
            "network_info": {
                "podman": {
                    "name": "podman",
                    "id": "2f259bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb9",
                    "driver": "bridge",
                    "network_interface": "podman0",
                    "subnets": [{"subnet": "10.89.0.0/16", "gateway": "10.89.0.1"}],
                    "ipv6_enabled": false,
                    "internal": false,
                    "dns_enabled": false,
                    "ipam_options": {"driver": "host-local"},
                }
            }
        })
        .to_string()
    }

    fn call(&self, command: &str, name: &str) -> Result<()> {
        let mut c = command_in(&self.host.netns, NETAVARK, SpawnOpts::default())?;
        c.arg(command).arg(self.netns_dir.join(name));
        exec_stdin(
            c,
            self.options(name).as_bytes(),
            &format!("netavark {command} {name}"),
        )
    }
}

/// netavark must have set up what podman's default network has: the
/// masquerade of the subnet in the host's nat table.
fn check_netavark_nat(host: &Host) -> Result<()> {
    let out = weft_tests::netns::exec_in(&host.netns, &["iptables", "-t", "nat", "-S"])?;
    let rules = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success()
            && rules.contains("-s 10.89.0.0/16 -j NETAVARK-")
            && rules.contains("-j MASQUERADE"),
        "netavark's NAT rules missing on {}: {}{rules}",
        host.name,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl Attach for Netavark<'_> {
    fn add(&mut self, name: &str) -> Result<Duration> {
        // IPAM and ids (podman's part, outside the measurement).
        let ip = match self.free.pop() {
            Some(ip) => ip,
            None => {
                let ip = Ipv4Addr::from(u32::from(Self::SUBNET) + self.next);
                self.next += 1;
                anyhow::ensure!(self.next < 65_534, "netavark subnet exhausted");
                ip
            }
        };
        self.ips.insert(name.to_string(), ip);
        self.ids += 1;
        self.id_of.insert(
            name.to_string(),
            format!("{:064x}", 0xbe4c_0000_0000 + self.ids),
        );
        let t = Instant::now();
        create_netns(&self.netns_dir.join(name))?;
        self.call("setup", name)?;
        Ok(t.elapsed())
    }

    fn del(&mut self, name: &str) -> Result<Duration> {
        let t = Instant::now();
        self.call("teardown", name)?;
        remove_netns(&self.netns_dir.join(name))?;
        let took = t.elapsed();
        if let Some(ip) = self.ips.remove(name) {
            self.free.push(ip);
        }
        self.id_of.remove(name);
        Ok(took)
    }
}

pub fn run(counts: &[usize], samples: usize, settle: Duration, out: &Path) -> Result<()> {
    require_root();
    if !Path::new(CNI_DIR).join("bridge").exists() {
        bail!("{CNI_DIR}/bridge not found: install containernetworking-plugins (deploy/install-deps.sh)");
    }
    if !Path::new(NETAVARK).exists() {
        bail!("{NETAVARK} not found: install netavark (deploy/install-deps.sh)");
    }
    if counts.windows(2).any(|w| w[0] > w[1]) {
        bail!("--counts must be ascending");
    }
    // Three simulated hosts: weft on h1, CNI on h2, netavark on h3.
    let lab = Lab::new(LabOpts::hosts(3).subnet(1, "10.244.0.0/20"));
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));
    let _agent = h1.start_agent(&[]);
    let mut weft = Weft { host: h1 };
    let mut cni = Cni::new(h2, &lab.dir)?;
    let mut nv = Netavark::new(h3, &lab.dir)?;
    let mut tools: [&mut dyn Attach; 3] = [&mut weft, &mut cni, &mut nv];
    let mut series = Vec::new();
    let mut existing = 0;
    for &n in counts {
        eprintln!("filling to {n} existing endpoints each…");
        while existing < n {
            let name = format!("fill{existing}");
            for (k, t) in tools.iter_mut().enumerate() {
                t.add(&name)
                    .with_context(|| format!("fill: {} add {name}", TOOLS[k]))?;
            }
            existing += 1;
        }
        if n > 0 {
            check_netavark_nat(h3)?;
        }
        // Per tool: add samples, del samples.
        let mut s: Vec<[Vec<f64>; 2]> = (0..TOOLS.len())
            .map(|_| [Vec::with_capacity(samples), Vec::with_capacity(samples)])
            .collect();
        for i in 0..samples {
            std::thread::sleep(settle);
            let name = format!("bench{i}");
            // Interleaved, rotating who goes first.
            let order: Vec<usize> = (0..TOOLS.len()).map(|k| (i + k) % TOOLS.len()).collect();
            for &k in &order {
                s[k][0].push(ms(tools[k]
                    .add(&name)
                    .with_context(|| format!("{} add {name}", TOOLS[k]))?));
            }
            for &k in &order {
                s[k][1].push(ms(tools[k]
                    .del(&name)
                    .with_context(|| format!("{} del {name}", TOOLS[k]))?));
            }
        }
        for (k, [add, del]) in s.into_iter().enumerate() {
            for (op, v) in [("add", add), ("del", del)] {
                series.push(Series {
                    tool: TOOLS[k],
                    op,
                    existing: n,
                    samples_ms: v,
                });
            }
        }
    }
    fs::create_dir_all(out)?;
    let file = out.join("attach.json");
    fs::write(
        &file,
        serde_json::to_vec_pretty(
            &serde_json::json!({ "machine": machine(), "command": command_line(), "series": series }),
        )?,
    )?;
    print_table(&series, counts);
    eprintln!("raw samples: {}", file.display());
    Ok(())
}

fn print_table(series: &[Series], counts: &[usize]) {
    println!("Machine: {}  ", machine());
    println!("Command: `{}`\n", command_line());
    println!("| op | existing | weft median | weft p99 | weft min–max | CNI median | netavark median | CNI / weft | netavark / weft |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for op in ["add", "del"] {
        for &n in counts {
            let get = |tool: &str| {
                series
                    .iter()
                    .find(|s| s.tool == tool && s.op == op && s.existing == n)
                    .map(|s| stats(&s.samples_ms))
            };
            if let (Some(w), Some(c), Some(v)) = (get("weft"), get("cni-bridge"), get("netavark")) {
                println!(
                    "| {op} | {n} | {:.2} ms | {:.2} ms | {:.2}–{:.2} ms | {:.2} ms | {:.2} ms | {:.1}× | {:.1}× |",
                    w.0, w.1, w.2, w.3, c.0, v.0, c.0 / w.0, v.0 / w.0
                );
            }
        }
    }
}
