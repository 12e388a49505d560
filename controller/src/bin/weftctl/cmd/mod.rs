//! One file per command group.

pub mod certs;
pub mod cluster;
pub mod host;
pub mod ns;
pub mod policy;
pub mod status;
pub mod subnet;

use std::path::Path;

use crate::output::Failure;

/// The text of `file`, or of stdin when it is `-`; `what` names it in the
/// error (`read backup from stdin: …`).
pub fn read_input(file: &Path, what: &str) -> Result<String, Failure> {
    if file.as_os_str() == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .map_err(|e| Failure::failed(format!("read {what} from stdin: {e}")))?;
        Ok(t)
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| Failure::failed(format!("read {what} from {}: {e}", file.display())))
    }
}
