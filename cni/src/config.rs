//! The network config a runtime writes on stdin: the keys weft-cni reads
//! (`cniVersion`, `name`, `agentSocket`, `dns`, `runtimeConfig.portMappings`,
//! `args.cni.labels`, `prevResult`, `cni.dev/valid-attachments`), checked. Other keys are
//! ignored (runtimes and chained plugins add their own), except an `ipam`
//! section: weft does its own address management, so one is refused
//! rather than silently ignored.

use std::net::Ipv4Addr;

use serde_json::{Map, Value};
use weft_api::api::AttachmentKey;
use weft_api::{labels, Labels, PortMapping, Proto};

use crate::error::{CniError, DECODE_FAILURE, INVALID_CONFIG, UNSUPPORTED_FIELD};
use crate::version::Version;

/// Where the agent listens unless the config says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = weft_api::agent_client::DEFAULT_SOCKET;

/// The config, as weft-cni uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub version: Version,
    /// The network's name.
    pub name: String,
    pub agent_socket: String,
    pub dns: Option<Value>,
    pub publish: Vec<PortMapping>,
    /// The endpoint's labels, from `args.cni.labels` (the CNI conventions'
    /// `[{"key": …, "value": …}]`).
    pub labels: Labels,
    pub prev_result: Option<Map<String, Value>>,
    pub valid_attachments: Vec<AttachmentKey>,
}

fn invalid(msg: String) -> CniError {
    CniError::new(INVALID_CONFIG, msg)
}

/// The config's `cniVersion` as written, when the input is an object that
/// has one: errors are answered in it.
pub fn version_of(input: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(input).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

impl Config {
    pub fn parse(input: &[u8]) -> Result<Config, CniError> {
        let v: Value = serde_json::from_slice(input).map_err(|e| {
            CniError::new(
                DECODE_FAILURE,
                format!("the network config is not JSON: {e}"),
            )
        })?;
        let Value::Object(o) = v else {
            return Err(CniError::new(
                DECODE_FAILURE,
                "the network config is not a JSON object",
            ));
        };
        let version = match o.get("cniVersion") {
            Some(Value::String(s)) => Version::parse(s)?,
            Some(other) => return Err(invalid(format!("cniVersion {other} is not a string"))),
            None => return Err(invalid("cniVersion is missing".into())),
        };
        let name = match o.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => return Err(invalid(format!("name {other} is not a network name"))),
            None => return Err(invalid("name (the network's name) is missing".into())),
        };
        if let Some(ipam) = o.get("ipam") {
            return Err(CniError::new(
                UNSUPPORTED_FIELD,
                format!("unsupported field ipam = {ipam}: weft-cni assigns addresses itself (from this host's subnet); remove the ipam section"),
            ));
        }
        let agent_socket = match o.get("agentSocket") {
            None => DEFAULT_AGENT_SOCKET.to_string(),
            Some(Value::String(s)) if s.starts_with('/') => s.clone(),
            Some(other) => {
                return Err(invalid(format!(
                    "agentSocket {other} is not an absolute path"
                )))
            }
        };
        let dns = match o.get("dns") {
            None | Some(Value::Null) => None,
            Some(d @ Value::Object(_)) => Some(d.clone()),
            Some(other) => return Err(invalid(format!("dns {other} is not an object"))),
        };
        let publish = match o.get("runtimeConfig").and_then(|r| r.get("portMappings")) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list.iter().map(port_mapping).collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(invalid(format!(
                    "runtimeConfig.portMappings {other} is not a list"
                )))
            }
        };
        let labels = match o
            .get("args")
            .and_then(|a| a.get("cni"))
            .and_then(|c| c.get("labels"))
        {
            None | Some(Value::Null) => Labels::new(),
            Some(Value::Array(list)) => endpoint_labels(list)?,
            Some(other) => return Err(invalid(format!("args.cni.labels {other} is not a list"))),
        };
        let prev_result = match o.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(Value::Object(p)) => Some(p.clone()),
            Some(other) => return Err(invalid(format!("prevResult {other} is not an object"))),
        };
        let valid_attachments = match o.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => {
                list.iter().map(attachment_key).collect::<Result<_, _>>()?
            }
            Some(other) => {
                return Err(invalid(format!(
                    "cni.dev/valid-attachments {other} is not a list"
                )))
            }
        };
        Ok(Config {
            version,
            name,
            agent_socket,
            dns,
            publish,
            labels,
            prev_result,
            valid_attachments,
        })
    }
}

