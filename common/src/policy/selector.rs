//! Label selectors, as Kubernetes has them: `matchLabels` (every pair
//! present) AND `matchExpressions` (every expression true). The empty
//! selector matches everything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Labels;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Expression>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expression {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }
}

impl Expression {
    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match self.operator {
            Operator::In => v.is_some_and(|v| self.values.contains(v)),
            // Kubernetes: NotIn also matches when the key is absent.
            Operator::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::from_pairs as l;

    fn expr(key: &str, operator: Operator, values: &[&str]) -> Selector {
        Selector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![Expression {
                key: key.into(),
                operator,
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn operators_as_kubernetes_defines_them() {
        let web = l(&[("app", "web"), ("tier", "front")]);
        let bare = l(&[]);
        assert!(Selector::default().matches(&web) && Selector::default().matches(&bare));
        let s = Selector {
            match_labels: l(&[("app", "web")]),
            ..Default::default()
        };
        assert!(s.matches(&web) && !s.matches(&bare));
        let cases = [
            (expr("app", Operator::In, &["web", "db"]), true, false),
            (expr("app", Operator::In, &["db"]), false, false),
            (expr("app", Operator::NotIn, &["db"]), true, true),
            (expr("app", Operator::NotIn, &["web"]), false, true),
            (expr("tier", Operator::Exists, &[]), true, false),
            (expr("tier", Operator::DoesNotExist, &[]), false, true),
        ];
        for (sel, on_web, on_bare) in cases {
            assert_eq!(
                (sel.matches(&web), sel.matches(&bare)),
                (on_web, on_bare),
                "{sel:?}"
            );
        }
        // matchLabels AND matchExpressions.
        let both = Selector {
            match_labels: l(&[("app", "web")]),
            match_expressions: expr("tier", Operator::In, &["back"]).match_expressions,
        };
        assert!(!both.matches(&web));
    }
}
