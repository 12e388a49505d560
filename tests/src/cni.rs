//! A CNI runtime of our own, for tests and benchmarks: it execs a plugin
//! exactly as a container runtime does (the `CNI_*` environment, the
//! network config on stdin, inside the host's namespace), runs a conflist
//! as a chain (each plugin's result the next one's `prevResult`), and
//! checks results against the spec's shape for their version.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::netns::{command_in, run_with_input, SpawnOpts};

/// Where Debian installs the reference plugins (`bridge`, `host-local`,
/// `portmap`, `tuning`, …).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// How long one plugin may run.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// What a plugin answered.
#[derive(Debug, Clone)]
pub struct PluginOutput {
    pub exit_code: i32,
    /// Its stdout as JSON; `Null` when empty.
    pub json: Value,
    pub stderr: String,
}

impl PluginOutput {
    pub fn ok(&self) -> bool {
        self.exit_code == 0
    }

    /// The CNI error code of a failure (`None` on success or without one).
    pub fn code(&self) -> Option<u64> {
        (!self.ok()).then(|| self.json["code"].as_u64()).flatten()
    }

    pub fn msg(&self) -> &str {
        self.json["msg"].as_str().unwrap_or("")
    }

    /// Panics unless it succeeded; its JSON.
    pub fn expect_ok(&self, what: &str) -> &Value {
        assert!(
            self.ok(),
            "{what}: exit {} {} {}",
            self.exit_code,
            self.json,
            self.stderr
        );
        &self.json
    }

    /// Panics unless it failed with `code`.
    pub fn expect_code(&self, what: &str, code: u64) -> &str {
        assert_eq!(
            self.code(),
            Some(code),
            "{what}: expected CNI error {code}, got exit {} {} {}",
            self.exit_code,
            self.json,
            self.stderr
        );
        assert!(!self.msg().is_empty(), "{what}: an error needs a msg");
        self.msg()
    }
}

/// One invocation's environment.
#[derive(Debug, Clone, Default)]
pub struct Invocation<'a> {
    pub command: &'a str,
    pub container_id: Option<&'a str>,
    pub netns: Option<&'a Path>,
    pub ifname: Option<&'a str>,
    /// Variables to leave out or override: `(name, Some(value))` sets,
    /// `(name, None)` removes.
    pub env: Vec<(&'a str, Option<&'a str>)>,
}

/// Runs plugins inside one (simulated) host's namespace.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The host's network namespace: plugins run there, as a runtime on
    /// that host would run them.
    pub host_netns: PathBuf,
    /// `CNI_PATH`: where plugins are looked up, in order.
    pub path: Vec<PathBuf>,
}

impl Runtime {
    /// A runtime finding weft's binaries first, then Debian's plugins.
    pub fn new(host_netns: &Path) -> Runtime {
        Runtime {
            host_netns: host_netns.to_path_buf(),
            path: vec![crate::bin_dir(), PathBuf::from(REFERENCE_PLUGINS)],
        }
    }

    /// The executable of plugin `kind`, from `CNI_PATH`.
    pub fn plugin(&self, kind: &str) -> Result<PathBuf> {
        self.path
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| anyhow!("plugin {kind:?} not found in {:?}", self.path))
    }

    /// Execs plugin `kind` once with config `input` (raw bytes: tests send
    /// malformed ones too).
    pub fn exec_raw(&self, kind: &str, inv: &Invocation<'_>, input: &[u8]) -> Result<PluginOutput> {
        let plugin = self.plugin(kind)?;
        let mut cmd = command_in(
            &self.host_netns,
            &plugin,
            SpawnOpts {
                own_group: true,
                ..Default::default()
            },
        )?;
        cmd.env_clear();
        cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        let cni_path = std::env::join_paths(&self.path)?;
        cmd.env("CNI_PATH", cni_path);
        if !inv.command.is_empty() {
            cmd.env("CNI_COMMAND", inv.command);
        }
        if let Some(v) = inv.container_id {
            cmd.env("CNI_CONTAINERID", v);
        }
        if let Some(v) = inv.netns {
            cmd.env("CNI_NETNS", v);
        }
        if let Some(v) = inv.ifname {
            cmd.env("CNI_IFNAME", v);
        }
        for (k, v) in &inv.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let out = run_with_input(&mut cmd, Some(input), PLUGIN_TIMEOUT)
            .with_context(|| format!("exec {}", plugin.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout)
                .with_context(|| format!("{kind} printed non-JSON: {stdout:?}"))?
        };
        Ok(PluginOutput {
            exit_code: out.status.code().unwrap_or(-1),
            json,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Execs the plugin a single-plugin config names (its `type`).
    pub fn exec(&self, inv: &Invocation<'_>, config: &Value) -> Result<PluginOutput> {
        let kind = config["type"]
            .as_str()
            .ok_or_else(|| anyhow!("config without type: {config}"))?;
        self.exec_raw(kind, inv, config.to_string().as_bytes())
    }

    /// Runs a conflist as a runtime does: ADD through the plugins in order,
    /// each given the previous result; DEL in reverse order, each given the
    /// ADD's final result (`prev`); CHECK in order with it. `runtime_config`
    /// is inserted for the plugins whose capabilities ask for its keys.
    /// Stops at the first failure and returns it.
    pub fn run_list(
        &self,
        inv: &Invocation<'_>,
        conflist: &Value,
        runtime_config: &Value,
        prev: Option<&Value>,
    ) -> Result<PluginOutput> {
        let plugins = conflist["plugins"]
            .as_array()
            .ok_or_else(|| anyhow!("conflist without plugins"))?;
        let order: Vec<&Value> = match inv.command {
            "DEL" => plugins.iter().rev().collect(),
            _ => plugins.iter().collect(),
        };
        let mut result = prev.cloned();
        let mut last = None;
        for p in order {
            let mut conf = p.clone();
            conf["name"] = conflist["name"].clone();
            conf["cniVersion"] = conflist["cniVersion"].clone();
            if let Some(caps) = p["capabilities"].as_object() {
                let rc: serde_json::Map<String, Value> = caps
                    .iter()
                    .filter(|(_, on)| on.as_bool() == Some(true))
                    .filter_map(|(k, _)| runtime_config.get(k).map(|v| (k.clone(), v.clone())))
                    .collect();
                if !rc.is_empty() {
                    conf["runtimeConfig"] = Value::Object(rc);
                }
            }
            if let Some(r) = &result {
                conf["prevResult"] = r.clone();
            }
            let out = self.exec(inv, &conf)?;
            if !out.ok() {
                return Ok(out);
            }
            if inv.command == "ADD" {
                result = Some(out.json.clone());
            }
            last = Some(out);
        }
        let mut out = last.ok_or_else(|| anyhow!("empty conflist"))?;
        if inv.command == "ADD" {
            out.json = result.unwrap_or(Value::Null);
        }
        Ok(out)
    }
}

/// A single-plugin weft config of `version` whose agent listens at
/// `socket`.
pub fn weft_config(version: &str, network: &str, socket: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": network,
        "type": "weft-cni",
        "agentSocket": socket,
        "capabilities": {"portMappings": true},
    })
}

