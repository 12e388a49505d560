//! Accepting connections: at most [`MAX_PENDING`] between their first
//! packet and their assignment, handshakes refused by TLS said in words,
//! and a session for every connection that gets through.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use weft_common::tls::TlsFailure;

use super::pending::Pending;
use super::session;
use super::shared::Controller;

/// Connections that may be between their first packet and their
/// assignment at once. Beyond this a new connection is refused at once
/// (one packet, no handshake), and the agent tries the next controller or
/// backs off: when a whole fleet connects together, handshakes that queue
/// past the agents' connect timeout would otherwise be abandoned and
/// retried, and the controller would spend its time on handshakes nobody
/// waits for any more.
pub const MAX_PENDING: usize = 1024;

/// Accepts connections until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, ctl: Arc<Controller>) {
    let pending = Arc::new(AtomicUsize::new(0));
    let mut refused = 0u64;
    let mut last_note = tokio::time::Instant::now();
    while let Some(incoming) = endpoint.accept().await {
        if pending.load(Ordering::Relaxed) >= MAX_PENDING {
            incoming.refuse();
            refused += 1;
            if last_note.elapsed() >= Duration::from_secs(5) {
                info!("{refused} connections refused so far: {MAX_PENDING} registrations are in progress; agents back off and retry");
                last_note = tokio::time::Instant::now();
            }
            continue;
        }
        let guard = Pending::new(pending.clone());
        let ctl = ctl.clone();
        tokio::spawn(async move {
            let mut guard = Some(guard);
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    // A refused certificate (expired, another CA, none) is
                    // said in words, with the TLS details after it.
                    match TlsFailure::of(&e) {
                        Some(why) => warn!("refused connection from {remote}: {why} ({e})"),
                        None => info!("refused connection from {remote}: {e}"),
                    }
                    return;
                }
            };
            session::handle(conn, remote, ctl, &mut guard).await;
        });
    }
}
