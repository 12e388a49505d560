//! `weft-lab`: the weft test bed for humans.
//!
//! `weft-lab up` builds a simulated cluster in network namespaces: an
//! underlay, a router and an "internet", etcd and a controller, and hosts
//! whose `weft-agent`s register with it. It adds endpoint namespaces with
//! `weftctl`, prints a connectivity matrix (every namespace to every other,
//! across hosts, and to the internet through NAT) and leaves everything
//! running; `status` shows it, `down` removes it. State lives in a manifest
//! in `--dir`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use weft_tests::{try_tcp_request, Endpoint, Lab, LabOpts, INTERNET_IP};

#[derive(Parser)]
#[command(
    name = "weft-lab",
    version,
    about = "Simulated weft hosts in network namespaces"
)]
struct Cli {
    /// Lab directory (manifest, per-host state, logs).
    #[arg(long, global = true, default_value = "/tmp/weft-lab/lab")]
    dir: PathBuf,
    /// Name prefix of the lab's namespaces (default: derived from --dir).
    #[arg(long, global = true, hide = true)]
    prefix: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the lab, start agents, add namespaces, check connectivity.
    Up {
        /// Number of simulated hosts.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=200))]
        hosts: u16,
        /// Endpoint namespaces per host.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(0..=50))]
        ns_per_host: u16,
    },
    /// Show the hosts, their agents and namespaces.
    Status,
    /// Stop the agents and remove everything the lab created.
    Down,
}

fn main() -> ExitCode {
    // Behave like other command line tools under `| head`: die quietly on a
    // closed pipe instead of panicking in println!.
    // SAFETY: setting a signal disposition before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Up { hosts, ns_per_host } => up(
            &cli.dir,
            cli.prefix.clone(),
            hosts.into(),
            ns_per_host.into(),
        ),
        Cmd::Status => status(&cli.dir),
        Cmd::Down => down(&cli.dir),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("weft-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn abs(dir: &Path) -> Result<PathBuf> {
    Ok(if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()?.join(dir)
    })
}

/// A stable prefix for the lab in `dir`; not of the `wt<pid>x<n>` form, so
/// the sweep of dead test labs never touches it.
fn prefix_for(dir: &Path) -> String {
    // FNV-1a, 32 bit.
    let mut h: u32 = 0x811c_9dc5;
    for b in dir.as_os_str().as_encoded_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("wl{:06x}", h & 0xff_ffff)
}

struct Ep {
    name: String,
    ip: Ipv4Addr,
    netns: PathBuf,
}

fn up(dir: &Path, prefix: Option<String>, hosts: usize, per_host: usize) -> Result<bool> {
    let dir = abs(dir)?;
    if dir.join(weft_tests::lab::MANIFEST).exists() {
        bail!(
            "a lab is already up in {} (see `weft-lab status --dir {0}`, remove it with `weft-lab down --dir {0}`)",
            dir.display()
        );
    }
    let lab = Lab::try_new(LabOpts {
        dir: Some(dir.clone()),
        prefix: Some(prefix.unwrap_or_else(|| prefix_for(&dir))),
        detachable: true,
        ..LabOpts::cluster(hosts, 1)
    })?;
    // The manifest is written as the lab is built and again after every
    // agent start, so `down` works even if we die half-way.
    println!(
        "lab {} in {}: {hosts} host(s), underlay {}, internet {INTERNET_IP}, etcd and controller at {}",
        lab.prefix,
        dir.display(),
        weft_tests::UNDERLAY_CIDR,
        lab.cluster_info().controllers.join(",")
    );

    let mut agents = Vec::new();
    for h in lab.hosts() {
        agents.push(h.spawn_agent(&[])?);
        lab.write_manifest()?;
    }
    for a in &mut agents {
        a.wait_ready(std::time::Duration::from_secs(30))?;
    }
    // Every agent has every other host as a peer before traffic is tried.
    let want = lab.hosts().len() - 1;
    let meshed = weft_tests::wait_until(std::time::Duration::from_secs(20), || {
        lab.hosts()
            .iter()
            .all(|h| h.try_status().is_ok_and(|s| s.peers.len() == want))
    });
    if !meshed {
        println!("not every agent has all {want} peers yet; the matrix may show gaps");
    }
    let mut eps: Vec<Vec<Ep>> = Vec::new();
    for h in lab.hosts() {
        let mut v = Vec::new();
        for j in 1..=per_host {
            let name = format!("{}-n{j}", h.name);
            let e: Endpoint = h
                .try_weftctl_as(&["ns", "add", &name])
                .map_err(anyhow::Error::msg)?;
            v.push(Ep {
                name,
                ip: e.ip,
                netns: e.netns.into(),
            });
        }
        eps.push(v);
    }

    let ok = matrix(&lab, &eps);
    lab.persist()?;
    println!();
    println!(
        "the lab stays up; agent logs in {}/h*/agent.log",
        dir.display()
    );
    println!(
        "  enter a namespace: nsenter --net={} bash",
        eps.iter()
            .flatten()
            .next()
            .map(|e| e.netns.display().to_string())
            .unwrap_or_else(|| lab.host(1).netns.display().to_string())
    );
    println!(
        "  {} --agent-socket {} ns list",
        weft_tests::bin_dir().join("weftctl").display(),
        lab.host(1).socket().display()
    );
    println!(
        "  weft-lab status --dir {0}; weft-lab down --dir {0}",
        dir.display()
    );
    Ok(ok)
}