/// One entry of `portMappings`: `{hostPort, containerPort, protocol,
/// hostIP}`.
fn port_mapping(v: &Value) -> Result<PortMapping, CniError> {
    let port = |key: &str| -> Result<u16, CniError> {
        match v.get(key).and_then(Value::as_u64) {
            Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
            _ => Err(invalid(format!(
                "portMappings entry {v}: {key} must be a port number 1-65535"
            ))),
        }
    };
    let host_port = port("hostPort")?;
    let container_port = port("containerPort")?;
    let proto = match v.get("protocol").and_then(Value::as_str) {
        None => Proto::Tcp,
        Some(p) if p.eq_ignore_ascii_case("tcp") => Proto::Tcp,
        Some(p) if p.eq_ignore_ascii_case("udp") => Proto::Udp,
        Some(p) => {
            return Err(invalid(format!(
                "portMappings entry {v}: protocol {p:?} is not supported (tcp or udp)"
            )))
        }
    };
    let host_ip = match v.get("hostIP").and_then(Value::as_str) {
        None | Some("") | Some("0.0.0.0") => None,
        Some(s) => Some(s.parse::<Ipv4Addr>().map_err(|_| {
            invalid(format!(
                "portMappings entry {v}: hostIP {s:?} is not an IPv4 address"
            ))
        })?),
    };
    Ok(PortMapping {
        host_ip,
        host_port,
        port: container_port,
        proto,
    })
}

/// `args.cni.labels`: `[{"key": "app", "value": "web"}, …]`, each checked
/// as `weftctl ns add --label` checks them; a key given twice is refused.
fn endpoint_labels(list: &[Value]) -> Result<Labels, CniError> {
    let mut out = Labels::new();
    for v in list {
        let field = |k: &str| v.get(k).and_then(Value::as_str);
        let (Some(key), Some(value)) = (field("key"), field("value")) else {
            return Err(invalid(format!(
                "args.cni.labels entry {v} needs a string key and value"
            )));
        };
        labels::check_key(key)
            .and_then(|()| labels::check_value(key, value))
            .map_err(|e| invalid(format!("args.cni.labels: {e}")))?;
        if out.insert(key.to_string(), value.to_string()).is_some() {
            return Err(invalid(format!(
                "args.cni.labels: key {key:?} is given twice"
            )));
        }
    }
    labels::check(&out).map_err(|e| invalid(format!("args.cni.labels: {e}")))?;
    Ok(out)
}

