//! What a half-done `ns add` has made, as a typed list: each entry is one
//! thing to take back, and rolling back takes them back in reverse order.

use crate::model::firewall::PortForward;
use crate::model::ops::Op;

/// One thing `ns add` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// The namespace at its name (with everything inside it).
    Netns(String),
    /// The host end of the veth pair.
    Veth(String),
    /// Published ports.
    Forwards(Vec<PortForward>),
    /// The endpoint's state file.
    Record(String),
}

impl Undo {
    /// What an applied operation of the build made, if it must be undone
    /// on its own (what lives inside the namespace goes with it).
    pub fn of(op: &Op) -> Option<Undo> {
        match op {
            Op::CreateNetns { name } => Some(Undo::Netns(name.clone())),
            Op::CreateVeth(v) => Some(Undo::Veth(v.host.clone())),
            Op::AddForwards(f) => Some(Undo::Forwards(f.clone())),
            _ => None,
        }
    }

    /// The kernel operation that takes it back; `None` for the state file.
    pub fn op(&self) -> Option<Op> {
        match self {
            Undo::Netns(name) => Some(Op::DeleteNetns { name: name.clone() }),
            Undo::Veth(name) => Some(Op::DeleteDevice {
                name: name.clone(),
                index: None,
            }),
            Undo::Forwards(f) => Some(Op::DelForwards(f.clone())),
            Undo::Record(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::{NsOp, VethSpec};
    use weft_common::MacAddr;

    #[test]
    fn what_is_made_is_what_is_undone() {
        let veth = Op::CreateVeth(VethSpec {
            host: "wvx".into(),
            master: "weft0".into(),
            mtu: 1500,
            netns: "a".into(),
            peer: "eth0".into(),
            peer_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        });
        let u = Undo::of(&veth).unwrap();
        assert_eq!(
            u.op(),
            Some(Op::DeleteDevice {
                name: "wvx".into(),
                index: None
            })
        );
        let ns = Undo::of(&Op::CreateNetns { name: "a".into() }).unwrap();
        assert_eq!(ns.op(), Some(Op::DeleteNetns { name: "a".into() }));
        let inside = Op::InNetns {
            netns: "a".into(),
            op: NsOp::DeleteDevice { name: "x".into() },
        };
        assert_eq!(Undo::of(&inside), None, "it goes with the namespace");
        assert_eq!(Undo::Record("a".into()).op(), None);
    }
}
