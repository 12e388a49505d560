//! Offload settings of weft's devices, chosen by measurement: every
//! candidate was applied by hand to a running four-host lab and measured
//! against the defaults in the same rounds
//! (`WEFT_BENCH_DP_VARIANTS=veth-gro,no-udpcsum,… weft-bench dataplane`,
//! see `tests/src/bench/dataplane.rs`). None of them beat
//! the defaults by more than the round-to-round spread, so weft keeps them,
//! and states the one the kernel lets it state:
//!
//! - the vxlan device sends outer UDP checksums ([`VXLAN_UDP_CSUM`]). It is
//!   what the kernel gives an IPv4 vxlan device that does not say (seen on
//!   Linux 6.18); weft asks for it explicitly so that it never depends on
//!   that default. With it the receiver can validate the inner packet from
//!   the outer checksum (checksum conversion), and a NIC with
//!   `tx-udp_tnl-csum-segmentation` computes it for free.
//!   Turning it off (`noudpcsum`) measured no faster. The kernel cannot change
//!   it on an existing device, so a device without it is re-created, as for
//!   every parameter fixed at creation (a device weft made always has it, so
//!   restarts never re-create it).
//! - GRO stays off on the endpoint veths (the kernel's default). Turning it
//!   on (which also gives a veth its own NAPI receive path), with or without
//!   threaded NAPI, measured no faster for TCP: the sender's TSO already
//!   hands every hop 64 KB packets, which GRO leaves as they are, and the
//!   NAPI hop adds a queue. weft sets nothing on the veths, so creating an
//!   endpoint costs no extra system call.
//! - The MTU stays the underlay's minus the encapsulation, also for peers
//!   reached by direct routing (they share the bridge with tunnelled ones).

/// Whether the vxlan device sends outer UDP checksums (`ip -d link` shows
/// `udpcsum`, not `noudpcsum`).
pub const VXLAN_UDP_CSUM: bool = true;
