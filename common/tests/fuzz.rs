//! Property tests ("fuzzing" with proptest) of every decoder of untrusted
//! input in `weft-common`: the wire-frame decoder and messages, the agent API
//! requests, `--publish` specs, names, MAC addresses and the cluster records
//! read from etcd (network config, host and subnet records, subnet keys).
//!
//! Each property runs many cases by default (10,000 for the cheap pure
//! parsers); `PROPTEST_CASES=N` overrides every count, e.g. for a longer run
//! (`PROPTEST_CASES=1000000 cargo test -p weft-common --test fuzz`) or a
//! quicker one. A failure prints the minimal input that broke the property
//! (paste it into a unit test to keep it).

use std::io;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use ipnetwork::Ipv4Network;
use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};
use weft_common::api::Request;
use weft_common::cluster::{
    parse_subnet_key, subnet_key, HostRecord, NetworkConfig, SubnetRecord, MAX_SUBNETS, MAX_VNI,
    MTU_RANGE,
};
use weft_common::name::{host_veth_name, is_weft_veth_name, MAX_NAME_LEN};
use weft_common::refusal::RefusalCode;
use weft_common::wire::{
    self, AgentMsg, ControllerMsg, Decoder, FrameError, FrameReader, PeerChange,
};
use weft_common::{validate_name, MacAddr, NameError, PortMapping, Proto};

/// `n` cases unless `PROPTEST_CASES` says otherwise.
fn cases(n: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = n;
    }
    c
}

/// The contract's rule for names, written independently of
/// `validate_name`: `^[a-z0-9][a-z0-9-]{0,62}$`.
fn name_rule(s: &str) -> bool {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    let b = s.as_bytes();
    !b.is_empty() && b.len() <= MAX_NAME_LEN && b[0] != b'-' && b.iter().all(|&c| ok(c))
}

// ---------------------------------------------------------------- strategies

fn arb_name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9-]{0,62}"
}

fn arb_mac() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>().prop_map(MacAddr)
}

fn arb_net() -> impl Strategy<Value = Ipv4Network> {
    (any::<u32>(), 0u8..=32).prop_map(|(ip, len)| {
        let n = Ipv4Network::new(Ipv4Addr::from(ip), len).expect("prefix <= 32");
        Ipv4Network::new(n.network(), len).expect("prefix <= 32")
    })
}

fn arb_host() -> impl Strategy<Value = HostRecord> {
    (arb_name(), any::<u32>(), arb_mac(), arb_net(), any::<u64>()).prop_map(
        |(name, ip, vtep_mac, subnet, last_seen)| HostRecord {
            name,
            public_ip: Ipv4Addr::from(ip),
            vtep_mac,
            subnet,
            last_seen,
        },
    )
}

fn arb_config() -> impl Strategy<Value = NetworkConfig> {
    (
        any::<u32>(),
        0u8..=32,
        0u8..=40,
        prop_oneof![Just(0u32), 1..=MAX_VNI, any::<u32>()],
        any::<u16>(),
        proptest::option::of(prop_oneof![0u32..12000, any::<u32>()]),
    )
        .prop_map(|(ip, prefix, subnet_len, vni, port, mtu)| NetworkConfig {
            cidr: Ipv4Network::new(Ipv4Addr::from(ip), prefix).expect("prefix <= 32"),
            subnet_len,
            vni,
            port,
            mtu,
        })
}

fn arb_agent_msg() -> impl Strategy<Value = AgentMsg> {
    prop_oneof![
        Just(AgentMsg::Heartbeat {}),
        (
            "\\PC{0,70}",
            any::<u32>(),
            arb_mac(),
            proptest::option::of(arb_net()),
            "\\PC{0,20}"
        )
            .prop_map(|(node, ip, vtep_mac, subnet, version)| AgentMsg::Register {
                node,
                public_ip: Ipv4Addr::from(ip),
                vtep_mac,
                subnet,
                version,
            }),
        proptest::collection::vec(arb_endpoint_entry(), 0..4)
            .prop_map(|endpoints| AgentMsg::Endpoints { endpoints }),
    ]
}

