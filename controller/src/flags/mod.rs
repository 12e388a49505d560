//! Command-line flags: the daemon's (`controller`), the etcd flags both
//! binaries share (`etcd`), and how a clap error is printed.

pub mod controller;
pub mod etcd;

/// A clap error as one line: its message (which may continue on indented
/// lines, e.g. missing arguments) without the usage block.
pub fn one_line(e: &clap::Error) -> String {
    e.render()
        .to_string()
        .lines()
        .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}
