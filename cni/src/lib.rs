//! `weft-cni`: weft's CNI plugin (CNI spec 1.1; configs of cniVersion
//! 0.3.1, 0.4.0, 1.0.0 and 1.1.0). A container runtime execs it for every
//! container, so it is small and starts fast: it reads the environment and
//! the config, asks the local `weft-agent` over its socket (the agent does
//! the work: veth pair, address, routes, published ports, records), and
//! prints the spec's answer. It links only `weft-api` (no TLS, QUIC or
//! etcd code).
//!
//! - [`env`]: the `CNI_*` variables, checked (error 4);
//! - [`config`]: the network config on stdin, checked (errors 6, 7, 2);
//! - [`version`]: the versions spoken and which verbs each allows (error 1);
//! - [`result`]: the ADD result in the shape of the config's version,
//!   merged into a `prevResult`;
//! - [`error`]: the error result and weft's codes;
//! - [`verbs`]: each verb, as a call to the agent.

pub mod config;
pub mod env;
pub mod error;
pub mod result;
pub mod verbs;
pub mod version;
