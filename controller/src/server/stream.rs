//! A registered session's stream: a snapshot (a few sessions at a time),
//! then deltas, while reading heartbeats and keeping the host's lease.

use std::time::Duration;

use ipnetwork::Ipv4Network;
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};
use tracing::{debug, info, warn};
use weft_common::cluster::EndpointEntry;
use weft_common::wire::{AgentMsg, FrameError, FrameReader};

use super::shared::Controller;
use crate::hub::Frame;
use crate::telemetry::metrics;

/// An agent that sends nothing (not even a heartbeat) for this long is gone.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(60);

/// Snapshots being sent at once. While a whole fleet registers, thousands
/// of snapshots streaming together (each of every host) took the CPU and
/// the socket from the handshakes and registrations still queued, and the
/// acknowledgements overflowed the socket: handshakes timed out and were
/// retried. A few at a time, each goes out quickly and registrations go
/// first.
pub const SNAPSHOTS_AT_ONCE: usize = 32;
/// The longest a session waits for its turn to get a snapshot.
pub const SNAPSHOT_WAIT: Duration = Duration::from_secs(30);
/// The longest one session holds a turn.
pub const SNAPSHOT_TURN: Duration = Duration::from_secs(5);

/// How the stream ended.
pub(super) enum Ended {
    /// The agent closed its side.
    Closed,
    /// The agent broke the protocol (or the connection was lost).
    Protocol(String),
    /// The host's record is gone: the agent is told to register again.
    Gone,
}

fn protocol(why: impl Into<String>) -> Ended {
    Ended::Protocol(why.into())
}

/// The registered agent a stream serves.
pub(super) struct Agent<'a> {
    pub node: &'a str,
    pub subnet: Ipv4Network,
    /// The lease of the host's record (its endpoint list hangs on it too).
    pub lease: i64,
    pub refresh_lease: bool,
}

