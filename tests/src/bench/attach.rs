//! `weft-bench attach`: create-and-attach a namespace (and delete it) with
//! `weftctl ns add` vs the CNI reference plugins, at several counts of
//! existing endpoints.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use weft_tests::netns::{command_in, SpawnOpts};
use weft_tests::{bin_path, require_root, Host, Lab, LabOpts};

use super::{command_line, machine, ms, stats};

const CNI_DIR: &str = "/usr/lib/cni";

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

struct Weft<'a> {
    host: &'a Host,
}

impl Weft<'_> {
    fn add(&self, name: &str) -> Result<Duration> {
        let mut c = Command::new(bin_path("weftctl"));
        c.arg("--agent-socket")
            .arg(self.host.socket())
            .args(["ns", "add", name])
            .stdout(Stdio::null());
        exec(c, &format!("weftctl ns add {name}"))
    }
    fn del(&self, name: &str) -> Result<Duration> {
        let mut c = Command::new(bin_path("weftctl"));
        c.arg("--agent-socket")
            .arg(self.host.socket())
            .args(["ns", "del", name])
            .stdout(Stdio::null());
        exec(c, &format!("weftctl ns del {name}"))
    }
}

/// The CNI reference path: create a namespace (`unshare --net=FILE`, the
/// same bind-mount `ip netns add` makes), then `bridge` ADD with
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

    fn plugin(&self, command: &str, name: &str) -> Result<Command> {
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
        Ok(c)
    }

    fn call(&self, command: &str, name: &str) -> Result<()> {
        let mut child = self
            .plugin(command, name)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(self.conf.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "CNI bridge {command} {name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn add(&self, name: &str) -> Result<Duration> {
        let path = self.netns_dir.join(name);
        let t = Instant::now();
        fs::File::create(&path)?;
        let mut c = Command::new("unshare");
        c.arg(format!("--net={}", path.display())).arg("true");
        exec(c, "unshare --net")?;
        self.call("ADD", name)?;
        Ok(t.elapsed())
    }

    fn del(&self, name: &str) -> Result<Duration> {
        let path = self.netns_dir.join(name);
        let t = Instant::now();
        self.call("DEL", name)?;
        nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH)?;
        fs::remove_file(&path)?;
        Ok(t.elapsed())
    }
}

pub fn run(counts: &[usize], samples: usize, settle: Duration, out: &Path) -> Result<()> {
    require_root();
    if !Path::new(CNI_DIR).join("bridge").exists() {
        bail!("{CNI_DIR}/bridge not found: install containernetworking-plugins (deploy/install-deps.sh)");
    }
    if counts.windows(2).any(|w| w[0] > w[1]) {
        bail!("--counts must be ascending");
    }
    // Two simulated hosts: weft on h1, CNI on h2, so neither sees the other's
    // devices or rules.
    let lab = Lab::new(LabOpts::hosts(2).subnet(1, "10.244.0.0/20"));
    let (h1, h2) = (lab.host(1), lab.host(2));
    let _agent = h1.start_agent(&[]);
    let weft = Weft { host: h1 };
    let cni = Cni::new(h2, &lab.dir)?;
    let mut series = Vec::new();
    let mut existing = 0;
    for &n in counts {
        eprintln!("filling to {n} existing endpoints each…");
        while existing < n {
            weft.add(&format!("fill{existing}"))?;
            cni.add(&format!("fill{existing}"))?;
            existing += 1;
        }
        let mut s = [(); 4].map(|_| Vec::with_capacity(samples));
        for i in 0..samples {
            std::thread::sleep(settle);
            let name = format!("bench{i}");
            // Interleaved, alternating who goes first.
            if i % 2 == 0 {
                s[0].push(ms(weft.add(&name)?));
                s[1].push(ms(cni.add(&name)?));
                s[2].push(ms(weft.del(&name)?));
                s[3].push(ms(cni.del(&name)?));
            } else {
                s[1].push(ms(cni.add(&name)?));
                s[0].push(ms(weft.add(&name)?));
                s[3].push(ms(cni.del(&name)?));
                s[2].push(ms(weft.del(&name)?));
            }
        }
        let [wa, ca, wd, cd] = s;
        for (tool, op, v) in [
            ("weft", "add", wa),
            ("cni-bridge", "add", ca),
            ("weft", "del", wd),
            ("cni-bridge", "del", cd),
        ] {
            series.push(Series {
                tool,
                op,
                existing: n,
                samples_ms: v,
            });
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
    println!("| op | existing | weft median | weft p99 | weft min–max | CNI median | CNI p99 | CNI min–max | CNI / weft (median) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for op in ["add", "del"] {
        for &n in counts {
            let get = |tool: &str| {
                series
                    .iter()
                    .find(|s| s.tool == tool && s.op == op && s.existing == n)
                    .map(|s| stats(&s.samples_ms))
            };
            if let (Some(w), Some(c)) = (get("weft"), get("cni-bridge")) {
                println!(
                    "| {op} | {n} | {:.2} ms | {:.2} ms | {:.2}–{:.2} ms | {:.2} ms | {:.2} ms | {:.2}–{:.2} ms | {:.1}× |",
                    w.0, w.1, w.2, w.3, c.0, c.1, c.2, c.3, c.0 / w.0
                );
            }
        }
    }
}
