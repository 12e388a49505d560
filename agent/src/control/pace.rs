//! How fast the agent retries its controllers: exponential backoff with
//! jitter, the slowest pace for a refusal only an operator can lift, and a
//! throttle on repeating the same refusal in the log. Pure (the clock is
//! passed in).

use std::time::Duration;

use ipnetwork::Ipv4Network;
use tokio::time::Instant;
use weft_common::client::ClientError;

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

/// Whether a failed round of a host that serves a subnet (`want`) had a
/// controller refuse it with a code that lasts until an operator acts
/// ([`weft_common::refusal::RefusalCode::persists`]): then the retries go
/// at the slowest pace. Other refusals (an etcd leader change, …) may pass
/// at once and are retried as usual; so are refusals without a code (a
/// controller older than 0.2.0).
pub fn waits_for_operator(errors: &[ClientError], want: Option<Ipv4Network>) -> bool {
    want.is_some()
        && errors
            .iter()
            .any(|e| matches!(e, ClientError::Refused { code: Some(code), .. } if code.persists()))
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
    use weft_common::refusal::RefusalCode;

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

    fn refused(code: Option<RefusalCode>) -> ClientError {
        ClientError::Refused {
            controller: "c1".into(),
            code,
            message: "whatever the sentence says".into(),
        }
    }

    #[test]
    fn only_lasting_refusals_of_a_serving_host_wait_for_an_operator() {
        let s: Ipv4Network = "10.244.2.0/24".parse().unwrap();
        let taken = refused(Some(RefusalCode::SubnetTaken));
        let etcd = refused(Some(RefusalCode::EtcdUnavailable));
        assert!(waits_for_operator(&[etcd, taken], Some(s)));
        let etcd = refused(Some(RefusalCode::EtcdUnavailable));
        assert!(!waits_for_operator(&[etcd], Some(s)));
        // An older controller sends no code: the usual pace.
        assert!(!waits_for_operator(&[refused(None)], Some(s)));
        // A new host (serving nothing) keeps the usual pace too.
        assert!(!waits_for_operator(
            &[refused(Some(RefusalCode::SubnetTaken))],
            None
        ));
    }
}
