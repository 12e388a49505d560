//! weft-controller: subnet allocation and the host registry in etcd, and the
//! QUIC control channel to agents. `weftctl` shares the etcd code.

pub mod backup;
pub mod etcd_access;
pub mod etcd_endpoints;
pub mod hub;
pub mod leases;
pub mod metrics;
pub mod pki;
pub mod presence;
pub mod server;
pub mod store;

/// A clap error as one line: its message (which may continue on indented
/// lines, e.g. missing arguments) without the usage block.
pub fn one_line(e: &clap::Error) -> String {
    e.render()
        .to_string()
        .lines()
        .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}
