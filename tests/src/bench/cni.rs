//! `weft-bench cni`: a container's namespace attached through CNI, the way
//! a container runtime does it: `weft-cni` ADD (then DEL) against the
//! reference chain, `bridge` with `host-local` IPAM (then `portmap` when a
//! port is published), at several counts of existing attachments, without
//! and with one published port.
//!
//! Both sides are exec'd by [`weft_tests::cni::Runtime`] exactly as a
//! runtime execs them: a process per plugin, the `CNI_*` environment, the
//! network config on stdin, inside the simulated host's namespace, a
//! conflist run as a chain ([`Runtime::run_list`]: each plugin given the
//! previous result, DEL in reverse with the ADD's result). Each side has a
//! simulated host of its own, so neither sees the other's devices or
//! firewall rules (all share the kernel):
//!
//! - h1: `weft-agent` (subnet 10.244.0.0/20) and the conflist
//!   `deploy/cni/10-weft.conflist` ships (`weft-cni`, `portMappings`
//!   capability), its `agentSocket` pointed at h1's agent;
//! - h2: `bridge` (bridge `cni0`, `isGateway`, `ipMasq` as in `weft-bench
//!   attach`: weft masquerades its subnet too) with `host-local` in
//!   10.88.0.0/16, then `portmap` (defaults) in the variant that publishes.
//!
//! At each count both hosts first get that many attachments of their own
//! (weft's through the agent socket's `cni_add`, the same request
//! `weft-cni` sends; the reference's through its chain), without published
//! ports. A probe then checks that a published port answers from the other
//! host on both sides. Then, per sample and per variant (no port, one
//! port, alternating which goes first), the bench makes one namespace per
//! side (`ip netns add`, untimed), pauses (`--settle-ms`, so the kernel's
//! cleanup of the previous sample's namespaces does not land on this one),
//! times each side's ADD, then each side's DEL of that attachment, and
//! deletes the namespaces (untimed). Each sample publishes a host port of
//! its own. Each sample's attachment is deleted before the next, so a host
//! never holds more than the count plus one (the agent holds at most
//! 1,023).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use weft_common::agent_client::AgentClient;
use weft_common::api::Request;
use weft_tests::cni::{first_ip, Invocation, Runtime, REFERENCE_PLUGINS};
use weft_tests::sock::try_tcp_peer_server;
use weft_tests::{require_root, try_tcp_request, Host, Lab, LabOpts};

use super::common::{command_line, machine, ms, stats, write_raw};

/// The sides, in the order of the table and the JSON.
const PLUGINS: [&str; 2] = ["weft-cni", "reference"];
/// h1's subnet: room for 1,000 attachments and more.
const WEFT_SUBNET: &str = "10.244.0.0/20";
/// The reference's subnet, disjoint from weft's.
const REFERENCE_SUBNET: &str = "10.88.0.0/16";
const CNI_VERSION: &str = "1.0.0";
/// The most attachments an agent holds (bridge ports), less the sample's
/// and the probe's.
const MAX_EXISTING: usize = 1020;
/// Host ports published by the samples: one each, from here up.
const FIRST_HOST_PORT: u16 = 20_000;
/// The port inside the container.
const CONTAINER_PORT: u16 = 80;

#[derive(Serialize)]
struct Series {
    plugin: &'static str,
    op: &'static str,
    /// Ports published by each sample's attachment (0 or 1).
    ports: usize,
    existing: usize,
    samples_ms: Vec<f64>,
}

/// One side: a host, the runtime that execs plugins in it, and its
/// conflists (index: ports published).
struct Side<'a> {
    name: &'static str,
    lab: &'a Lab,
    host: &'a Host,
    rt: Runtime,
    conflists: [Value; 2],
    /// Short name prefix of its namespaces (`Lab::add_netns`).
    tag: &'static str,
}

/// An attachment made by a sample or a probe: what DEL needs.
struct Attached {
    id: String,
    short: String,
    netns: PathBuf,
    result: Value,
}

