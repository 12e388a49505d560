//! Types shared by every weft binary: the data model, the local agent API,
//! and validation of the values operators type (names, `--publish` specs).

pub mod api;
pub mod mac;
pub mod name;
pub mod publish;

pub use mac::MacAddr;
pub use name::{validate_name, NameError};
pub use publish::{PortMapping, Proto, PublishError};
