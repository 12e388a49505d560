//! One file per command group.

pub mod certs;
pub mod cluster;
pub mod host;
pub mod ns;
pub mod status;
pub mod subnet;
