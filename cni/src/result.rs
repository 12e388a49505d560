//! The ADD result, in the shape of the config's version: the host end and
//! the container's interface, its address with the gateway, the default
//! route, the config's `dns`. With a `prevResult` (weft chained after
//! another plugin) weft's interfaces, addresses and routes are appended to
//! it, the indexes shifted.

use serde_json::{json, Map, Value};
use weft_api::api::Endpoint;

use crate::version::Version;

/// The result of an ADD that attached `ep` in namespace `sandbox`.
pub fn add_result(
    version: Version,
    ep: &Endpoint,
    sandbox: &str,
    dns: Option<&Value>,
    prev: Option<&Map<String, Value>>,
) -> Value {
    let mut out = prev.cloned().unwrap_or_default();
    out.insert("cniVersion".into(), version.as_str().into());
    let interfaces = list(&mut out, "interfaces");
    let mut host = json!({ "name": ep.host_veth });
    let mut inner = json!({
        "name": ep.iface,
        "mac": ep.mac.to_string(),
        "sandbox": sandbox,
    });
    if version >= Version::V1_1_0 {
        host["mtu"] = ep.mtu.into();
        inner["mtu"] = ep.mtu.into();
    }
    interfaces.push(host);
    interfaces.push(inner);
    let index = interfaces.len() - 1;
    let mut ip = json!({
        "address": format!("{}/{}", ep.ip, ep.prefix),
        "gateway": ep.gateway.to_string(),
        "interface": index,
    });
    if version.ips_carry_version() {
        ip["version"] = "4".into();
    }
    list(&mut out, "ips").push(ip);
    list(&mut out, "routes").push(json!({
        "dst": "0.0.0.0/0",
        "gw": ep.gateway.to_string(),
    }));
    if let Some(d) = dns {
        out.entry("dns").or_insert_with(|| d.clone());
    }
    Value::Object(out)
}

/// The list at `key` (made empty if absent or not a list).
fn list<'a>(o: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = o.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut().expect("made a list above")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        serde_json::from_value(json!({
            "name": "cni-0123456789ab", "ip": "10.244.1.5", "prefix": 24,
            "gateway": "10.244.1.1", "mac": "0a:58:0a:f4:01:05",
            "netns": "/run/netns/c1", "iface": "eth0", "mtu": 1450,
            "publish": [], "host_veth": "wv0123456789ab",
            "attachment": {"container_id": "c1", "ifname": "eth0", "network": "weft"}
        }))
        .unwrap()
    }

    #[test]
    fn each_version_gets_its_shape() {
        let r = add_result(Version::V1_0_0, &ep(), "/run/netns/c1", None, None);
        assert_eq!(
            r,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "wv0123456789ab"},
                    {"name": "eth0", "mac": "0a:58:0a:f4:01:05", "sandbox": "/run/netns/c1"}
                ],
                "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]
            })
        );
        let old = add_result(Version::V0_3_1, &ep(), "/run/netns/c1", None, None);
        assert_eq!(old["ips"][0]["version"], "4");
        let new = add_result(Version::V1_1_0, &ep(), "/run/netns/c1", None, None);
        assert_eq!(new["interfaces"][1]["mtu"], 1450);
        assert!(new["ips"][0].get("version").is_none());
    }

    #[test]
    fn a_prev_result_is_extended_and_dns_passed_through() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo0", "sandbox": "/x"}],
            "ips": [{"address": "192.0.2.2/24", "interface": 0}],
            "routes": [{"dst": "192.0.2.0/24"}]
        });
        let dns = json!({"nameservers": ["10.96.0.10"]});
        let r = add_result(
            Version::V1_0_0,
            &ep(),
            "/run/netns/c1",
            Some(&dns),
            prev.as_object(),
        );
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(r["ips"][1]["interface"], 2);
        assert_eq!(r["ips"][0]["address"], "192.0.2.2/24");
        assert_eq!(r["routes"].as_array().unwrap().len(), 2);
        assert_eq!(r["dns"], dns);
    }
}
