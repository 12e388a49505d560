//! Small builders of nftables JSON objects and expressions.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT,
};
use nftables::schema::{Element, Map, NfListObject, Rule, Set, SetType, SetTypeValue, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::NfFamily;

pub(super) const FAMILY: NfFamily = NfFamily::INet;

pub(super) fn set_obj(table: &str, name: &'static str) -> NfListObject<'static> {
    NfListObject::Set(Box::new(Set {
        family: FAMILY,
        table: owned(table),
        name: Cow::Borrowed(name),
        handle: None,
        set_type: SetTypeValue::Single(SetType::Ipv4Addr),
        policy: None,
        flags: None,
        elem: None,
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }))
}

pub(super) fn element_obj(
    table: &str,
    map: &'static str,
    elem: Vec<Expression<'static>>,
) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: FAMILY,
        table: owned(table),
        name: Cow::Borrowed(map),
        elem: Cow::Owned(elem),
    })
}

/// Elements of a set or map whose name is only known at run time.
pub(super) fn element_obj_named(
    table: &str,
    name: &str,
    elem: Vec<Expression<'static>>,
) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: FAMILY,
        table: owned(table),
        name: owned(name),
        elem: Cow::Owned(elem),
    })
}

pub(super) fn table_obj(table: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: FAMILY,
        name: owned(table),
        handle: None,
    })
}

pub(super) fn map_obj(
    table: &str,
    name: &'static str,
    key: &'static [SetType],
    data: SetType,
) -> NfListObject<'static> {
    NfListObject::Map(Box::new(Map {
        family: FAMILY,
        table: owned(table),
        name: Cow::Borrowed(name),
        handle: None,
        set_type: SetTypeValue::Concatenated(Cow::Borrowed(key)),
        map: SetTypeValue::Single(data),
        policy: None,
        flags: None,
        elem: None,
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }))
}

pub(super) fn rule(
    table: &str,
    chain: &'static str,
    expr: Vec<Statement<'static>>,
) -> NfListObject<'static> {
    let comment = fingerprint(chain, &expr);
    NfListObject::Rule(Rule {
        family: FAMILY,
        table: owned(table),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: Some(Cow::Owned(comment)),
    })
}

/// The comment weft gives a rule: `weft:` and a hash of its chain and
/// statements. Reading the comments back tells whether a table holds
/// exactly the rules this agent writes, without comparing nft's own
/// (normalised) rendering of them. FNV-1a: stable across Rust versions.
pub(super) fn fingerprint(chain: &str, expr: &[Statement<'_>]) -> String {
    let json = serde_json::to_string(expr).expect("statements serialize");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in chain.bytes().chain([0]).chain(json.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("weft:{h:016x}")
}

pub(super) fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

pub(super) fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

pub(super) fn ip(field: &'static str) -> Expression<'static> {
    payload("ip", field)
}

pub(super) fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub(super) fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed(key),
        family: None,
        dir: None,
    }))
}

/// A network as nft wants it: network address (host bits cleared) and length.
pub(super) fn prefix(net: Ipv4Network) -> Expression<'static> {
    prefix_of(net.network(), net.prefix())
}

/// `addr/len`; a /32 is a plain address.
pub(super) fn prefix_of(addr: Ipv4Addr, len: u8) -> Expression<'static> {
    let addr = string(addr.to_string());
    if len == 32 {
        addr
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(addr),
            len: u32::from(len),
        }))
    }
}

pub(super) fn string(s: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(s.into()))
}

pub(super) fn owned(s: &str) -> Cow<'static, str> {
    Cow::Owned(s.to_owned())
}
