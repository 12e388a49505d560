//! What the kernel should hold, decided as plain data: no I/O, no clock,
//! no kernel. The reconciler gathers facts and observations through
//! [`crate::kernel::Kernel`], asks this module what to change, and hands
//! the operations back to the kernel layer. Everything here is unit
//! tested without root.
//!
//! - [`desired`]: the host as it should be (sysctls, overlay entries,
//!   endpoints, the nftables table) from the agent's settings.
//! - [`observed`]: the host as the kernel reports it.
//! - [`diff`]: the changes between the two, each with its reason.
//! - [`ops`]: the operations the kernel layer applies.
//! - [`overlay`]: peers' paths, their kernel entries and their diff.
//! - [`endpoint`]: endpoint records, `ns add` checks, build and repair steps.
//! - [`attachment`]: CNI attachments (a runtime's namespace on the bridge).
//! - [`ipam`]: which addresses of the subnet the endpoints hold.
//! - [`facts`]: the underlay, the public address and the MTU, found at start.
//! - [`firewall`]: weft's nftables table as data.
//! - [`policy`]: network policy on this host: each selected endpoint's
//!   allowed traffic, and the changes between two such tables.

pub mod attachment;
pub mod desired;
pub mod diff;
pub mod endpoint;
pub mod facts;
pub mod firewall;
pub mod ipam;
pub mod observed;
pub mod offload;
pub mod ops;
pub mod overlay;
pub mod policy;

pub use offload::VXLAN_UDP_CSUM;

/// The bridge every namespace of this host is attached to.
pub const BRIDGE: &str = "weft0";
/// The namespace end of the veth pair.
pub const NS_IFACE: &str = "eth0";
/// The nftables table (family inet) weft owns.
pub const NFT_TABLE: &str = "weft";
/// The route protocol number weft marks its routes with (`ip route` shows
/// `proto 119`), so it can tell its own routes from everyone else's.
pub const RTPROT_WEFT: u8 = 119;
/// Most ports one namespace may publish: bounds the work one request can
/// cause.
pub const MAX_PUBLISH: usize = 256;
/// A Linux bridge numbers its ports 1–1023 (BR_MAX_PORTS is 1024, port 0
/// reserved); the kernel answers "Exchange full" past that.
pub const MAX_ENDPOINTS: usize = 1023;
/// The most spare namespaces `--ns-pool` may ask for.
pub const MAX_POOL: usize = 64;
/// Bytes VXLAN over IPv4 adds to a packet.
pub const VXLAN_OVERHEAD: u32 = 50;
