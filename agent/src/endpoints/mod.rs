//! Endpoints: namespaces on the bridge, as `weftctl ns` manages them.
//! The table of endpoints and their addresses, `ns del`, `ns list` and
//! `ns show` are here; `ns add` with its rollback in `add.rs`, CNI
//! attachments (ADD, DEL, CHECK, GC, STATUS, and those whose namespace
//! vanished) in `attach.rs`, the spare namespaces in `pool.rs`, the undo
//! list in `undo.rs`.

mod add;
mod attach;
mod label;
pub mod pool;
pub mod undo;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::{Mutex, MutexGuard};
use tracing::info;
use weft_common::api::{AttachmentKey, Endpoint, ErrorCode};
use weft_common::cluster::EndpointEntry;
use weft_common::labels::LabelError;
use weft_common::PortMapping;

use crate::kernel::{Kernel, KernelError, OnError};
use crate::model::attachment::AttachmentInvalid;
use crate::model::desired::HostSpec;
use crate::model::endpoint::{AddRefusal, EndpointRecord};
use crate::model::ipam::{Ipam, IpamError};
use crate::state::{StateError, Writer};
use crate::telemetry::metrics;
use pool::Pool;

#[derive(Debug, Error)]
pub enum EndpointError {
    #[error(transparent)]
    Refused(#[from] AddRefusal),
    #[error("namespace {0:?} does not exist")]
    NotFound(String),
    #[error("{0} already exists but was not created by weft; remove it or pick another name")]
    ForeignNetns(PathBuf),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("--publish {spec}: {reason}")]
    PortUnavailable { spec: PortMapping, reason: String },
    #[error("{0}")]
    Kernel(#[from] KernelError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{error}; undoing the partial work also failed: {}", undo.join("; "))]
    RolledBackBadly {
        error: Box<EndpointError>,
        undo: Vec<String>,
    },
    #[error("removing namespace {name:?} failed (run ns del again to retry): {}", errors.join("; "))]
    Teardown { name: String, errors: Vec<String> },
    #[error("{0}")]
    AttachmentInvalid(#[from] AttachmentInvalid),
    #[error("{0} is already attached (ADD twice without DEL)")]
    AttachmentExists(AttachmentKey),
    #[error("an interface named {ifname} already exists in network namespace {netns}")]
    InterfaceExists { ifname: String, netns: String },
    #[error("network namespace {0} does not exist")]
    NetnsMissing(String),
    #[error("{0} is not a network namespace")]
    NotANetns(String),
    #[error("{0} is not attached to this host")]
    NoAttachment(AttachmentKey),
    #[error("{key} is not as weft attached it: {}", what.join("; "))]
    Differs {
        key: AttachmentKey,
        what: Vec<String>,
    },
    #[error("{name:?} is the attachment of container {container}: its runtime removes it (CNI DEL), not ns del")]
    IsAttachment { name: String, container: String },
    #[error("{0}")]
    Labels(#[from] LabelError),
}

impl EndpointError {
    /// The kind of the error, for programs (`weft-cni`'s CNI error code).
    pub fn code(&self) -> ErrorCode {
        use EndpointError as E;
        match self {
            E::Refused(AddRefusal::Duplicate(_)) | E::ForeignNetns(_) => ErrorCode::Exists,
            E::Refused(AddRefusal::BridgeFull) | E::Ipam(IpamError::Full { .. }) => {
                ErrorCode::Exhausted
            }
            E::Refused(AddRefusal::PortPublished { .. }) | E::PortUnavailable { .. } => {
                ErrorCode::PortTaken
            }
            E::Refused(_) | E::Ipam(_) | E::AttachmentInvalid(_) | E::NotANetns(_) => {
                ErrorCode::Invalid
            }
            E::IsAttachment { .. } | E::Labels(_) => ErrorCode::Invalid,
            E::AttachmentExists(_) | E::InterfaceExists { .. } => ErrorCode::Exists,
            E::NotFound(_) | E::NetnsMissing(_) | E::NoAttachment(_) => ErrorCode::NotFound,
            E::Differs { .. } => ErrorCode::Differs,
            E::Kernel(_) | E::State(_) | E::RolledBackBadly { .. } | E::Teardown { .. } => {
                ErrorCode::Internal
            }
        }
    }
}

pub type Result<T> = std::result::Result<T, EndpointError>;

/// The endpoints and the addresses they hold.
pub struct Table {
    pub records: BTreeMap<String, EndpointRecord>,
    ipam: Ipam,
}

/// See the module documentation.
pub struct Endpoints {
    kernel: Arc<dyn Kernel>,
    state: Writer,
    spec: HostSpec,
    netns_dir: PathBuf,
    table: Mutex<Table>,
    pub pool: Pool,
    directory: tokio::sync::watch::Sender<Arc<Vec<EndpointEntry>>>,
}

/// This host's endpoints as network policy sees them (name, address,
/// labels), now and after each change.
pub type Directory = tokio::sync::watch::Receiver<Arc<Vec<EndpointEntry>>>;

/// The records as the controller's endpoint report lists them.
fn directory(records: &BTreeMap<String, EndpointRecord>) -> Vec<EndpointEntry> {
    records
        .values()
        .map(|r| EndpointEntry {
            name: r.name.clone(),
            ip: r.ip,
            labels: r.labels.clone(),
        })
        .collect()
}

impl Endpoints {
    /// The endpoints as loaded from the state, their addresses recorded.
    /// Fails on a record whose address this subnet cannot hold.
    pub fn new(
        kernel: Arc<dyn Kernel>,
        state: Writer,
        spec: HostSpec,
        netns_dir: PathBuf,
        records: BTreeMap<String, EndpointRecord>,
        pool: usize,
    ) -> std::result::Result<Endpoints, (String, IpamError)> {
        let mut ipam = Ipam::new(spec.subnet);
        for rec in records.values() {
            ipam.insert(rec.ip, &rec.name)
                .map_err(|e| (rec.name.clone(), e))?;
        }
        metrics::set_endpoints(records.len());
        let (directory, _) = tokio::sync::watch::channel(Arc::new(directory(&records)));
        Ok(Endpoints {
            kernel,
            state,
            spec,
            netns_dir,
            table: Mutex::new(Table { records, ipam }),
            pool: Pool::new(pool),
            directory,
        })
    }

    /// After every change of the table: the endpoint count for the
    /// metrics, and the endpoints as network policy sees them for the
    /// controller (when that differs from before).
    fn changed(&self, t: &Table) {
        metrics::set_endpoints(t.records.len());
        let now = directory(&t.records);
        self.directory.send_if_modified(|d| {
            let differs = **d != now;
            if differs {
                *d = Arc::new(now);
            }
            differs
        });
    }

    /// The endpoints as network policy sees them (name, address, labels),
    /// now and after each change.
    pub fn directory(&self) -> Directory {
        self.directory.subscribe()
    }

    /// The table, locked: reconciles hold it so that no `ns add` or
    /// `ns del` changes endpoints under them.
    pub async fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().await
    }

    pub fn state(&self) -> &Writer {
        &self.state
    }

    fn endpoint(&self, rec: &EndpointRecord) -> Endpoint {
        Endpoint {
            name: rec.name.clone(),
            ip: rec.ip,
            prefix: self.spec.subnet.prefix(),
            gateway: self.spec.gateway(),
            mac: rec.mac,
            netns: self.netns_dir.join(rec.netns()).display().to_string(),
            iface: rec.iface().to_string(),
            mtu: self.spec.mtu,
            publish: rec.publish.clone(),
            host_veth: rec.host_veth.clone(),
            attachment: rec.attachment.as_ref().map(|a| a.api()),
            labels: rec.labels.clone(),
        }
    }

    /// `weftctl ns del`: removes the namespace, its veth pair (and so its
    /// address and routes) and its published ports.
    pub async fn del(&self, name: &str) -> Result<Endpoint> {
        let mut t = self.table.lock().await;
        let rec = t
            .records
            .get(name)
            .cloned()
            .ok_or_else(|| EndpointError::NotFound(name.to_string()))?;
        if let Some(a) = &rec.attachment {
            return Err(EndpointError::IsAttachment {
                name: name.to_string(),
                container: a.container_id.clone(),
            });
        }
        let report = self
            .kernel
            .apply(&rec.teardown_ops(), OnError::Continue)
            .await;
        metrics::applied(report.by_kind(), report.kernel_failures());
        if !report.is_ok() {
            return Err(EndpointError::Teardown {
                name: name.to_string(),
                errors: report
                    .failures
                    .iter()
                    .map(|f| f.error.to_string())
                    .collect(),
            });
        }
        self.state.remove_endpoint(name).await?;
        t.records.remove(name);
        t.ipam.release(rec.ip);
        self.changed(&t);
        info!("deleted namespace {name} ({}){}", rec.ip, rec.published());
        Ok(self.endpoint(&rec))
    }

    pub async fn list(&self) -> Vec<Endpoint> {
        let t = self.table.lock().await;
        t.records.values().map(|r| self.endpoint(r)).collect()
    }

    pub async fn show(&self, name: &str) -> Result<Endpoint> {
        let t = self.table.lock().await;
        t.records
            .get(name)
            .map(|r| self.endpoint(r))
            .ok_or_else(|| EndpointError::NotFound(name.to_string()))
    }

    pub async fn count(&self) -> usize {
        self.table.lock().await.records.len()
    }
}
