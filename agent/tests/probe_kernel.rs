//! The peer probe of `weftctl status` against the kernel: a raw ICMP
//! socket (needs root, CAP_NET_RAW), on loopback of the namespace the test
//! runs in. Without root these fail, not skip.

use std::net::Ipv4Addr;
use std::time::Duration;

use weft_agent::probe::probe;

fn root_required(e: std::io::Error) -> ! {
    panic!("the probe needs a raw ICMP socket (run the tests as root): {e}")
}

#[test]
fn loopback_answers() {
    let t = [Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST];
    let r = probe(&t, Duration::from_millis(500)).unwrap_or_else(|e| root_required(e));
    assert_eq!(r.len(), 2);
    assert!(r[0].is_some() && r[1].is_some(), "{r:?}");
}

/// Thousands of peers at once: none is lost to a full send or receive
/// buffer (every 127.x address answers on loopback).
#[test]
fn thousands_of_targets_all_answer() {
    let t: Vec<Ipv4Addr> = (0..4000u32)
        .map(|i| Ipv4Addr::new(127, 1 + (i / 250) as u8, 0, 1 + (i % 250) as u8))
        .collect();
    let r = probe(&t, Duration::from_secs(3)).unwrap_or_else(|e| root_required(e));
    let lost: Vec<_> = t.iter().zip(&r).filter(|(_, r)| r.is_none()).collect();
    assert!(
        lost.is_empty(),
        "{} of {} unanswered, e.g. {:?}",
        lost.len(),
        t.len(),
        &lost[..lost.len().min(3)]
    );
}
