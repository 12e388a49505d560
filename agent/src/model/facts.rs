//! Facts about the host found at start, decided from what the kernel
//! reports: the underlay device, this host's public address, the MTU, and
//! whether weft's state was lost while its namespaces live on.

use std::net::Ipv4Addr;

use thiserror::Error;
use weft_common::name::is_weft_veth_name;

use super::observed::{Device, UnderlayView};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FactsError {
    #[error("--underlay-iface {0}: no such interface")]
    NoSuchInterface(String),
    #[error(
        "no default route to find this host's public address: set --public-ip or --underlay-iface"
    )]
    NoDefaultRoute,
    #[error(
        "interface {0} has no IPv4 address to use as this host's public address: set --public-ip"
    )]
    NoAddress(String),
}

/// The underlay device and whether it holds the public address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub device: Device,
    /// The device holds `--public-ip` (the tunnel can send from it).
    pub holds_public_ip: bool,
}

/// The device holding IPv4 address `ip`.
fn holder(view: &UnderlayView, ip: Ipv4Addr) -> Option<&str> {
    view.addresses
        .iter()
        .find(|(_, addrs)| addrs.iter().any(|(a, _)| *a == ip))
        .map(|(dev, _)| dev.as_str())
}

/// The underlay: `--underlay-iface`, else the device holding the public
/// address (it carries the tunnel, so its MTU is the one that counts), else
/// the default route's device; `None` when there is none (no default route
/// yet, e.g. before DHCP at boot).
pub fn underlay(
    view: &UnderlayView,
    iface: Option<&str>,
    public_ip: Option<Ipv4Addr>,
) -> Result<Option<Underlay>, FactsError> {
    let held_by = public_ip.and_then(|ip| holder(view, ip));
    let name = match iface {
        Some(i) if !view.devices.contains_key(i) => {
            return Err(FactsError::NoSuchInterface(i.to_string()))
        }
        Some(i) => Some(i),
        None => held_by.or(view.default_dev.as_deref()),
    };
    Ok(name.and_then(|n| view.devices.get(n)).map(|d| Underlay {
        device: d.clone(),
        holds_public_ip: held_by == Some(d.name.as_str()),
    }))
}

/// This host's public address when none is configured: the first usable
/// IPv4 address of the underlay device.
pub fn public_address(view: &UnderlayView, iface: Option<&str>) -> Result<Ipv4Addr, FactsError> {
    let dev = underlay(view, iface, None)?.ok_or(FactsError::NoDefaultRoute)?;
    view.addresses
        .get(&dev.device.name)
        .into_iter()
        .flatten()
        .map(|(ip, _)| *ip)
        .find(|ip| !ip.is_loopback() && !ip.is_link_local())
        .ok_or(FactsError::NoAddress(dev.device.name))
}

/// The overlay MTU: the cluster's fixed one, else the underlay's less the
/// encapsulation, else (no underlay found) the one used before, else the
/// Ethernet default less the encapsulation. The flag says it was not
/// detected (worth a warning).
pub fn mtu(
    fixed: Option<u32>,
    underlay: Option<&Underlay>,
    saved: Option<u32>,
    overhead: u32,
) -> (u32, bool) {
    match (fixed, underlay) {
        (Some(m), _) => (m, false),
        (None, Some(u)) => (u.device.mtu - overhead, false),
        (None, None) => (saved.unwrap_or(1500 - overhead), true),
    }
}

/// A first start (no saved node) on a host that still has weft's
/// namespace veths means the state was lost: the veths, for the message.
pub fn namespace_veths(devices: impl IntoIterator<Item = Device>) -> Vec<String> {
    devices
        .into_iter()
        .filter(|d| is_weft_veth_name(&d.name) && d.is_kind("veth"))
        .map(|d| d.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, index: u32, mtu: u32) -> Device {
        Device {
            index,
            name: name.into(),
            kind: None,
            master: None,
            mtu,
            mac: None,
            up: true,
            vxlan: None,
        }
    }

    fn view() -> UnderlayView {
        let mut v = UnderlayView::default();
        for d in [
            dev("lo", 1, 65536),
            dev("eth0", 2, 1500),
            dev("eth1", 3, 9000),
        ] {
            v.devices.insert(d.name.clone(), d);
        }
        v.addresses
            .entry("eth0".into())
            .or_default()
            .insert((Ipv4Addr::new(198, 18, 0, 11), 24));
        v.addresses
            .entry("eth1".into())
            .or_default()
            .insert((Ipv4Addr::new(169, 254, 0, 1), 16));
        v.default_dev = Some("eth0".into());
        v
    }

    #[test]
    fn the_device_holding_the_public_ip_wins_over_the_default_route() {
        let mut v = view();
        v.addresses
            .entry("eth1".into())
            .or_default()
            .insert((Ipv4Addr::new(10, 9, 0, 1), 24));
        let u = underlay(&v, None, Some(Ipv4Addr::new(10, 9, 0, 1)))
            .unwrap()
            .unwrap();
        assert_eq!((u.device.name.as_str(), u.holds_public_ip), ("eth1", true));
        assert_eq!(mtu(None, Some(&u), None, 50), (8950, false));
        // An address no device holds: the default route's, not holding it.
        let u = underlay(&v, None, Some(Ipv4Addr::new(192, 0, 2, 1)))
            .unwrap()
            .unwrap();
        assert_eq!((u.device.name.as_str(), u.holds_public_ip), ("eth0", false));
        assert_eq!(
            underlay(&v, Some("eth9"), None),
            Err(FactsError::NoSuchInterface("eth9".into()))
        );
    }

    #[test]
    fn public_address_skips_link_local_and_names_the_device() {
        assert_eq!(
            public_address(&view(), None),
            Ok(Ipv4Addr::new(198, 18, 0, 11))
        );
        assert_eq!(
            public_address(&view(), Some("eth1")),
            Err(FactsError::NoAddress("eth1".into()))
        );
        let mut v = view();
        v.default_dev = None;
        assert_eq!(public_address(&v, None), Err(FactsError::NoDefaultRoute));
        assert_eq!(mtu(None, None, Some(1400), 50), (1400, true));
        assert_eq!(mtu(None, None, None, 0), (1500, true));
        assert_eq!(mtu(Some(1300), None, None, 50), (1300, false));
    }

    #[test]
    fn only_weft_veths_count_as_lost_namespaces() {
        let mut a = dev(&weft_common::name::host_veth_name("a"), 5, 1500);
        a.kind = Some("veth".into());
        let mut other = dev("veth0", 6, 1500);
        other.kind = Some("veth".into());
        let mut bridge = dev(&weft_common::name::host_veth_name("b"), 7, 1500);
        bridge.kind = Some("bridge".into());
        assert_eq!(namespace_veths([a.clone(), other, bridge]), vec![a.name]);
    }
}
