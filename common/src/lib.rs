//! Types shared by every weft binary: the data model, the local agent API,
//! and validation of the values operators type (names, `--publish` specs).

pub mod client;
pub mod cluster;
pub mod events;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod name;
pub mod policy;
pub mod refusal;
pub mod tls;
pub mod tls_reload;
pub mod wire;

pub use mac::MacAddr;
pub use name::{validate_name, NameError};
pub use publish::{PortMapping, Proto, PublishError};
pub use weft_api::{agent_client, api, labels, mac, publish, Labels};