fn arb_endpoint_entry() -> impl Strategy<Value = weft_common::cluster::EndpointEntry> {
    (
        arb_name(),
        any::<u32>(),
        proptest::collection::btree_map("[a-z]{1,8}", "[a-z0-9]{0,8}", 0..3),
    )
        .prop_map(|(name, ip, labels)| weft_common::cluster::EndpointEntry {
            name,
            ip: Ipv4Addr::from(ip),
            labels: labels.into_iter().collect(),
        })
}

fn arb_controller_msg() -> impl Strategy<Value = ControllerMsg> {
    let change = prop_oneof![
        arb_host().prop_map(|host| PeerChange::Upsert { host }),
        arb_name().prop_map(|name| PeerChange::Remove { name }),
    ];
    prop_oneof![
        (arb_net(), arb_config(), any::<bool>()).prop_map(|(subnet, config, policy)| {
            ControllerMsg::Assigned {
                subnet,
                config,
                policy,
            }
        }),
        (any::<i64>(), proptest::collection::vec(arb_host(), 0..6))
            .prop_map(|(revision, peers)| ControllerMsg::Snapshot { revision, peers }),
        (any::<i64>(), proptest::collection::vec(change, 0..6))
            .prop_map(|(revision, changes)| ControllerMsg::Delta { revision, changes }),
        (
            "\\PC{0,40}",
            proptest::option::of(proptest::sample::select(RefusalCode::ALL.to_vec()))
        )
            .prop_map(|(message, code)| ControllerMsg::Error { message, code }),
    ]
}

fn arb_port_mapping() -> impl Strategy<Value = PortMapping> {
    (
        proptest::option::of(
            any::<u32>()
                .prop_map(Ipv4Addr::from)
                .prop_filter("a unicast host address", |ip| {
                    !ip.is_multicast() && !ip.is_broadcast() && !ip.is_unspecified()
                }),
        ),
        1u16..,
        1u16..,
        prop_oneof![Just(Proto::Tcp), Just(Proto::Udp)],
    )
        .prop_map(|(host_ip, host_port, port, proto)| PortMapping {
            host_ip,
            host_port,
            port,
            proto,
        })
}