fn attachment_key(v: &Value) -> Result<AttachmentKey, CniError> {
    let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    match (field("containerID"), field("ifname")) {
        (Some(container_id), Some(ifname)) => Ok(AttachmentKey {
            container_id,
            ifname,
        }),
        _ => Err(invalid(format!(
            "cni.dev/valid-attachments entry {v} needs containerID and ifname"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_full_config_is_read() {
        let c = Config::parse(
            br#"{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","agentSocket":"/tmp/a.sock",
                "dns":{"nameservers":["10.0.0.10"]},
                "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},
                                                  {"hostPort":5353,"containerPort":53,"protocol":"UDP","hostIP":"198.18.0.2"}]},
                "prevResult":{"cniVersion":"1.1.0","interfaces":[]},
                "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.version, Version::V1_1_0);
        assert_eq!(c.name, "weft");
        assert_eq!(c.agent_socket, "/tmp/a.sock");
        assert_eq!(
            c.publish,
            vec![
                "8080:80/tcp".parse().unwrap(),
                "198.18.0.2:5353:53/udp".parse().unwrap()
            ]
        );
        assert!(c.prev_result.is_some() && c.dns.is_some());
        assert_eq!(c.valid_attachments.len(), 1);
        let min = Config::parse(br#"{"cniVersion":"0.3.1","name":"n"}"#).unwrap();
        assert_eq!(min.agent_socket, DEFAULT_AGENT_SOCKET);
        assert!(min.publish.is_empty());
    }

    #[test]
    fn bad_configs_get_their_codes() {
        let code = |s: &str| Config::parse(s.as_bytes()).unwrap_err().code;
        assert_eq!(code("{not json"), DECODE_FAILURE);
        assert_eq!(code("[1]"), DECODE_FAILURE);
        assert_eq!(code(r#"{"name":"n"}"#), INVALID_CONFIG);
        assert_eq!(code(r#"{"cniVersion":"9.9.9","name":"n"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":"1.0.0"}"#), INVALID_CONFIG);
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"}}"#),
            UNSUPPORTED_FIELD
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","agentSocket":"rel"}"#),
            INVALID_CONFIG
        );
        let e = Config::parse(
            br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80}]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, INVALID_CONFIG);
        assert!(e.msg.contains("hostPort"), "{}", e.msg);
        let e = Config::parse(
            br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":80,"protocol":"sctp"}]}}"#,
        )
        .unwrap_err();
        assert!(e.msg.contains("\"sctp\""), "{}", e.msg);
    }

    #[test]
    fn labels_come_from_args_cni_labels() {
        let c = Config::parse(
            br#"{"cniVersion":"1.0.0","name":"n","args":{"cni":{"labels":[
                {"key":"app","value":"web"},{"key":"tier","value":"front"}]}}}"#,
        )
        .unwrap();
        assert_eq!(labels::display(&c.labels), "app=web,tier=front");
        let refused = |s: &str| {
            let e = Config::parse(s.as_bytes()).unwrap_err();
            assert_eq!(e.code, INVALID_CONFIG, "{s}");
            e.msg
        };
        assert_eq!(
            refused(
                r#"{"cniVersion":"1.0.0","name":"n","args":{"cni":{"labels":[{"key":"a b","value":"x"}]}}}"#
            ),
            "args.cni.labels: label key \"a b\": may hold only letters, digits, '-', '_' and '.'"
        );
        assert_eq!(
            refused(
                r#"{"cniVersion":"1.0.0","name":"n","args":{"cni":{"labels":[{"key":"a","value":"1"},{"key":"a","value":"2"}]}}}"#
            ),
            "args.cni.labels: key \"a\" is given twice"
        );
        assert!(refused(
            r#"{"cniVersion":"1.0.0","name":"n","args":{"cni":{"labels":[{"key":"a"}]}}}"#
        )
        .contains("needs a string key and value"));
        assert!(refused(
            r#"{"cniVersion":"1.0.0","name":"n","args":{"cni":{"labels":{"a":"b"}}}}"#
        )
        .contains("is not a list"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Config::parse(&b);
            let _ = version_of(&b);
        }

        #[test]
        fn config_shaped_input_never_panics(
            v in "(0.3.1|0.4.0|1.0.0|1.1.0|x)",
            hp in proptest::option::of(0u64..70000),
            cp in proptest::option::of(0u64..70000),
            proto in "(tcp|udp|sctp|TCP|)",
            ip in "(|0.0.0.0|198.18.0.1|::1|zz)",
        ) {
            let mut pm = serde_json::json!({"protocol": proto, "hostIP": ip});
            if let Some(h) = hp { pm["hostPort"] = h.into(); }
            if let Some(c) = cp { pm["containerPort"] = c.into(); }
            let cfg = serde_json::json!({"cniVersion": v, "name": "n", "runtimeConfig": {"portMappings": [pm]}});
            let _ = Config::parse(cfg.to_string().as_bytes());
        }
    }
}
