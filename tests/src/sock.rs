//! In-process TCP/UDP servers and clients whose sockets live in a given
//! network namespace.
//!
//! Each socket is created on a short-lived thread that joined the namespace
//! ([`crate::netns::in_netns`]); a socket stays in the namespace it was
//! created in, so it is then served or used from ordinary threads. Every
//! operation has a time limit of at most 5 s.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::netns::in_netns;

/// Time limit of one client request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(10);

fn one_addr(addr: impl ToSocketAddrs) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))
}

/// A server running on a background thread; stops when dropped.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// The bound address (with the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP server bound to `addr` inside namespace `ns` that writes the peer
/// address it sees (`ip:port\n`) to each client, then closes. Panics if it
/// cannot bind.
pub fn tcp_peer_server(ns: impl AsRef<Path>, addr: impl ToSocketAddrs) -> Server {
    try_tcp_peer_server(ns.as_ref(), addr)
        .unwrap_or_else(|e| panic!("tcp peer server in {}: {e:#}", ns.as_ref().display()))
}

/// Like [`tcp_peer_server`], returning errors.
pub fn try_tcp_peer_server(ns: &Path, addr: impl ToSocketAddrs) -> Result<Server> {
    let addr = one_addr(addr)?;
    let l = in_netns(ns, move || TcpListener::bind(addr))?
        .with_context(|| format!("bind tcp {addr}"))?;
    l.set_nonblocking(true)?;
    let bound = l.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicUsize::new(0));
    let (s2, h2) = (stop.clone(), hits.clone());
    let t = thread::Builder::new()
        .name(format!("tcp-peer-{bound}"))
        .spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, peer)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
                        let _ = c.write_all(format!("{peer}\n").as_bytes());
                        h2.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => thread::sleep(POLL),
                }
            }
        })?;
    Ok(Server {
        addr: bound,
        stop,
        hits,
        thread: Some(t),
    })
}

fn udp_server(ns: &Path, addr: SocketAddr, reply_peer: bool) -> Result<Server> {
    let s =
        in_netns(ns, move || UdpSocket::bind(addr))?.with_context(|| format!("bind udp {addr}"))?;
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    let bound = s.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicUsize::new(0));
    let (s2, h2) = (stop.clone(), hits.clone());
    let t = thread::Builder::new()
        .name(format!("udp-{bound}"))
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s2.load(Ordering::SeqCst) {
                if let Ok((n, peer)) = s.recv_from(&mut buf) {
                    let reply = if reply_peer {
                        format!("{peer}\n").into_bytes()
                    } else {
                        buf[..n].to_vec()
                    };
                    let _ = s.send_to(&reply, peer);
                    h2.fetch_add(1, Ordering::SeqCst);
                }
            }
        })?;
    Ok(Server {
        addr: bound,
        stop,
        hits,
        thread: Some(t),
    })
}

/// A UDP server bound to `addr` inside namespace `ns` that sends every
/// datagram back to its sender. Panics if it cannot bind.
pub fn udp_echo_server(ns: impl AsRef<Path>, addr: impl ToSocketAddrs) -> Server {
    let ns = ns.as_ref();
    one_addr(addr)
        .map_err(anyhow::Error::from)
        .and_then(|a| udp_server(ns, a, false))
        .unwrap_or_else(|e| panic!("udp echo server in {}: {e:#}", ns.display()))
}

/// A UDP server bound to `addr` inside namespace `ns` that answers every
/// datagram with the sender's address as it sees it (`ip:port\n`).
pub fn udp_peer_server(ns: impl AsRef<Path>, addr: impl ToSocketAddrs) -> Server {
    let ns = ns.as_ref();
    one_addr(addr)
        .map_err(anyhow::Error::from)
        .and_then(|a| udp_server(ns, a, true))
        .unwrap_or_else(|e| panic!("udp peer server in {}: {e:#}", ns.display()))
}

/// Connects from inside namespace `ns` to `addr` over TCP and returns
/// everything the server sends until it closes (at most
/// [`REQUEST_TIMEOUT`]). Panics on failure; see [`try_tcp_request`].
pub fn tcp_request(ns: impl AsRef<Path>, addr: impl ToSocketAddrs) -> String {
    let ns = ns.as_ref();
    let addr = one_addr(addr).expect("address");
    try_tcp_request(ns, addr)
        .unwrap_or_else(|e| panic!("tcp request from {} to {addr}: {e:#}", ns.display()))
}

/// Like [`tcp_request`], returning errors (connection refused, timeout, …).
pub fn try_tcp_request(ns: impl AsRef<Path>, addr: impl ToSocketAddrs) -> Result<String> {
    let addr = one_addr(addr)?;
    let ns = ns.as_ref().to_path_buf();
    let start = Instant::now();
    let mut s = in_netns(&ns, move || {
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
    })?
    .with_context(|| format!("connect to {addr}"))?;
    let deadline = start + REQUEST_TIMEOUT;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            anyhow::bail!(
                "no end of answer from {addr} within {REQUEST_TIMEOUT:?} (got {:?})",
                String::from_utf8_lossy(&out)
            );
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("read from {addr}")),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Sends `payload` from inside namespace `ns` to UDP `addr` and returns the
/// first answer (3 tries, at most [`REQUEST_TIMEOUT`] in all). Panics on
/// failure; see [`try_udp_request`].
pub fn udp_request(ns: impl AsRef<Path>, addr: impl ToSocketAddrs, payload: &str) -> String {
    let ns = ns.as_ref();
    let addr = one_addr(addr).expect("address");
    try_udp_request(ns, addr, payload)
        .unwrap_or_else(|e| panic!("udp request from {} to {addr}: {e:#}", ns.display()))
}

/// Like [`udp_request`], returning errors.
pub fn try_udp_request(
    ns: impl AsRef<Path>,
    addr: impl ToSocketAddrs,
    payload: &str,
) -> Result<String> {
    let addr = one_addr(addr)?;
    let any: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = in_netns(ns.as_ref(), move || UdpSocket::bind(any))?.context("bind udp client")?;
    s.connect(addr)?;
    let per_try = REQUEST_TIMEOUT / 3;
    let mut buf = vec![0u8; 65536];
    let mut last = None;
    for _ in 0..3 {
        s.send(payload.as_bytes())
            .with_context(|| format!("send to {addr}"))?;
        s.set_read_timeout(Some(per_try))?;
        match s.recv(&mut buf) {
            Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "no answer from udp {addr} after 3 tries: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}