/// Any JSON value, nested a few levels, with keys and strings drawn from
/// the ones weft's messages use so that decoders get past the first field.
fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let key = prop_oneof![
        Just("type".to_string()),
        Just("op".to_string()),
        Just("name".to_string()),
        Just("node".to_string()),
        Just("ip".to_string()),
        Just("public_ip".to_string()),
        Just("vtep_mac".to_string()),
        Just("subnet".to_string()),
        Just("publish".to_string()),
        Just("revision".to_string()),
        Just("peers".to_string()),
        Just("changes".to_string()),
        Just("host".to_string()),
        Just("cidr".to_string()),
        Just("subnet_len".to_string()),
        Just("vni".to_string()),
        Just("port".to_string()),
        Just("mtu".to_string()),
        Just("last_seen".to_string()),
        Just("reserved".to_string()),
        "[a-z_]{1,10}",
    ];
    let string = prop_oneof![
        Just("register".to_string()),
        Just("heartbeat".to_string()),
        Just("assigned".to_string()),
        Just("snapshot".to_string()),
        Just("delta".to_string()),
        Just("upsert".to_string()),
        Just("remove".to_string()),
        Just("ns_add".to_string()),
        Just("ns_del".to_string()),
        Just("status".to_string()),
        Just("10.244.1.0/24".to_string()),
        Just("198.18.0.1".to_string()),
        Just("0a:58:0a:f4:01:02".to_string()),
        Just("8080:80/udp".to_string()),
        "\\PC{0,24}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        string.prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A reader that serves `data` in the given chunk sizes, then a clean end
/// (or, with `endless`, zero bytes for ever), and counts what was taken.
struct Chunked {
    data: Vec<u8>,
    at: usize,
    chunks: Vec<usize>,
    next: usize,
    endless: bool,
    /// Bytes handed out so far.
    taken: Arc<AtomicUsize>,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let chunk = this.chunks.get(this.next).copied().unwrap_or(usize::MAX);
        this.next += 1;
        if this.at >= this.data.len() && this.endless {
            let n = buf.remaining().min(chunk.max(1));
            buf.put_slice(&vec![0u8; n]);
            this.at += n;
            this.taken.fetch_add(n, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let end = this
            .data
            .len()
            .min(this.at.saturating_add(chunk.max(1)))
            .min(this.at + buf.remaining());
        buf.put_slice(&this.data[this.at..end]);
        this.taken.fetch_add(end - this.at, Ordering::Relaxed);
        this.at = end;
        Poll::Ready(Ok(()))
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

// ---------------------------------------------------------------- wire frames

proptest! {
    #![proptest_config(cases(10_000))]

    /// Arbitrary bytes pushed in arbitrary pieces into a decoder with an
    /// arbitrary limit: no panic, every frame is 1..=limit bytes, and once it
    /// reports an error it keeps reporting it (the session ends there).
    #[test]
    fn decoder_survives_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
        max in 1usize..1024,
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut d = Decoder::new(max);
        let mut at = 0;
        'feed: for c in cuts {
            d.push(&bytes[at..c]);
            at = c;
            loop {
                match d.next_frame() {
                    Ok(Some(f)) => {
                        prop_assert!(!f.is_empty() && f.len() <= max);
                        let _ = wire::decode::<AgentMsg>(&f);
                        let _ = wire::decode::<ControllerMsg>(&f);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        prop_assert!(d.next_frame().is_err(), "an error is not sticky");
                        break 'feed;
                    }
                }
            }
        }
    }

    /// Any length above the limit is refused from the 4-byte header alone,
    /// whatever follows; zero is refused as empty.
    #[test]
    fn oversized_and_empty_lengths_are_refused_from_the_header(
        max in 1usize..(1 << 20),
        over in 1u64..(u32::MAX as u64),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let len = (max as u64 + over).min(u32::MAX as u64) as u32;
        let mut d = Decoder::new(max);
        d.push(&len.to_be_bytes());
        d.push(&tail);
        let refused_too_large = matches!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: l, max: m }) if l == len as usize && m == max
        );
        prop_assert!(refused_too_large);
        let mut d = Decoder::new(max);
        d.push(&[0, 0, 0, 0]);
        d.push(&tail);
        prop_assert!(matches!(d.next_frame(), Err(FrameError::Empty)));
    }

    /// Arbitrary JSON (in the shape of weft's messages) never panics the
    /// message decoders; whatever decodes re-encodes to an equal message.
    #[test]
    fn messages_decode_arbitrary_json_without_panic(v in arb_json()) {
        let body = serde_json::to_vec(&v).unwrap();
        if let Ok(m) = wire::decode::<AgentMsg>(&body) {
            prop_assert_eq!(wire::decode::<AgentMsg>(&serde_json::to_vec(&m).unwrap()).unwrap(), m);
        }
        if let Ok(m) = wire::decode::<ControllerMsg>(&body) {
            prop_assert_eq!(wire::decode::<ControllerMsg>(&serde_json::to_vec(&m).unwrap()).unwrap(), m);
        }
    }
}

