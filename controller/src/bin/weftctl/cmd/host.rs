//! `weftctl host`: registered hosts (records in etcd) and whether their
//! agents are connected.

use std::collections::HashMap;

use serde_json::Value;
use weft_common::cluster::HostRecord;
use weft_controller::store::{now, AgentPresence};

use crate::cli::HostCommand;
use crate::etcd::Cluster;
use crate::output::{self, Failure};

/// A host record with whether its agent is connected (`<prefix>/agents/`):
/// the record's keys plus `connected`, `controller` (the controller it is
/// connected to, or null) and `connected_since` (unix seconds, or null);
/// `last_seen` is now while connected, else when its last session ended
/// (or it registered).
fn host_json(h: &HostRecord, p: Option<&AgentPresence>, now: u64) -> Value {
    let mut v = serde_json::to_value(h).expect("host serializes");
    let o = v.as_object_mut().expect("host record is an object");
    o.insert("connected".into(), Value::Bool(p.is_some()));
    o.insert(
        "controller".into(),
        p.map_or(Value::Null, |p| Value::String(p.controller.clone())),
    );
    o.insert(
        "connected_since".into(),
        p.map_or(Value::Null, |p| Value::from(p.since)),
    );
    if p.is_some() {
        o.insert("last_seen".into(), Value::from(now));
    }
    v
}

fn last_seen(h: &HostRecord, p: Option<&AgentPresence>, now: u64) -> String {
    match p {
        Some(_) => "now".into(),
        None => output::ago(now.saturating_sub(h.last_seen)),
    }
}

fn print_hosts(json: bool, hosts: &[HostRecord], present: &HashMap<String, AgentPresence>) {
    let now = now();
    if json {
        output::json_array(
            hosts
                .iter()
                .map(|h| host_json(h, present.get(&h.name), now))
                .collect(),
        );
        return;
    }
    let rows: Vec<[String; 7]> = hosts
        .iter()
        .map(|h| {
            let p = present.get(&h.name);
            [
                h.name.clone(),
                h.subnet.to_string(),
                h.public_ip.to_string(),
                h.vtep_mac.to_string(),
                if p.is_some() { "yes" } else { "NO" }.into(),
                p.map_or_else(|| "-".into(), |p| p.controller.clone()),
                last_seen(h, p, now),
            ]
        })
        .collect();
    output::table(
        [
            "NAME",
            "SUBNET",
            "PUBLIC-IP",
            "VTEP-MAC",
            "CONNECTED",
            "CONTROLLER",
            "LAST-SEEN",
        ],
        &rows,
    );
}

pub async fn run(json: bool, cl: Cluster, c: HostCommand) -> Result<(), Failure> {
    let store = &cl.store;
    match c {
        HostCommand::List => {
            let (_, hosts) = store.hosts().await.map_err(|e| cl.fail(e))?;
            let present = store.presence().await.map_err(|e| cl.fail(e))?;
            let list: Vec<HostRecord> = hosts.into_values().collect();
            print_hosts(json, &list, &present);
            Ok(())
        }
        HostCommand::Show { name } => {
            weft_common::validate_name(&name).map_err(|e| Failure::usage(e.to_string()))?;
            let h = store
                .host(&name)
                .await
                .map_err(|e| cl.fail(e))?
                .ok_or_else(|| Failure::failed(format!("no host named {name:?}")))?;
            let present = store.presence().await.map_err(|e| cl.fail(e))?;
            let p = present.get(&name);
            let now = now();
            if json {
                println!("{}", host_json(&h, p, now));
            } else {
                println!("name:        {}", h.name);
                println!("subnet:      {}", h.subnet);
                println!("public ip:   {}", h.public_ip);
                println!("vtep mac:    {}", h.vtep_mac);
                match p {
                    Some(p) => println!(
                        "connected:   yes, to controller {} since {} (agent at {})",
                        p.controller,
                        output::span(now.saturating_sub(p.since)),
                        p.remote
                    ),
                    None => println!("connected:   NO"),
                }
                println!("last seen:   {}", last_seen(&h, p, now));
            }
            Ok(())
        }
        HostCommand::Rm { name } => {
            weft_common::validate_name(&name).map_err(|e| Failure::usage(e.to_string()))?;
            let h = store.remove_host(&name).await.map_err(|e| cl.fail(e))?;
            if json {
                output::json(&h);
            } else {
                println!(
                    "removed host {name}; subnet {} is free unless reserved (an agent still running there registers again)",
                    h.subnet
                );
            }
            Ok(())
        }
    }
}
