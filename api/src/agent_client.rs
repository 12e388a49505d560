//! The client of the agent's local API (`<run-dir>/agent.sock`, see
//! [`crate::api`]): one connection, one JSON request per line, one JSON
//! answer per line. Used by `weftctl`, the test bed and the benchmarks, so
//! that there is one implementation of the protocol's client side.
//!
//! Blocking (a std `UnixStream`): every caller is a command-line program or
//! a test thread. A connection is opened on the first call and reused for
//! the next ones; a broken connection is dropped and the error returned
//! (the next call connects again).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::api::{Endpoint, ErrorCode, Request, Response, Status};
use crate::PortMapping;

/// The default path of the agent's socket.
pub const DEFAULT_SOCKET: &str = "/run/weft/agent.sock";

/// How long one call may wait for its answer by default: `ns add` and
/// `ns del` touch the kernel and nftables, a status probe takes up to a
/// second.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest answer read: answers grow with the number of namespaces, so the
/// bound is far above any real listing; only a runaway peer reaches it.
pub const MAX_REPLY: u64 = 64 << 20;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing listens on the socket (or it does not exist).
    #[error("cannot reach weft-agent at {}: {source} (is weft-agent running? --agent-socket sets the path)", path.display())]
    Unreachable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The socket is mode 0600 root.
    #[error("permission denied on {}: weftctl must run as root (the agent socket is 0600 root)", path.display())]
    PermissionDenied { path: PathBuf },
    /// The connection broke while sending or reading (including a timeout).
    #[error("{what} weft-agent at {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("weft-agent at {} closed the connection without answering", path.display())]
    Closed { path: PathBuf },
    /// The answer is not the protocol's (or not the shape the request expects).
    #[error("unreadable reply from weft-agent at {}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    /// The agent answered with an error: its sentence, as it gave it, and
    /// its code when it has one.
    #[error("{0}")]
    Agent(String, Option<ErrorCode>),
}

impl CallError {
    /// The code of the agent's error, when it gave one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Agent(_, code) => *code,
            _ => None,
        }
    }

    /// The agent's own refusal (as opposed to not reaching it).
    pub fn agent_message(&self) -> Option<&str> {
        match self {
            CallError::Agent(m, _) => Some(m),
            _ => None,
        }
    }
}

struct Conn {
    rd: BufReader<UnixStream>,
    wr: UnixStream,
}

/// A client of one agent's socket.
pub struct AgentClient {
    path: PathBuf,
    timeout: Duration,
    conn: Option<Conn>,
}

impl AgentClient {
    /// A client of the socket at `path`; nothing is connected yet.
    pub fn new(path: impl Into<PathBuf>) -> AgentClient {
        AgentClient {
            path: path.into(),
            timeout: DEFAULT_TIMEOUT,
            conn: None,
        }
    }

