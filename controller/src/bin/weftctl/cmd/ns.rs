//! `weftctl ns`: namespaces on this host, through the local agent.

use std::ffi::CString;

use serde_json::Value;
use weft_common::agent_client::AgentClient;
use weft_common::api::{Endpoint, Request};
use weft_common::labels::{self, LabelEdit};
use weft_common::Labels;

use crate::cli::NsCommand;
use crate::output::{self, Failure};

pub fn run(json: bool, agent: &mut AgentClient, c: NsCommand) -> Result<(), Failure> {
    match c {
        NsCommand::Add {
            name,
            ip,
            publish,
            label,
        } => {
            let labels = to_labels(&label)?;
            let v = agent.call(&Request::NsAdd {
                name,
                ip,
                publish,
                labels,
            })?;
            let ep: Endpoint = agent.decode(v.clone())?;
            print_endpoints(json, &[ep], &v)
        }
        NsCommand::Label { name, edits } => {
            let mut set = Labels::new();
            let mut remove = Vec::new();
            for e in edits {
                match e {
                    LabelEdit::Set(k, v) => {
                        set.insert(k, v);
                    }
                    LabelEdit::Remove(k) => remove.push(k),
                }
            }
            let v = agent.call(&Request::NsLabel { name, set, remove })?;
            let ep: Endpoint = agent.decode(v.clone())?;
            print_endpoints(json, &[ep], &v)
        }
        NsCommand::Del { name } => {
            let v = agent.call(&Request::NsDel { name: name.clone() })?;
            if json {
                println!("{v}");
            } else {
                println!("deleted namespace {name}");
            }
            Ok(())
        }
        NsCommand::List => {
            let v = agent.call(&Request::NsList)?;
            let eps: Vec<Endpoint> = agent.decode(v.clone())?;
            print_endpoints(json, &eps, &v)
        }
        NsCommand::Show { name } => {
            let v = agent.call(&Request::NsShow { name })?;
            let ep: Endpoint = agent.decode(v.clone())?;
            print_endpoints(json, &[ep], &v)
        }
        NsCommand::Exec { name, cmd } => exec_in(&agent.ns_show(&name)?, &cmd),
    }
}

/// `--label` arguments as labels: setting only, each key once.
fn to_labels(edits: &[LabelEdit]) -> Result<Labels, Failure> {
    let mut out = Labels::new();
    for e in edits {
        match e {
            LabelEdit::Set(k, v) => {
                if out.insert(k.clone(), v.clone()).is_some() {
                    return Err(Failure::usage(format!("--label {k}: given twice")));
                }
            }
            LabelEdit::Remove(k) => {
                return Err(Failure::usage(format!(
                    "--label {k}-: ns add sets labels (KEY=VALUE); ns label removes them"
                )))
            }
        }
    }
    labels::check(&out).map_err(|e| Failure::usage(e.to_string()))?;
    Ok(out)
}

/// `raw`: the agent's answer as it came, printed as it is with `-o json`.
fn print_endpoints(json: bool, eps: &[Endpoint], raw: &Value) -> Result<(), Failure> {
    if json {
        println!("{raw}");
        return Ok(());
    }
    let rows: Vec<[String; 7]> = eps
        .iter()
        .map(|e| {
            let publish: Vec<String> = e.publish.iter().map(|p| p.to_string()).collect();
            [
                e.name.clone(),
                e.ip.to_string(),
                e.mac.to_string(),
                if publish.is_empty() {
                    "-".into()
                } else {
                    publish.join(",")
                },
                e.netns.clone(),
                // A CNI attachment: the runtime's container (its ID as
                // runtimes shorten it) and the interface inside.
                e.attachment.as_ref().map_or_else(
                    || "-".to_string(),
                    |a| {
                        let id = a.container_id.get(..12).unwrap_or(&a.container_id);
                        format!("{id}/{}", a.ifname)
                    },
                ),
                if e.labels.is_empty() {
                    "-".into()
                } else {
                    labels::display(&e.labels)
                },
            ]
        })
        .collect();
    output::table(
        [
            "NAME",
            "IP",
            "MAC",
            "PUBLISH",
            "NETNS",
            "CONTAINER",
            "LABELS",
        ],
        &rows,
    );
    Ok(())
}

/// Enters the endpoint's network namespace and replaces this process with
/// `cmd`, so its exit code is the command's own.
fn exec_in(ep: &Endpoint, cmd: &[String]) -> Result<(), Failure> {
    use nix::sched::{setns, CloneFlags};
    let ns = std::fs::File::open(&ep.netns)
        .map_err(|e| Failure::failed(format!("open namespace {}: {e}", ep.netns)))?;
    setns(&ns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| Failure::failed(format!("enter namespace {}: {e}", ep.netns)))?;
    let args: Vec<CString> = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| Failure::usage("command contains a NUL byte"))?;
    let err = nix::unistd::execvp(&args[0], &args).unwrap_err();
    let code = if err == nix::Error::ENOENT { 127 } else { 126 };
    Err(Failure(
        format!(
            "cannot run {:?} in namespace {}: {}",
            cmd[0],
            ep.name,
            err.desc()
        ),
        code,
    ))
}
