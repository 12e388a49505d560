//! The agent ⇄ controller protocol: JSON messages in length-prefixed frames
//! on one bidirectional QUIC stream per session.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! JSON. Each direction has a hard size limit; a frame that is empty,
//! oversized or not a valid message ends the session (never the process).
//!
//! Session: agent → `register`; controller → `assigned` (or `error`), then
//! `snapshot` with the etcd revision it reflects, then `delta`s with higher
//! revisions. The agent sends `heartbeat`s, and, when `assigned` says
//! `policy: true`, `endpoints`: the whole list of its endpoints (address
//! and labels, for network policy) once at the start and again whenever it
//! changes. To an agent that reports endpoints the controller sends a
//! `policy_snapshot` (policies and resolved address sets), then
//! `policy_delta`s. A `register` after the first is out of order.
//!
//! Compatibility: the controller decodes agent frames strictly (an unknown
//! field makes a frame malformed). Agents decode controller frames
//! tolerantly from version 0.2.0 on: a message's unknown fields are
//! ignored, so a newer controller may add optional ones. Agents before
//! 0.2.0 refuse unknown fields, so a field added since is sent only to
//! agents whose `register` says they understand it (see
//! [`understands_codes`] for `error.code`). The records inside messages
//! (host records, the network config) are etcd's schema as well and stay
//! strict.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cluster::{EndpointEntry, HostRecord, NetworkConfig};
use crate::policy::sets::{SetChange, Sets};
use crate::policy::Policy;
use crate::refusal::RefusalCode;
use crate::MacAddr;

/// Largest first frame of an agent (a registration is ~200 bytes).
pub const MAX_REGISTER_FRAME: usize = 64 << 10;
/// Largest frame of a registered agent: an endpoint report of a full /24
/// with 64 long labels on each endpoint fits.
pub const MAX_AGENT_FRAME: usize = 8 << 20;
/// Largest frame a controller may send: a snapshot of 100,000 peers fits.
pub const MAX_CONTROLLER_FRAME: usize = 64 << 20;
/// ALPN protocol id of this protocol version.
pub const ALPN: &[u8] = b"weft/1";

/// Agent → controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMsg {
    Register {
        node: String,
        public_ip: Ipv4Addr,
        vtep_mac: MacAddr,
        /// The subnet this host already serves, if any: the controller gives
        /// it back when it is still free.
        #[serde(default)]
        subnet: Option<Ipv4Network>,
        /// The agent's version, for the controller's log.
        #[serde(default)]
        version: String,
    },
    Heartbeat {},
    /// Every endpoint of this host (sent only to a controller whose
    /// `assigned` said `policy`: an older one refuses unknown messages).
    Endpoints {
        endpoints: Vec<EndpointEntry>,
    },
}

