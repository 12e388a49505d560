//! `weftctl status`: the local agent's node, subnet, controller link and
//! peers (probed unless `--no-probe`).

use weft_common::agent_client::AgentClient;
use weft_common::api::{PolicyStatus, Request, Status};

use crate::output::{self, Failure};

pub fn run(json: bool, agent: &mut AgentClient, no_probe: bool) -> Result<(), Failure> {
    let v = agent.call(&Request::Status { probe: !no_probe })?;
    let s: Status = agent.decode(v.clone())?;
    if json {
        println!("{v}");
    } else {
        print_status(&s);
    }
    Ok(())
}

/// The network policy the agent holds, and whether it is the connected
/// controller's or kept from before (fail static).
fn policy_line(p: &PolicyStatus) -> String {
    if p.revision == 0 && !p.current {
        return "none received yet".into();
    }
    let what = format!(
        "{} policies, {} address sets ({} addresses) at revision {}",
        p.policies, p.sets, p.addresses, p.revision
    );
    let mut line = if p.current {
        format!("{what}, current")
    } else {
        format!("{what}, KEPT from before: no controller has sent policy on the current link yet")
    };
    line += &format!("; restricting {} namespaces here", p.enforced);
    if !p.same_host {
        line += " (NOT between two namespaces of this host: br_netfilter is not loaded)";
    }
    if let Some(e) = &p.error {
        line += &format!("; FAILED to write the policy table: {e}");
    }
    line
}

fn print_status(s: &Status) {
    println!("node:        {}", s.node);
    println!(
        "subnet:      {} (gateway {} on {}, mtu {})",
        s.subnet, s.gateway, s.bridge, s.mtu
    );
    println!("namespaces:  {}", s.endpoints);
    let now = weft_controller::store::now();
    let since = |t: Option<u64>| match t {
        Some(t) => format!(" since {}", output::span(now.saturating_sub(t))),
        None => String::new(),
    };
    let c = &s.controller;
    match (c.connected, &c.address) {
        (true, Some(a)) => println!("controller:  connected to {a}{}", since(c.since)),
        (false, Some(a)) => println!(
            "controller:  DISCONNECTED{} (last tried {a}; the data plane stays as it is, the agent keeps retrying)",
            since(c.since)
        ),
        (_, None) if c.since.is_some() => println!(
            "controller:  none reached yet, DISCONNECTED{}",
            since(c.since)
        ),
        _ => println!("controller:  none (standalone)"),
    }
    if let Some(p) = &s.policy {
        println!("policy:      {}", policy_line(p));
    }
    if s.peers.is_empty() {
        println!("peers:       none");
        return;
    }
    let down = s
        .peers
        .iter()
        .filter(|p| p.reachable == Some(false))
        .count();
    let probed = s.peers.iter().any(|p| p.reachable.is_some());
    match (probed, down) {
        (false, _) => println!("peers:       {} (not probed)", s.peers.len()),
        (true, 0) => println!("peers:       {}, all reachable", s.peers.len()),
        (true, d) => println!("peers:       {}, {d} UNREACHABLE", s.peers.len()),
    }
    let rows: Vec<[String; 6]> = s
        .peers
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.subnet.clone(),
                p.public_ip.to_string(),
                p.mode.clone(),
                match p.reachable {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "-".into(),
                },
                match p.rtt_ms {
                    Some(ms) => format!("{ms:.2} ms"),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    output::table(
        ["NAME", "SUBNET", "PUBLIC-IP", "MODE", "REACHABLE", "RTT"],
        &rows,
    );
}
