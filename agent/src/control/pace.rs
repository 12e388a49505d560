//! How fast the agent retries its controllers: exponential backoff with
//! jitter, the slowest pace for a refusal only an operator can lift, and a
//! throttle on repeating the same refusal in the log. Pure (the clock is
//! passed in).

use std::time::Duration;

use ipnetwork::Ipv4Network;
use tokio::time::Instant;
use weft_common::client::ClientError;
use weft_common::cluster::served_subnet_refusal;

pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A refusal repeated with the same reason is logged at error level at
/// most this often; the repeats in between go to debug.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// `d` with ±20 % jitter, so that a fleet that lost its controllers
/// together does not come back in lockstep.
pub fn jitter(d: Duration) -> Duration {
    let f: f64 = 0.8 + rand::random::<f64>() * 0.4;
    d.mul_f64(f)
}

/// The next backoff after `d`.
pub fn next(d: Duration) -> Duration {
    (d * 2).min(MAX_BACKOFF)
}

/// Whether a failed round had a controller refuse the subnet this host
/// serves (`want`) for a reason that lasts until an operator acts: then
/// the retries go at the slowest pace. Other refusals (an etcd leader
/// change, …) may pass at once and are retried as usual.
pub fn waits_for_operator(node: &str, errors: &[ClientError], want: Option<Ipv4Network>) -> bool {
    let Some(w) = want else { return false };
    let about = served_subnet_refusal(node, w);
    errors
        .iter()
        .any(|e| matches!(e, ClientError::Refused(_, why) if why.contains(&about)))
}

/// The last refusal logged at error level, and how many repeats of it
/// were not.
#[derive(Debug, Default)]
pub struct Refusals {
    last: Option<(String, Instant)>,
    repeats: u32,
}

/// How to log a refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Say {
    /// At error level, with how many repeats were not since the last.
    Error(u32),
    /// At debug level: the same refusal was logged less than
    /// [`REFUSAL_LOG_EVERY`] ago.
    Debug,
}

impl Refusals {
    /// An agent refused for a reason only an operator can fix retries for
    /// as long as it runs, and says so once a minute, not on every retry.
    /// `reason` identifies the refusal (the same from every controller).
    pub fn note(&mut self, reason: &str, now: Instant) -> Say {
        if let Some((last, at)) = &self.last {
            if last == reason && now.duration_since(*at) < REFUSAL_LOG_EVERY {
                self.repeats += 1;
                return Say::Debug;
            }
        }
        self.last = Some((reason.to_string(), now));
        Say::Error(std::mem::take(&mut self.repeats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_refusal_is_said_once_a_minute() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(r.note("a", t0), Say::Error(0));
        assert_eq!(r.note("a", t0 + Duration::from_secs(10)), Say::Debug);
        assert_eq!(r.note("a", t0 + Duration::from_secs(20)), Say::Debug);
        assert_eq!(r.note("a", t0 + Duration::from_secs(61)), Say::Error(2));
        // Another reason is said at once.
        assert_eq!(r.note("b", t0 + Duration::from_secs(62)), Say::Error(0));
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        assert_eq!(next(MIN_BACKOFF), Duration::from_millis(400));
        assert_eq!(next(Duration::from_secs(8)), MAX_BACKOFF);
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10));
            assert!(
                j >= Duration::from_secs(8) && j <= Duration::from_secs(12),
                "{j:?}"
            );
        }
    }

    #[test]
    fn only_a_refused_served_subnet_waits_for_an_operator() {
        let s: Ipv4Network = "10.244.2.0/24".parse().unwrap();
        let taken = ClientError::Refused(
            "c1".into(),
            format!(
                "{}, which is now held by host h4",
                served_subnet_refusal("h3", s)
            ),
        );
        let other = ClientError::Refused("c1".into(), "etcd: leader changed".into());
        assert!(waits_for_operator("h3", &[other, taken], Some(s)));
        let other = ClientError::Refused("c1".into(), "etcd: leader changed".into());
        assert!(!waits_for_operator("h3", &[other], Some(s)));
        assert!(!waits_for_operator("h3", &[], None));
    }
}