fn mark(b: bool) -> &'static str {
    if b {
        "✓"
    } else {
        "✗"
    }
}

/// Pings every namespace from every namespace, on its own host and across
/// the overlay, plus the internet host; proves NAT with a TCP request to a
/// peer-address server in the internet namespace. Returns whether all passed.
fn matrix(lab: &Lab, eps: &[Vec<Ep>]) -> bool {
    let mut all_ok = true;
    let nat_srv = match weft_tests::sock::try_tcp_peer_server(&lab.internet(), (INTERNET_IP, 0)) {
        Ok(s) => Some(s),
        Err(e) => {
            println!("cannot start the NAT probe server: {e:#}");
            all_ok = false;
            None
        }
    };
    println!();
    for h in lab.hosts() {
        match h.try_status() {
            Ok(st) => {
                let peers: Vec<String> = st
                    .peers
                    .iter()
                    .map(|p| format!("{} {}", p.name, p.mode))
                    .collect();
                println!(
                    "{}  underlay {}  subnet {}  gateway {}  mtu {}  peers: {}",
                    h.name,
                    h.ip,
                    st.subnet,
                    st.gateway,
                    st.mtu,
                    if peers.is_empty() {
                        "none".to_string()
                    } else {
                        peers.join(", ")
                    }
                );
            }
            Err(e) => {
                all_ok = false;
                println!("{}  {e:#}", h.name);
            }
        }
    }
    let all: Vec<&Ep> = eps.iter().flatten().collect();
    if all.is_empty() {
        println!("(no namespaces)");
        return all_ok;
    }
    // Targets: every namespace, then the internet host.
    let mut targets: Vec<(String, String)> = all
        .iter()
        .map(|e| (e.name.clone(), e.ip.to_string()))
        .collect();
    targets.push(("internet".into(), INTERNET_IP.to_string()));
    // Each ping waits at most 3 s; run up to PING_WORKERS at a time.
    let jobs: Vec<((usize, usize), PathBuf, String)> = all
        .iter()
        .enumerate()
        .flat_map(|(i, src)| {
            targets
                .iter()
                .enumerate()
                .filter(move |&(j, _)| j != i)
                .map(move |(j, (_, ip))| ((i, j), src.netns.clone(), ip.clone()))
        })
        .collect();
    let total = jobs.len();
    let cells = ping_all(jobs);
    let w = targets
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(0)
        .max(3)
        + 2;
    let lw = all
        .iter()
        .map(|e| e.name.len() + e.ip.to_string().len() + 1)
        .max()
        .unwrap_or(0)
        .max(9)
        + 2;
    println!();
    println!("ping matrix (✓ = a reply within 3 s):");
    let mut hdr = format!("  {:<lw$}", "from \\ to");
    for (n, _) in &targets {
        hdr += &format!("{n:^w$}");
    }
    println!("{hdr}");
    let mut passed = 0;
    for (i, src) in all.iter().enumerate() {
        let mut line = format!("  {:<lw$}", format!("{} {}", src.name, src.ip));
        for j in 0..targets.len() {
            let c = match cells.get(&(i, j)) {
                None => "·",
                Some(&b) => {
                    all_ok &= b;
                    passed += usize::from(b);
                    mark(b)
                }
            };
            line += &format!("{c:^w$}");
        }
        println!("{line}");
    }
    println!("  {passed}/{total} pings answered");
    if let Some(srv) = &nat_srv {
        println!();
        for (h, v) in lab.hosts().iter().zip(eps) {
            for e in v {
                let r = try_tcp_request(&e.netns, srv.addr());
                let (ok, seen) = match &r {
                    Ok(s) => {
                        let s = s.trim().to_string();
                        let ip = s.rsplit_once(':').map(|(ip, _)| ip.to_string());
                        (ip.as_deref() == Some(&h.ip.to_string()), s)
                    }
                    Err(e) => (false, format!("error: {e:#}")),
                };
                all_ok &= ok;
                println!(
                    "  NAT {} {}: TCP {} → {} saw source {seen} {}",
                    mark(ok),
                    e.name,
                    e.ip,
                    srv.addr(),
                    if ok {
                        format!("= host address {} (masqueraded)", h.ip)
                    } else {
                        format!("(expected {}:PORT)", h.ip)
                    }
                );
            }
        }
    }
    println!();
    println!(
        "{}",
        if all_ok {
            "all checks passed"
        } else {
            "SOME CHECKS FAILED"
        }
    );
    all_ok
}

