//! A figure of the report: its Markdown table(s) and the panels of its SVG
//! plot ([`Figure`]), and the number formatting the figures share.
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::svg::{render_svg, Panel};

pub(super) struct Table {
    pub(super) head: Vec<String>,
    /// Right-aligned columns (numbers).
    pub(super) right: Vec<bool>,
    pub(super) rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new(head: &[&str], right: &[bool]) -> Self {
        Table {
            head: head.iter().map(|s| s.to_string()).collect(),
            right: right.to_vec(),
            rows: Vec::new(),
        }
    }
    pub(super) fn markdown(&self) -> String {
        let mut s = format!("| {} |\n|", self.head.join(" | "));
        for i in 0..self.head.len() {
            s.push_str(if self.right.get(i).copied().unwrap_or(false) {
                "---:|"
            } else {
                "---|"
            });
        }
        s.push('\n');
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        s
    }
}

pub(super) struct Figure {
    /// File stem: `<name>.json` → `<name>.svg`.
    pub(super) name: String,
    pub(super) title: String,
    pub(super) machine: String,
    pub(super) command: String,
    /// Sentences under the heading.
    pub(super) notes: Vec<String>,
    pub(super) table: Table,
    /// Further tables, each after a sentence.
    pub(super) more: Vec<(String, Table)>,
    pub(super) panels: Vec<Panel>,
}

impl Figure {
    pub(super) fn new(name: &str, title: &str, v: &Value) -> Self {
        Figure {
            name: name.to_string(),
            title: title.to_string(),
            machine: v["machine"].as_str().unwrap_or("unknown").to_string(),
            command: v["command"].as_str().unwrap_or("unknown").to_string(),
            notes: Vec::new(),
            table: Table::new(&[], &[]),
            more: Vec::new(),
            panels: Vec::new(),
        }
    }

    pub(super) fn markdown(&self, link_dir: &Path) -> String {
        let dir = link_dir.display().to_string();
        let dir = dir.trim_start_matches("./").trim_end_matches('/');
        let link = |f: String| {
            if dir.is_empty() || dir == "." {
                f
            } else {
                format!("{dir}/{f}")
            }
        };
        let mut s = format!("### {}\n\n", self.title);
        let _ = writeln!(s, "Machine: {}  ", self.machine);
        let _ = writeln!(s, "Command: `{}`  ", self.command);
        let json = link(format!("{}.json", self.name));
        let _ = writeln!(s, "Raw samples: [`{json}`]({json})\n");
        for n in &self.notes {
            let _ = writeln!(s, "{n}");
        }
        if !self.notes.is_empty() {
            s.push('\n');
        }
        s.push_str(&self.table.markdown());
        for (text, t) in &self.more {
            let _ = write!(s, "\n{text}\n\n{}", t.markdown());
        }
        let _ = writeln!(
            s,
            "\n![{}]({})\n",
            md_escape(&self.title),
            link(format!("{}.svg", self.name))
        );
        s
    }

    pub(super) fn svg(&self) -> String {
        render_svg(&self.title, &self.panels)
    }
}

pub(super) fn md_escape(s: &str) -> String {
    s.replace('[', "(").replace(']', ")")
}

/// The numbers of a JSON array (others skipped).
pub(super) fn nums(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// A duration in ms with a precision that suits its size.
pub(super) fn fms(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v.abs() < 10.0 {
        format!("{v:.2} ms")
    } else if v.abs() < 100.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

pub(super) fn frange(min: f64, max: f64) -> String {
    if !min.is_finite() {
        return "–".into();
    }
    let a = fms(min);
    let b = fms(max);
    format!("{}–{b}", a.trim_end_matches(" ms"))
}

pub(super) fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b != 0.0 {
        format!("{:.1}×", a / b)
    } else {
        "–".into()
    }
}

/// Distinct values in order of first appearance.
pub(super) fn distinct<T: PartialEq + Clone>(it: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for x in it {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

pub(super) fn tool_label(t: &str) -> String {
    match t {
        "cni-bridge" => "CNI bridge".into(),
        t => t.to_string(),
    }
}