/// Snapshot, then deltas, while reading heartbeats and endpoint reports
/// and keeping the lease.
pub(super) async fn run(
    send: &mut quinn::SendStream,
    reader: &mut FrameReader<quinn::RecvStream>,
    ctl: &Controller,
    agent: Agent<'_>,
) -> Ended {
    let mut hold = ctl.leases.hold(agent.lease, agent.refresh_lease);
    let mut report = Report::default();
    let mut retry = tokio::time::interval(REPORT_RETRY);
    // Policy goes to agents that report endpoints (older ones know
    // neither), from their first report on.
    let mut policy: Option<(i64, broadcast::Receiver<Arc<Frame>>)> = None;
    // Snapshots go out a few at a time (each session waits at most
    // SNAPSHOT_WAIT for its turn). A session subscribes only when its turn
    // comes, so until then nothing is buffered for it, and sessions that
    // wait together share one encoded snapshot of a later revision.
    let waiting = metrics::snapshot_waiter();
    let permit = tokio::time::timeout(SNAPSHOT_WAIT, ctl.snapshots.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok);
    drop(waiting);
    // A turn ends when the snapshot is out or after SNAPSHOT_TURN, so an
    // agent that stops reading cannot hold one.
    let (done, turn_over) = tokio::sync::oneshot::channel::<()>();
    if let Some(p) = permit {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SNAPSHOT_TURN, turn_over).await;
            drop(p);
        });
    }
    let (mut rev, snapshot, mut rx) = ctl.hub.subscribe().await;
    // With the connection's send window (common/src/tls/config.rs) this returns
    // once most of the snapshot is acknowledged, not merely buffered.
    if let Err(e) = send.write_chunk(snapshot).await {
        return protocol(format!("write snapshot: {e}"));
    }
    drop(done);
    metrics::get().snapshots.inc();
    debug!("snapshot at revision {rev} sent");
    loop {
        tokio::select! {
            f = rx.recv() => match f {
                Ok(f) => {
                    if f.revision > rev {
                        if let Err(e) = send.write_chunk(f.bytes.clone()).await {
                            return protocol(format!("write delta: {e}"));
                        }
                        rev = f.revision;
                        metrics::get().deltas.inc();
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    warn!("session fell {n} deltas behind; sending a fresh snapshot");
                    let (r, snap, new_rx) = ctl.hub.subscribe().await;
                    rx = new_rx;
                    rev = r;
                    if let Err(e) = send.write_chunk(snap).await {
                        return protocol(format!("write snapshot: {e}"));
                    }
                    metrics::get().snapshots.inc();
                }
                Err(RecvError::Closed) => return protocol("controller shutting down"),
            },
            m = tokio::time::timeout(SILENCE_LIMIT, reader.read::<AgentMsg>()) => match m {
                Err(_) => return protocol(format!("silent for {SILENCE_LIMIT:?}")),
                Ok(Ok(Some(AgentMsg::Heartbeat {}))) => {}
                Ok(Ok(Some(AgentMsg::Endpoints { endpoints }))) => {
                    report.take(&agent, endpoints);
                    report.store(ctl, &agent).await;
                    if policy.is_none() {
                        let (r, snap, rx) = ctl.policy.subscribe().await;
                        if let Err(e) = send.write_chunk(snap).await {
                            return protocol(format!("write policy snapshot: {e}"));
                        }
                        policy = Some((r, rx));
                    }
                }
                Ok(Ok(Some(AgentMsg::Register { .. }))) => {
                    return protocol("out-of-order frame: register on a registered session")
                }
                Ok(Ok(None)) => return Ended::Closed,
                Ok(Err(FrameError::Io(e))) => {
                    return match conn_closed_by_peer(&e) {
                        true => Ended::Closed,
                        false => protocol(format!("connection lost: {e}")),
                    }
                }
                Ok(Err(e)) => return protocol(e.to_string()),
            },
            _ = retry.tick(), if report.pending.is_some() => report.store(ctl, &agent).await,
            f = next_policy(&mut policy) => match f {
                Ok(f) => {
                    let Some((rev, _)) = policy.as_mut() else { continue };
                    if f.revision > *rev {
                        if let Err(e) = send.write_chunk(f.bytes.clone()).await {
                            return protocol(format!("write policy delta: {e}"));
                        }
                        *rev = f.revision;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    warn!("session fell {n} policy deltas behind; sending a fresh policy snapshot");
                    let (r, snap, rx) = ctl.policy.subscribe().await;
                    if let Err(e) = send.write_chunk(snap).await {
                        return protocol(format!("write policy snapshot: {e}"));
                    }
                    policy = Some((r, rx));
                }
                Err(RecvError::Closed) => return protocol("controller shutting down"),
            },
            r = hold.gone.changed() => {
                if r.is_err() || *hold.gone.borrow() {
                    return Ended::Gone;
                }
            }
        }
    }
}

/// The next policy frame for a session that takes policy; never for one
/// that does not.
async fn next_policy(
    policy: &mut Option<(i64, broadcast::Receiver<Arc<Frame>>)>,
) -> Result<Arc<Frame>, RecvError> {
    match policy {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// How often a report that etcd did not take is tried again.
const REPORT_RETRY: Duration = Duration::from_secs(2);

/// An agent's endpoint reports: the last one stored, and one waiting for
/// etcd (an outage must neither lose a report nor end the session).
#[derive(Default)]
struct Report {
    stored: Option<Vec<EndpointEntry>>,
    pending: Option<Vec<EndpointEntry>>,
}

impl Report {
    /// Takes a report: the entries the agent may report (its own subnet's
    /// addresses, valid names and labels; others are skipped with a
    /// warning), pending when they differ from what was stored last.
    fn take(&mut self, agent: &Agent<'_>, mut endpoints: Vec<EndpointEntry>) {
        endpoints.retain(|e| match e.validate(agent.subnet) {
            Ok(()) => true,
            Err(why) => {
                warn!("host {}: skipping a reported endpoint: {why}", agent.node);
                false
            }
        });
        endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        self.pending = (self.stored.as_ref() != Some(&endpoints)).then_some(endpoints);
    }

    /// Writes the pending report, if any; keeps it pending on failure.
    async fn store(&mut self, ctl: &Controller, agent: &Agent<'_>) {
        let Some(endpoints) = self.pending.take() else {
            return;
        };
        match ctl
            .store
            .put_endpoints(agent.node, agent.lease, &endpoints)
            .await
        {
            Ok(()) => {
                info!(
                    "host {}: {} endpoints reported for network policy",
                    agent.node,
                    endpoints.len()
                );
                self.stored = Some(endpoints);
            }
            Err(e) => {
                warn!(
                    "host {}: storing its endpoint report failed: {e}; retrying every {REPORT_RETRY:?}",
                    agent.node
                );
                self.pending = Some(endpoints);
            }
        }
    }
}

/// Whether a read failed because the agent closed the connection itself.
fn conn_closed_by_peer(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<quinn::ReadError>())
        .is_some_and(|r| {
            matches!(
                r,
                quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(_))
            )
        })
}
