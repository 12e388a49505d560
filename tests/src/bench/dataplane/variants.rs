//! Experiment mode: `WEFT_BENCH_DP_VARIANTS=veth-gro,no-udpcsum,…` measures,
//! in every round, the paths with the agents' settings as they are
//! ("default") and then with each variant applied by hand inside the
//! simulated hosts (and reverted right after its block), so every variant is
//! compared with the defaults of the same round.
//!
//! The lab's underlay is itself a veth pair per host on a bridge in one
//! namespace, all sharing the same CPUs: a GSO packet of 64 KB crosses every
//! hop whole (veth and bridges never segment, they pass skbs), so what these
//! variants change is the per-packet CPU cost on that path, not wire or NIC
//! behaviour (no checksum is ever computed on a veth; NIC offloads do not
//! exist here).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use weft_tests::{Host, Lab};

use super::Series;
use crate::bench::common::{median, poll, stats};

/// The environment variable naming the variants to measure.
pub const VARIANTS_ENV: &str = "WEFT_BENCH_DP_VARIANTS";

/// What a variant changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Knob {
    /// `ethtool -K gro` on both ends of every endpoint veth (on a veth,
    /// GRO on also turns on its NAPI receive path).
    VethGro,
    /// GRO as above plus threaded NAPI (`/sys/class/net/DEV/threaded`):
    /// the veth's receive work runs in a kernel thread, on any CPU.
    VethGroThreaded,
    /// The vxlan device with or without outer UDP checksums (can't be
    /// changed in place: re-created by hand, the agent re-adds its entries).
    UdpCsum,
    /// Direct hosts (h3, h4): the namespaces, host veths and bridge at the
    /// underlay MTU (1500) instead of the overlay MTU; the agents are paused
    /// meanwhile, or they would correct it.
    UnderlayMtu,
}

#[derive(Debug, Clone)]
pub struct Variant {
    pub(super) name: String,
    pub(super) knob: Knob,
    /// What the variant sets the knob to (the revert sets the opposite).
    pub(super) value: bool,
}

pub(super) fn variants_from_env() -> Result<Vec<Variant>> {
    let Ok(list) = std::env::var(VARIANTS_ENV) else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let (value, base) = match name.strip_prefix("no-") {
                Some(b) => (false, b),
                None => (true, name),
            };
            let knob = match base {
                "veth-gro" => Knob::VethGro,
                "veth-gro-threaded" => Knob::VethGroThreaded,
                "udpcsum" => Knob::UdpCsum,
                "underlay-mtu" => Knob::UnderlayMtu,
                other => bail!(
                    "{VARIANTS_ENV}: unknown variant {other:?} (known: veth-gro, veth-gro-threaded, udpcsum, underlay-mtu, each also as no-…)"
                ),
            };
            Ok(Variant {
                name: name.to_string(),
                knob,
                value,
            })
        })
        .collect()
}

/// Where the variants act.
pub(super) struct Knobs<'a> {
    pub(super) lab: &'a Lab,
    /// The endpoint namespaces on h1..h4.
    pub(super) endpoints: [PathBuf; 4],
    /// A path that must answer ping after the vxlan device was re-created
    /// (namespace on h1, address on h2).
    pub(super) check: (PathBuf, String),
}

