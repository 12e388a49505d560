//! Names of the structured events the daemons log, for programs that read
//! logs (the benchmarks, an operator's log pipeline) instead of people.
//!
//! An event is a log line with a field `event` holding one of these names
//! and typed fields beside it; its message is prose for people and may be
//! reworded, the name and fields may not. With `--log-format json` each
//! is one JSON object (`{"timestamp":…,"event":"overlay_programmed",
//! "peers":5,…,"message":…}`); in text logs the fields follow the message
//! as `event="overlay_programmed" peers=5 …`.

/// Agent: a controller assigned this host's subnet. Fields: `controller`,
/// `subnet`.
pub const SUBNET_ASSIGNED: &str = "subnet_assigned";
/// Agent: a peer snapshot was taken into the peer set. Fields: `revision`,
/// `peers`.
pub const PEER_SNAPSHOT: &str = "peer_snapshot";
/// Agent: a network policy snapshot was taken. Fields: `revision`,
/// `policies`, `sets`.
pub const POLICY_SNAPSHOT: &str = "policy_snapshot";
/// Agent: a network policy delta was taken. Fields: `revision`,
/// `policies`, `sets` (the totals after it).
pub const POLICY_UPDATE: &str = "policy_update";
/// Agent: a peer joined, changed or left, as the data plane is about to
/// program it. Fields: `peer`, `subnet`, `change` (`joined`, `changed`,
/// `left`), `why`. Logged per peer only for small changes (see the agent's
/// reconciler); a large change logs one summary line instead.
pub const PEER_CHANGE: &str = "peer_change";
/// Agent: a batch of overlay changes is in the kernel. Fields: `peers`
/// (programmed now), `changes` (kernel operations), `ms` (how long the
/// batch took), `why`.
pub const OVERLAY_PROGRAMMED: &str = "overlay_programmed";
/// Agent: the data plane is programmed at start. Fields: `endpoints`,
/// `peers`, `ms` (since the reconcile began).
pub const HOST_READY: &str = "host_ready";
/// Controller: a host registered. Fields: `host`, `subnet`, `allocated`
/// (whether a subnet was allocated for it now).
pub const HOST_REGISTERED: &str = "host_registered";
/// Controller: a peer change was broadcast to the agents. Fields: `host`,
/// `change` (`upsert` or `remove`), `revision`.
pub const PEER_UPDATE: &str = "peer_update";
