//! weft-controller: subnet allocation and the host registry in etcd, and the
//! QUIC control channel to agents. `weftctl` shares the etcd code.

pub mod hub;
pub mod leases;
pub mod pki;
pub mod server;
pub mod store;
