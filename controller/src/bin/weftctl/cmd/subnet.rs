//! `weftctl subnet`: who holds which subnet, and reservations.

use ipnetwork::Ipv4Network;
use serde_json::Value;
use weft_common::cluster::SubnetRecord;

use crate::cli::SubnetCommand;
use crate::etcd::Cluster;
use crate::output::{self, Failure};

fn subnet_json(net: Ipv4Network, rec: &SubnetRecord) -> Value {
    serde_json::json!({"subnet": net.to_string(), "host": rec.host, "reserved": rec.reserved})
}

pub async fn run(json: bool, cl: Cluster, c: SubnetCommand) -> Result<(), Failure> {
    let store = &cl.store;
    match c {
        SubnetCommand::List => {
            let subnets = store.subnets().await.map_err(|e| cl.fail(e))?;
            if json {
                output::json_array(
                    subnets
                        .iter()
                        .map(|(n, (r, _))| subnet_json(*n, r))
                        .collect(),
                );
            } else {
                let rows: Vec<[String; 3]> = subnets
                    .iter()
                    .map(|(n, (r, _))| {
                        [
                            n.to_string(),
                            r.host.clone().unwrap_or_else(|| "-".into()),
                            if r.reserved { "yes" } else { "no" }.into(),
                        ]
                    })
                    .collect();
                output::table(["SUBNET", "HOST", "RESERVED"], &rows);
            }
            Ok(())
        }
        SubnetCommand::Reserve { cidr, host } => {
            if let Some(h) = &host {
                weft_common::validate_name(h).map_err(|e| Failure::usage(e.to_string()))?;
            }
            let rec = store
                .reserve(cidr, host.as_deref())
                .await
                .map_err(|e| cl.fail(e))?;
            if json {
                println!("{}", subnet_json(cidr, &rec));
            } else {
                match &rec.host {
                    Some(h) => println!("reserved subnet {cidr} for host {h}"),
                    None => println!("reserved subnet {cidr}: it will not be allocated"),
                }
            }
            Ok(())
        }
        SubnetCommand::Release { cidr } => {
            store.release(cidr).await.map_err(|e| cl.fail(e))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"subnet": cidr.to_string(), "host": null, "reserved": false})
                );
            } else {
                println!("released subnet {cidr}: it can be allocated again");
            }
            Ok(())
        }
    }
}
