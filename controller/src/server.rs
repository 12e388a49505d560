//! The QUIC control channel: one session per agent connection.
//!
//! TLS (in `weft_common::tls`) refuses any client without a certificate from
//! the cluster CA before a byte of the protocol is read. A session then
//! expects exactly one `register` within [`REGISTER_WAIT`], answers with
//! `assigned`, keeps the host's etcd lease alive, sends a snapshot and
//! forwards deltas. Anything unexpected ends that session with a logged
//! reason; nothing a client does can end the process.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, info, warn};
use weft_common::tls;
use weft_common::wire::{self, AgentMsg, ControllerMsg, FrameReader};

use crate::hub::Hub;
use crate::store::{Registration, Store};

/// How long a new connection may take to open its stream and register.
pub const REGISTER_WAIT: Duration = Duration::from_secs(10);
/// An agent that sends nothing (not even a heartbeat) for this long is gone.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(60);

/// Application close codes on the QUIC connection.
const CLOSE_OK: u32 = 0;
const CLOSE_PROTOCOL: u32 = 1;
const CLOSE_REFUSED: u32 = 2;

pub struct Controller {
    pub store: Store,
    pub hub: Arc<Hub>,
    /// Lease TTL for host keys, seconds.
    pub lease_ttl: i64,
    pub leases: Arc<crate::leases::Leases>,
    /// Turns for sending snapshots ([`SNAPSHOTS_AT_ONCE`]).
    pub snapshots: Arc<tokio::sync::Semaphore>,
    /// Which agents are connected here (`<prefix>/agents/`).
    pub presence: Arc<crate::presence::Presence>,
    /// This controller's address for the presence keys when a connection
    /// does not tell which local address the agent dialled.
    pub listen: SocketAddr,
}

/// Connections that may be between their first packet and their
/// assignment at once. Beyond this a new connection is refused at once
/// (one packet, no handshake), and the agent tries the next controller or
/// backs off: when a whole fleet connects together, handshakes that queue
/// past the agents' connect timeout would otherwise be abandoned and
/// retried, and the controller would spend its time on handshakes nobody
/// waits for any more.
pub const MAX_PENDING: usize = 1024;

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

/// Counts a connection as pending until dropped.
struct Pending(Arc<AtomicUsize>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        crate::metrics::get().pending.dec();
    }
}

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
        pending.fetch_add(1, Ordering::Relaxed);
        crate::metrics::get().pending.inc();
        let guard = Pending(pending.clone());
        let ctl = ctl.clone();
        tokio::spawn(async move {
            let mut guard = Some(guard);
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    // A refused certificate (expired, another CA, none) is
                    // said in words, with the TLS details after it.
                    let text = e.to_string();
                    let why = tls::describe_handshake_error(&text);
                    if why != text {
                        warn!("refused connection from {remote}: {why} ({text})");
                    } else {
                        info!("refused connection from {remote}: {e}");
                    }
                    return;
                }
            };
            handle(conn, remote, ctl, &mut guard).await;
        });
    }
}

/// Why a session ended.
enum End {
    /// The agent closed its side.
    Closed,
    /// The agent broke the protocol.
    Protocol(String),
    /// We refused it (told it why in an `error` frame).
    Refused(String),
}

async fn handle(
    conn: quinn::Connection,
    remote: SocketAddr,
    ctl: Arc<Controller>,
    pending: &mut Option<Pending>,
) {
    let cert = tls::peer_name(&conn).unwrap_or_else(|| "?".into());
    let mut node = None;
    let end = session(&conn, &cert, &ctl, &mut node, pending).await;
    pending.take();
    if let Some(n) = &node {
        // The session was assigned (or refused after registering): record
        // when the host was last seen.
        let store = ctl.store.clone();
        let n = n.clone();
        tokio::spawn(async move { crate::presence::touch_last_seen(&store, &n).await });
    }
    let who = match &node {
        Some(n) => format!("host {n} ({remote})"),
        None => format!("{remote} (certificate {cert})"),
    };
    match end {
        End::Closed => {
            info!("session with {who} closed");
            conn.close(CLOSE_OK.into(), b"bye");
        }
        End::Protocol(why) => {
            warn!("ended session with {who}: {why}");
            conn.close(CLOSE_PROTOCOL.into(), why.as_bytes());
        }
        End::Refused(why) => {
            warn!("refused {who}: {why}");
            // Let the error frame reach the agent before closing.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            conn.close(CLOSE_REFUSED.into(), why.as_bytes());
        }
    }
}

async fn refuse(send: &mut quinn::SendStream, why: String) -> End {
    let _ = wire::write(
        send,
        &ControllerMsg::Error {
            message: why.clone(),
        },
    )
    .await;
    let _ = send.finish();
    End::Refused(why)
}

