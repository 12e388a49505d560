//! What every session shares: the store, the hub, leases, presence and the
//! snapshot turns.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::hub::Hub;
use crate::leases::Leases;
use crate::policy_hub::PolicyHub;
use crate::presence::Presence;
use crate::store::Store;

/// What every session shares.
pub struct Controller {
    pub store: Store,
    pub hub: Arc<Hub>,
    /// Network policy for the sessions of agents that report endpoints.
    pub policy: Arc<PolicyHub>,
    /// Lease TTL for host keys, seconds.
    pub lease_ttl: i64,
    pub leases: Arc<Leases>,
    /// Turns for sending snapshots (`SNAPSHOTS_AT_ONCE`).
    pub snapshots: Arc<tokio::sync::Semaphore>,
    /// Which agents are connected here (`<prefix>/agents/`).
    pub presence: Arc<Presence>,
    /// This controller's address for the presence keys when a connection
    /// does not tell which local address the agent dialled.
    pub listen: SocketAddr,
}
