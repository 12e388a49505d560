//! `weftctl certs`: the cluster CA and node certificates (files only).

use weft_controller::pki;

use crate::cli::CertsCommand;
use crate::output::Failure;

pub fn run(json: bool, c: CertsCommand) -> Result<(), Failure> {
    match c {
        CertsCommand::Init { dir } => {
            pki::init_ca(&dir).map_err(|e| Failure::failed(format!("{e:#}")))?;
            let ca = dir.join("ca.pem");
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ca": ca, "ca_key": dir.join("ca-key.pem")})
                );
            } else {
                println!(
                    "created cluster CA {} (key {}, keep it offline)",
                    ca.display(),
                    dir.join("ca-key.pem").display()
                );
            }
            Ok(())
        }
        CertsCommand::Issue {
            dir,
            name,
            role,
            ip,
            force,
        } => {
            let out = pki::issue(&dir, &name, role, &ip, force)
                .map_err(|e| Failure::failed(format!("{e:#}")))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "name": name, "role": role.as_str(), "dir": out,
                        "ips": ip.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                    })
                );
            } else {
                println!(
                    "issued {role} certificate for {name} in {} (ca.pem, cert.pem, key.pem)",
                    out.display()
                );
            }
            Ok(())
        }
    }
}
