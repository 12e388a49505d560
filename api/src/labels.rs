//! Labels on endpoints: `app=web`, `tier=front`. The syntax is
//! Kubernetes': a key is an optional DNS-subdomain prefix and a slash
//! (`example.com/app`) before a name of at most 63 characters, a value at
//! most 63 characters (may be empty); names and values begin and end with
//! a letter or digit and hold only letters, digits, `-`, `_` and `.`.
//! Operators type them as `KEY=VALUE` to set and `KEY-` to remove.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// An endpoint's labels, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// Most labels one endpoint may carry.
pub const MAX_LABELS: usize = 64;
const MAX_NAME: usize = 63;
const MAX_PREFIX: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("label key {0:?}: {1}")]
    Key(String, &'static str),
    #[error("label {0}={1:?}: the value {2}")]
    Value(String, String, &'static str),
    #[error("label {0:?}: expected KEY=VALUE to set or KEY- to remove")]
    Form(String),
    #[error("{0} labels: at most {MAX_LABELS} per endpoint")]
    TooMany(usize),
}

/// Refuses a key that is not `[PREFIX/]NAME`.
pub fn check_key(key: &str) -> Result<(), LabelError> {
    let bad = |why| Err(LabelError::Key(key.to_string(), why));
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > MAX_PREFIX {
            return bad("the prefix before '/' must be a DNS name of 1 to 253 characters");
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !p.split('.').all(label_ok) {
            return bad("the prefix before '/' must be a lower-case DNS name (example.com)");
        }
    }
    if name.is_empty() {
        return bad("the name is empty");
    }
    if let Some(why) = name_problem(name) {
        return bad(why);
    }
    Ok(())
}

/// Refuses a value that is not empty or a valid name.
pub fn check_value(key: &str, value: &str) -> Result<(), LabelError> {
    if value.is_empty() {
        return Ok(());
    }
    match name_problem(value) {
        Some(why) => Err(LabelError::Value(key.to_string(), value.to_string(), why)),
        None => Ok(()),
    }
}

fn name_problem(s: &str) -> Option<&'static str> {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if s.len() > MAX_NAME {
        Some("is longer than 63 characters")
    } else if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Some("may hold only letters, digits, '-', '_' and '.'")
    } else if !alnum(s.chars().next()) || !alnum(s.chars().last()) {
        Some("must begin and end with a letter or digit")
    } else {
        None
    }
}

/// Refuses a set of labels with a bad key or value, or too many.
pub fn check(labels: &Labels) -> Result<(), LabelError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooMany(labels.len()));
    }
    for (k, v) in labels {
        check_key(k)?;
        check_value(k, v)?;
    }
    Ok(())
}

/// One change an operator types: `KEY=VALUE` or `KEY-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelEdit {
    Set(String, String),
    Remove(String),
}

impl FromStr for LabelEdit {
    type Err = LabelError;

    fn from_str(s: &str) -> Result<LabelEdit, LabelError> {
        if let Some((k, v)) = s.split_once('=') {
            check_key(k)?;
            check_value(k, v)?;
            return Ok(LabelEdit::Set(k.to_string(), v.to_string()));
        }
        if let Some(k) = s.strip_suffix('-') {
            if check_key(k).is_ok() {
                return Ok(LabelEdit::Remove(k.to_string()));
            }
        }
        Err(LabelError::Form(s.to_string()))
    }
}

impl fmt::Display for LabelEdit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelEdit::Set(k, v) => write!(f, "{k}={v}"),
            LabelEdit::Remove(k) => write!(f, "{k}-"),
        }
    }
}

/// `KEY=VALUE` arguments (`--label`) as labels; a key given twice is
/// refused rather than one of them silently winning.
pub fn parse_set(args: &[String]) -> Result<Labels, LabelError> {
    let mut out = Labels::new();
    for a in args {
        match a.parse()? {
            LabelEdit::Set(k, v) => {
                if out.insert(k.clone(), v).is_some() {
                    return Err(LabelError::Key(k, "is given twice"));
                }
            }
            LabelEdit::Remove(_) => return Err(LabelError::Form(a.clone())),
        }
    }
    check(&out)?;
    Ok(out)
}

/// Labels from `(key, value)` pairs (unchecked).
pub fn from_pairs(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `app=web,tier=front` (empty: none), as `ns list` shows them.
pub fn display(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_values_and_edits() {
        for k in ["app", "a", "app.kubernetes.io/name", "x/y_z-1", "A.b"] {
            check_key(k).unwrap_or_else(|e| panic!("{k}: {e}"));
        }
        for k in [
            "",
            "-a",
            "a-",
            "a b",
            "/a",
            "a/",
            "Ex.com/a",
            "a/b/c",
            &"x".repeat(64),
        ] {
            assert!(check_key(k).is_err(), "{k:?} accepted");
        }
        assert_eq!(
            "app=web".parse::<LabelEdit>().unwrap(),
            LabelEdit::Set("app".into(), "web".into())
        );
        assert_eq!(
            "app=".parse::<LabelEdit>().unwrap(),
            LabelEdit::Set("app".into(), "".into())
        );
        assert_eq!(
            "app-".parse::<LabelEdit>().unwrap(),
            LabelEdit::Remove("app".into())
        );
        // A key that ends in '-' is not a key, so "a--" is no removal.
        assert_eq!(
            "a--".parse::<LabelEdit>().unwrap_err().to_string(),
            "label \"a--\": expected KEY=VALUE to set or KEY- to remove"
        );
        assert_eq!(
            "app=we b".parse::<LabelEdit>().unwrap_err().to_string(),
            "label app=\"we b\": the value may hold only letters, digits, '-', '_' and '.'"
        );
        assert_eq!(
            "-x=1".parse::<LabelEdit>().unwrap_err().to_string(),
            "label key \"-x\": must begin and end with a letter or digit"
        );
        let two = ["a=1".to_string(), "a=2".to_string()];
        assert_eq!(
            parse_set(&two).unwrap_err().to_string(),
            "label key \"a\": is given twice"
        );
        let many: Vec<String> = (0..65).map(|i| format!("k{i}=v")).collect();
        assert!(matches!(parse_set(&many), Err(LabelError::TooMany(65))));
        let set = parse_set(&["tier=front".into(), "app=web".into()]).unwrap();
        assert_eq!(display(&set), "app=web,tier=front");
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_refused_and_set_edits_round_trip(s in "\\PC{0,80}") {
            if let Ok(e) = s.parse::<LabelEdit>() {
                prop_assert_eq!(e.to_string().parse::<LabelEdit>().unwrap(), e.clone());
                if let LabelEdit::Set(k, v) = e {
                    prop_assert!(check_key(&k).is_ok() && check_value(&k, &v).is_ok());
                }
            }
        }

        #[test]
        fn valid_labels_are_accepted(k in "[a-z][a-z0-9._-]{0,20}[a-z0-9]", v in "([A-Za-z0-9]([A-Za-z0-9_.-]{0,20}[A-Za-z0-9])?)?") {
            let edit: LabelEdit = format!("{k}={v}").parse().unwrap();
            prop_assert_eq!(edit, LabelEdit::Set(k, v));
        }
    }
}