/// A container ID as runtimes make them: 64 hex digits, distinct in the
/// first 12 (what logs show), unique per `(kind, n)`.
fn container_id(kind: usize, n: u64) -> String {
    // splitmix64: a bijection, so distinct inputs give distinct IDs.
    let mut z = (((kind as u64) << 48) ^ n).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    format!("{z:016x}{:048x}", ((kind as u64) << 40) + n)
}

fn invocation<'a>(command: &'a str, id: &'a str, netns: &'a Path) -> Invocation<'a> {
    Invocation {
        command,
        container_id: Some(id),
        netns: Some(netns),
        ifname: Some("eth0"),
        env: vec![],
    }
}

/// The runtime config of a sample: one tcp mapping, or none.
fn runtime_config(port: Option<u16>) -> Value {
    match port {
        Some(p) => json!({"portMappings": [
            {"hostPort": p, "containerPort": CONTAINER_PORT, "protocol": "tcp"}
        ]}),
        None => json!({}),
    }
}

impl Side<'_> {
    /// Makes a namespace (untimed), then times the ADD.
    fn add(&self, short: &str, id: String, port: Option<u16>) -> Result<(Duration, Attached)> {
        let netns = self.lab.add_netns(short);
        let conflist = &self.conflists[usize::from(port.is_some())];
        let t = Instant::now();
        let out = self
            .rt
            .run_list(
                &invocation("ADD", &id, &netns),
                conflist,
                &runtime_config(port),
                None,
            )
            .with_context(|| format!("{} ADD {short}", self.name))?;
        let took = t.elapsed();
        ensure!(
            out.ok(),
            "{} ADD {short} failed: exit {} {} {}",
            self.name,
            out.exit_code,
            out.json,
            out.stderr.trim()
        );
        ensure!(
            first_ip(&out.json).is_some(),
            "{} ADD {short}: no address in {}",
            self.name,
            out.json
        );
        let a = Attached {
            id,
            short: short.to_string(),
            netns,
            result: out.json,
        };
        Ok((took, a))
    }

    /// Times the DEL, then deletes the namespace (untimed).
    fn del(&self, a: Attached, port: Option<u16>) -> Result<Duration> {
        let conflist = &self.conflists[usize::from(port.is_some())];
        let t = Instant::now();
        let out = self
            .rt
            .run_list(
                &invocation("DEL", &a.id, &a.netns),
                conflist,
                &runtime_config(port),
                Some(&a.result),
            )
            .with_context(|| format!("{} DEL {}", self.name, a.short))?;
        let took = t.elapsed();
        ensure!(
            out.ok(),
            "{} DEL {} failed: exit {} {} {}",
            self.name,
            a.short,
            out.exit_code,
            out.json,
            out.stderr.trim()
        );
        self.lab.del_netns(&a.short);
        Ok(took)
    }

    /// Checks what the variant with a port is for: the published port of
    /// an attachment answers from `from` (another host), through this
    /// host's address.
    fn probe(&self, from: &Host, port: u16) -> Result<()> {
        let short = format!("{}probe{port}", self.tag);
        let (_, a) = self.add(&short, container_id(9, u64::from(port)), Some(port))?;
        let ip = first_ip(&a.result).unwrap_or(Ipv4Addr::UNSPECIFIED);
        let server = try_tcp_peer_server(&a.netns, (ip, CONTAINER_PORT))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let answered = loop {
            match try_tcp_request(&from.netns, (self.host.ip, port)) {
                Ok(_) => break Ok(()),
                Err(e) if Instant::now() >= deadline => break Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        drop(server);
        answered.with_context(|| {
            format!(
                "{}: port {port} published for {ip} does not answer from {} at {}:{port}",
                self.name, from.name, self.host.ip
            )
        })?;
        self.del(a, Some(port))?;
        Ok(())
    }
}

/// Existing attachments: weft's through the agent socket (what `weft-cni`
/// sends), the reference's through its chain.
struct Fill {
    agent: AgentClient,
    made: usize,
}

impl Fill {
    fn one(&mut self, weft: &Side, reference: &Side) -> Result<()> {
        let k = self.made;
        let short = format!("{}f{k}", weft.tag);
        let netns = weft.lab.add_netns(&short);
        self.agent
            .call(&Request::CniAdd {
                container_id: container_id(0, k as u64),
                ifname: "eth0".into(),
                netns: netns.display().to_string(),
                network: weft.conflists[0]["name"]
                    .as_str()
                    .unwrap_or("weft")
                    .to_string(),
                publish: vec![],
                labels: Default::default(),
            })
            .with_context(|| format!("fill: weft cni_add {short}"))?;
        let short = format!("{}f{k}", reference.tag);
        // Kept until the lab goes (with its namespace).
        reference
            .add(&short, container_id(1, k as u64), None)
            .context("fill")?;
        self.made += 1;
        Ok(())
    }
}

pub fn run(counts: &[usize], samples: usize, settle: Duration, out: &Path) -> Result<()> {
    require_root();
    for p in ["bridge", "host-local", "portmap"] {
        if !Path::new(REFERENCE_PLUGINS).join(p).exists() {
            bail!("{REFERENCE_PLUGINS}/{p} not found: install containernetworking-plugins (deploy/install-deps.sh)");
        }
    }
    weft_tests::bin_path("weft-cni");
    if counts.windows(2).any(|w| w[0] > w[1]) {
        bail!("--counts must be ascending");
    }
    if counts.last().is_some_and(|&n| n > MAX_EXISTING) {
        bail!("--counts: at most {MAX_EXISTING} existing attachments (an agent holds 1,023)");
    }
    // weft on h1, the reference chain on h2.
    let lab = Lab::new(LabOpts::hosts(2).subnet(1, WEFT_SUBNET));
    let (h1, h2) = (lab.host(1), lab.host(2));
    let _agent = h1.start_agent(&[]);
    let weft_list = json!({
        "cniVersion": CNI_VERSION,
        "name": "weft",
        "plugins": [
            {"type": "weft-cni", "agentSocket": h1.socket(), "capabilities": {"portMappings": true}}
        ]
    });
    let bridge = json!({
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": true,
        "ipam": {
            "type": "host-local",
            "subnet": REFERENCE_SUBNET,
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": lab.dir.join("cni-ipam"),
        }
    });
    let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
    let reference_list = |plugins: Vec<Value>| json!({"cniVersion": CNI_VERSION, "name": "reference", "plugins": plugins});
    let weft = Side {
        name: PLUGINS[0],
        lab: &lab,
        host: h1,
        rt: Runtime::new(&h1.netns),
        conflists: [weft_list.clone(), weft_list],
        tag: "w",
    };
    let reference = Side {
        name: PLUGINS[1],
        lab: &lab,
        host: h2,
        rt: Runtime::new(&h2.netns),
        conflists: [
            reference_list(vec![bridge.clone()]),
            reference_list(vec![bridge, portmap]),
        ],
        tag: "r",
    };
    let process_start = process_start(h1, &weft.conflists[0], samples.max(1) * 10)?;
    let sides = [&weft, &reference];
    let mut fill = Fill {
        agent: AgentClient::new(h1.socket()),
        made: 0,
    };
    let mut series = Vec::new();
    // Host ports, one per probe and per sample with a port.
    let mut ports_used = FIRST_HOST_PORT..;
    let mut next_port = || ports_used.next().expect("host ports left");
    let mut sample_no = 0u64;
    for &n in counts {
        eprintln!("filling to {n} existing attachments each…");
        while fill.made < n {
            fill.one(&weft, &reference)?;
        }
        let port = next_port();
        weft.probe(h2, port)?;
        reference.probe(h1, port)?;
        // [side][ports][op: add, del]
        let mut s: Vec<[[Vec<f64>; 2]; 2]> =
            (0..PLUGINS.len()).map(|_| Default::default()).collect();
        for i in 0..samples {
            for v in 0..2 {
                // Alternating which variant and which side go first.
                let ports = (i + v) % 2;
                let order = [i % 2, 1 - i % 2];
                let host_port = (ports == 1).then(&mut next_port);
                std::thread::sleep(settle);
                let mut attached = Vec::new();
                for &k in &order {
                    let short = format!("{}s{sample_no}", sides[k].tag);
                    let (took, a) =
                        sides[k].add(&short, container_id(k + 2, sample_no), host_port)?;
                    s[k][ports][0].push(ms(took));
                    attached.push((k, a));
                }
                for (k, a) in attached {
                    s[k][ports][1].push(ms(sides[k].del(a, host_port)?));
                }
                sample_no += 1;
            }
        }
        for (k, per_ports) in s.into_iter().enumerate() {
            for (ports, [add, del]) in per_ports.into_iter().enumerate() {
                for (op, v) in [("add", add), ("del", del)] {
                    series.push(Series {
                        plugin: PLUGINS[k],
                        op,
                        ports,
                        existing: n,
                        samples_ms: v,
                    });
                }
            }
        }
    }
    let data = json!({
        "weft": {"host": h1.name, "subnet": WEFT_SUBNET, "conflist": weft.conflists[0]},
        "reference": {
            "host": h2.name,
            "conflist": reference.conflists[0],
            "conflist_with_ports": reference.conflists[1],
        },
        "settle_ms": ms(settle),
        "process_start_ms": process_start,
        "series": series,
    });
    write_raw(Some(out), "cni", &data)?;
    print_table(&series, counts);
    let (w, t) = (
        stats(
            &data["process_start_ms"]["weft-cni"]
                .as_array()
                .map_or_else(Vec::new, |v| v.iter().filter_map(Value::as_f64).collect()),
        ),
        stats(
            &data["process_start_ms"]["true"]
                .as_array()
                .map_or_else(Vec::new, |v| v.iter().filter_map(Value::as_f64).collect()),
        ),
    );
    println!(
        "\nProcess start: `weft-cni` VERSION {:.2} ms ({:.2}–{:.2}), `/bin/true` {:.2} ms ({:.2}–{:.2}), medians, exec'd alike in h1",
        w.0, w.2, w.3, t.0, t.2, t.3
    );
    Ok(())
}

/// How long a runtime's exec of `weft-cni` takes with nothing to ask the
/// agent (VERSION), against `/bin/true` exec'd the same way (inside h1,
/// the config on stdin), interleaved: the plugin's own process start.
fn process_start(h: &Host, conflist: &Value, samples: usize) -> Result<Value> {
    let plugin = weft_tests::bin_path("weft-cni");
    let input = json!({"cniVersion": conflist["cniVersion"]}).to_string();
    let mut times: [Vec<f64>; 2] = Default::default();
    for i in 0..samples {
        for k in [i % 2, 1 - i % 2] {
            let program: &Path = if k == 0 {
                &plugin
            } else {
                Path::new("/bin/true")
            };
            let mut cmd = weft_tests::netns::command_in(&h.netns, program, Default::default())?;
            cmd.env_clear().env("CNI_COMMAND", "VERSION");
            let t = Instant::now();
            let out = weft_tests::netns::run_with_input(
                &mut cmd,
                Some(input.as_bytes()),
                Duration::from_secs(10),
            )?;
            times[k].push(ms(t.elapsed()));
            ensure!(out.status.success(), "{} VERSION failed", program.display());
        }
    }
    let [w, t] = times;
    Ok(json!({"weft-cni": w, "true": t}))
}

fn print_table(series: &[Series], counts: &[usize]) {
    println!("Machine: {}  ", machine());
    println!("Command: `{}`\n", command_line());
    println!("| op | ports | existing | weft-cni median | weft-cni min–max | reference median | reference min–max | reference / weft-cni |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for op in ["add", "del"] {
        for ports in [0, 1] {
            for &n in counts {
                let get = |plugin: &str| {
                    series
                        .iter()
                        .find(|s| {
                            s.plugin == plugin && s.op == op && s.ports == ports && s.existing == n
                        })
                        .map(|s| stats(&s.samples_ms))
                };
                if let (Some(w), Some(r)) = (get(PLUGINS[0]), get(PLUGINS[1])) {
                    println!(
                        "| {op} | {ports} | {n} | {:.2} ms | {:.2}–{:.2} ms | {:.2} ms | {:.2}–{:.2} ms | {:.1}× |",
                        w.0, w.2, w.3, r.0, r.2, r.3, r.0 / w.0
                    );
                }
            }
        }
    }
}
