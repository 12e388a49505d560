//! `weft-cni`: see the library's documentation. Reads stdin (bounded),
//! runs the verb, prints the answer, exits 0 or 1.

use std::io::{Read, Write};

/// Largest config read: far above any real one (a prevResult included).
const MAX_INPUT: u64 = 4 << 20;

fn main() {
    let mut input = Vec::new();
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    // VERSION may come without stdin; every other verb has a config.
    if let Err(e) = std::io::stdin().take(MAX_INPUT).read_to_end(&mut input) {
        if command != "VERSION" {
            let err = weft_cni::error::CniError::new(
                weft_cni::error::IO_FAILURE,
                format!("cannot read the network config from stdin: {e}"),
            );
            print(&err.to_json(weft_cni::version::LATEST));
            std::process::exit(1);
        }
    }
    let out = weft_cni::verbs::run(|k| std::env::var(k).ok(), &input);
    if let Some(v) = &out.stdout {
        print(v);
    }
    std::process::exit(out.exit_code);
}

fn print(v: &serde_json::Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut stdout, v);
    let _ = stdout.write_all(b"\n");
}
