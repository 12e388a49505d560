//! The watch of `<prefix>/hosts/`, decoded into peer changes with the same
//! host decoder as the full listing ([`super::records::host_or_skip`]), so
//! a resync never serves a record the watch would have ignored.

use etcd_client::{EventType, WatchStream};
use weft_common::wire::PeerChange;

use super::error::Result;
use super::handle::Store;
use super::keys::{Key, Keys};
use super::records;

/// The watch of the host records, from a revision on.
pub struct HostWatch {
    stream: WatchStream,
    keys: Keys,
}

/// One answer of the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The changes at `revision` (none for a progress notification).
    Changes {
        revision: i64,
        changes: Vec<PeerChange>,
    },
    /// etcd ended the watch (e.g. the revision was compacted): list again.
    Cancelled {
        compact_revision: i64,
        reason: String,
    },
}

/// A host key event, before decoding.
#[derive(Debug, Clone, Copy)]
pub(super) enum Seen<'a> {
    Put { key: &'a str, value: &'a [u8] },
    Delete { key: &'a str },
}

impl Store {
    /// Watches the host records from revision `from` on.
    pub async fn watch_hosts(&self, from: i64) -> Result<HostWatch> {
        Ok(HostWatch {
            stream: self.etcd.watch_prefix(&self.keys.hosts(), from).await?,
            keys: self.keys.clone(),
        })
    }
}

impl HostWatch {
    /// The next answer; `Ok(None)` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>> {
        let Some(resp) = self.stream.message().await? else {
            return Ok(None);
        };
        if resp.canceled() || resp.compact_revision() > 0 {
            return Ok(Some(WatchEvent::Cancelled {
                compact_revision: resp.compact_revision(),
                reason: resp.cancel_reason().to_string(),
            }));
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let events: Vec<(EventType, String, &[u8])> = resp
            .events()
            .iter()
            .filter_map(|ev| {
                let kv = ev.kv()?;
                Some((
                    ev.event_type(),
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value(),
                ))
            })
            .collect();
        let changes = changes(
            &self.keys,
            events.iter().map(|(t, key, value)| match t {
                EventType::Put => Seen::Put { key, value },
                EventType::Delete => Seen::Delete { key },
            }),
        );
        Ok(Some(WatchEvent::Changes { revision, changes }))
    }
}

/// The peer changes of host key events: a put of a record that may be
/// served (see [`records::host_or_skip`]) or a delete.
pub(super) fn changes<'a>(
    keys: &Keys,
    events: impl IntoIterator<Item = Seen<'a>>,
) -> Vec<PeerChange> {
    let mut out = Vec::new();
    for ev in events {
        match ev {
            Seen::Put { key, value } => {
                if let Some(Key::Host(name)) = keys.parse(key) {
                    if let Some(host) = records::host_or_skip(key, name, value) {
                        out.push(PeerChange::Upsert { host });
                    }
                }
            }
            Seen::Delete { key } => {
                if let Some(Key::Host(name)) = keys.parse(key) {
                    out.push(PeerChange::Remove {
                        name: name.to_string(),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::hosts::listing;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use weft_common::cluster::HostRecord;

    fn rec(name: &str, subnet: &str) -> Vec<u8> {
        records::encode(&HostRecord {
            name: name.into(),
            public_ip: "198.18.0.11".parse().unwrap(),
            vtep_mac: "0a:58:00:00:00:01".parse().unwrap(),
            subnet: subnet.parse().unwrap(),
            last_seen: 1,
        })
    }

    /// Log lines written while `f` runs.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let s2 = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || s2.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        (out, text.lines().map(str::to_string).collect())
    }

    /// The full listing and the watch take and skip the same records, with
    /// the same log line: a record whose name differs from its key, or
    /// that fails validation, is served by neither.
    #[test]
    fn listing_and_watch_agree() {
        let keys = Keys::new("/weft");
        let kvs: Vec<(String, Vec<u8>)> = vec![
            (keys.host("h1"), rec("h1", "10.244.1.0/24")),
            // Names another host than its key.
            (keys.host("h2"), rec("h9", "10.244.2.0/24")),
            // Not valid: host bits in the subnet.
            (keys.host("h3"), rec("h3", "10.244.3.1/24")),
            (keys.host("h4"), b"{not json".to_vec()),
            (keys.host("h5"), rec("h5", "10.244.5.0/24")),
        ];
        let (listed, list_log) =
            logged(|| listing(&keys, kvs.iter().map(|(k, v)| (k, v.as_slice()))));
        let (watched, watch_log) = logged(|| {
            changes(
                &keys,
                kvs.iter().map(|(key, value)| Seen::Put { key, value }),
            )
        });
        assert_eq!(listed.keys().collect::<Vec<_>>(), ["h1", "h5"]);
        let upserted: Vec<&str> = watched
            .iter()
            .map(|c| match c {
                PeerChange::Upsert { host } => host.name.as_str(),
                PeerChange::Remove { name } => panic!("remove of {name}"),
            })
            .collect();
        assert_eq!(upserted, ["h1", "h5"]);
        for (c, (_, rec)) in watched.iter().zip(&listed) {
            assert_eq!(c, &PeerChange::Upsert { host: rec.clone() });
        }
        assert_eq!(list_log.len(), 3, "{list_log:?}");
        assert_eq!(list_log, watch_log);
        assert!(list_log[0].contains("skipping host record: etcd key /weft/hosts/h2 holds a value weft cannot read: it names host \"h9\""), "{list_log:?}");
        assert!(
            list_log[1].contains("/weft/hosts/h3") && list_log[1].contains("host bits"),
            "{list_log:?}"
        );
        // Deletes need no value; keys of other kinds are not hosts.
        let gone = changes(
            &keys,
            [
                Seen::Delete {
                    key: "/weft/hosts/h2",
                },
                Seen::Delete {
                    key: "/weft/agents/h2",
                },
            ],
        );
        assert_eq!(gone, vec![PeerChange::Remove { name: "h2".into() }]);
    }
}
