//! Types shared by every weft binary: the data model, the local agent API,
//! and validation of the values operators type (names, `--publish` specs).

pub mod agent_client;
pub mod api;
pub mod client;
pub mod cluster;
pub mod events;
pub mod http;
pub mod logging;
pub mod mac;
pub mod metrics;
pub mod name;
pub mod publish;
pub mod refusal;
pub mod tls;
pub mod tls_reload;
pub mod wire;

pub use mac::MacAddr;
pub use name::{validate_name, NameError};
pub use publish::{PortMapping, Proto, PublishError};
