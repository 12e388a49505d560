//! The log lines of overlay changes: what changes in the kernel, then why.
//! Pure; the reconciler logs what these return.

use crate::model::diff::Cause;
use crate::model::overlay::{Diff, Entries, Mode, Paths, PeerPath};

/// Peers whose every change is logged one by one; above that, a summary.
pub const LOG_EACH: usize = 32;

/// One peer's change, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerChange {
    pub peer: String,
    pub subnet: String,
    /// `joined`, `changed` or `left`.
    pub change: &'static str,
    pub line: String,
}

/// How a peer's route reads in a log line.
fn via(p: &PeerPath, vxlan: &str) -> String {
    match p.mode {
        Mode::Vxlan => format!(
            "via {} dev {vxlan} (vxlan to {} mac {})",
            p.subnet.network(),
            p.public_ip,
            p.vtep_mac
        ),
        Mode::Direct => format!("via {} (direct)", p.public_ip),
    }
}

/// What a change of the peer set does, peer by peer; `Err` with a summary
/// line when more than [`LOG_EACH`] peers change.
pub fn peer_changes(
    vxlan: &str,
    from: &Paths,
    to: &Paths,
    d: &Diff,
    why: &str,
) -> Result<Vec<PeerChange>, String> {
    let added: Vec<&PeerPath> = to
        .values()
        .filter(|p| !from.contains_key(&p.name))
        .collect();
    let removed: Vec<&PeerPath> = from
        .values()
        .filter(|p| !to.contains_key(&p.name))
        .collect();
    let changed: Vec<(&PeerPath, &PeerPath)> = to
        .values()
        .filter_map(|p| from.get(&p.name).filter(|o| *o != p).map(|o| (o, p)))
        .collect();
    if added.len() + removed.len() + changed.len() > LOG_EACH {
        return Err(format!(
            "{why}: {} peers added, {} removed, {} changed ({d})",
            added.len(),
            removed.len(),
            changed.len()
        ));
    }
    let mut out = Vec::new();
    for p in added {
        out.push(PeerChange {
            peer: p.name.clone(),
            subnet: p.subnet.to_string(),
            change: "joined",
            line: format!(
                "route add {} {}: peer {} joined ({why})",
                p.subnet,
                via(p, vxlan),
                p.name
            ),
        });
    }
    for (o, p) in changed {
        out.push(PeerChange {
            peer: p.name.clone(),
            subnet: p.subnet.to_string(),
            change: "changed",
            line: format!(
                "route replace {} {}: peer {} changed (was {} {}) ({why})",
                p.subnet,
                via(p, vxlan),
                p.name,
                o.subnet,
                via(o, vxlan)
            ),
        });
    }
    for p in removed {
        out.push(PeerChange {
            peer: p.name.clone(),
            subnet: p.subnet.to_string(),
            change: "left",
            line: format!(
                "route del {} {}: peer {} left ({why})",
                p.subnet,
                via(p, vxlan),
                p.name
            ),
        });
    }
    Ok(out)
}

