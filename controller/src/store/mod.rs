//! The cluster state in etcd: network config, subnet allocation, host
//! records, leases, presence. Only controllers and `weftctl` talk to etcd,
//! only through a [`Store`], and only `etcd` holds the client.
//!
//! A host's record and its (non-reserved) subnet key share one etcd lease;
//! when the lease ends both vanish in one revision and the subnet is free.
//! Every write that could race is an etcd transaction guarded by the exact
//! version or revision it was decided on, and retried when the guard fails.
//!
//! - [`keys`]: the key layout; [`records`]: the values, one host decoder;
//! - [`alloc`]: the allocation decision (pure); [`refusal`]: why a
//!   registration is refused, with its code; `register`: the
//!   registration transaction;
//! - `config`, `hosts`, `subnets`, `policies`: the operators' reads and
//!   writes; `endpoints`: the endpoints agents report (for policy);
//! - `handle`: the [`Store`] itself, connecting, leases; `error`: what
//!   goes wrong;
//! - `agents`: presence keys; `watch`: the host watch; `policy_watch`:
//!   the watch of policies and reported endpoints; `backup`: bulk
//!   reads and writes; `listing`: one subnet listing shared by concurrent
//!   registrations; `members`: keeping requests off etcd members that
//!   are down; [`access`]: TLS, users and etcd's errors in words.

pub mod access;
mod agents;
pub mod alloc;
mod backup;
mod config;
mod endpoints;
mod error;
mod etcd;
mod handle;
mod hosts;
pub mod keys;
mod listing;
mod members;
mod policies;
mod policy_watch;
pub mod records;
pub mod refusal;
mod register;
mod subnets;
mod watch;

pub use access::{AccessFailure, EtcdAccess, EtcdTarget};
pub use backup::BackupKeys;
pub use error::{Result, StoreError};
pub use handle::{now, Store};
pub use keys::{Keys, DEFAULT_PREFIX};
pub use listing::Subnets;
pub use policies::{Applied, MAX_APPLY};
pub use policy_watch::{PolicyInput, PolicyWatch, PolicyWatchEvent};
pub use records::{AgentPresence, BadRecord};
pub use refusal::Refusal;
pub use register::{Registered, Registration};
pub use watch::{HostWatch, WatchEvent};