/// Controller → agent. Decoded tolerantly: unknown fields are ignored
/// (see the module's notes on compatibility).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControllerMsg {
    Assigned {
        subnet: Ipv4Network,
        config: NetworkConfig,
        /// The controller takes `endpoints` reports (network policy). Left
        /// out when false, and sent only to agents that ignore unknown
        /// fields (see [`understands_codes`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        policy: bool,
    },
    /// Every host of the cluster (the agent's own record included) as of
    /// etcd revision `revision`.
    Snapshot {
        revision: i64,
        peers: Vec<HostRecord>,
    },
    Delta {
        revision: i64,
        changes: Vec<PeerChange>,
    },
    /// Every network policy and the address sets their rules name (see
    /// [`crate::policy::sets`]), as of `revision` of the policy view. Sent
    /// only to agents that report endpoints (older ones do not know it).
    PolicySnapshot {
        revision: i64,
        policies: Vec<Policy>,
        sets: Sets,
    },
    /// Changes since the last policy message: policies written or
    /// replaced, policies deleted, members that joined or left sets.
    PolicyDelta {
        revision: i64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        upsert: Vec<Policy>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        remove: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sets: Vec<SetChange>,
    },
    /// The controller refuses or ends the session; `message` says why,
    /// `code` says it for programs (sent only to agents that
    /// [understand codes](understands_codes)).
    Error {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<RefusalCode>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PeerChange {
    /// A host joined or its tunnel endpoint changed.
    Upsert { host: HostRecord },
    /// A host left (lease ended or `weftctl host rm`).
    Remove { name: String },
}

/// The first version whose agents decode `error.code` (and any unknown
/// field of a controller message), as (major, minor).
pub const CODES_SINCE: (u64, u64) = (0, 2);

/// Whether an agent that registered with `version` understands
/// `error.code`: its version is at least [`CODES_SINCE`]. Read loosely
/// (`0.2.0`, `v0.3`, `1.0.0-rc1+abc`: major and minor are what count); an
/// empty or unreadable version (a simulated agent, a build without one)
/// is taken as an older agent.
pub fn understands_codes(version: &str) -> bool {
    let mut parts = version.trim().trim_start_matches('v').split('.');
    let mut number = || -> Option<u64> {
        let p = parts.next()?;
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    match (number(), number()) {
        (Some(major), Some(minor)) => (major, minor) >= CODES_SINCE,
        _ => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Encodes one message as a frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = serde_json::to_vec(msg).expect("wire messages serialize");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Incremental frame decoder over a byte buffer: feed bytes with
/// [`Decoder::push`], take whole frames with [`Decoder::next_frame`]. The
/// length is checked before any body byte is buffered, so an oversized frame
/// costs no memory.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max: usize,
}

impl Decoder {
    pub fn new(max: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            max,
        }
    }

    /// Changes the size limit for the frames after those buffered.
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame's body, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(len) = self.pending_len()? else {
            return Ok(None);
        };
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let body = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(body))
    }

    /// The announced length of the frame at the head of the buffer, checked.
    fn pending_len(&self) -> Result<Option<usize>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        Ok(Some(len))
    }

    /// How many more bytes the frame at the head needs (at least 1).
    fn wanted(&self) -> Result<usize, FrameError> {
        Ok(match self.pending_len()? {
            None => 4 - self.buf.len(),
            Some(len) => (4 + len).saturating_sub(self.buf.len()).max(1),
        })
    }
}

/// Decodes one message from a frame body.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Reads frames from a stream, never buffering more than the limit allows.
pub struct FrameReader<R> {
    inner: R,
    dec: Decoder,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        FrameReader {
            inner,
            dec: Decoder::new(max),
        }
    }

    /// Changes the size limit (e.g. once an agent has registered).
    pub fn set_max(&mut self, max: usize) {
        self.dec.set_max(max);
    }

    /// The next message; `Ok(None)` at a clean end of stream.
    pub async fn read<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, FrameError> {
        match self.read_frame().await? {
            Some(body) => decode(&body).map(Some),
            None => Ok(None),
        }
    }

    /// The next frame's body, undecoded; `Ok(None)` at a clean end of
    /// stream. Cancel safe: bytes read stay buffered for the next call.
    pub async fn read_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            if let Some(body) = self.dec.next_frame()? {
                return Ok(Some(body));
            }
            // Straight into the decoder's buffer, at most what the frame
            // at the head still needs: no zeroed scratch buffer per read
            // (a large snapshot arrives in many small reads).
            let want = self.dec.wanted()?.min(1 << 20);
            self.dec.buf.reserve(want);
            let n = (&mut self.inner)
                .take(want as u64)
                .read_buf(&mut self.dec.buf)
                .await?;
            if n == 0 {
                return if self.dec.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }
}