    /// Bounds each send and each wait for an answer.
    pub fn with_timeout(mut self, timeout: Duration) -> AgentClient {
        self.timeout = timeout;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `req` and returns the agent's `ok` value undecoded (what
    /// `weftctl -o json` prints as it came).
    pub fn call(&mut self, req: &Request) -> Result<serde_json::Value, CallError> {
        let r = self.exchange(req);
        if matches!(r, Err(ref e) if !matches!(e, CallError::Agent(..))) {
            self.conn = None;
        }
        r
    }

    /// Sends `req` and decodes the `ok` value as `T`.
    pub fn call_as<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T, CallError> {
        let v = self.call(req)?;
        self.decode(v)
    }

    /// Decodes an `ok` value returned by [`AgentClient::call`].
    pub fn decode<T: DeserializeOwned>(&self, v: serde_json::Value) -> Result<T, CallError> {
        serde_json::from_value(v).map_err(|e| CallError::Unreadable {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    pub fn ns_add(
        &mut self,
        name: &str,
        ip: Option<Ipv4Addr>,
        publish: Vec<PortMapping>,
    ) -> Result<Endpoint, CallError> {
        self.call_as(&Request::NsAdd {
            name: name.to_string(),
            ip,
            publish,
            labels: Default::default(),
        })
    }

    pub fn ns_del(&mut self, name: &str) -> Result<Endpoint, CallError> {
        self.call_as(&Request::NsDel {
            name: name.to_string(),
        })
    }

    pub fn ns_list(&mut self) -> Result<Vec<Endpoint>, CallError> {
        self.call_as(&Request::NsList)
    }

    pub fn ns_show(&mut self, name: &str) -> Result<Endpoint, CallError> {
        self.call_as(&Request::NsShow {
            name: name.to_string(),
        })
    }

    /// `probe`: also ping every peer's gateway (up to a second).
    pub fn status(&mut self, probe: bool) -> Result<Status, CallError> {
        self.call_as(&Request::Status { probe })
    }

    fn connect(&self) -> Result<Conn, CallError> {
        let s = UnixStream::connect(&self.path).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => CallError::PermissionDenied {
                path: self.path.clone(),
            },
            _ => CallError::Unreachable {
                path: self.path.clone(),
                source: e,
            },
        })?;
        let io = |source| CallError::Io {
            what: "set up the connection to",
            path: self.path.clone(),
            source,
        };
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let rd = s.try_clone().map_err(io)?;
        Ok(Conn {
            rd: BufReader::new(rd),
            wr: s,
        })
    }

    fn exchange(&mut self, req: &Request) -> Result<serde_json::Value, CallError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let path = self.path.clone();
        let conn = self.conn.as_mut().expect("connected above");
        let mut line = serde_json::to_vec(req).expect("requests serialize");
        line.push(b'\n');
        conn.wr.write_all(&line).map_err(|source| CallError::Io {
            what: "send request to",
            path: path.clone(),
            source,
        })?;
        let mut reply = Vec::new();
        (&mut conn.rd)
            .take(MAX_REPLY)
            .read_until(b'\n', &mut reply)
            .map_err(|source| CallError::Io {
                what: "read reply from",
                path: path.clone(),
                source,
            })?;
        if reply.is_empty() {
            return Err(CallError::Closed { path });
        }
        match serde_json::from_slice::<Response>(&reply) {
            Ok(Response {
                error: Some(e),
                code,
                ..
            }) => Err(CallError::Agent(e, code)),
            Ok(Response { ok, .. }) => Ok(ok.unwrap_or(serde_json::Value::Null)),
            Err(e) => Err(CallError::Unreadable {
                path,
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn tmp_socket(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "weft-agent-client-{}-{tag}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// A one-connection server that answers each request line with the
    /// next of `answers`.
    fn serve(path: &Path, answers: Vec<&'static str>) -> std::thread::JoinHandle<Vec<String>> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut rd = BufReader::new(s.try_clone().unwrap());
            let mut wr = s;
            let mut got = Vec::new();
            for a in answers {
                let mut line = String::new();
                if rd.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                got.push(line.trim_end().to_string());
                wr.write_all(a.as_bytes()).unwrap();
            }
            got
        })
    }

    #[test]
    fn one_connection_carries_several_calls_and_errors_are_typed() {
        let p = tmp_socket("calls");
        let server = serve(
            &p,
            vec![
                "{\"ok\":[]}\n",
                "{\"error\":\"namespace \\\"x\\\" does not exist\"}\n",
                "{\"ok\":{\"name\":\"a\"}}\n",
            ],
        );
        let mut c = AgentClient::new(&p).with_timeout(Duration::from_secs(5));
        assert_eq!(c.ns_list().unwrap(), vec![]);
        let e = c.ns_del("x").unwrap_err();
        assert_eq!(e.agent_message(), Some("namespace \"x\" does not exist"));
        // An answer of the wrong shape is unreadable, not a panic.
        let e = c.ns_show("a").unwrap_err();
        assert!(matches!(e, CallError::Unreadable { .. }), "{e}");
        let got = server.join().unwrap();
        assert_eq!(
            got,
            [
                "{\"op\":\"ns_list\"}",
                "{\"op\":\"ns_del\",\"name\":\"x\"}",
                "{\"op\":\"ns_show\",\"name\":\"a\"}"
            ]
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn no_agent_and_silent_agent_name_the_socket() {
        let p = tmp_socket("none");
        let e = AgentClient::new(&p).ns_list().unwrap_err();
        assert!(matches!(e, CallError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        let server = serve(&p, vec![""]);
        let e = AgentClient::new(&p).status(false).unwrap_err();
        assert!(matches!(e, CallError::Closed { .. }), "{e}");
        server.join().unwrap();
        std::fs::remove_file(&p).unwrap();
    }
}
