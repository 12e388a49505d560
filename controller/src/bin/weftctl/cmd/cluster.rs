//! `weftctl cluster`: the network config (`init`, `show`) and the
//! cluster's keys as one document (`backup`, `restore`).

use std::path::PathBuf;

use weft_common::cluster::NetworkConfig;
use weft_controller::backup;

use crate::cli::ClusterCommand;
use crate::etcd::{Cluster, Etcd};
use crate::output::Failure;

pub fn run(json: bool, etcd: &Etcd, c: ClusterCommand) -> Result<(), Failure> {
    // A restore's document is read and checked before etcd is contacted.
    let doc = match &c {
        ClusterCommand::Restore { file, .. } => Some(read_backup(file)?),
        _ => None,
    };
    etcd.run(|cl| cluster(json, cl, c, doc))
}

/// Reads and checks a backup document before anything talks to etcd.
fn read_backup(file: &std::path::Path) -> Result<backup::Backup, Failure> {
    let name = file.display();
    let text = super::read_input(file, "backup")?;
    let b: backup::Backup = serde_json::from_str(&text)
        .map_err(|e| Failure::usage(format!("backup {name} is not a weft backup: {e}")))?;
    backup::check(&b).map_err(|e| Failure::usage(format!("backup {name} refused: {e}")))?;
    Ok(b)
}

/// `doc`: the backup a restore writes, already read and checked.
async fn cluster(
    json: bool,
    cl: Cluster,
    c: ClusterCommand,
    doc: Option<backup::Backup>,
) -> Result<(), Failure> {
    let store = &cl.store;
    match c {
        ClusterCommand::Backup { file } => {
            let b = backup::take(store).await.map_err(|e| cl.fail_backup(e))?;
            let doc = serde_json::to_string_pretty(&b).expect("backup serializes") + "\n";
            let summary = format!(
                "backed up {} at revision {}: config, {} hosts, {} subnets, {} policies",
                b.prefix,
                b.revision,
                b.hosts.len(),
                b.subnets.len(),
                b.policies.len()
            );
            match file {
                None => {
                    print!("{doc}");
                    eprintln!("weftctl: {summary}");
                }
                Some(f) => {
                    // FILE.tmp beside it, renamed over FILE once complete.
                    let mut tmp = f.clone().into_os_string();
                    tmp.push(".tmp");
                    let tmp = PathBuf::from(tmp);
                    std::fs::write(&tmp, &doc)
                        .and_then(|_| std::fs::rename(&tmp, &f))
                        .map_err(|e| {
                            let _ = std::fs::remove_file(&tmp);
                            Failure::failed(format!("write backup {}: {e}", f.display()))
                        })?;
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "file": f, "prefix": b.prefix, "revision": b.revision,
                                "hosts": b.hosts.len(), "subnets": b.subnets.len(),
                                "policies": b.policies.len(),
                            })
                        );
                    } else {
                        println!("{summary} → {}", f.display());
                    }
                }
            }
            Ok(())
        }
        ClusterCommand::Restore { file, lease_ttl } => {
            let b = match doc {
                Some(b) => b,
                None => read_backup(&file)?,
            };
            let r = backup::restore(store, &b, lease_ttl)
                .await
                .map_err(|e| cl.fail_backup(e))?;
            if json {
                println!("{}", serde_json::to_string(&r).expect("summary serializes"));
            } else {
                println!(
                    "restored {} hosts, {} subnets and {} policies into {} (backup of {} at revision {}); each host keeps its subnet for {} s unless its agent returns",
                    r.hosts, r.subnets, r.policies, r.prefix, b.prefix, b.revision, r.lease_ttl
                );
            }
            Ok(())
        }
        ClusterCommand::Init {
            cidr,
            subnet_len,
            vni,
            port,
            mtu,
        } => {
            let cfg = NetworkConfig {
                cidr,
                subnet_len,
                vni,
                port,
                mtu,
            };
            cfg.validate().map_err(|e| Failure::usage(e.to_string()))?;
            let old = store.init_config(&cfg).await.map_err(|e| cl.fail(e))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&cfg).expect("config serializes")
                );
            } else {
                match old {
                    Some(o) if o == cfg => println!("cluster config unchanged"),
                    Some(_) => {
                        println!("updated cluster config; agents apply it when they next register")
                    }
                    None => println!("initialised cluster"),
                }
                print_config(&cfg, None);
            }
            Ok(())
        }
        ClusterCommand::Show => {
            let cfg = store.require_config().await.map_err(|e| cl.fail(e))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&cfg).expect("config serializes")
                );
            } else {
                let held = store.subnets().await.map_err(|e| cl.fail(e))?.len();
                print_config(&cfg, Some(held));
            }
            Ok(())
        }
    }
}

fn print_config(cfg: &NetworkConfig, held: Option<usize>) {
    println!("cidr:        {}", cfg.cidr);
    match held {
        Some(h) => println!(
            "subnet-len:  {} ({} subnets, {h} held or reserved)",
            cfg.subnet_len,
            cfg.subnet_count()
        ),
        None => println!(
            "subnet-len:  {} ({} subnets)",
            cfg.subnet_len,
            cfg.subnet_count()
        ),
    }
    println!("vni:         {}", cfg.vni);
    println!("port:        {}", cfg.port);
    match cfg.mtu {
        Some(m) => println!("mtu:         {m}"),
        None => println!("mtu:         derived (each host's underlay MTU - 50)"),
    }
}
