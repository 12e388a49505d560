//! The only code that touches the kernel. Everything above it reaches the
//! kernel through [`Kernel`]: observe (what is there, as
//! [`crate::model::observed`] data) and apply ([`crate::model::ops::Op`]s,
//! with a [`Report`] of what was done). The agent runs on [`LinuxKernel`]
//! (rtnetlink, namespaces, sysctls, nftables); the unit tests on
//! [`fake::FakeKernel`], an in-memory kernel that is passed in the same way.
//!
//! This layer decides nothing: which operations, in which order, and why,
//! come from the model. It knows nothing of telemetry either: the caller
//! counts what a [`Report`] says was done.

pub mod fake;
pub mod linux;
pub mod netns;
pub mod sysctl;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;

use async_trait::async_trait;
use weft_common::PortMapping;

use crate::model::observed::{Hop, HostQuery, HostView, NetnsPresence, NsView, UnderlayView};
use crate::model::ops::{Op, OpKind, SpareId};

pub use linux::LinuxKernel;

/// Why a kernel call failed, with what was attempted.
#[derive(Debug)]
pub struct KernelError {
    /// What was attempted, e.g. "add route 10.244.3.0/24 via 10.244.3.0".
    pub what: String,
    pub cause: Cause,
}

/// The failure itself.
#[derive(Debug)]
pub enum Cause {
    /// The kernel refused a netlink request: its errno and, with extended
    /// acknowledgements, its own sentence.
    Refused {
        errno: i32,
        message: Option<String>,
    },
    Io(io::Error),
    /// The nftables table: its error says what was attempted, and nft's
    /// own output.
    Firewall(Box<crate::firewall::FirewallError>),
    /// Anything else, said in words (a vanished device, a failed thread).
    Other(String),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Firewall(e) => write!(f, "{e}"),
            c => write!(f, "{}: {c}", self.what),
        }
    }
}

impl std::error::Error for KernelError {}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Refused { errno, message } => {
                write!(f, "{}", io::Error::from_raw_os_error(*errno))?;
                if let Some(m) = message {
                    write!(f, " ({m})")?;
                }
                Ok(())
            }
            Cause::Io(e) => write!(f, "{e}"),
            Cause::Firewall(e) => write!(f, "{e}"),
            Cause::Other(s) => f.write_str(s),
        }
    }
}

impl KernelError {
    pub fn new(what: impl Into<String>, cause: Cause) -> KernelError {
        KernelError {
            what: what.into(),
            cause,
        }
    }

    pub fn other(what: impl Into<String>, why: impl Into<String>) -> KernelError {
        KernelError::new(what, Cause::Other(why.into()))
    }

    pub fn io(what: impl Into<String>, e: io::Error) -> KernelError {
        KernelError::new(what, Cause::Io(e))
    }
}

/// What to do when an operation of a batch fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Stop there: the operations before it are done, none after it.
    Stop,
    /// Attempt every operation; report all failures.
    Continue,
}

/// One failed operation of a batch.
#[derive(Debug)]
pub struct Failure {
    /// Its position in the batch.
    pub index: usize,
    pub error: KernelError,
}

/// What a batch did.
#[derive(Debug, Default)]
pub struct Report {
    /// Operations applied, by kind.
    pub applied: BTreeMap<OpKind, usize>,
    pub failures: Vec<Failure>,
    /// With [`OnError::Stop`]: how many operations, from the first, were
    /// applied before the failure (all of them without one).
    pub done: usize,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// Failed operations other than nft's (those are logged, not counted
    /// as kernel errors).
    pub fn kernel_failures(&self) -> usize {
        self.failures
            .iter()
            .filter(|f| !matches!(f.error.cause, Cause::Firewall(_)))
            .count()
    }

    /// Operations applied, by kind name.
    pub fn by_kind(&self) -> impl Iterator<Item = (&'static str, usize)> + '_ {
        self.applied.iter().map(|(k, n)| (k.as_str(), *n))
    }

    pub fn count(&mut self, kind: OpKind) {
        *self.applied.entry(kind).or_default() += 1;
    }

    /// The first failure, taken out.
    pub fn into_error(mut self) -> Option<KernelError> {
        (!self.failures.is_empty()).then(|| self.failures.swap_remove(0).error)
    }
}

/// How spare namespaces are made: a veth whose host end (down) is a port
/// of `master`, whose inner end is `iface`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpareSpec {
    pub master: String,
    pub mtu: u32,
    pub iface: String,
}

/// The kernel, as the agent uses it.
#[async_trait]
pub trait Kernel: Send + Sync {
    /// The host namespace: devices, and what `q` asks for.
    async fn observe_host(&self, q: &HostQuery) -> Result<HostView, KernelError>;

    /// Inside the namespace of endpoint `name`; `None` if none is mounted
    /// at its path.
    async fn observe_netns(&self, name: &str) -> Result<Option<NsView>, KernelError>;

    /// What is at the namespace path of endpoint `name`.
    async fn netns_presence(&self, name: &str) -> NetnsPresence;

    /// Devices, addresses and the default route: the underlay's facts.
    async fn observe_underlay(&self) -> Result<UnderlayView, KernelError>;

    /// How the kernel reaches each address (`ip route get`); an address it
    /// cannot reach is absent. Individual failures are reported apart.
    async fn route_lookups(&self, ips: &[Ipv4Addr]) -> (BTreeMap<Ipv4Addr, Hop>, Vec<KernelError>);

    /// Whether nothing on the host listens on a port about to be
    /// published; the reason if something does.
    async fn port_free(&self, p: &PortMapping) -> Result<(), String>;

    /// Applies `ops` in order.
    async fn apply(&self, ops: &[Op], on_error: OnError) -> Report;

    /// Builds one spare namespace.
    async fn build_spare(&self, spec: &SpareSpec) -> Result<SpareId, KernelError>;

    /// Frees a spare that will not be used (the kernel frees it with its
    /// last file descriptor).
    fn discard_spare(&self, id: SpareId);

    /// Every device of the host namespace.
    async fn devices(&self) -> Result<Vec<crate::model::observed::Device>, KernelError>;

    /// The network policy table as the kernel holds it; `None` when it is
    /// not there.
    async fn observe_policy(
        &self,
    ) -> Result<Option<crate::model::observed::PolicyView>, KernelError>;
}
