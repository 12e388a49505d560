//! The network policy as the controller streams it: every policy and the
//! resolved address sets their rules name, from a `policy_snapshot` and the
//! `policy_delta`s after it (pure). Kept while no controller is reachable,
//! and saved, so that a restarted agent enforces what it last had (fail
//! static: never open).

use std::collections::BTreeMap;

use weft_common::policy::sets::{self, Sets};
use weft_common::policy::Policy;
use weft_common::wire::ControllerMsg;

use crate::state::PolicyState;

#[derive(Debug, Default)]
pub struct PolicyBook {
    pub revision: i64,
    pub policies: BTreeMap<String, Policy>,
    pub sets: Sets,
    /// Whether the book came from the controller of the current session
    /// (not only from the saved state or an earlier session).
    pub current: bool,
}

/// What a message changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyApplied {
    /// Older than the book (a delta from before the last snapshot).
    Stale,
    Snapshot,
    Delta {
        policies: usize,
        set_changes: usize,
    },
}

impl PolicyBook {
    pub fn new(saved: Option<PolicyState>) -> PolicyBook {
        let s = saved.unwrap_or_default();
        PolicyBook {
            revision: s.revision,
            policies: s
                .policies
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
            sets: s.sets,
            current: false,
        }
    }

    /// Takes a policy message; `Err` for any other message.
    pub fn apply(&mut self, msg: ControllerMsg) -> Result<PolicyApplied, String> {
        match msg {
            ControllerMsg::PolicySnapshot {
                revision,
                policies,
                sets,
            } => {
                self.policies = policies.into_iter().map(|p| (p.name.clone(), p)).collect();
                self.sets = sets;
                self.revision = revision;
                self.current = true;
                Ok(PolicyApplied::Snapshot)
            }
            ControllerMsg::PolicyDelta {
                revision,
                upsert,
                remove,
                sets: changes,
            } => {
                if !self.current || revision <= self.revision {
                    // Before this session's snapshot, or older than the
                    // book: the snapshot holds it.
                    return Ok(PolicyApplied::Stale);
                }
                let policies = upsert.len() + remove.len();
                for name in remove {
                    self.policies.remove(&name);
                }
                for p in upsert {
                    self.policies.insert(p.name.clone(), p);
                }
                sets::apply(&mut self.sets, &changes);
                self.revision = revision;
                Ok(PolicyApplied::Delta {
                    policies,
                    set_changes: changes.len(),
                })
            }
            other => Err(format!(
                "not a policy message: {}",
                weft_common::client::kind(&other)
            )),
        }
    }

    /// The session ended: what the book holds is kept, but no longer
    /// current.
    pub fn session_ended(&mut self) {
        self.current = false;
    }

    pub fn saved(&self) -> PolicyState {
        PolicyState {
            revision: self.revision,
            policies: self.policies.values().cloned().collect(),
            sets: self.sets.clone(),
        }
    }

    /// How many addresses the sets hold together.
    pub fn addresses(&self) -> usize {
        self.sets.values().map(|s| s.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;
    use weft_common::policy::sets::SetChange;

    fn policy(name: &str) -> Policy {
        weft_common::policy::parse(&format!(r#"{{"name": "{name}", "selector": {{}}}}"#))
            .unwrap()
            .remove(0)
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 1, last)
    }

    #[test]
    fn snapshot_then_deltas_and_kept_across_sessions() {
        let mut b = PolicyBook::new(None);
        let early = ControllerMsg::PolicyDelta {
            revision: 9,
            upsert: vec![policy("x")],
            remove: vec![],
            sets: vec![],
        };
        assert_eq!(b.apply(early.clone()), Ok(PolicyApplied::Stale));
        let snap = ControllerMsg::PolicySnapshot {
            revision: 10,
            policies: vec![policy("a"), policy("b")],
            sets: Sets::from([("a/ingress/0/0".to_string(), BTreeSet::from([ip(2)]))]),
        };
        assert_eq!(b.apply(snap), Ok(PolicyApplied::Snapshot));
        assert!(b.current);
        assert_eq!(
            b.apply(early),
            Ok(PolicyApplied::Stale),
            "older than the snapshot"
        );
        let d = ControllerMsg::PolicyDelta {
            revision: 11,
            upsert: vec![policy("c")],
            remove: vec!["a".into()],
            sets: vec![SetChange {
                id: "a/ingress/0/0".into(),
                add: vec![ip(3)],
                remove: vec![ip(2)],
            }],
        };
        assert_eq!(
            b.apply(d),
            Ok(PolicyApplied::Delta {
                policies: 2,
                set_changes: 1
            })
        );
        assert_eq!(b.policies.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(b.sets["a/ingress/0/0"], BTreeSet::from([ip(3)]));
        assert_eq!(b.addresses(), 1);

        // Saved and loaded again: the same book, not current until the
        // next snapshot, which replaces it whole.
        b.session_ended();
        let mut again = PolicyBook::new(Some(b.saved()));
        assert_eq!(again.saved(), b.saved());
        assert!(!again.current);
        let empty = ControllerMsg::PolicySnapshot {
            revision: 12,
            policies: vec![],
            sets: Sets::new(),
        };
        again.apply(empty).unwrap();
        assert!(again.policies.is_empty() && again.sets.is_empty());
        assert!(again
            .apply(ControllerMsg::Error {
                message: "x".into(),
                code: None
            })
            .is_err());
    }
}