/// Checks an ADD result against the spec's shape for `version`: every
/// interface named, every IP a CIDR with an index into `interfaces`
/// (and, before 1.0.0, `version` "4"), every route a CIDR `dst`.
pub fn check_add_result(version: &str, r: &Value) -> Result<()> {
    ensure!(
        r["cniVersion"] == version,
        "cniVersion {} != {version}",
        r["cniVersion"]
    );
    let ifaces = r["interfaces"].as_array().context("interfaces")?;
    ensure!(!ifaces.is_empty(), "no interfaces");
    for i in ifaces {
        ensure!(
            i["name"].as_str().is_some_and(|n| !n.is_empty()),
            "interface without name: {i}"
        );
        if let Some(m) = i.get("mac") {
            let m = m.as_str().context("mac")?;
            ensure!(m.len() == 17 && m.split(':').count() == 6, "bad mac {m}");
        }
    }
    let ips = r["ips"].as_array().context("ips")?;
    ensure!(!ips.is_empty(), "no ips");
    for ip in ips {
        let addr = ip["address"].as_str().context("ips[].address")?;
        addr.parse::<ipnetwork::IpNetwork>()
            .with_context(|| format!("ips[].address {addr} is not a CIDR"))?;
        let idx = ip["interface"].as_u64().context("ips[].interface")? as usize;
        ensure!(idx < ifaces.len(), "ips[].interface {idx} out of range");
        if let Some(gw) = ip.get("gateway") {
            gw.as_str()
                .context("gateway")?
                .parse::<std::net::IpAddr>()
                .context("gateway is not an address")?;
        }
        match version {
            "0.3.1" | "0.4.0" => ensure!(ip["version"] == "4", "ips[].version missing: {ip}"),
            _ => ensure!(
                ip.get("version").is_none(),
                "ips[].version in {version}: {ip}"
            ),
        }
    }
    if let Some(routes) = r.get("routes") {
        for rt in routes.as_array().context("routes")? {
            let dst = rt["dst"].as_str().context("routes[].dst")?;
            dst.parse::<ipnetwork::IpNetwork>()
                .with_context(|| format!("routes[].dst {dst}"))?;
        }
    }
    if let Some(dns) = r.get("dns") {
        if !dns.is_object() {
            bail!("dns is not an object: {dns}");
        }
    }
    Ok(())
}

/// The container-side interface of an ADD result (the one with a sandbox).
pub fn sandbox_interface(r: &Value) -> Option<&Value> {
    r["interfaces"]
        .as_array()?
        .iter()
        .find(|i| i["sandbox"].as_str().is_some_and(|s| !s.is_empty()))
}

/// The first IPv4 address of an ADD result, without its prefix.
pub fn first_ip(r: &Value) -> Option<std::net::Ipv4Addr> {
    let a = r["ips"].as_array()?.first()?["address"].as_str()?;
    a.split('/').next()?.parse().ok()
}

/// What attachments leave on a host when they are not removed: weft's
/// veths, the published-port elements of its nftables table, the agent's
/// endpoint state files and pending markers. Equal before and after means
/// nothing was left behind.
pub fn host_traces(h: &crate::Host) -> String {
    let links = h.exec_ok(&["ip", "-o", "link", "show"]);
    let veths: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(str::trim))
        .filter(|n| n.starts_with(weft_common::name::VETH_PREFIX))
        .collect();
    let nft = h.exec_ok(&["nft", "list", "table", "inet", "weft"]);
    let ports: Vec<&str> = nft.lines().filter(|l| l.contains(" : ")).collect();
    let ls = |sub: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(h.state_dir.join(sub))
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    format!(
        "veths {veths:?} ports {ports:?} endpoints {:?} pending {:?}",
        ls("endpoints"),
        ls("pending")
    )
}
