//! The agent's side of a controller session, shared by `weft-agent` and the
//! in-process agents of `weft-bench`.

use std::net::SocketAddr;
use std::time::Duration;

use ipnetwork::Ipv4Network;

use crate::cluster::NetworkConfig;
use crate::refusal::RefusalCode;
use crate::tls::TlsFailure;
use crate::wire::{self, AgentMsg, ControllerMsg, FrameError, FrameReader};

/// How long connecting and registering may take before the attempt counts
/// as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("controller address {0:?} is not HOST:PORT or NAME@HOST:PORT")]
    Address(String),
    #[error("resolve {0}: {1}")]
    Resolve(String, String),
    /// The connection could not be made or was lost. `tls` says why when
    /// a TLS handshake was refused (by the controller or by this side).
    #[error("connect to {controller}: {message}")]
    Connect {
        controller: String,
        message: String,
        tls: Option<TlsFailure>,
    },
    #[error("controller {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// The controller refused the registration: its sentence, and its
    /// code when it sent one (controllers from 0.2.0 on, to agents from
    /// 0.2.0 on).
    #[error("controller {controller} refused: {message}")]
    Refused {
        controller: String,
        code: Option<RefusalCode>,
        message: String,
    },
    #[error("controller {0} broke the protocol: {1}")]
    Protocol(String, String),
    #[error("controller {0}: {1}")]
    Frame(String, FrameError),
}

impl ClientError {
    /// A connection that failed with `e` (typed: a refused handshake is
    /// told apart).
    fn connection(controller: &str, e: &quinn::ConnectionError) -> ClientError {
        ClientError::Connect {
            controller: controller.to_string(),
            message: e.to_string(),
            tls: TlsFailure::of(e),
        }
    }

    /// A step on an open connection that failed with `e`: the
    /// connection's close reason, when it has one, says why.
    fn lost(controller: &str, conn: &quinn::Connection, e: impl std::fmt::Display) -> ClientError {
        let closed = conn.close_reason();
        ClientError::Connect {
            controller: controller.to_string(),
            message: e.to_string(),
            tls: closed.as_ref().and_then(TlsFailure::of),
        }
    }
}

/// A registered session.
pub struct Session {
    /// The controller address as configured (HOST:PORT).
    pub controller: String,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: FrameReader<quinn::RecvStream>,
    pub subnet: Ipv4Network,
    pub config: NetworkConfig,
    /// The controller takes endpoint reports (network policy).
    pub policy: bool,
}

/// `HOST:PORT` → (host, port), `None` if it is not of that form.
pub fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && !host.contains(char::is_whitespace)).then_some((host, port))
}

/// A controller address as configured: `HOST:PORT`, or `NAME@HOST:PORT` to
/// dial `HOST:PORT` and verify the controller's certificate for `NAME`
/// (e.g. a Kubernetes Service's cluster IP, which has no certificate of its
/// own, with the Service's name). Returns (the TLS server name, what to
/// dial); `None` if it is not of that form.
pub fn split_controller(addr: &str) -> Option<(&str, &str)> {
    let (name, dial) = match addr.split_once('@') {
        Some((name, dial)) => {
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            (ok.then_some(name)?, dial)
        }
        None => ("", addr),
    };
    let (host, _) = split_host_port(dial)?;
    Some((if name.is_empty() { host } else { name }, dial))
}