async fn session(
    conn: &quinn::Connection,
    cert: &str,
    ctl: &Controller,
    node_out: &mut Option<String>,
    pending: &mut Option<Pending>,
) -> End {
    let deadline = tokio::time::Instant::now() + REGISTER_WAIT;
    let (mut send, recv) = match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
        Err(_) => return End::Protocol(format!("opened no stream within {REGISTER_WAIT:?}")),
        Ok(Err(e)) => return End::Protocol(format!("connection lost before registering: {e}")),
        Ok(Ok(s)) => s,
    };
    let mut reader = FrameReader::new(recv, wire::MAX_AGENT_FRAME);
    let first = match tokio::time::timeout_at(deadline, reader.read::<AgentMsg>()).await {
        Err(_) => return End::Protocol(format!("sent no registration within {REGISTER_WAIT:?}")),
        Ok(Err(e)) => return End::Protocol(format!("bad first frame: {e}")),
        Ok(Ok(None)) => return End::Protocol("closed the stream before registering".into()),
        Ok(Ok(Some(m))) => m,
    };
    let AgentMsg::Register {
        node,
        public_ip,
        vtep_mac,
        subnet,
        version,
    } = first
    else {
        return End::Protocol("out-of-order frame: heartbeat before register".into());
    };
    if let Err(e) = weft_common::validate_name(&node) {
        crate::metrics::registration_refused();
        return refuse(&mut send, format!("invalid node name: {e}")).await;
    }
    // A certificate names one host: a stolen agent certificate cannot claim
    // another host's subnet.
    if cert != node {
        crate::metrics::registration_refused();
        return refuse(
            &mut send,
            format!("node name {node:?} does not match the certificate's name {cert:?}"),
        )
        .await;
    }
    *node_out = Some(node.clone());
    let reg = Registration {
        node: node.clone(),
        public_ip,
        vtep_mac,
        want: subnet,
    };
    let registered = ctl.store.register(&reg, ctl.lease_ttl).await;
    crate::metrics::registration(&registered);
    let registered = match registered {
        Ok(r) => r,
        Err(e) => return refuse(&mut send, format!("cannot register host {node}: {e}")).await,
    };
    info!(
        "host {node} registered (agent {version}): subnet {}{} public ip {public_ip} vtep {vtep_mac}",
        registered.record.subnet,
        if registered.allocated { " (new)" } else { "" },
    );
    let assigned = ControllerMsg::Assigned {
        subnet: registered.record.subnet,
        config: registered.config.clone(),
    };
    if let Err(e) = wire::write(&mut send, &assigned).await {
        return End::Protocol(format!("write assignment: {e}"));
    }
    pending.take();
    let _connected = crate::metrics::connected();
    // Connected from now until this session ends (the key is removed when
    // `_present` is dropped).
    let here = match conn.local_ip() {
        Some(ip) => SocketAddr::new(ip, ctl.listen.port()).to_string(),
        None => ctl.listen.to_string(),
    };
    let _present = ctl
        .presence
        .connected(&node, here, conn.remote_address().to_string());
    match stream(
        &mut send,
        &mut reader,
        ctl,
        registered.lease,
        !registered.allocated,
    )
    .await
    {
        End::Refused(why) => refuse(&mut send, why).await,
        other => other,
    }
}

/// Snapshot, then deltas, while reading heartbeats and keeping the lease.
async fn stream(
    send: &mut quinn::SendStream,
    reader: &mut FrameReader<quinn::RecvStream>,
    ctl: &Controller,
    lease: i64,
    refresh_lease: bool,
) -> End {
    let mut hold = ctl.leases.hold(lease, refresh_lease);
    // Snapshots go out a few at a time (each session waits at most
    // SNAPSHOT_WAIT for its turn). A session subscribes only when its turn
    // comes, so until then nothing is buffered for it, and sessions that
    // wait together share one encoded snapshot of a later revision.
    let waiting = crate::metrics::snapshot_waiter();
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
    // With the connection's send window (common/src/tls.rs) this returns
    // once most of the snapshot is acknowledged, not merely buffered.
    if let Err(e) = send.write_chunk(snapshot).await {
        return End::Protocol(format!("write snapshot: {e}"));
    }
    drop(done);
    crate::metrics::get().snapshots.inc();
    debug!("snapshot at revision {rev} sent");
    loop {
        tokio::select! {
            f = rx.recv() => match f {
                Ok(f) => {
                    if f.revision > rev {
                        if let Err(e) = send.write_chunk(f.bytes.clone()).await {
                            return End::Protocol(format!("write delta: {e}"));
                        }
                        rev = f.revision;
                        crate::metrics::get().deltas.inc();
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    warn!("session fell {n} deltas behind; sending a fresh snapshot");
                    let (r, snap, new_rx) = ctl.hub.subscribe().await;
                    rx = new_rx;
                    rev = r;
                    if let Err(e) = send.write_chunk(snap).await {
                        return End::Protocol(format!("write snapshot: {e}"));
                    }
                    crate::metrics::get().snapshots.inc();
                }
                Err(RecvError::Closed) => return End::Protocol("controller shutting down".into()),
            },
            m = tokio::time::timeout(SILENCE_LIMIT, reader.read::<AgentMsg>()) => match m {
                Err(_) => return End::Protocol(format!("silent for {SILENCE_LIMIT:?}")),
                Ok(Ok(Some(AgentMsg::Heartbeat {}))) => {}
                Ok(Ok(Some(AgentMsg::Register { .. }))) => {
                    return End::Protocol("out-of-order frame: register on a registered session".into())
                }
                Ok(Ok(None)) => return End::Closed,
                Ok(Err(weft_common::wire::FrameError::Io(e))) => {
                    return match conn_closed_by_peer(&e) {
                        true => End::Closed,
                        false => End::Protocol(format!("connection lost: {e}")),
                    }
                }
                Ok(Err(e)) => return End::Protocol(e.to_string()),
            },
            r = hold.gone.changed() => {
                if r.is_err() || *hold.gone.borrow() {
                    return End::Refused("this host's record is gone (its lease ended or `weftctl host rm` removed it); register again".into());
                }
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
