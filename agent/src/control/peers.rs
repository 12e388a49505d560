//! The peer set as the controller describes it: a snapshot, then deltas
//! with higher revisions. Pure: the session feeds it messages, it says what
//! changed.

use std::collections::BTreeMap;

use weft_common::cluster::HostRecord;
use weft_common::wire::{ControllerMsg, PeerChange};

use crate::state::PeersState;

/// What a message did to the peer set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Replaced by a snapshot: peers before and after.
    Snapshot { before: usize, after: usize },
    /// Changed by a delta: peers joined or changed, peers left.
    Delta {
        upserted: Vec<String>,
        removed: Vec<String>,
    },
    /// A delta not newer than what is held: ignored.
    Stale,
}

/// This host's view of its peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerBook {
    node: String,
    pub revision: i64,
    pub peers: BTreeMap<String, HostRecord>,
}

impl PeerBook {
    /// `node`'s book, starting from what was saved.
    pub fn new(node: &str, saved: Option<PeersState>) -> PeerBook {
        let mut b = PeerBook {
            node: node.to_string(),
            ..Default::default()
        };
        if let Some(p) = saved {
            b.revision = p.revision;
            b.peers = b.others(p.peers);
        }
        b
    }

    fn others(&self, hosts: Vec<HostRecord>) -> BTreeMap<String, HostRecord> {
        hosts
            .into_iter()
            .filter(|h| h.name != self.node)
            .map(|h| (h.name.clone(), h))
            .collect()
    }

    /// Takes a message from the controller; `Err` with the reason for a
    /// message that ends the session.
    pub fn apply(&mut self, msg: ControllerMsg) -> Result<Applied, String> {
        match msg {
            ControllerMsg::Snapshot { revision, peers } => {
                let before = self.peers.len();
                self.peers = self.others(peers);
                self.revision = revision;
                Ok(Applied::Snapshot {
                    before,
                    after: self.peers.len(),
                })
            }
            ControllerMsg::Delta { revision, changes } => {
                if revision <= self.revision {
                    return Ok(Applied::Stale);
                }
                let (mut upserted, mut removed) = (Vec::new(), Vec::new());
                for c in changes {
                    match c {
                        PeerChange::Upsert { host } if host.name != self.node => {
                            upserted.push(host.name.clone());
                            self.peers.insert(host.name.clone(), host);
                        }
                        PeerChange::Upsert { .. } => {}
                        PeerChange::Remove { name } => {
                            if self.peers.remove(&name).is_some() {
                                removed.push(name);
                            }
                        }
                    }
                }
                self.revision = revision;
                Ok(Applied::Delta { upserted, removed })
            }
            ControllerMsg::Error { message, .. } => Err(format!("controller error: {message}")),
            ControllerMsg::Assigned { .. } => Err("out-of-order frame: a second assignment".into()),
            m @ (ControllerMsg::PolicySnapshot { .. } | ControllerMsg::PolicyDelta { .. }) => Err(
                format!("{} is not a peer message", weft_common::client::kind(&m)),
            ),
        }
    }

    /// What is saved to `peers.json`.
    pub fn saved(&self) -> PeersState {
        PeersState {
            revision: self.revision,
            peers: self.peers.values().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_common::MacAddr;

    fn host(n: u8) -> HostRecord {
        HostRecord {
            name: format!("h{n}"),
            public_ip: std::net::Ipv4Addr::new(198, 18, 0, 10 + n),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, n]),
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            last_seen: 0,
        }
    }

    #[test]
    fn snapshot_then_newer_deltas_and_never_itself() {
        let mut b = PeerBook::new("h1", None);
        let snap = ControllerMsg::Snapshot {
            revision: 10,
            peers: vec![host(1), host(2), host(3)],
        };
        assert_eq!(
            b.apply(snap),
            Ok(Applied::Snapshot {
                before: 0,
                after: 2
            })
        );
        assert!(!b.peers.contains_key("h1"), "a host is not its own peer");
        let old = ControllerMsg::Delta {
            revision: 10,
            changes: vec![PeerChange::Remove { name: "h2".into() }],
        };
        assert_eq!(b.apply(old), Ok(Applied::Stale));
        assert!(b.peers.contains_key("h2"));
        let d = ControllerMsg::Delta {
            revision: 11,
            changes: vec![
                PeerChange::Remove { name: "h2".into() },
                PeerChange::Upsert { host: host(4) },
                PeerChange::Upsert { host: host(1) },
                PeerChange::Remove { name: "h9".into() },
            ],
        };
        assert_eq!(
            b.apply(d),
            Ok(Applied::Delta {
                upserted: vec!["h4".into()],
                removed: vec!["h2".into()]
            })
        );
        assert_eq!(b.peers.keys().collect::<Vec<_>>(), ["h3", "h4"]);
        assert_eq!(b.saved().revision, 11);
        // Saved state comes back the same.
        assert_eq!(PeerBook::new("h1", Some(b.saved())), b);
    }

    #[test]
    fn errors_and_a_second_assignment_end_the_session() {
        let mut b = PeerBook::new("h1", None);
        let e = b
            .apply(ControllerMsg::Error {
                message: "no".into(),
                code: None,
            })
            .unwrap_err();
        assert_eq!(e, "controller error: no");
        let a = ControllerMsg::Assigned {
            subnet: "10.244.1.0/24".parse().unwrap(),
            config: weft_common::cluster::NetworkConfig::new("10.244.0.0/16".parse().unwrap()),
            policy: true,
        };
        assert!(b.apply(a).unwrap_err().contains("second assignment"));
    }
}
