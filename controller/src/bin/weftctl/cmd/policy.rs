//! `weftctl policy`: network policies in etcd (`apply -f`, `list`, `show`,
//! `delete`), and `explain` of one connection against them and the
//! endpoints agents reported. A file is read and every policy in it
//! checked before etcd is contacted; one apply writes all of them or none.

use std::path::Path;

use serde_json::Value;
use weft_common::policy::decide::Traffic;
use weft_common::policy::{self, explain, Direction, Policy};
use weft_controller::store::MAX_APPLY;

use crate::cli::PolicyCommand;
use crate::etcd::{Cluster, Etcd};
use crate::output::{self, Failure};

pub fn run(json: bool, etcd: &Etcd, c: PolicyCommand) -> Result<(), Failure> {
    let docs = match &c {
        PolicyCommand::Apply { file } => Some(read_policies(file)?),
        PolicyCommand::Explain {
            traffic: Some(t), ..
        } => {
            Traffic::parse(t).map_err(Failure::usage)?;
            None
        }
        _ => None,
    };
    etcd.run(|cl| policies(json, cl, c, docs))
}

/// The policies in `file` (`-`: stdin): JSON (an object or a list) or
/// YAML (one or more documents, each a policy or a list), checked.
fn read_policies(file: &Path) -> Result<Vec<Policy>, Failure> {
    let name = file.display();
    let text = super::read_input(file, "policies")?;
    let refused = |e: String| Failure::usage(format!("{name}: {e}"));
    let mut list: Vec<Value> = Vec::new();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(&text).map_err(|e| refused(e.to_string()))?;
        list.push(v);
    } else {
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| refused(format!("not YAML or JSON: {e}")))?;
            if !v.is_null() {
                list.push(v);
            }
        }
    }
    let flat: Vec<Value> = list
        .into_iter()
        .flat_map(|v| match v {
            Value::Array(a) => a,
            v => vec![v],
        })
        .collect();
    if flat.is_empty() {
        return Err(refused("holds no policy".into()));
    }
    if flat.len() > MAX_APPLY {
        return Err(refused(format!(
            "{} policies; at most {MAX_APPLY} in one apply",
            flat.len()
        )));
    }
    policy::parse_value(Value::Array(flat)).map_err(|e| refused(e.to_string()))
}

async fn policies(
    json: bool,
    cl: Cluster,
    c: PolicyCommand,
    docs: Option<Vec<Policy>>,
) -> Result<(), Failure> {
    let store = &cl.store;
    match c {
        PolicyCommand::Apply { .. } => {
            let docs = docs.expect("read before connecting");
            let done = store.apply_policies(&docs).await.map_err(|e| cl.fail(e))?;
            if json {
                output::json_array(
                    done.iter()
                        .map(|(n, a)| serde_json::json!({"name": n, "result": a}))
                        .collect(),
                );
            } else {
                for (n, a) in &done {
                    println!("policy {n} {a}");
                }
            }
            Ok(())
        }
        PolicyCommand::List => {
            let all = store.policies().await.map_err(|e| cl.fail(e))?;
            if json {
                output::json_array(all.values().map(|p| serde_json::json!(p)).collect());
            } else {
                let rows: Vec<[String; 5]> = all.values().map(row).collect();
                output::table(["NAME", "SCOPE", "SELECTOR", "INGRESS", "EGRESS"], &rows);
            }
            Ok(())
        }
        PolicyCommand::Show { name } => {
            let p = store
                .policy(&name)
                .await
                .map_err(|e| cl.fail(e))?
                .ok_or_else(|| Failure::failed(format!("no policy {name:?}")))?;
            if json {
                println!("{}", serde_json::json!(p));
            } else {
                let yaml = serde_yaml_ng::to_string(&p)
                    .map_err(|e| Failure::failed(format!("show policy {name}: {e}")))?;
                print!("{yaml}");
            }
            Ok(())
        }
        PolicyCommand::Explain { from, to, traffic } => {
            let traffic = match traffic {
                Some(t) => Traffic::parse(&t).map_err(Failure::usage)?,
                None => Traffic::Other,
            };
            let all = store.policies().await.map_err(|e| cl.fail(e))?;
            let (_, dir) = store.endpoints().await.map_err(|e| cl.fail(e))?;
            let from = explain::find(&dir, &from).map_err(Failure::failed)?;
            let to = explain::find(&dir, &to).map_err(Failure::failed)?;
            let policies: Vec<Policy> = all.into_values().collect();
            let e = explain::explain(&policies, from, to, traffic);
            if json {
                println!("{}", e.to_json());
            } else {
                println!("{e}");
            }
            Ok(())
        }
        PolicyCommand::Delete { name } => {
            let p = store.delete_policy(&name).await.map_err(|e| cl.fail(e))?;
            if json {
                println!("{}", serde_json::json!(p));
            } else {
                println!("deleted policy {name}");
            }
            Ok(())
        }
    }
}

/// One line of `policy list`: the rules per direction, or `deny all` when
/// a direction is restricted with no rule, `-` when it is not restricted.
fn row(p: &Policy) -> [String; 5] {
    let dirs = p.directions();
    let rules = |d: Direction| {
        let n = p.rules(d).len();
        match (dirs.contains(&d), n) {
            (false, _) => "-".to_string(),
            (true, 0) => "deny all".to_string(),
            (true, 1) => "1 rule".to_string(),
            (true, n) => format!("{n} rules"),
        }
    };
    let sel = &p.selector;
    let selector = if sel.is_empty() {
        "(all)".to_string()
    } else {
        let mut parts: Vec<String> = sel
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.extend(
            sel.match_expressions
                .iter()
                .map(|e| format!("{} {:?} {}", e.key, e.operator, e.values.join("|"))),
        );
        parts.join(",")
    };
    [
        p.name.clone(),
        p.scope.clone().unwrap_or_else(|| "(all)".into()),
        selector,
        rules(Direction::Ingress),
        rules(Direction::Egress),
    ]
}
