//! weft-controller: subnet allocation and the host registry in etcd, and the
//! QUIC control channel to agents. `weftctl` shares the etcd code.
//!
//! Layers, top to bottom (each uses only those below it):
//! - `server` (the agents' sessions), `hub` (fan-out of peer changes),
//!   `policy_hub` (network policy and its resolved address sets, likewise),
//!   `leases`, `presence`, `backup`: what the daemon and `weftctl` do;
//! - `store`: the only way to etcd;
//! - `telemetry`: metrics and readiness, a leaf that imports none of the
//!   above. `flags` and `pki` stand aside: command lines and certificates.

pub mod backup;
pub mod flags;
pub mod hub;
pub mod leases;
pub mod pki;
pub mod policy_hub;
pub mod presence;
pub mod server;
pub mod store;
pub mod telemetry;
