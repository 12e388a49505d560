//! The CNI error result (`{"cniVersion", "code", "msg", "details"}`) and
//! the codes weft-cni answers with: the spec's well-known codes, and
//! weft's own from 100 on.

use serde::Serialize;
use weft_api::api::ErrorCode;

/// The config's cniVersion is not one weft-cni speaks, or the verb needs
/// a later one.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// A field weft-cni does not support (e.g. an `ipam` section).
pub const UNSUPPORTED_FIELD: u32 = 2;
/// The container (its namespace, or its attachment) does not exist.
pub const UNKNOWN_CONTAINER: u32 = 3;
/// A `CNI_*` variable is missing or invalid.
pub const INVALID_ENVIRONMENT: u32 = 4;
/// Reading stdin failed.
pub const IO_FAILURE: u32 = 5;
/// The config is not JSON (of the expected shape).
pub const DECODE_FAILURE: u32 = 6;
/// The config holds a bad value.
pub const INVALID_CONFIG: u32 = 7;
/// The agent cannot be reached (not running, or still starting).
pub const TRY_AGAIN_LATER: u32 = 11;
/// STATUS: ADD cannot be served.
pub const NOT_AVAILABLE: u32 = 50;
/// weft: the attachment, or an interface of that name, exists already.
pub const EXISTS: u32 = 100;
/// weft: no address (or bridge port) is left on this host.
pub const EXHAUSTED: u32 = 101;
/// weft: a host port to publish is taken.
pub const PORT_TAKEN: u32 = 102;
/// weft: CHECK found the attachment not as weft made it.
pub const DIFFERS: u32 = 103;
/// weft: the agent failed (kernel or state); see the message.
pub const INTERNAL: u32 = 999;

/// An error to answer, in the spec's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The JSON to print, with the version in use.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = self.details.clone().into();
        }
        v
    }
}

/// The CNI code of an agent's error.
pub fn code_of(code: Option<ErrorCode>) -> u32 {
    match code {
        Some(ErrorCode::Invalid) => INVALID_CONFIG,
        Some(ErrorCode::Exists) => EXISTS,
        Some(ErrorCode::NotFound) => UNKNOWN_CONTAINER,
        Some(ErrorCode::Exhausted) => EXHAUSTED,
        Some(ErrorCode::PortTaken) => PORT_TAKEN,
        Some(ErrorCode::Differs) => DIFFERS,
        Some(ErrorCode::Internal) | None => INTERNAL,
    }
}
