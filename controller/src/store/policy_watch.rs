//! The watch of what network policy is made of: the policies
//! (`<prefix>/policies/`) and the endpoints agents reported
//! (`<prefix>/endpoints/`). One watch of the whole prefix; other keys are
//! passed over.

use etcd_client::{EventType, WatchStream};
use tracing::warn;
use weft_common::cluster::EndpointEntry;
use weft_common::policy::Policy;

use super::error::Result;
use super::handle::Store;
use super::keys::{Key, Keys};

/// One changed input: the new value, `None` when deleted (or unreadable:
/// then it counts as gone, with a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyInput {
    Policy(String, Option<Policy>),
    Endpoints(String, Option<Vec<EndpointEntry>>),
}

/// One answer of the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyWatchEvent {
    Changes {
        revision: i64,
        inputs: Vec<PolicyInput>,
    },
    /// etcd ended the watch (e.g. the revision was compacted): list again.
    Cancelled { reason: String },
}

pub struct PolicyWatch {
    stream: WatchStream,
    keys: Keys,
}

impl Store {
    /// Every policy input now, decoded as the watch decodes them, and a
    /// revision to watch from: the lower of the two listings' (changes in
    /// between are seen twice, which is harmless: each input is a value).
    pub async fn policy_inputs(&self) -> Result<(i64, Vec<PolicyInput>)> {
        let mut out = Vec::new();
        let mut rev = i64::MAX;
        for prefix in [self.keys.policies(), self.keys.endpoints()] {
            let (r, kvs) = self.etcd.get_prefix(&prefix).await?;
            rev = rev.min(r);
            for kv in kvs {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                out.extend(input(&self.keys, &key, Some(kv.value())));
            }
        }
        Ok((rev, out))
    }

    /// Watches the policy inputs from revision `from` on.
    pub async fn watch_policy_inputs(&self, from: i64) -> Result<PolicyWatch> {
        Ok(PolicyWatch {
            stream: self.etcd.watch_prefix(&self.keys.all(), from).await?,
            keys: self.keys.clone(),
        })
    }
}

impl PolicyWatch {
    /// The next answer; `Ok(None)` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<PolicyWatchEvent>> {
        let Some(resp) = self.stream.message().await? else {
            return Ok(None);
        };
        if resp.canceled() || resp.compact_revision() > 0 {
            return Ok(Some(PolicyWatchEvent::Cancelled {
                reason: format!(
                    "{} (compacted at {})",
                    resp.cancel_reason(),
                    resp.compact_revision()
                ),
            }));
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut inputs = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let put = ev.event_type() == EventType::Put;
            inputs.extend(input(&self.keys, &key, put.then(|| kv.value())));
        }
        Ok(Some(PolicyWatchEvent::Changes { revision, inputs }))
    }
}

/// The input a key event is, if it is one: `value` `None` for a delete.
pub(super) fn input(keys: &Keys, key: &str, value: Option<&[u8]>) -> Option<PolicyInput> {
    fn decoded<T: serde::de::DeserializeOwned>(key: &str, v: Option<&[u8]>) -> Option<T> {
        let v = v?;
        serde_json::from_slice(v)
            .map_err(|e| warn!("skipping unreadable {key}: {e}"))
            .ok()
    }
    match keys.parse(key)? {
        Key::Policy(name) => Some(PolicyInput::Policy(name.to_string(), decoded(key, value))),
        Key::Endpoints(host) => Some(PolicyInput::Endpoints(
            host.to_string(),
            decoded(key, value),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_events_become_inputs() {
        let k = Keys::new("/weft");
        let list = br#"[{"name":"a","ip":"10.244.1.2","labels":{"app":"web"}}]"#;
        match input(&k, "/weft/endpoints/h1", Some(list)) {
            Some(PolicyInput::Endpoints(h, Some(l))) => {
                assert_eq!(h, "h1");
                assert_eq!(l[0].labels["app"], "web");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            input(&k, "/weft/policies/p", None),
            Some(PolicyInput::Policy("p".into(), None))
        );
        assert_eq!(
            input(&k, "/weft/endpoints/h1", Some(b"not json")),
            Some(PolicyInput::Endpoints("h1".into(), None)),
            "unreadable counts as gone"
        );
        assert_eq!(input(&k, "/weft/hosts/h1", Some(b"{}")), None);
    }
}
