//! One registered session with a controller: take what arrives into the
//! peer set (and save it), send heartbeats; return why it ended.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};
use weft_common::client::Session;
use weft_common::events;
use weft_common::wire::{AgentMsg, ControllerMsg};

use super::peers::Applied;
use super::policy::PolicyApplied;
use super::Controllers;
pub use crate::endpoints::Directory;
use crate::telemetry::{metrics, ready};

const HEARTBEAT: Duration = Duration::from_secs(10);

impl Controllers {
    /// Runs a session until it ends; returns why it did. A controller that
    /// takes endpoint reports gets the whole list at the start and again
    /// after each change.
    pub(super) async fn session(&self, mut s: Session, directory: &mut Directory) -> String {
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.tick().await;
        if s.policy {
            let endpoints = directory.borrow_and_update().as_ref().clone();
            if let Err(e) = s.send(&AgentMsg::Endpoints { endpoints }).await {
                return e.to_string();
            }
        }
        loop {
            tokio::select! {
                r = directory.changed(), if s.policy => {
                    if r.is_err() {
                        return "the agent is stopping".into();
                    }
                    let endpoints = directory.borrow_and_update().as_ref().clone();
                    debug!("reporting {} endpoints to the controller", endpoints.len());
                    if let Err(e) = s.send(&AgentMsg::Endpoints { endpoints }).await {
                        return e.to_string();
                    }
                }
                m = s.next() => match m {
                    Ok(Some(msg)) => {
                        let taken = match msg {
                            ControllerMsg::PolicySnapshot { .. } | ControllerMsg::PolicyDelta { .. } => {
                                self.take_policy(msg)
                            }
                            msg => self.take(msg),
                        };
                        if let Err(why) = taken {
                            s.conn.close(1u32.into(), why.as_bytes());
                            return why;
                        }
                    }
                    Ok(None) => return "the controller closed the session".into(),
                    Err(e) => return e.to_string(),
                },
                _ = beat.tick() => {
                    if let Err(e) = s.heartbeat().await {
                        return e.to_string();
                    }
                }
            }
        }
    }

    /// Takes a policy message into the policy book and queues the book for
    /// saving.
    fn take_policy(&self, msg: ControllerMsg) -> Result<(), String> {
        let mut book = self.policy.lock().expect("policy book");
        let applied = book.apply(msg)?;
        let (revision, policies, sets) = (book.revision, book.policies.len(), book.sets.len());
        match applied {
            PolicyApplied::Stale => {
                debug!("ignoring policy delta at revision {revision} (have a newer one)");
                return Ok(());
            }
            PolicyApplied::Snapshot => info!(
                event = events::POLICY_SNAPSHOT,
                revision,
                policies,
                sets,
                "policy snapshot at revision {revision}: {policies} policies, {sets} address sets ({} addresses)",
                book.addresses()
            ),
            PolicyApplied::Delta {
                policies: changed,
                set_changes,
            } => info!(
                event = events::POLICY_UPDATE,
                revision,
                policies,
                sets,
                "policy update at revision {revision}: {changed} policies written or deleted, {set_changes} address sets changed; now {policies} policies, {sets} sets ({} addresses)",
                book.addresses()
            ),
        }
        let saved = book.saved();
        drop(book);
        self.state.save_policy(&saved);
        self.policy_tx.send_replace(Arc::new(saved));
        Ok(())
    }

    /// Takes one message into the peer set, publishes the set to the data
    /// plane and queues it for saving.
    fn take(&self, msg: ControllerMsg) -> Result<(), String> {
        let snapshot = matches!(msg, ControllerMsg::Snapshot { .. });
        let mut book = self.book.lock().expect("peer book");
        let applied = book.apply(msg)?;
        let revision = book.revision;
        match &applied {
            Applied::Stale => {
                debug!("ignoring delta at revision {revision} (have a newer one)");
                return Ok(());
            }
            Applied::Snapshot { before, after } => info!(
                event = events::PEER_SNAPSHOT,
                revision,
                peers = after,
                "peer snapshot at revision {revision}: {after} peers (had {before})"
            ),
            Applied::Delta { upserted, removed } => {
                for name in upserted {
                    if let Some(h) = book.peers.get(name) {
                        debug!(
                            "peer {} at {} with subnet {} (revision {revision})",
                            h.name, h.public_ip, h.subnet
                        );
                    }
                }
                for name in removed {
                    debug!("peer {name} left (revision {revision})");
                }
            }
        }
        self.peers_tx
            .send_replace(std::sync::Arc::new(book.peers.clone()));
        metrics::peer_message(snapshot, revision);
        if snapshot {
            // After publishing the set (see the data plane's loop in daemon.rs).
            ready::get().snapshot_received();
        }
        let saved = book.saved();
        drop(book);
        self.state.save_peers(saved);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn heartbeats_come_well_within_the_idle_timeout() {
        // The controller drops a session silent for its QUIC idle timeout;
        // a heartbeat every HEARTBEAT keeps it alive.
        assert!(super::HEARTBEAT * 2 < weft_common::tls::SERVER_IDLE_TIMEOUT);
    }
}
