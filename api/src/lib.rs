//! The agent's local API: the requests and answers spoken over its Unix
//! socket ([`api`]), its one client ([`agent_client`]), and the values
//! they carry that operators type ([`publish`]) or read ([`mac`]).
//!
//! A crate of its own so that `weft-cni`, which a container runtime execs
//! for every container, links only this: serde and the standard library,
//! no TLS, QUIC or etcd code. `weft-common` re-exports all of it.

pub mod agent_client;
pub mod api;
pub mod labels;
pub mod mac;
pub mod publish;

pub use labels::Labels;
pub use mac::MacAddr;
pub use publish::{PortMapping, Proto, PublishError};
