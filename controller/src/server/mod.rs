//! The QUIC control channel: one session per agent connection.
//!
//! - `accept`: TLS (in `weft_common::tls`) refuses any client without a
//!   certificate from the cluster CA before a byte of the protocol is read;
//!   at most [`MAX_PENDING`] connections wait for their assignment
//!   (`pending` counts them);
//! - [`session`]: exactly one `register` within [`REGISTER_WAIT`], answered
//!   with `assigned` or a refusal carrying its code;
//! - `stream`: the host's etcd lease kept alive, a snapshot (a few at a
//!   time), then deltas;
//! - `shared`: what every session shares ([`Controller`]).
//!
//! Anything unexpected ends that session with a logged reason; nothing a
//! client does can end the process.

mod accept;
mod pending;
pub mod session;
mod shared;
mod stream;

pub use accept::{serve, MAX_PENDING};
pub use session::{error_frame, REGISTER_WAIT};
pub use shared::Controller;
pub use stream::{SILENCE_LIMIT, SNAPSHOTS_AT_ONCE, SNAPSHOT_TURN, SNAPSHOT_WAIT};