proptest! {
    #![proptest_config(cases(2_000))]

    /// Valid frame streams in both directions, split at any number of
    /// arbitrary points, decode to the same messages.
    #[test]
    fn frame_streams_round_trip_across_any_splits(
        up in proptest::collection::vec(arb_agent_msg(), 1..8),
        down in proptest::collection::vec(arb_controller_msg(), 1..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        fn check<T>(msgs: &[T], cuts: &[prop::sample::Index], max: usize) -> Result<(), TestCaseError>
        where
            T: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
        {
            let mut bytes = Vec::new();
            for m in msgs {
                bytes.extend(wire::encode(m));
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut d = Decoder::new(max);
            let mut got = Vec::new();
            let mut at = 0;
            for c in cuts {
                d.push(&bytes[at..c]);
                at = c;
                while let Some(f) = d.next_frame().map_err(|e| TestCaseError::fail(e.to_string()))? {
                    got.push(wire::decode::<T>(&f).map_err(|e| TestCaseError::fail(e.to_string()))?);
                }
            }
            prop_assert_eq!(&got[..], msgs);
            Ok(())
        }
        check(&up, &cuts, wire::MAX_AGENT_FRAME)?;
        check(&down, &cuts, wire::MAX_CONTROLLER_FRAME)?;
    }

    /// The stream reader never takes more than one frame's worth (4 bytes of
    /// length plus the limit) beyond the frames it returned, so a peer
    /// cannot make it buffer more than the limit; an oversized header costs
    /// exactly its 4 bytes; a stream cut inside a frame is reported as
    /// truncated, never as a message.
    #[test]
    fn reader_never_buffers_beyond_the_limit(
        msgs in proptest::collection::vec(arb_agent_msg(), 0..4),
        garbage in proptest::collection::vec(any::<u8>(), 0..512),
        chunks in proptest::collection::vec(1usize..300, 0..32),
        max in 16usize..512,
        endless in any::<bool>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut data = Vec::new();
        for m in &msgs {
            data.extend(wire::encode(m));
        }
        data.extend(&garbage);
        let cut = if endless { data.len() } else { cut.index(data.len() + 1) };
        data.truncate(cut);
        let taken = Arc::new(AtomicUsize::new(0));
        let src = Chunked { data, at: 0, chunks, next: 0, endless, taken: taken.clone() };
        let mut r = FrameReader::new(src, max);
        let mut returned = 0usize;
        let outcome = block_on(async {
            // Bounded: each iteration consumes at least one byte or ends.
            for _ in 0..10_000 {
                match r.read_frame().await {
                    Ok(Some(f)) => {
                        if f.is_empty() || f.len() > max {
                            return Err(format!("frame of {} bytes with limit {max}", f.len()));
                        }
                        returned += 4 + f.len();
                    }
                    Ok(None) => return Ok(None),
                    Err(e) => return Ok(Some(e)),
                }
            }
            Err("reader did not stop within 10,000 frames".to_string())
        });
        let outcome = outcome.map_err(TestCaseError::fail)?;
        // What the reader took from the source: the frames it returned plus
        // at most one pending frame's header and body.
        let taken = taken.load(Ordering::Relaxed);
        prop_assert!(
            taken <= returned + 4 + max,
            "took {} bytes, returned {} in frames, limit {}", taken, returned, max
        );
        if let Some(FrameError::TooLarge { len, max: m }) = &outcome {
            prop_assert!(*len > max && *m == max);
        }
        if endless {
            // An endless stream of zero bytes after the frames is a frame of
            // length 0: refused as empty, never waited on for ever.
            prop_assert!(outcome.is_some());
        }
    }
}

proptest! {
    #![proptest_config(cases(2_000))]

    /// An oversized length costs the reader its 4 header bytes and nothing
    /// more, however much the peer has queued behind it.
    #[test]
    fn oversized_header_costs_four_bytes(max in 1usize..(1 << 16), over in 1u32..u32::MAX, chunks in proptest::collection::vec(1usize..100_000, 0..4)) {
        let len = (max as u64 + over as u64).min(u32::MAX as u64) as u32;
        let taken = Arc::new(AtomicUsize::new(0));
        let src = Chunked { data: len.to_be_bytes().to_vec(), at: 0, chunks, next: 0, endless: true, taken: taken.clone() };
        let mut r = FrameReader::new(src, max);
        let e = block_on(r.read_frame());
        prop_assert!(matches!(e, Err(FrameError::TooLarge { .. })), "{:?}", e);
        prop_assert_eq!(taken.load(Ordering::Relaxed), 4);
    }
}

// ---------------------------------------------------------------- agent API

proptest! {
    #![proptest_config(cases(10_000))]

    /// Arbitrary bytes and arbitrary JSON never panic the request decoder.
    #[test]
    fn api_requests_decode_arbitrary_input(b in proptest::collection::vec(any::<u8>(), 0..512), v in arb_json()) {
        let _ = serde_json::from_slice::<Request>(&b);
        let _ = serde_json::from_value::<Request>(v);
    }

    /// Every request `weftctl` can send decodes to itself.
    #[test]
    fn api_requests_round_trip(
        name in "\\PC{0,70}",
        ip in proptest::option::of(any::<u32>().prop_map(Ipv4Addr::from)),
        publish in proptest::collection::vec(arb_port_mapping(), 0..4),
        which in 0u8..6,
        probe in any::<bool>(),
        labels in proptest::collection::btree_map("\\PC{0,20}", "\\PC{0,20}", 0..4),
        remove in proptest::collection::vec("\\PC{0,20}", 0..3),
    ) {
        let req = match which {
            0 => Request::NsAdd { name, ip, publish, labels },
            5 => Request::NsLabel { name, set: labels, remove },
            1 => Request::NsDel { name },
            2 => Request::NsShow { name },
            3 => Request::NsList,
            _ => Request::Status { probe },
        };
        let line = serde_json::to_string(&req).unwrap();
        prop_assert!(!line.contains('\n'), "a request line holds no newline: {}", line);
        prop_assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), req);
    }
}

