//! The agent's local API, spoken over its Unix socket (`<run-dir>/agent.sock`).
//!
//! One JSON request per line, one JSON response per line. The socket is
//! mode 0600, so only root reaches it; still, the agent treats every request
//! as untrusted input (bounded line length, strict decoding).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{MacAddr, PortMapping};

/// Longest request or response line the agent reads, in bytes.
pub const MAX_LINE: usize = 1 << 20;

/// What a client asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    NsAdd {
        name: String,
        #[serde(default)]
        ip: Option<Ipv4Addr>,
        #[serde(default)]
        publish: Vec<PortMapping>,
    },
    NsDel {
        name: String,
    },
    NsList,
    NsShow {
        name: String,
    },
    /// `probe`: also probe every peer's gateway through the tunnel (takes
    /// up to [`PROBE_TIMEOUT_MS`]); without it only the state is reported.
    Status {
        #[serde(default)]
        probe: bool,
    },
}

/// How long a status probe waits for the peers' echo replies.
pub const PROBE_TIMEOUT_MS: u64 = 1000;

/// The agent's answer: exactly one of `ok` or `error`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(serde_json::Value),
    Error(String),
}

/// An endpoint: a namespace attached to the host's bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// Path of the bind-mounted namespace, usable with `ip netns exec` when
    /// it lives in `/run/netns`.
    pub netns: String,
    pub publish: Vec<PortMapping>,
    /// Name of the host end of the veth pair (a port of the bridge).
    pub host_veth: String,
}

/// The controller link as `weftctl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerLink {
    pub connected: bool,
    pub address: Option<String>,
    /// Unix seconds when the current link came up (connected) or went
    /// down (not connected; the agent's start if it never connected).
    #[serde(default)]
    pub since: Option<u64>,
}

/// A remote host as this agent knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub subnet: String,
    pub public_ip: Ipv4Addr,
    /// `vxlan` or `direct`.
    pub mode: String,
    /// Whether the peer's gateway answered an ICMP echo through the tunnel
    /// within the probe timeout; `None` when not probed.
    #[serde(default)]
    pub reachable: Option<bool>,
    /// The echo's round trip in milliseconds; `None` when unreachable or
    /// not probed.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
}

/// Answer to [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub mtu: u32,
    pub endpoints: usize,
    pub controller: ControllerLink,
    pub peers: Vec<Peer>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_wire_form() {
        let r: Request =
            serde_json::from_str(r#"{"op":"ns_add","name":"a","publish":["8080:80/udp"]}"#)
                .unwrap();
        assert_eq!(
            r,
            Request::NsAdd {
                name: "a".into(),
                ip: None,
                publish: vec!["8080:80/udp".parse().unwrap()]
            }
        );
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"ns_add","name":"a","bogus":1}"#).is_err()
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"rm_rf"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"status"}"#).unwrap(),
            Request::Status { probe: false }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"status","probe":true}"#).unwrap(),
            Request::Status { probe: true }
        );
        let ok = serde_json::to_string(&Response::Ok(serde_json::json!(1))).unwrap();
        assert_eq!(ok, r#"{"ok":1}"#);
        let err = serde_json::to_string(&Response::Error("no".into())).unwrap();
        assert_eq!(err, r#"{"error":"no"}"#);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = serde_json::from_slice::<Request>(&b);
        }

        #[test]
        fn decoding_json_shaped_input_never_panics(s in r#"\{"op":"(ns_add|ns_del|ns_show|status)"(,"[a-z]{1,8}":("[ -~]{0,12}"|[0-9]{1,6}|null|\[("[ -~]{0,12}")?\]))*\}"#) {
            let _ = serde_json::from_str::<Request>(&s);
        }
    }
}
