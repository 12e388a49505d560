//! One agent session: its registration (checked against its certificate,
//! then the store's), the assignment or a coded refusal, then the stream
//! of peers until the session ends, and why it ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use weft_common::events;
use weft_common::refusal::RefusalCode;
use weft_common::tls;
use weft_common::wire::{self, AgentMsg, ControllerMsg, FrameReader};

use super::pending::Pending;
use super::shared::Controller;
use super::stream;
use crate::store::{Refusal, Registration, StoreError};
use crate::telemetry::metrics::{self, Registration as Outcome};

/// How long a new connection may take to open its stream and register.
pub const REGISTER_WAIT: Duration = Duration::from_secs(10);
/// Application close codes on the QUIC connection.
const CLOSE_OK: u32 = 0;
const CLOSE_PROTOCOL: u32 = 1;
const CLOSE_REFUSED: u32 = 2;

/// Why a session ended.
enum End {
    /// The agent closed its side.
    Closed,
    /// The agent broke the protocol.
    Protocol(String),
    /// We refused it (told it why in an `error` frame).
    Refused(String),
}

/// The `error` frame of a refusal: the sentence, and the code only for an
/// agent that understands codes (its `register` said version 0.2.0 or
/// later): an older agent refuses a frame with a field it does not know.
pub fn error_frame(message: String, code: RefusalCode, agent_version: &str) -> ControllerMsg {
    ControllerMsg::Error {
        message,
        code: wire::understands_codes(agent_version).then_some(code),
    }
}

/// Runs the session of a new connection to its end, and records when the
/// host was last seen.
pub(super) async fn handle(
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
        tokio::spawn(async move { store.touch_last_seen(&n).await });
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

/// Tells the agent why it is refused and ends the session.
async fn refuse(
    send: &mut quinn::SendStream,
    why: String,
    code: RefusalCode,
    agent_version: &str,
) -> End {
    let _ = wire::write(send, &error_frame(why.clone(), code, agent_version)).await;
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
    let mut reader = FrameReader::new(recv, wire::MAX_REGISTER_FRAME);
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
    let refused_early = match weft_common::validate_name(&node) {
        Err(e) => Some(Refusal::InvalidName {
            reason: e.to_string(),
        }),
        // A certificate names one host: a stolen agent certificate cannot
        // claim another host's subnet.
        Ok(()) if cert != node => Some(Refusal::NameMismatch {
            node: node.clone(),
            cert: cert.to_string(),
        }),
        Ok(()) => None,
    };
    if let Some(r) = refused_early {
        metrics::registration(Outcome::Refused);
        return refuse(&mut send, r.to_string(), r.code(), &version).await;
    }
    *node_out = Some(node.clone());
    let reg = Registration {
        node: node.clone(),
        public_ip,
        vtep_mac,
        want: subnet,
    };
    let registered = ctl.store.register(&reg, ctl.lease_ttl).await;
    metrics::registration(match &registered {
        Ok(r) => Outcome::Ok {
            allocated: r.allocated,
        },
        Err(e) if e.is_etcd_failure() => Outcome::Error,
        Err(_) => Outcome::Refused,
    });
    let registered = match registered {
        Ok(r) => r,
        Err(e) => return refuse_registration(&mut send, &node, &e, &version).await,
    };
    let subnet = registered.record.subnet;
    info!(
        event = events::HOST_REGISTERED,
        host = %node,
        subnet = %subnet,
        allocated = registered.allocated,
        "host {node} registered (agent {version}): subnet {subnet}{} public ip {public_ip} vtep {vtep_mac}",
        if registered.allocated { " (new)" } else { "" },
    );
    // Agents before 0.2.0 refuse unknown fields; the others take endpoint
    // reports' answer, the policy stream, when it comes.
    let policy = wire::understands_codes(&version);
    let assigned = ControllerMsg::Assigned {
        subnet,
        config: registered.config.clone(),
        policy,
    };
    if let Err(e) = wire::write(&mut send, &assigned).await {
        return End::Protocol(format!("write assignment: {e}"));
    }
    pending.take();
    reader.set_max(wire::MAX_AGENT_FRAME);
    let _connected = metrics::connected();
    // Connected from now until this session ends (the key is removed when
    // `_present` is dropped).
    let here = match conn.local_ip() {
        Some(ip) => SocketAddr::new(ip, ctl.listen.port()).to_string(),
        None => ctl.listen.to_string(),
    };
    let _present = ctl
        .presence
        .connected(&node, here, conn.remote_address().to_string());
    match stream::run(
        &mut send,
        &mut reader,
        ctl,
        stream::Agent {
            node: &node,
            subnet,
            lease: registered.lease,
            refresh_lease: !registered.allocated,
        },
    )
    .await
    {
        stream::Ended::Closed => End::Closed,
        stream::Ended::Protocol(why) => End::Protocol(why),
        stream::Ended::Gone => {
            let r = Refusal::RecordGone;
            refuse(&mut send, r.to_string(), r.code(), &version).await
        }
    }
}

async fn refuse_registration(
    send: &mut quinn::SendStream,
    node: &str,
    e: &StoreError,
    version: &str,
) -> End {
    refuse(
        send,
        format!("cannot register host {node}: {e}"),
        e.code(),
        version,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code goes only to agents that can decode it: an agent before
    /// 0.2.0 refuses unknown fields.
    #[test]
    fn codes_go_only_to_agents_that_understand_them() {
        let frame = |v: &str| error_frame("no".into(), RefusalCode::SubnetTaken, v);
        for old in ["0.1.0", "", "simulated"] {
            let f = frame(old);
            assert_eq!(
                f,
                ControllerMsg::Error {
                    message: "no".into(),
                    code: None
                },
                "{old:?}"
            );
            assert_eq!(
                String::from_utf8(wire::encode(&f)[4..].to_vec()).unwrap(),
                r#"{"type":"error","message":"no"}"#
            );
        }
        assert_eq!(
            frame(env!("CARGO_PKG_VERSION")),
            ControllerMsg::Error {
                message: "no".into(),
                code: Some(RefusalCode::SubnetTaken)
            }
        );
    }
}
