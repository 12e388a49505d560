//! Reachability of peers for `weftctl status`: one ICMP echo to each peer's
//! gateway (the first address of its subnet, on its `weft0`), all at once
//! over one raw ICMP socket in the host namespace, so the request takes
//! the route a namespace's packets take (through the tunnel, or the direct
//! route). Replies are matched by identifier and sequence number; whatever
//! has not answered when the timeout ends is unreachable.
//!
//! Blocking (a plain socket with a receive timeout): call it from
//! `spawn_blocking`. Each probe run has its own socket and a random
//! identifier, so concurrent status requests do not see each other's
//! replies as their own.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO: u8 = 8;
/// Bytes after the 8-byte ICMP header.
const PAYLOAD: &[u8] = b"weft status probe";

/// The result for one target: the round trip, or `None` (no reply in time).
pub type Rtt = Option<Duration>;

/// Sends one echo request to each of `targets` and waits up to `timeout`
/// for the replies. The result is in the order of `targets`. Fails only if
/// the socket cannot be opened or read (e.g. without CAP_NET_RAW); a target
/// whose request cannot be sent before the timeout counts as no reply.
///
/// With thousands of peers the requests outrun the socket's buffers: a
/// send that would block waits for room, and replies are read between
/// sends, so that neither a full send buffer nor a full receive buffer
/// turns a reachable peer into an unreachable one.
pub fn probe(targets: &[Ipv4Addr], timeout: Duration) -> io::Result<Vec<Rtt>> {
    let mut run = Run {
        targets,
        id: rand::random(),
        sent: vec![None; targets.len()],
        out: vec![None; targets.len()],
        waiting: 0,
    };
    if targets.is_empty() {
        return Ok(run.out);
    }
    let sock = open()?;
    let deadline = Instant::now() + timeout;
    for (i, ip) in targets.iter().enumerate() {
        // Sequence numbers are 16 bits: beyond that many peers, the rest
        // is reported unreachable rather than mismatched.
        let Ok(seq) = u16::try_from(i) else { break };
        if ip.is_unspecified() {
            continue; // no address to probe (would reach this host itself)
        }
        let pkt = echo_request(run.id, seq, PAYLOAD);
        loop {
            match send_to(&sock, &pkt, *ip) {
                Ok(()) => {
                    run.sent[i] = Some(Instant::now());
                    run.waiting += 1;
                    break;
                }
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS))
                        && Instant::now() < deadline =>
                {
                    run.drain(&sock, None)?;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(_) => break,
            }
        }
        if i % 64 == 63 {
            run.drain(&sock, None)?;
        }
    }
    run.drain(&sock, Some(deadline))?;
    Ok(run.out)
}

/// One probe run's bookkeeping.
struct Run<'a> {
    targets: &'a [Ipv4Addr],
    id: u16,
    sent: Vec<Option<Instant>>,
    out: Vec<Rtt>,
    /// Requests sent and not answered yet.
    waiting: usize,
}

impl Run<'_> {
    /// Reads replies: without `until`, those already there; with it, until
    /// every request is answered or the time is up.
    fn drain(&mut self, sock: &Socket, until: Option<Instant>) -> io::Result<()> {
        let mut buf = [0u8; 1500];
        sock.set_nonblocking(until.is_none())?;
        while self.waiting > 0 {
            if let Some(t) = until {
                let now = Instant::now();
                if now >= t {
                    break;
                }
                sock.set_read_timeout(Some((t - now).max(Duration::from_millis(1))))?;
            }
            let n = match (&*sock).read(&mut buf) {
                Ok(r) => r,
                Err(e) if until.is_none() && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            let pkt = &buf[..n];
            if let Some(from) = source(pkt) {
                self.record(pkt, from);
            }
        }
        Ok(())
    }

    fn record(&mut self, pkt: &[u8], from: Ipv4Addr) {
        let Some((rid, seq)) = parse_echo_reply(pkt) else {
            return;
        };
        let i = seq as usize;
        if rid != self.id || i >= self.targets.len() || self.targets[i] != from {
            return;
        }
        if let (Some(t), None) = (self.sent[i], self.out[i]) {
            self.out[i] = Some(t.elapsed());
            self.waiting -= 1;
        }
    }
}