const PING_WORKERS: usize = 16;

/// Runs the pings of `jobs` on a bounded pool of threads.
fn ping_all(jobs: Vec<((usize, usize), PathBuf, String)>) -> BTreeMap<(usize, usize), bool> {
    let queue = std::sync::Mutex::new(jobs);
    let results = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..PING_WORKERS {
            s.spawn(|| loop {
                let Some((k, ns, ip)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let ok = weft_tests::netns::exec_in(
                    &ns,
                    &["ping", "-n", "-q", "-c", "1", "-i", "0.2", "-w", "3", &ip],
                )
                .is_ok_and(|o| o.status.success());
                results.lock().unwrap().insert(k, ok);
            });
        }
    });
    results.into_inner().unwrap()
}

fn status(dir: &Path) -> Result<bool> {
    let dir = abs(dir)?;
    let lab = Lab::attach(&dir).with_context(|| format!("no lab up in {}", dir.display()))?;
    println!("lab {} in {}", lab.prefix, dir.display());
    let missing: Vec<String> = lab
        .namespaces()
        .into_iter()
        .filter(|n| !Path::new("/run/netns").join(n).exists())
        .collect();
    let mut ok = missing.is_empty();
    if !ok {
        println!("missing namespaces: {}", missing.join(", "));
    }
    // The lab's own processes: etcd and the controllers.
    for p in lab.manifest().procs.iter().filter(|p| p.host.is_none()) {
        let alive = weft_tests::cleanup::proc_alive(p.pid, p.start);
        ok &= alive;
        println!(
            "{:<14} pid {:<8} {}",
            p.label,
            p.pid,
            if alive { "running" } else { "NOT RUNNING" }
        );
    }
    for h in lab.hosts() {
        let pid = h.agent_pid();
        println!();
        let st = pid.and_then(|_| h.try_status().ok());
        println!(
            "{}  ns {}  underlay {}  subnet {}  agent {}",
            h.name,
            h.ns_name,
            h.ip,
            st.as_ref().map_or("?", |s| s.subnet.as_str()),
            match pid {
                Some(p) => format!("running (pid {p})"),
                None => "NOT RUNNING".into(),
            }
        );
        if pid.is_none() {
            ok = false;
            continue;
        }
        if let Some(st) = &st {
            let c = &st.controller;
            println!(
                "  controller {} ({})",
                c.address.as_deref().unwrap_or("-"),
                if c.connected {
                    "connected"
                } else {
                    "NOT CONNECTED"
                }
            );
            for p in &st.peers {
                println!(
                    "  peer {:<8} {:<18} at {:<15} {}",
                    p.name,
                    p.subnet,
                    p.public_ip.to_string(),
                    p.mode
                );
            }
        }
        match h.try_endpoints() {
            Ok(list) => {
                if list.is_empty() {
                    println!("  (no namespaces)");
                }
                for e in list {
                    println!(
                        "  {:<16} {:<15} {:<17} {}",
                        e.name,
                        e.ip.to_string(),
                        e.mac.to_string(),
                        e.netns
                    );
                }
            }
            Err(e) => {
                ok = false;
                println!("  {e}");
            }
        }
    }
    // Stay persistent: `lab` is only dropped, nothing removed.
    Ok(ok)
}

fn down(dir: &Path) -> Result<bool> {
    let dir = abs(dir)?;
    let lab = Lab::attach(&dir).with_context(|| format!("no lab up in {}", dir.display()))?;
    let prefix = lab.prefix.clone();
    let names = lab.namespaces();
    lab.destroy();
    let left: Vec<&String> = names
        .iter()
        .filter(|n| Path::new("/run/netns").join(n).exists())
        .collect();
    if !left.is_empty() || dir.exists() {
        bail!(
            "lab {prefix} only partly removed: namespaces left {left:?}, dir {} {}",
            dir.display(),
            if dir.exists() { "left" } else { "gone" }
        );
    }
    println!("lab {prefix} in {} removed", dir.display());
    Ok(true)
}
