//! The agent's local API, spoken over its Unix socket (`<run-dir>/agent.sock`).
//!
//! One JSON request per line, one JSON response per line. The socket is
//! mode 0600, so only root reaches it; still, the agent treats every request
//! as untrusted input (bounded line length, strict decoding).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{Labels, MacAddr, PortMapping};

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
        #[serde(default, skip_serializing_if = "Labels::is_empty")]
        labels: Labels,
    },
    /// Sets the labels in `set` and removes those in `remove` (absent ones
    /// are no error), all at once or not at all.
    NsLabel {
        name: String,
        #[serde(default)]
        set: Labels,
        #[serde(default)]
        remove: Vec<String>,
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
    /// CNI ADD (from `weft-cni`): attach the runtime's namespace at
    /// `netns` (weft's neither to create nor to delete) with an interface
    /// `ifname`. The attachment is keyed by `(container_id, ifname)`.
    CniAdd {
        container_id: String,
        ifname: String,
        netns: String,
        network: String,
        #[serde(default)]
        publish: Vec<PortMapping>,
        /// From the config's `args.cni.labels`.
        #[serde(default, skip_serializing_if = "Labels::is_empty")]
        labels: Labels,
    },
    /// CNI DEL: idempotent; succeeds when there is nothing to remove.
    CniDel {
        container_id: String,
        ifname: String,
    },
    /// CNI CHECK: the attachment against its record and the kernel.
    CniCheck {
        container_id: String,
        ifname: String,
        netns: String,
    },
    /// CNI GC: removes every attachment of `network` not in `keep`.
    CniGc {
        network: String,
        #[serde(default)]
        keep: Vec<AttachmentKey>,
    },
    /// CNI STATUS: whether ADD can be served (an address is free).
    CniStatus,
}

/// What identifies a CNI attachment: the runtime's container ID and the
/// interface name inside the container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

impl std::fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "container {} interface {}",
            self.container_id, self.ifname
        )
    }
}

/// What a CNI attachment adds to an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    /// The CNI network name the runtime attached it to.
    pub network: String,
}

/// Answer to [`Request::CniGc`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// The attachments removed.
    pub removed: Vec<AttachmentKey>,
}

/// How long a status probe waits for the peers' echo replies.
pub const PROBE_TIMEOUT_MS: u64 = 1000;

/// The agent's answer: `{"ok": value}`, or `{"error": sentence}` with,
/// for the errors a program acts on, a `code`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
}

impl Response {
    pub fn ok(v: serde_json::Value) -> Response {
        Response {
            ok: Some(v),
            error: None,
            code: None,
        }
    }

    pub fn error(sentence: impl Into<String>) -> Response {
        Response {
            ok: None,
            error: Some(sentence.into()),
            code: None,
        }
    }

    pub fn error_coded(code: ErrorCode, sentence: impl Into<String>) -> Response {
        Response {
            code: Some(code),
            ..Response::error(sentence)
        }
    }
}

/// The kind of an error, for programs (`weft-cni` turns it into the CNI
/// error code); the sentence is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request names a bad value.
    Invalid,
    /// What the request would add exists already.
    Exists,
    /// What the request names does not exist (a namespace path, an
    /// attachment).
    NotFound,
    /// No address is left in this host's subnet, or a limit is reached.
    Exhausted,
    /// A host port to publish is taken.
    PortTaken,
    /// CHECK found the attachment not as it should be.
    Differs,
    /// The kernel or the state directory failed.
    Internal,
}

/// An endpoint: a namespace attached to the host's bridge, made by
/// `weftctl ns add` or, with `attachment`, a container's namespace
/// attached by `weft-cni`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The prefix length of the host's subnet.
    pub prefix: u8,
    /// The default gateway (the bridge's address).
    pub gateway: Ipv4Addr,
    pub mac: MacAddr,
    /// Path of the namespace: bind-mounted by weft (usable with `ip netns
    /// exec` when it lives in `/run/netns`), or the runtime's.
    pub netns: String,
    /// The interface inside the namespace.
    pub iface: String,
    pub mtu: u32,
    pub publish: Vec<PortMapping>,
    /// Name of the host end of the veth pair (a port of the bridge).
    pub host_veth: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
    #[serde(default)]
    pub labels: Labels,
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
    /// Cluster mode: the network policy this agent holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyStatus>,
}