fn open() -> io::Result<Socket> {
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("open a raw ICMP socket for the peer probe (needs CAP_NET_RAW): {e}"),
        )
    })?;
    // An optimisation only: without it the replies are picked out anyway.
    let _ = only_echo_replies(&sock);
    // Room for the replies of a few thousand peers arriving together (a
    // reply costs about a kilobyte of buffer). FORCE works for root beyond
    // net.core.rmem_max; failing that the default buffer stays, and the
    // sender reads replies between sends anyway.
    if setsockopt(&sock, sockopt::RcvBufForce, &(4 << 20)).is_err() {
        let _ = sock.set_recv_buffer_size(4 << 20);
    }
    // Sends never block: a full send buffer is drained of replies first.
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// Lets only echo replies reach the socket, so a busy host's other ICMP
/// (and, on loopback, our own requests) is not read in vain. Neither
/// socket2 nor nix offers `ICMP_FILTER` (a bit mask of the types to drop).
fn only_echo_replies(sock: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const ICMP_FILTER: libc::c_int = 1;
    let drop_types: u32 = !(1u32 << ICMP_ECHO_REPLY);
    // SAFETY: the socket is open for the call's duration and the option
    // value is a u32 of the given size, which the kernel only reads.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_RAW,
            ICMP_FILTER,
            (&drop_types as *const u32).cast(),
            size_of::<u32>() as libc::socklen_t,
        )
    };
    match r {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn send_to(sock: &Socket, pkt: &[u8], ip: Ipv4Addr) -> io::Result<()> {
    let to = SockAddr::from(SocketAddrV4::new(ip, 0));
    sock.send_to(pkt, &to).map(drop)
}

/// The sender of an IPv4 packet (a raw socket returns the IP header).
fn source(pkt: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 4] = pkt.get(12..16)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let word = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + payload.len());
    p.extend_from_slice(&[ICMP_ECHO, 0, 0, 0]);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// Identifier and sequence number of an echo reply, given the IPv4 packet
/// a raw socket returns (IP header included).
fn parse_echo_reply(pkt: &[u8]) -> Option<(u16, u16)> {
    let ihl = usize::from(*pkt.first()? & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let icmp = pkt.get(ihl..)?;
    if icmp.len() < 8 || icmp[0] != ICMP_ECHO_REPLY || icmp[1] != 0 {
        return None;
    }
    Some((
        u16::from_be_bytes([icmp[4], icmp[5]]),
        u16::from_be_bytes([icmp[6], icmp[7]]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_checksums_to_zero_and_reply_parses() {
        let p = echo_request(0x1234, 7, PAYLOAD);
        assert_eq!(p[0], ICMP_ECHO);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        // The reply is the request with type 0, behind a 20-byte IP header.
        let mut reply = vec![0x45u8];
        reply.extend_from_slice(&[0; 19]);
        reply.extend_from_slice(&p);
        reply[20] = ICMP_ECHO_REPLY;
        assert_eq!(parse_echo_reply(&reply), Some((0x1234, 7)));
        // An echo request (own traffic on loopback) or a runt is no reply.
        reply[20] = ICMP_ECHO;
        assert_eq!(parse_echo_reply(&reply), None);
        assert_eq!(parse_echo_reply(&[0x45, 0, 0]), None);
        assert_eq!(parse_echo_reply(&[]), None);
        assert_eq!(parse_echo_reply(&[0x41; 40]), None, "IHL below 5");
    }

    #[test]
    fn odd_length_checksum() {
        // RFC 1071 example bytes, padded with a zero octet.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2]), !0xf201u16);
    }
}