/// Runs `sh -c SCRIPT` in `ns`; an error with its stderr if it fails.
pub(super) fn sh(ns: &Path, script: &str) -> Result<String> {
    let out =
        weft_tests::netns::exec_in_timeout(ns, &["sh", "-c", script], Duration::from_secs(20))?;
    ensure!(
        out.status.success(),
        "`{script}` in {} failed: {}",
        ns.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of the endpoint veths (host side) in a host namespace.
pub(super) fn host_veths(ns: &Path) -> Result<Vec<String>> {
    Ok(sh(ns, "ip -o link show type veth")?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("wv"))
        .collect())
}

pub(super) fn pause_agent(h: &Host, pause: bool) -> Result<()> {
    let pid = h.agent_pid().context("agent not running")?;
    let sig = if pause {
        nix::sys::signal::Signal::SIGSTOP
    } else {
        nix::sys::signal::Signal::SIGCONT
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)?;
    Ok(())
}

impl Knobs<'_> {
    /// Every namespace holding an end of an endpoint veth, with that end's
    /// names: (namespace, devices) for hosts in `hosts` (1-based).
    pub(super) fn veth_ends(&self, hosts: &[usize]) -> Result<Vec<(PathBuf, Vec<String>)>> {
        let mut v = Vec::new();
        for &i in hosts {
            let h = self.lab.host(i);
            v.push((h.netns.clone(), host_veths(&h.netns)?));
            v.push((self.endpoints[i - 1].clone(), vec!["eth0".to_string()]));
        }
        Ok(v)
    }

    pub(super) fn set(&self, v: &Variant, on: bool) -> Result<()> {
        let all = [1, 2, 3, 4];
        match v.knob {
            Knob::VethGro | Knob::VethGroThreaded => {
                let threaded = v.knob == Knob::VethGroThreaded;
                let gro = if on { "on" } else { "off" };
                for (ns, devs) in self.veth_ends(&all)? {
                    for d in devs {
                        let mut script = String::new();
                        if threaded && !on {
                            script += &format!("echo 0 > /sys/class/net/{d}/threaded; ");
                        }
                        script += &format!("ethtool -K {d} gro {gro}");
                        if threaded && on {
                            script += &format!("; echo 1 > /sys/class/net/{d}/threaded");
                        }
                        // sysfs shows the namespace of whoever mounts it.
                        let script = format!(
                            "unshare -m sh -c 'mount -t sysfs sysfs /sys && {{ {script}; }}'"
                        );
                        sh(&ns, &script)?;
                    }
                }
            }
            Knob::UdpCsum => {
                for i in [1, 2] {
                    let h = self.lab.host(i);
                    // Paused, the agent can neither re-create the device
                    // between the two commands nor (if it wants udpcsum)
                    // correct the variant; it stays paused while the device
                    // lacks udpcsum and resumes once it has it again.
                    pause_agent(h, true)?;
                    sh(&h.netns, &recreate_vxlan_script(h, on)?)?;
                    if on {
                        pause_agent(h, false)?;
                    }
                }
                let (from, to) = &self.check;
                poll(Duration::from_secs(20), Duration::from_millis(100), || {
                    self.lab.ping_once(from, to).then_some(())
                })
                .context("the vxlan path did not come back after re-creating the device")?;
            }
            Knob::UnderlayMtu => {
                let mtu = if on { 1500 } else { 1450 };
                let hosts = [3, 4];
                if on {
                    for i in hosts {
                        pause_agent(self.lab.host(i), true)?;
                    }
                }
                for (ns, mut devs) in self.veth_ends(&hosts)? {
                    if devs.first().is_some_and(|d| d.starts_with("wv")) {
                        devs.push("weft0".into());
                    }
                    for d in devs {
                        sh(&ns, &format!("ip link set dev {d} mtu {mtu}"))?;
                    }
                }
                if !on {
                    for i in hosts {
                        pause_agent(self.lab.host(i), false)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A script that re-creates the host's vxlan device with the same
/// parameters, MAC, MTU, address and entries (neighbours, FDB entries,
/// routes), with or without outer UDP checksums.
pub(super) fn recreate_vxlan_script(h: &Host, csum: bool) -> Result<String> {
    let j: serde_json::Value = serde_json::from_str(&sh(&h.netns, "ip -j link show weft.1")?)?;
    let mac = j[0]["address"].as_str().context("vxlan mac")?.to_string();
    let mtu = j[0]["mtu"].as_u64().context("vxlan mtu")?;
    let csum = if csum { "udpcsum" } else { "noudpcsum" };
    let mut script = format!(
        "ip link del weft.1 && ip link add weft.1 address {mac} mtu {mtu} type vxlan id 1 local {} dev eth0 dstport 4789 nolearning {csum} && ip link set weft.1 up",
        h.ip
    );
    for l in sh(&h.netns, "ip -o -4 addr show dev weft.1")?.lines() {
        if let Some(a) = l.split_whitespace().skip_while(|w| *w != "inet").nth(1) {
            script += &format!(" && ip addr add {a} dev weft.1");
        }
    }
    for l in sh(&h.netns, "ip neigh show dev weft.1 nud permanent")?.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let [ip, "lladdr", lladdr, ..] = w[..] {
            script +=
                &format!(" && ip neigh replace {ip} lladdr {lladdr} dev weft.1 nud permanent");
        }
    }
    for l in sh(&h.netns, "bridge fdb show dev weft.1")?.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let [m, "dst", dst, ..] = w[..] {
            script += &format!(" && bridge fdb append {m} dev weft.1 dst {dst} self permanent");
        }
    }
    for l in sh(&h.netns, "ip -4 route show dev weft.1 proto 119")?.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let [dst, "via", gw, ..] = w[..] {
            script += &format!(" && ip route replace {dst} via {gw} dev weft.1 proto 119 onlink");
        }
    }
    Ok(script)
}

/// Per variant: ratios to the underlay of the same block, and the change
/// against the defaults of the same round.
pub(super) fn print_variants(configs: &[Option<&Variant>], series: &[Vec<Series>]) {
    let rounds = series[0][0].gbits.len();
    println!("\nVariants (applied by hand inside the lab's hosts; ratios are medians over rounds of each block's path / the same block's underlay; Δ is the median over rounds of variant ratio − default ratio of the same round, with its min–max).\n");
    println!("| variant | underlay Gbit/s | vxlan / underlay | vxlan Δ (min–max) | direct / underlay | direct Δ (min–max) | RTT p50 underlay / vxlan / direct |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let ratios = |s: &[Series], i: usize| -> Vec<f64> {
        s[i].gbits
            .iter()
            .zip(&s[0].gbits)
            .map(|(x, b)| x / b)
            .collect()
    };
    for (c, s) in configs.iter().zip(series) {
        let mut cells = vec![
            c.map_or("default".to_string(), |v| v.name.clone()),
            format!("{:.2}", median(&s[0].gbits)),
        ];
        for i in 1..s.len() {
            let r = ratios(s, i);
            let base = ratios(&series[0], i);
            let delta: Vec<f64> = r.iter().zip(&base).map(|(x, b)| x - b).collect();
            let (d50, _, dmin, dmax) = stats(&delta);
            cells.push(format!("{:.3}", median(&r)));
            cells.push(if c.is_some() {
                format!("{d50:+.3} ({dmin:+.3}…{dmax:+.3})")
            } else {
                "—".to_string()
            });
        }
        let rtt: Vec<String> = s
            .iter()
            .map(|x| format!("{:.0}", stats(&x.rtt_ms).0 * 1e3))
            .collect();
        cells.push(format!("{} µs", rtt.join(" / ")));
        println!("| {} |", cells.join(" | "));
    }
    println!("\n{rounds} rounds.");
}