/// What a reconcile is about to fix, entry by entry (`kernel` is what it
/// found, `paths` the peers the entries are for); `Err` with a summary
/// when more than [`LOG_EACH`] entries change.
pub fn repairs(
    dev: &str,
    kernel: &Entries,
    d: &Diff,
    paths: &Paths,
    cause: Cause,
) -> Result<Vec<String>, String> {
    if d.len() > LOG_EACH {
        let why = match cause {
            Cause::Start => "agent start: they changed while it was down",
            Cause::Repair => "they were changed outside weft",
        };
        return Err(format!(
            "reconcile: repairing {} overlay entries ({d}): {why}",
            d.len()
        ));
    }
    let (missing, wrong, stale) = match cause {
        Cause::Start => (
            "restored at agent start (missing)",
            "corrected at agent start (changed while the agent was down)",
            "left over (its peer is gone)",
        ),
        Cause::Repair => (
            "restored (deleted outside weft)",
            "corrected (changed outside weft)",
            "no peer has it (added outside weft, or left over)",
        ),
    };
    let peer = |f: &dyn Fn(&PeerPath) -> bool| {
        paths
            .values()
            .find(|p| f(p))
            .map_or_else(String::new, |p| format!(" for peer {}", p.name))
    };
    let mut out = Vec::new();
    for (ip, mac) in &d.add_neigh {
        let (verb, why) = match kernel.neigh.contains_key(ip) {
            true => ("replace", wrong),
            false => ("add", missing),
        };
        let of = peer(&|p| p.subnet.network() == *ip);
        out.push(format!(
            "neigh {verb} {ip} lladdr {mac} dev {dev} nud permanent{of}: {why}"
        ));
    }
    for (mac, ip) in &d.add_fdb {
        let of = peer(&|p| p.vtep_mac == *mac);
        out.push(format!(
            "fdb append {mac} dst {ip} dev {dev}{of}: {missing}"
        ));
    }
    for (dst, r) in &d.add_routes {
        let (verb, why) = match kernel.routes.contains_key(dst) {
            true => ("replace", wrong),
            false => ("add", missing),
        };
        let via = match r.onlink {
            true => format!("via {} dev {} onlink", r.gateway, r.dev),
            false => format!("via {}", r.gateway),
        };
        let of = peer(&|p| p.subnet == *dst);
        out.push(format!("route {verb} {dst} {via}{of}: {why}"));
    }
    for dst in &d.del_routes {
        out.push(format!("route del {dst}: {stale}"));
    }
    for (mac, ip) in &d.del_fdb {
        out.push(format!("fdb del {mac} dst {ip} dev {dev}: {stale}"));
    }
    for ip in &d.del_neigh {
        out.push(format!("neigh del {ip} dev {dev}: {stale}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::overlay::tests::{peer, set};
    use crate::model::overlay::RouteTo;
    use std::net::Ipv4Addr;
    use weft_common::MacAddr;

    #[test]
    fn repair_lines_say_what_and_why() {
        let paths = set(&[peer(2, Mode::Vxlan), peer(3, Mode::Vxlan)]);
        let want = Entries::of(&paths, "weft.1", None);
        // h3's route deleted outside weft, a stray route added, h2's
        // neighbour changed.
        let mut kernel = want.clone();
        kernel.routes.remove(&"10.244.3.0/24".parse().unwrap());
        kernel.routes.insert(
            "10.244.9.0/24".parse().unwrap(),
            RouteTo {
                gateway: Ipv4Addr::new(10, 244, 9, 0),
                dev: "weft.1".into(),
                onlink: true,
            },
        );
        kernel
            .neigh
            .insert(Ipv4Addr::new(10, 244, 2, 0), MacAddr([2, 0, 0, 0, 0, 9]));
        let d = Diff::between(&kernel, &want);
        let lines = repairs("weft.1", &kernel, &d, &paths, Cause::Repair).unwrap();
        assert_eq!(
            lines,
            [
                "neigh replace 10.244.2.0 lladdr 02:00:00:00:00:02 dev weft.1 nud permanent for peer h2: corrected (changed outside weft)",
                "route add 10.244.3.0/24 via 10.244.3.0 dev weft.1 onlink for peer h3: restored (deleted outside weft)",
                "route del 10.244.9.0/24: no peer has it (added outside weft, or left over)",
            ]
        );
        let start = repairs("weft.1", &kernel, &d, &paths, Cause::Start).unwrap();
        assert!(
            start[1].ends_with(": restored at agent start (missing)"),
            "{start:?}"
        );
        // A path change's own entries are not repairs.
        assert!(d.without(&d).is_empty());
        assert_eq!(d.without(&Diff::default()), d);
    }

    #[test]
    fn peer_changes_one_line_each_or_a_summary() {
        let from = set(&[peer(2, Mode::Vxlan), peer(3, Mode::Vxlan)]);
        let mut moved = peer(3, Mode::Vxlan);
        moved.public_ip = Ipv4Addr::new(198, 18, 0, 99);
        let to = set(&[moved, peer(4, Mode::Direct)]);
        let d = Diff::between(
            &Entries::of(&from, "weft.1", None),
            &Entries::of(&to, "weft.1", Some("eth0")),
        );
        let c = peer_changes("weft.1", &from, &to, &d, "controller").unwrap();
        let lines: Vec<&str> = c.iter().map(|c| c.line.as_str()).collect();
        assert_eq!(
            lines,
            [
                "route add 10.244.4.0/24 via 198.18.0.14 (direct): peer h4 joined (controller)",
                "route replace 10.244.3.0/24 via 10.244.3.0 dev weft.1 (vxlan to 198.18.0.99 mac 02:00:00:00:00:03): peer h3 changed (was 10.244.3.0/24 via 10.244.3.0 dev weft.1 (vxlan to 198.18.0.13 mac 02:00:00:00:00:03)) (controller)",
                "route del 10.244.2.0/24 via 10.244.2.0 dev weft.1 (vxlan to 198.18.0.12 mac 02:00:00:00:00:02): peer h2 left (controller)",
            ]
        );
        assert_eq!(
            c.iter().map(|c| c.change).collect::<Vec<_>>(),
            ["joined", "changed", "left"]
        );
        let many: Paths = set(&(1..=40).map(|n| peer(n, Mode::Vxlan)).collect::<Vec<_>>());
        let e =
            peer_changes("weft.1", &Paths::new(), &many, &Diff::default(), "snapshot").unwrap_err();
        assert!(
            e.starts_with("snapshot: 40 peers added, 0 removed, 0 changed"),
            "{e}"
        );
    }
}
