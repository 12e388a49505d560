//! systemd's files as a test reads them: a unit's settings (section, key,
//! value) and the `KEY=VALUE` lines of an environment file, also those
//! shown commented out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{deploy, read};

/// A unit file as (section, key, value) lines.
pub struct Unit {
    /// Its file name under `deploy/systemd/`.
    pub name: String,
    pub entries: Vec<(String, String, String)>,
}

impl Unit {
    /// `deploy/systemd/<name>`; panics on a line this reader does not
    /// understand (continuation lines, a line that is not `key=value`).
    pub fn load(name: &str) -> Unit {
        let path = deploy(&format!("systemd/{name}"));
        let mut section = String::new();
        let mut entries = Vec::new();
        for (n, line) in read(&path).lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
                continue;
            }
            assert!(
                !l.ends_with('\\'),
                "{name}:{}: continuation lines are not supported by this test",
                n + 1
            );
            if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                section = s.to_string();
                continue;
            }
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}:{}: not key=value: {l}", n + 1));
            entries.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
        Unit {
            name: name.to_string(),
            entries,
        }
    }

    /// Every value of `key` in [Service].
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The one value of `key` in [Service].
    pub fn one(&self, key: &str) -> &str {
        match self.all(key).as_slice() {
            [v] => v,
            other => panic!("{}: expected one {key}=, found {other:?}", self.name),
        }
    }

    /// The words of ExecStart (program first).
    pub fn exec_start(&self) -> Vec<String> {
        let exec = self.one("ExecStart");
        assert!(
            !exec.contains(['"', '\'', '$', '%']),
            "{}: ExecStart={exec}: quoting and specifiers are not supported by this test",
            self.name
        );
        exec.split_whitespace().map(str::to_string).collect()
    }

    /// The space-separated words of every value of `key`.
    pub fn words(&self, key: &str) -> BTreeSet<String> {
        self.all(key)
            .iter()
            .flat_map(|v| v.split_whitespace())
            .map(str::to_string)
            .collect()
    }
}

/// `KEY=VALUE` lines of an environment file (comments and blanks skipped).
pub fn env_file(path: &Path) -> BTreeMap<String, String> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: not KEY=VALUE: {l}", path.display()));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// `# WEFT_X=value` lines of an environment file: options shown commented out.
pub fn commented_env(path: &Path) -> BTreeMap<String, String> {
    read(path)
        .lines()
        .filter_map(|l| l.trim().strip_prefix('#'))
        .map(str::trim)
        .filter(|l| l.starts_with("WEFT_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}
