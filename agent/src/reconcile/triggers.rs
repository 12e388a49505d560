//! Which kernel events need a repair: those that remove or alter something
//! weft owns, or add an entry weft does not want on its devices. Pure: the
//! events come from `kernel::watch`, the view from the last reconcile.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::kernel::watch::KernelEvent;
use crate::model::overlay::Entries;
use crate::model::{BRIDGE, RTPROT_WEFT};

/// What the events are compared with: weft's devices (by index, as events
/// name them) and the overlay entries that should exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchView {
    /// Index → name of the bridge, the vxlan device and the underlay.
    pub devices: BTreeMap<u32, String>,
    /// The vxlan device's name (cluster mode).
    pub vxlan: Option<String>,
    pub desired: Entries,
}

impl WatchView {
    fn index_of(&self, name: &str) -> Option<u32> {
        self.devices
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(i, _)| *i)
    }

    fn vxlan_index(&self) -> Option<u32> {
        self.vxlan.as_deref().and_then(|v| self.index_of(v))
    }
}

/// Why `ev` needs a repair, if it does.
pub fn needs_repair(ev: &KernelEvent, view: &WatchView) -> Option<String> {
    match ev {
        KernelEvent::LinkDeleted { name } => {
            // A deleted endpoint veth is left to the periodic reconcile:
            // ns del deletes them all the time.
            let ours = name == BRIDGE || Some(name) == view.vxlan.as_ref();
            ours.then(|| format!("link {name} was deleted"))
        }
        KernelEvent::AddressRemoved { index } => {
            let ours = Some(*index) == view.index_of(BRIDGE) || Some(*index) == view.vxlan_index();
            (*index != 0 && ours).then(|| format!("an address of link #{index} was removed"))
        }
        KernelEvent::Neigh {
            new,
            fdb,
            ifindex,
            ip,
            mac,
        } => {
            if view.vxlan_index() != Some(*ifindex) {
                return None;
            }
            if *fdb {
                let key = ((*mac)?, ip.unwrap_or(Ipv4Addr::UNSPECIFIED));
                let wanted = view.desired.fdb.contains(&key);
                (*new != wanted).then(|| {
                    format!(
                        "fdb entry {} dst {} {} on the vxlan device",
                        key.0,
                        key.1,
                        if *new { "appeared" } else { "was removed" }
                    )
                })
            } else {
                let ip = (*ip)?;
                let want = view.desired.neigh.get(&ip);
                let ok = if *new {
                    want.is_some() && want == mac.as_ref()
                } else {
                    want.is_none()
                };
                (!ok).then(|| {
                    format!(
                        "neighbour {ip} {} on the vxlan device",
                        if *new { "changed" } else { "was removed" }
                    )
                })
            }
        }
        KernelEvent::Route {
            new,
            dst,
            oif,
            gateway,
            protocol,
        } => {
            let on_vxlan = oif.is_some() && *oif == view.vxlan_index();
            // Someone else's route for a peer's subnet shadows ours only
            // if it replaced it; that shows up as our route's removal.
            if !on_vxlan && *protocol != RTPROT_WEFT {
                return None;
            }
            let want = view.desired.routes.get(dst);
            let dev = oif.and_then(|i| view.devices.get(&i));
            let ok = if *new {
                want.is_some_and(|w| {
                    Some(&*w.dev) == dev.map(String::as_str) && Some(w.gateway) == *gateway
                })
            } else {
                want.is_none()
            };
            (!ok).then(|| {
                format!(
                    "route {dst} {}",
                    if *new {
                        "appeared or changed"
                    } else {
                        "was removed"
                    }
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::overlay::RouteTo;
    use weft_common::MacAddr;

    const VX: u32 = 7;
    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    fn view() -> WatchView {
        let mut desired = Entries::default();
        desired.neigh.insert(Ipv4Addr::new(10, 244, 2, 0), MAC);
        desired.fdb.insert((MAC, Ipv4Addr::new(198, 18, 0, 12)));
        desired.routes.insert(
            "10.244.2.0/24".parse().unwrap(),
            RouteTo {
                gateway: Ipv4Addr::new(10, 244, 2, 0),
                dev: "weft.1".into(),
                onlink: true,
            },
        );
        WatchView {
            devices: [
                (3, "weft0".to_string()),
                (VX, "weft.1".to_string()),
                (2, "eth0".to_string()),
            ]
            .into(),
            vxlan: Some("weft.1".into()),
            desired,
        }
    }

    fn check(ev: KernelEvent) -> bool {
        needs_repair(&ev, &view()).is_some()
    }

    fn route(new: bool, dst: &str, gw: [u8; 4], oif: u32, protocol: u8) -> KernelEvent {
        KernelEvent::Route {
            new,
            dst: dst.parse().unwrap(),
            oif: Some(oif),
            gateway: Some(Ipv4Addr::from(gw)),
            protocol,
        }
    }

    fn neigh(new: bool, fdb: bool, ifindex: u32, ip: [u8; 4], mac: MacAddr) -> KernelEvent {
        KernelEvent::Neigh {
            new,
            fdb,
            ifindex,
            ip: Some(Ipv4Addr::from(ip)),
            mac: Some(mac),
        }
    }

    #[test]
    fn deleted_weft_devices_need_repair_others_do_not() {
        let del = |n: &str| KernelEvent::LinkDeleted { name: n.into() };
        assert!(check(del("weft0")));
        assert!(check(del("weft.1")));
        assert!(!check(del("eth1")));
        assert!(check(KernelEvent::AddressRemoved { index: 3 }));
        assert!(!check(KernelEvent::AddressRemoved { index: 2 }));
    }

    #[test]
    fn routes_compared_with_the_desired_set() {
        let gw = [10, 244, 2, 0];
        // Our own route appearing as wanted, or a foreign route: nothing.
        assert!(!check(route(true, "10.244.2.0/24", gw, VX, RTPROT_WEFT)));
        assert!(!check(route(true, "192.168.0.0/16", [198, 18, 0, 1], 2, 4)));
        // Wanted route removed, stale route planted on the vxlan device,
        // a weft route pointing elsewhere: repair.
        assert!(check(route(false, "10.244.2.0/24", gw, VX, RTPROT_WEFT)));
        assert!(check(route(true, "10.244.9.0/24", [10, 244, 9, 0], VX, 4)));
        assert!(check(route(
            true,
            "10.244.2.0/24",
            [198, 18, 0, 99],
            2,
            RTPROT_WEFT
        )));
        // Removing a route nobody wants any more (a peer left): nothing.
        assert!(!check(route(
            false,
            "10.244.9.0/24",
            [10, 244, 9, 0],
            VX,
            RTPROT_WEFT
        )));
    }

    #[test]
    fn neighbours_and_fdb_compared_with_the_desired_set() {
        let n = [10, 244, 2, 0];
        let pub_ip = [198, 18, 0, 12];
        let other = MacAddr([2, 0, 0, 0, 0, 9]);
        assert!(!check(neigh(true, false, VX, n, MAC)));
        assert!(check(neigh(true, false, VX, n, other)));
        assert!(check(neigh(false, false, VX, n, MAC)));
        assert!(!check(neigh(true, true, VX, pub_ip, MAC)));
        assert!(check(neigh(true, true, VX, pub_ip, other)));
        assert!(check(neigh(false, true, VX, pub_ip, MAC)));
        // Another device's neighbours are not weft's business.
        assert!(!check(neigh(true, false, 2, n, other)));
    }
}