/// The network policy an agent holds: as of which revision of the
/// controller's policy view, how much of it, and whether it came from the
/// controller it is connected to now (`current`) or is kept from before
/// (the controller is unreachable, or the agent restarted and has not
/// heard from one yet): fail static, never open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub revision: i64,
    pub policies: usize,
    /// Address sets (one per rule peer that chooses endpoints by labels)
    /// and the addresses in them together.
    pub sets: usize,
    pub addresses: usize,
    pub current: bool,
    /// Local endpoints a policy restricts (in some direction).
    #[serde(default)]
    pub enforced: usize,
    /// Whether traffic between two endpoints of this host is policed
    /// (bridge netfilter is there).
    #[serde(default)]
    pub same_host: bool,
    /// Why the last write of the policy table failed, if it did (the
    /// table then stays as it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
                publish: vec!["8080:80/udp".parse().unwrap()],
                labels: Default::default(),
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
        let ok = serde_json::to_string(&Response::ok(serde_json::json!(1))).unwrap();
        assert_eq!(ok, r#"{"ok":1}"#);
        let err = serde_json::to_string(&Response::error("no")).unwrap();
        assert_eq!(err, r#"{"error":"no"}"#);
        let coded = Response::error_coded(ErrorCode::Exists, "taken");
        let wire = serde_json::to_string(&coded).unwrap();
        assert_eq!(wire, r#"{"error":"taken","code":"exists"}"#);
        assert_eq!(serde_json::from_str::<Response>(&wire).unwrap(), coded);
    }

    #[test]
    fn cni_requests_wire_form() {
        let r: Request = serde_json::from_str(
            r#"{"op":"cni_add","container_id":"c1","ifname":"eth0","netns":"/run/netns/x","network":"weft","publish":["8080:80"]}"#,
        )
        .unwrap();
        let key = AttachmentKey {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        assert_eq!(
            r,
            Request::CniAdd {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                netns: "/run/netns/x".into(),
                network: "weft".into(),
                publish: vec!["8080:80".parse().unwrap()],
                labels: Default::default(),
            }
        );
        // Labels: omitted when there are none (the form older agents read).
        let label: Request = serde_json::from_str(
            r#"{"op":"ns_label","name":"a","set":{"app":"web"},"remove":["x"]}"#,
        )
        .unwrap();
        assert_eq!(
            label,
            Request::NsLabel {
                name: "a".into(),
                set: [("app".to_string(), "web".to_string())].into(),
                remove: vec!["x".into()],
            }
        );
        let plain = Request::NsAdd {
            name: "a".into(),
            ip: None,
            publish: vec![],
            labels: Default::default(),
        };
        assert!(!serde_json::to_string(&plain).unwrap().contains("labels"));
        let del = Request::CniDel {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        let wire = serde_json::to_string(&del).unwrap();
        assert_eq!(
            wire,
            r#"{"op":"cni_del","container_id":"c1","ifname":"eth0"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&wire).unwrap(), del);
        let gc: Request = serde_json::from_str(
            r#"{"op":"cni_gc","network":"weft","keep":[{"container_id":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            gc,
            Request::CniGc {
                network: "weft".into(),
                keep: vec![key]
            }
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = serde_json::from_slice::<Request>(&b);
        }

        #[test]
        fn decoding_json_shaped_input_never_panics(s in r#"\{"op":"(ns_add|ns_del|ns_show|status|cni_add|cni_del|cni_check|cni_gc)"(,"[a-z]{1,8}":("[ -~]{0,12}"|[0-9]{1,6}|null|\[("[ -~]{0,12}")?\]))*\}"#) {
            let _ = serde_json::from_str::<Request>(&s);
        }
    }
}
