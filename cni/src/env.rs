//! The `CNI_*` environment a runtime sets, checked. A missing or invalid
//! variable is error 4, naming it.

use crate::error::{CniError, INVALID_ENVIRONMENT};

/// The verbs of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }
}

/// What the environment says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
}

impl Env {
    /// Reads the environment through `get` (the process's, or a test's).
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        let command = match var("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("GC") => Command::Gc,
            Some("STATUS") => Command::Status,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(CniError::new(
                    INVALID_ENVIRONMENT,
                    format!(
                        "CNI_COMMAND={other:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"
                    ),
                ))
            }
            None => return Err(CniError::new(
                INVALID_ENVIRONMENT,
                "CNI_COMMAND is not set (weft-cni is a CNI plugin: a container runtime runs it)",
            )),
        };
        let env = Env {
            command,
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
        };
        let required: &[&str] = match command {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Gc | Command::Status | Command::Version => &[],
        };
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|n| var(n).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                INVALID_ENVIRONMENT,
                format!(
                    "{} needs {} (not set)",
                    command.as_str(),
                    missing.join(", ")
                ),
            ));
        }
        // Only the variables the verb uses are checked: libcni sends
        // VERSION with CNI_NETNS=dummy when it validates a config, and DEL
        // does not need the namespace.
        match command {
            Command::Add | Command::Check => env.check(true)?,
            Command::Del => env.check(false)?,
            Command::Gc | Command::Status | Command::Version => {}
        }
        Ok(env)
    }

    /// The values' shapes: what the agent would refuse is refused here
    /// with the variable's name.
    fn check(&self, netns: bool) -> Result<(), CniError> {
        let bad = |name: &str, value: &str, rule: &str| {
            Err(CniError::new(
                INVALID_ENVIRONMENT,
                format!("{name}={value:?} is invalid: {rule}"),
            ))
        };
        if let Some(id) = &self.container_id {
            let mut chars = id.chars();
            let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                && id.len() <= 256;
            if !ok {
                return bad(
                    "CNI_CONTAINERID",
                    id,
                    "a letter or digit, then letters, digits, '_', '.' or '-' (at most 256)",
                );
            }
        }
        if let Some(n) = &self.ifname {
            let ok = n.len() <= 15
                && n != "."
                && n != ".."
                && !n
                    .chars()
                    .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
            if !ok {
                return bad(
                    "CNI_IFNAME",
                    n,
                    "an interface name: at most 15 bytes, no '/', ':' or whitespace",
                );
            }
        }
        if let Some(p) = self.netns.as_ref().filter(|_| netns) {
            if !p.starts_with('/') {
                return bad("CNI_NETNS", p, "it must be an absolute path");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::read(|k| m.get(k).cloned())
    }

    #[test]
    fn each_verb_needs_its_variables() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]).unwrap_err();
        assert_eq!(e.code, INVALID_ENVIRONMENT);
        assert_eq!(e.msg, "ADD needs CNI_CONTAINERID, CNI_NETNS (not set)");
        let del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(del.command, Command::Del);
        assert_eq!(del.netns, None);
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        // libcni validates a config with VERSION and CNI_NETNS=dummy.
        assert!(env(&[("CNI_COMMAND", "VERSION"), ("CNI_NETNS", "dummy")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "GC")]).is_ok());
        let e = env(&[("CNI_COMMAND", "FROB")]).unwrap_err();
        assert!(e.msg.contains("\"FROB\""), "{}", e.msg);
        assert!(env(&[]).unwrap_err().msg.contains("CNI_COMMAND"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let base = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert!(env(&base).is_ok());
        for (var, value) in [
            ("CNI_CONTAINERID", "-x"),
            ("CNI_CONTAINERID", "a/b"),
            ("CNI_IFNAME", "much-too-long-name"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_NETNS", "relative/path"),
        ] {
            let mut vars = base.to_vec();
            vars.retain(|(k, _)| *k != var);
            vars.push((var, value));
            let e = env(&vars).unwrap_err();
            assert_eq!(e.code, INVALID_ENVIRONMENT);
            assert!(e.msg.starts_with(&format!("{var}=")), "{}", e.msg);
        }
    }
}
