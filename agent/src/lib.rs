//! weft-agent: the per-host daemon. It builds the bridge, namespaces with
//! veth pairs, addresses and routes, NAT and published ports, and in a
//! cluster the VXLAN overlay to every other host; see ARCHITECTURE.md for
//! the map of this crate. In one line each:
//!
//! - [`daemon`]: startup order and task wiring; [`config`]: flags, env, file.
//! - [`model`]: what the kernel should hold, decided as data (pure).
//! - [`kernel`]: the only code that touches the kernel (Linux, and a fake).
//! - [`firewall`]: weft's nftables table (documents pure, `nft` runs).
//! - [`reconcile`]: observe, diff, apply; when it runs.
//! - [`endpoints`]: `ns add`/`ns del` with rollback, spare namespaces.
//! - [`control`]: the link to the controllers.
//! - [`enforce`]: network policy written to the kernel, its counters.
//! - [`state`]: what is persisted under `--state-dir`, and its writer.
//! - [`api`], [`status`], [`probe`]: the local socket `weftctl` talks to.
//! - [`telemetry`]: metrics and readiness (a leaf).

pub mod agent;
pub mod api;
pub mod config;
pub mod control;
pub mod daemon;
pub mod endpoints;
pub mod enforce;
pub mod firewall;
pub mod kernel;
pub mod model;
pub mod probe;
pub mod reconcile;
pub mod state;
pub mod status;
pub mod telemetry;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
