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

use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

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
    fn drain(&mut self, sock: &OwnedFd, until: Option<Instant>) -> io::Result<()> {
        let mut buf = [0u8; 1500];
        while self.waiting > 0 {
            let flags = match until {
                None => libc::MSG_DONTWAIT,
                Some(t) => {
                    let now = Instant::now();
                    if now >= t {
                        break;
                    }
                    set_recv_timeout(sock, t - now)?;
                    0
                }
            };
            let (n, from) = match recv_from(sock, &mut buf, flags) {
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
            self.record(&buf[..n], from);
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

fn open() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("open a raw ICMP socket for the peer probe (needs CAP_NET_RAW): {e}"),
        ));
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // Only echo replies reach the socket (ICMP_FILTER is a bit mask of the
    // types to drop); a busy host's other ICMP is not read in vain.
    let filter: u32 = !(1u32 << ICMP_ECHO_REPLY);
    // SAFETY: the option value is a u32 of the given size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_RAW,
            1, // ICMP_FILTER
            &filter as *const u32 as *const libc::c_void,
            size_of::<u32>() as libc::socklen_t,
        );
    }
    // Room for the replies of a few thousand peers arriving together (a
    // reply costs about a kilobyte of buffer). FORCE works for root beyond
    // net.core.rmem_max; failing that the default buffer stays, and the
    // sender reads replies between sends anyway.
    let rcvbuf: libc::c_int = 4 << 20;
    // SAFETY: the option value is a c_int of the given size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &rcvbuf as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(sock)
}

fn set_recv_timeout(sock: &OwnedFd, d: Duration) -> io::Result<()> {
    let d = d.max(Duration::from_millis(1));
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: the option value is a timeval of the given size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr = libc::in_addr {
        s_addr: u32::from(ip).to_be(),
    };
    sa
}

fn send_to(sock: &OwnedFd, pkt: &[u8], ip: Ipv4Addr) -> io::Result<()> {
    let sa = sockaddr(ip);
    // SAFETY: pkt and sa are valid for the given lengths.
    let r = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            pkt.as_ptr() as *const libc::c_void,
            pkt.len(),
            libc::MSG_DONTWAIT,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recv_from(sock: &OwnedFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<(usize, Ipv4Addr)> {
    // SAFETY: zeroed sockaddr_in is valid; buf and sa are valid for writes
    // of the given lengths.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let n = unsafe {
        libc::recvfrom(
            sock.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            flags,
            &mut sa as *mut libc::sockaddr_in as *mut libc::sockaddr,
            &mut len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))))
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

    /// Needs CAP_NET_RAW; loopback of whatever namespace the test runs in.
    #[test]
    fn loopback_answers_unless_unprivileged() {
        let t = [Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST];
        match probe(&t, Duration::from_millis(500)) {
            Ok(r) => {
                assert_eq!(r.len(), 2);
                assert!(r[0].is_some() && r[1].is_some(), "{r:?}");
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI runs as root: the raw socket must open ({e})"
                );
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Thousands of peers at once: none is lost to a full send or receive
    /// buffer (every 127.x address answers on loopback).
    #[test]
    fn thousands_of_targets_all_answer() {
        let t: Vec<Ipv4Addr> = (0..4000u32)
            .map(|i| Ipv4Addr::new(127, 1 + (i / 250) as u8, 0, 1 + (i % 250) as u8))
            .collect();
        match probe(&t, Duration::from_secs(3)) {
            Ok(r) => {
                let lost: Vec<_> = t.iter().zip(&r).filter(|(_, r)| r.is_none()).collect();
                assert!(
                    lost.is_empty(),
                    "{} of {} unanswered, e.g. {:?}",
                    lost.len(),
                    t.len(),
                    &lost[..lost.len().min(3)]
                );
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI runs as root: the raw socket must open ({e})"
                );
            }
            Err(e) => panic!("{e}"),
        }
    }
}
