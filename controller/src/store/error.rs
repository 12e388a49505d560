//! What can go wrong in the store, and the code an agent is sent for it.

use weft_common::refusal::RefusalCode;

use super::access::AccessFailure;
use super::records::BadRecord;
use super::refusal::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// etcd refused access (credentials, TLS).
    #[error("{0}")]
    Access(AccessFailure),
    /// A registration refused (the agent is sent its code).
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error("no host named {0:?}")]
    NoHost(String),
    /// An operator's command refused (`weftctl cluster init`, `subnet
    /// reserve`, …): one sentence saying why and what to do.
    #[error("{0}")]
    Rejected(String),
    #[error(transparent)]
    Corrupt(#[from] BadRecord),
    #[error("gave up after {0} lost allocation races")]
    TooManyRaces(u32),
}

impl StoreError {
    /// The code an agent is sent when its registration fails with this.
    pub fn code(&self) -> RefusalCode {
        match self {
            StoreError::Refused(r) => r.code(),
            StoreError::Etcd(_) | StoreError::Access(_) => RefusalCode::EtcdUnavailable,
            StoreError::Corrupt(_) => RefusalCode::CorruptRecord,
            StoreError::TooManyRaces(_) => RefusalCode::AllocationRaces,
            // Not outcomes of a registration.
            StoreError::NoHost(_) | StoreError::Rejected(_) => RefusalCode::Unknown,
        }
    }

    /// Whether etcd failed (as opposed to refusing or holding bad data).
    pub fn is_etcd_failure(&self) -> bool {
        matches!(
            self,
            StoreError::Etcd(_) | StoreError::TooManyRaces(_) | StoreError::Corrupt(_)
        )
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;