// ---------------------------------------------------------------- --publish

proptest! {
    #![proptest_config(cases(10_000))]

    /// Every valid mapping prints as a spec that parses back to it, also
    /// in the spellings an operator may use (no `/tcp`, `0.0.0.0:`).
    #[test]
    fn publish_specs_round_trip(m in arb_port_mapping()) {
        let s = m.to_string();
        prop_assert_eq!(s.parse::<PortMapping>().unwrap(), m);
        if m.proto == Proto::Tcp {
            let short = s.strip_suffix("/tcp").unwrap();
            prop_assert_eq!(short.parse::<PortMapping>().unwrap(), m);
        }
        if m.host_ip.is_none() {
            let any = format!("0.0.0.0:{s}");
            prop_assert_eq!(any.parse::<PortMapping>().unwrap(), m);
        }
    }

    /// Arbitrary strings, and strings close to the grammar, never panic;
    /// what is accepted round-trips, and every error quotes the value.
    #[test]
    fn publish_parse_never_panics_and_errors_name_the_value(
        s in prop_oneof![
            "\\PC{0,40}",
            "([0-9.]{0,17}:)?[0-9+ -]{0,7}:[0-9+ -]{0,7}(/[a-zA-Z]{0,4})?",
            "(([0-9]{1,3}\\.){3}[0-9]{1,3}:)?[0-9]{1,6}:[0-9]{1,6}(/(tcp|udp|sctp|TCP))?",
        ]
    ) {
        match s.parse::<PortMapping>() {
            Ok(m) => {
                prop_assert_eq!(m.to_string().parse::<PortMapping>().unwrap(), m);
                prop_assert!(m.host_port != 0 && m.port != 0);
            }
            Err(e) => {
                let msg = e.to_string();
                let quoted = format!("{s:?}");
                prop_assert!(msg.contains(&quoted), "{} does not name {}", msg, quoted);
                prop_assert!(msg.starts_with("invalid --publish"), "{}", msg);
            }
        }
    }
}

// ---------------------------------------------------------------- names, MACs

proptest! {
    #![proptest_config(cases(10_000))]

    /// A name is accepted exactly when it matches `^[a-z0-9][a-z0-9-]{0,62}$`;
    /// a refusal names the value; nothing panics.
    #[test]
    fn names_valid_iff_the_rule(
        s in prop_oneof![
            "\\PC{0,80}",
            "[a-z0-9-]{0,70}",
            "[a-zA-Z0-9._/ -]{0,66}",
            "[a-z0-9][a-z0-9-]{60,64}",
            ".{0,8}",
        ]
    ) {
        let r = validate_name(&s);
        prop_assert_eq!(r.is_ok(), name_rule(&s), "{:?}: {:?}", s, r);
        match r {
            Ok(()) => {
                let v = host_veth_name(&s);
                prop_assert!(is_weft_veth_name(&v) && v.len() <= 15, "{}", v);
            }
            Err(NameError::Empty) => prop_assert!(s.is_empty()),
            Err(e) => {
                let quoted = format!("{s:?}");
                prop_assert!(e.to_string().contains(&quoted), "{} does not name {}", e, quoted);
            }
        }
    }

    /// MAC addresses: arbitrary strings never panic; what parses prints in
    /// canonical form and parses back; every MAC round-trips.
    #[test]
    fn macs_parse_and_round_trip(s in prop_oneof!["\\PC{0,24}", "([0-9a-fA-F+]{1,3}:){0,6}[0-9a-fA-F]{0,3}"], m in arb_mac()) {
        if let Ok(p) = s.parse::<MacAddr>() {
            prop_assert_eq!(p.to_string().parse::<MacAddr>().unwrap(), p);
            prop_assert_eq!(p.to_string(), s.to_ascii_lowercase());
        }
        prop_assert_eq!(m.to_string().parse::<MacAddr>().unwrap(), m);
    }
}