/// Splits a controller address ([`split_controller`]) into the TLS server
/// name and the socket addresses it resolves to.
pub async fn resolve(addr: &str) -> Result<(String, Vec<SocketAddr>), ClientError> {
    let (name, dial) =
        split_controller(addr).ok_or_else(|| ClientError::Address(addr.to_string()))?;
    let name = name.to_string();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(dial)
        .await
        .map_err(|e| ClientError::Resolve(addr.to_string(), e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(ClientError::Resolve(
            addr.to_string(),
            "no addresses".to_string(),
        ));
    }
    Ok((name, addrs))
}

impl Session {
    /// Connects to one controller, registers and waits for the assignment.
    pub async fn open(
        endpoint: &quinn::Endpoint,
        controller: &str,
        tls: quinn::ClientConfig,
        register: &AgentMsg,
    ) -> Result<Session, ClientError> {
        let (name, addrs) = resolve(controller).await?;
        let c = controller.to_string();
        let connecting =
            endpoint
                .connect_with(tls, addrs[0], &name)
                .map_err(|e| ClientError::Connect {
                    controller: c.clone(),
                    message: e.to_string(),
                    tls: None,
                })?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| ClientError::Timeout(c.clone(), CONNECT_TIMEOUT))?
            .map_err(|e| ClientError::connection(&c, &e))?;
        let steps = async {
            let (mut send, recv) = conn
                .open_bi()
                .await
                .map_err(|e| ClientError::connection(&c, &e))?;
            wire::write(&mut send, register)
                .await
                .map_err(|e| ClientError::lost(&c, &conn, e))?;
            let mut recv = FrameReader::new(recv, wire::MAX_CONTROLLER_FRAME);
            match recv.read::<ControllerMsg>().await {
                Ok(Some(ControllerMsg::Assigned {
                    subnet,
                    config,
                    policy,
                })) => Ok((send, recv, subnet, config, policy)),
                Ok(Some(ControllerMsg::Error { message, code })) => Err(ClientError::Refused {
                    controller: c.clone(),
                    code,
                    message,
                }),
                Ok(Some(other)) => Err(ClientError::Protocol(
                    c.clone(),
                    format!("expected assigned, got {}", kind(&other)),
                )),
                Ok(None) => Err(ClientError::Protocol(
                    c.clone(),
                    "closed the stream before assigning a subnet".into(),
                )),
                Err(FrameError::Io(e)) => Err(ClientError::lost(&c, &conn, conn_reason(&conn, e))),
                Err(e) => Err(ClientError::Frame(c.clone(), e)),
            }
        };
        let (send, recv, subnet, config, policy) = tokio::time::timeout(REGISTER_TIMEOUT, steps)
            .await
            .map_err(|_| ClientError::Timeout(c.clone(), REGISTER_TIMEOUT))??;
        Ok(Session {
            controller: c,
            conn,
            send,
            recv,
            subnet,
            config,
            policy,
        })
    }

    /// The next message from the controller; `Ok(None)` when it closed.
    pub async fn next(&mut self) -> Result<Option<ControllerMsg>, ClientError> {
        self.recv
            .read::<ControllerMsg>()
            .await
            .map_err(|e| match e {
                FrameError::Io(io) => {
                    ClientError::lost(&self.controller, &self.conn, conn_reason(&self.conn, io))
                }
                e => ClientError::Frame(self.controller.clone(), e),
            })
    }

    pub async fn heartbeat(&mut self) -> Result<(), ClientError> {
        self.send(&AgentMsg::Heartbeat {}).await
    }

    /// Sends one message (a heartbeat, an endpoint report).
    pub async fn send(&mut self, msg: &AgentMsg) -> Result<(), ClientError> {
        wire::write(&mut self.send, msg)
            .await
            .map_err(|e| ClientError::lost(&self.controller, &self.conn, e))
    }
}

/// Why a read failed: the connection's close reason says more than the
/// stream error (e.g. "the peer's certificate was refused").
fn conn_reason(conn: &quinn::Connection, e: std::io::Error) -> String {
    match conn.close_reason() {
        Some(r) => r.to_string(),
        None => e.to_string(),
    }
}

pub fn kind(m: &ControllerMsg) -> &'static str {
    match m {
        ControllerMsg::Assigned { .. } => "assigned",
        ControllerMsg::Snapshot { .. } => "snapshot",
        ControllerMsg::Delta { .. } => "delta",
        ControllerMsg::PolicySnapshot { .. } => "policy_snapshot",
        ControllerMsg::PolicyDelta { .. } => "policy_delta",
        ControllerMsg::Error { .. } => "error",
    }
}

/// A client endpoint on an ephemeral UDP port.
pub fn endpoint() -> std::io::Result<quinn::Endpoint> {
    let socket = udp_socket(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        std::sync::Arc::new(quinn::TokioRuntime),
    )
}

/// Socket buffer size asked for on QUIC sockets: a controller receives the
/// handshakes of a whole fleet at once after an outage, and a burst larger
/// than the default (~200 KiB) is dropped and retried only after a timeout.
pub const UDP_BUFFER: usize = 4 << 20;

/// A UDP socket bound to `addr` with [`UDP_BUFFER`]-sized buffers (forced
/// past `net.core.rmem_max` when the process may, else as large as allowed).
pub fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    udp_socket_sized(addr, UDP_BUFFER)
}

/// A UDP socket bound to `addr` with buffers of `size` bytes (forced if
/// the process may, else as much as the system allows).
pub fn udp_socket_sized(addr: SocketAddr, size: usize) -> std::io::Result<std::net::UdpSocket> {
    use std::os::fd::AsRawFd;
    let socket = std::net::UdpSocket::bind(addr)?;
    let fd = socket.as_raw_fd();
    let size = size.min(libc::c_int::MAX as usize) as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let set = |opt| {
            // SAFETY: fd is a valid socket for the duration of the call and
            // the option value is a c_int of the size passed.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    &size as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(force) != 0 {
            set(plain);
        }
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn controller_addresses_with_and_without_a_name() {
        assert_eq!(
            split_controller("198.18.0.2:7470"),
            Some(("198.18.0.2", "198.18.0.2:7470"))
        );
        assert_eq!(
            split_controller("weft-controller:7470"),
            Some(("weft-controller", "weft-controller:7470"))
        );
        assert_eq!(
            split_controller("weft-controller@10.96.0.20:7470"),
            Some(("weft-controller", "10.96.0.20:7470"))
        );
        assert_eq!(
            split_controller("[2001:db8::1]:7470"),
            Some(("2001:db8::1", "[2001:db8::1]:7470"))
        );
        for bad in [
            "@10.0.0.1:7470",
            "a b@10.0.0.1:7470",
            "n@10.0.0.1",
            "n@:7470",
            "x:0",
        ] {
            assert_eq!(split_controller(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_input_never_panics(s in ".{0,64}") {
            let _ = split_controller(&s);
        }
    }
}