/// Writes one message as a frame.
pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> std::io::Result<()> {
    w.write_all(&encode(msg)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(i: u8) -> HostRecord {
        HostRecord {
            name: format!("h{i}"),
            public_ip: Ipv4Addr::new(198, 18, 0, i),
            vtep_mac: MacAddr::from_ipv4(Ipv4Addr::new(10, 0, 0, i)),
            subnet: Ipv4Network::new(Ipv4Addr::new(10, 244, i, 0), 24).unwrap(),
            last_seen: 1,
        }
    }

    #[test]
    fn wire_form_is_stable() {
        let reg = AgentMsg::Register {
            node: "h1".into(),
            public_ip: Ipv4Addr::new(198, 18, 0, 11),
            vtep_mac: "0a:58:0a:f4:01:00".parse().unwrap(),
            subnet: None,
            version: "0.1.0".into(),
        };
        let j = serde_json::to_string(&reg).unwrap();
        assert_eq!(
            j,
            r#"{"type":"register","node":"h1","public_ip":"198.18.0.11","vtep_mac":"0a:58:0a:f4:01:00","subnet":null,"version":"0.1.0"}"#
        );
        let d = ControllerMsg::Delta {
            revision: 7,
            changes: vec![PeerChange::Remove { name: "h2".into() }],
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"type":"delta","revision":7,"changes":[{"op":"remove","name":"h2"}]}"#
        );
        assert!(decode::<AgentMsg>(br#"{"type":"heartbeat","x":1}"#).is_err());
        assert!(decode::<AgentMsg>(br#"{"type":"assigned"}"#).is_err());
        // No code: the field is left out (an agent before 0.2.0 refuses it).
        let e = ControllerMsg::Error {
            message: "no".into(),
            code: None,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"error","message":"no"}"#
        );
        let e = ControllerMsg::Error {
            message: "no".into(),
            code: Some(RefusalCode::SubnetTaken),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"error","message":"no","code":"subnet_taken"}"#
        );
    }

    /// An error frame of a controller before 0.2.0 (no code) still
    /// decodes; one with a code decodes to the typed code, also one this
    /// version does not know.
    #[test]
    fn error_frames_old_and_new_decode() {
        let old = decode::<ControllerMsg>(br#"{"type":"error","message":"refused"}"#).unwrap();
        assert_eq!(
            old,
            ControllerMsg::Error {
                message: "refused".into(),
                code: None
            }
        );
        let new = decode::<ControllerMsg>(
            br#"{"type":"error","message":"refused","code":"reserved_elsewhere"}"#,
        )
        .unwrap();
        assert!(matches!(
            new,
            ControllerMsg::Error {
                code: Some(RefusalCode::ReservedElsewhere),
                ..
            }
        ));
        let newer =
            decode::<ControllerMsg>(br#"{"type":"error","message":"x","code":"meteor_strike"}"#)
                .unwrap();
        assert!(matches!(
            newer,
            ControllerMsg::Error {
                code: Some(RefusalCode::Unknown),
                ..
            }
        ));
    }

    /// Unknown fields of controller messages are ignored (forward
    /// compatibility); the types of known ones are still checked, and
    /// records inside stay strict.
    #[test]
    fn controller_messages_tolerate_unknown_fields() {
        let d = decode::<ControllerMsg>(
            br#"{"type":"delta","revision":7,"changes":[{"op":"remove","name":"h2","why":"gone"}],"epoch":3}"#,
        )
        .unwrap();
        assert_eq!(
            d,
            ControllerMsg::Delta {
                revision: 7,
                changes: vec![PeerChange::Remove { name: "h2".into() }],
            }
        );
        assert!(
            decode::<ControllerMsg>(br#"{"type":"delta","revision":"7","changes":[]}"#).is_err()
        );
        assert!(decode::<ControllerMsg>(br#"{"type":"teleport"}"#).is_err());
        let mut snap = serde_json::to_value(ControllerMsg::Snapshot {
            revision: 1,
            peers: vec![host(1)],
        })
        .unwrap();
        snap["peers"][0]["colour"] = "blue".into();
        assert!(decode::<ControllerMsg>(&serde_json::to_vec(&snap).unwrap()).is_err());
    }

    #[test]
    fn codes_are_sent_from_0_2_on() {
        for v in ["0.2.0", "0.2.1-dev", "v0.3", "0.10.0", "1.0.0-rc1+abc"] {
            assert!(understands_codes(v), "{v}");
        }
        for v in ["0.1.0", "0.1.9", "", "bench", "simulated", "0", "x.y.z"] {
            assert!(!understands_codes(v), "{v}");
        }
    }

    #[test]
    fn limits_are_enforced_before_buffering() {
        let mut d = Decoder::new(16);
        d.push(&1000u32.to_be_bytes());
        assert!(matches!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 1000, max: 16 })
        ));
        let mut d = Decoder::new(16);
        d.push(&[0, 0, 0, 0]);
        assert!(matches!(d.next_frame(), Err(FrameError::Empty)));
    }

    #[tokio::test]
    async fn reader_round_trips_and_reports_truncation() {
        let msgs = vec![
            ControllerMsg::Snapshot {
                revision: 3,
                peers: vec![host(1), host(2)],
            },
            ControllerMsg::Delta {
                revision: 4,
                changes: vec![PeerChange::Upsert { host: host(3) }],
            },
        ];
        let mut bytes = Vec::new();
        for m in &msgs {
            bytes.extend(encode(m));
        }
        let mut r = FrameReader::new(&bytes[..], MAX_CONTROLLER_FRAME);
        for m in &msgs {
            assert_eq!(r.read::<ControllerMsg>().await.unwrap().as_ref(), Some(m));
        }
        assert!(r.read::<ControllerMsg>().await.unwrap().is_none());
        let cut = &bytes[..bytes.len() - 3];
        let mut r = FrameReader::new(cut, MAX_CONTROLLER_FRAME);
        r.read::<ControllerMsg>().await.unwrap();
        assert!(matches!(
            r.read::<ControllerMsg>().await,
            Err(FrameError::Truncated)
        ));
    }

    fn arb_agent_msg() -> impl Strategy<Value = AgentMsg> {
        prop_oneof![
            Just(AgentMsg::Heartbeat {}),
            (
                "[a-z][a-z0-9-]{0,20}",
                any::<u32>(),
                any::<[u8; 6]>(),
                any::<Option<u8>>()
            )
                .prop_map(|(node, ip, mac, net)| AgentMsg::Register {
                    node,
                    public_ip: Ipv4Addr::from(ip),
                    vtep_mac: MacAddr(mac),
                    subnet: net
                        .map(|n| Ipv4Network::new(Ipv4Addr::new(10, 244, n, 0), 24).unwrap()),
                    version: "x".into(),
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes, fed in arbitrary chunks: the decoder never
        /// panics, never returns a frame over the limit, and stops at the
        /// first error.
        #[test]
        fn decoder_survives_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..600), cuts in proptest::collection::vec(0usize..600, 0..8)) {
            let mut d = Decoder::new(128);
            let mut cuts = cuts;
            cuts.push(bytes.len());
            cuts.sort();
            let mut at = 0;
            'outer: for c in cuts {
                let c = c.min(bytes.len());
                d.push(&bytes[at..c.max(at)]);
                at = c.max(at);
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => {
                            prop_assert!(!f.is_empty() && f.len() <= 128);
                            let _ = decode::<AgentMsg>(&f);
                        }
                        Ok(None) => break,
                        Err(_) => break 'outer,
                    }
                }
            }
        }

        /// Any sequence of messages, encoded and split anywhere, decodes to
        /// the same sequence.
        #[test]
        fn frames_round_trip_across_any_split(msgs in proptest::collection::vec(arb_agent_msg(), 1..6), split in 0usize..2000) {
            let mut bytes = Vec::new();
            for m in &msgs { bytes.extend(encode(m)); }
            let split = split.min(bytes.len());
            let mut d = Decoder::new(MAX_AGENT_FRAME);
            d.push(&bytes[..split]);
            let mut got = Vec::new();
            while let Some(f) = d.next_frame().unwrap() { got.push(decode::<AgentMsg>(&f).unwrap()); }
            d.push(&bytes[split..]);
            while let Some(f) = d.next_frame().unwrap() { got.push(decode::<AgentMsg>(&f).unwrap()); }
            prop_assert_eq!(got, msgs);
        }
    }
}