// ---------------------------------------------------------------- cluster records (etcd)

proptest! {
    #![proptest_config(cases(10_000))]

    /// A config that validates can be served: its subnets are inside the
    /// CIDR, distinct, at most MAX_SUBNETS, and the fields are in range.
    /// Validation itself never panics, whatever the values.
    #[test]
    fn validated_configs_are_servable(c in arb_config(), i in any::<u64>()) {
        let Ok(()) = c.validate() else { return Ok(()) };
        prop_assert_eq!(c.cidr.network(), c.cidr.ip());
        prop_assert!(c.subnet_len > c.cidr.prefix() && c.subnet_len <= 30);
        prop_assert!(c.vni >= 1 && c.vni <= MAX_VNI && c.port != 0);
        prop_assert!(c.mtu.is_none_or(|m| (MTU_RANGE.0..=MTU_RANGE.1).contains(&m)));
        let n = c.subnet_count();
        prop_assert!((2..=MAX_SUBNETS).contains(&n));
        let last = c.nth_subnet(n - 1).unwrap();
        prop_assert!(c.is_host_subnet(last) && c.cidr.contains(last.broadcast()));
        prop_assert!(c.nth_subnet(n).is_none());
        let k = i % n;
        let s = c.nth_subnet(k).unwrap();
        prop_assert!(c.is_host_subnet(s));
        if k > 0 {
            prop_assert_ne!(c.nth_subnet(k - 1).unwrap(), s);
        }
        // Stored as JSON in etcd: the same config comes back.
        let j = serde_json::to_vec(&c).unwrap();
        prop_assert_eq!(serde_json::from_slice::<NetworkConfig>(&j).unwrap(), c);
    }

    /// Whatever is stored under `/weft/config`, `/weft/hosts/…` and
    /// `/weft/subnets/…` (arbitrary JSON or bytes), decoding and validating
    /// it never panics; a host record that validates has a valid name and a
    /// subnet without host bits.
    #[test]
    fn etcd_records_decode_arbitrary_values(v in arb_json(), b in proptest::collection::vec(any::<u8>(), 0..256)) {
        let j = serde_json::to_vec(&v).unwrap();
        for bytes in [&j[..], &b[..]] {
            if let Ok(c) = serde_json::from_slice::<NetworkConfig>(bytes) {
                let _ = c.validate();
            }
            if let Ok(h) = serde_json::from_slice::<HostRecord>(bytes) {
                if h.validate().is_ok() {
                    prop_assert!(name_rule(&h.name));
                    prop_assert_eq!(h.subnet.network(), h.subnet.ip());
                }
            }
            let _ = serde_json::from_slice::<SubnetRecord>(bytes);
        }
    }

    /// Host records as the controller writes them come back equal and valid.
    #[test]
    fn host_records_round_trip(h in arb_host()) {
        let j = serde_json::to_vec(&h).unwrap();
        let back: HostRecord = serde_json::from_slice(&j).unwrap();
        prop_assert!(back.validate().is_ok());
        prop_assert_eq!(back, h);
    }

    /// Subnet keys (`10.244.3.0-24`): arbitrary key names never panic; a
    /// parsed key is a network address; every subnet's key parses back.
    #[test]
    fn subnet_keys(s in prop_oneof!["\\PC{0,24}", "[0-9.]{0,16}-[0-9]{0,3}"], n in arb_net()) {
        if let Some(net) = parse_subnet_key(&s) {
            prop_assert_eq!(net.network(), net.ip());
        }
        prop_assert_eq!(parse_subnet_key(&subnet_key(n)), Some(n));
    }
}
