//! The daemons' structured log events ([`weft_common::events`]), read back
//! from their log files: what the benchmarks measure by, instead of the
//! prose of a log line.
//!
//! An event is a log line with an `event` field. With `--log-format json`
//! (what the benchmarks' labs use, [`crate::LabOpts::log_format`]) that is
//! one JSON object per line; in text logs the fields follow the message
//! as `event="peer_change" peer="h4" …`. Both are read.
//!
//! ```no_run
//! use std::time::Duration;
//! use weft_common::events::OVERLAY_PROGRAMMED;
//! use weft_tests::events::EventLog;
//! # let h = weft_tests::Lab::new(weft_tests::LabOpts::hosts(1)).host(1).clone();
//! let mut log = EventLog::from_now(h.agent_log());
//! let done = log.wait(Duration::from_secs(30), |events| {
//!     events.iter().find(|e| e.is(OVERLAY_PROGRAMMED)).cloned()
//! });
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::logfile::Follow;

/// One structured event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When it was logged: Unix seconds (the daemons' wall clock, UTC).
    pub time: f64,
    /// Its `event` field: one of [`weft_common::events`].
    pub name: String,
    /// Its other fields (not the message, level, target or timestamp).
    pub fields: Map<String, Value>,
}

impl Event {
    /// Whether this is the event `name`.
    pub fn is(&self, name: &str) -> bool {
        self.name == name
    }

    /// A field as text (a string field, or a number or bool written out).
    pub fn str(&self, key: &str) -> Option<String> {
        match self.fields.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            v => Some(v.to_string()),
        }
    }

    /// Whether field `key` is the text `value`.
    pub fn has(&self, key: &str, value: &str) -> bool {
        self.str(key).as_deref() == Some(value)
    }

    /// A numeric field (also one written as a string).
    pub fn f64(&self, key: &str) -> Option<f64> {
        match self.fields.get(key)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A whole-number field.
    pub fn u64(&self, key: &str) -> Option<u64> {
        let v = self.f64(key)?;
        (v >= 0.0 && v.fract() == 0.0).then_some(v as u64)
    }
}

/// Fields of a JSON log line that are the logger's, not the event's.
const LOGGER_FIELDS: [&str; 7] = [
    "timestamp",
    "level",
    "target",
    "message",
    "event",
    "threadName",
    "threadId",
];

/// The event a log line carries, if it is one (JSON or text form).
pub fn parse_line(line: &str) -> Option<Event> {
    let line = line.trim();
    if line.starts_with('{') {
        return parse_json(line);
    }
    parse_text(line)
}

fn parse_json(line: &str) -> Option<Event> {
    let Value::Object(mut o) = serde_json::from_str(line).ok()? else {
        return None;
    };
    let name = o.get("event")?.as_str()?.to_string();
    let time = rfc3339(o.get("timestamp")?.as_str()?)?;
    for k in LOGGER_FIELDS {
        o.remove(k);
    }
    Some(Event {
        time,
        name,
        fields: o,
    })
}

/// `2025-06-01T10:11:12.123456Z  INFO target: message event="x" k=v …`.
fn parse_text(line: &str) -> Option<Event> {
    let time = rfc3339(line.split_whitespace().next()?)?;
    let at = line.find(" event=")?;
    let mut fields = Map::new();
    let mut rest = line[at + 1..].trim_start();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        if key.is_empty() || key.contains(char::is_whitespace) {
            return None;
        }
        let (value, after) = text_value(after)?;
        fields.insert(key.to_string(), value);
        rest = after.trim_start();
    }
    let name = match fields.remove("event")? {
        Value::String(s) => s,
        _ => return None,
    };
    Some(Event { time, name, fields })
}

/// One field value of a text log line and what follows it: a quoted
/// string (Rust's `Debug` form, as the logger writes strings), or a bare
/// word (a number, a bool, or a value written with `Display`).
fn text_value(s: &str) -> Option<(Value, &str)> {
    if let Some(body) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Some((Value::String(out), &body[i + 1..])),
                '\\' => match chars.next()?.1 {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '0' => out.push('\0'),
                    'u' => {
                        // \u{…}
                        let hex: String = chars
                            .by_ref()
                            .map(|(_, c)| c)
                            .skip(1)
                            .take_while(|&c| c != '}')
                            .collect();
                        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    other => out.push(other),
                },
                c => out.push(c),
            }
        }
        return None;
    }
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    let word = &s[..end];
    let v = match word {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        w => match w.parse::<u64>() {
            Ok(n) => Value::from(n),
            Err(_) => match w.parse::<f64>() {
                Ok(f) if f.is_finite() => Value::from(f),
                _ => Value::String(w.to_string()),
            },
        },
    };
    Some((v, &s[end..]))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// An RFC 3339 UTC timestamp (`2025-06-01T10:11:12.123456Z`, what the
/// daemons' logs start with) as Unix seconds.
pub fn rfc3339(ts: &str) -> Option<f64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let h: i64 = t.next()?.parse().ok()?;
    let mi: i64 = t.next()?.parse().ok()?;
    let s: f64 = t.next()?.parse().ok()?;
    Some((days_from_civil(y, mo, da) * 86400 + h * 3600 + mi * 60) as f64 + s)
}

/// The events of one log file, read as it grows.
#[derive(Debug)]
pub struct EventLog {
    file: Follow,
    events: Vec<Event>,
}

impl EventLog {
    /// The events of `path` from its beginning.
    pub fn from_start(path: impl Into<PathBuf>) -> EventLog {
        EventLog {
            file: Follow::from_start(path),
            events: Vec::new(),
        }
    }

    /// The events `path` gains from now on.
    pub fn from_now(path: impl Into<PathBuf>) -> EventLog {
        EventLog {
            file: Follow::from_now(path),
            events: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Reads the whole lines the file gained; returns every event so far.
    pub fn update(&mut self) -> &[Event] {
        let new = self.file.new_lines();
        self.events.extend(new.iter().filter_map(|l| parse_line(l)));
        &self.events
    }

    /// The events read so far.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Reads as the file grows until `found` returns something, every
    /// 20 ms for at most `timeout`.
    pub fn wait<T>(
        &mut self,
        timeout: Duration,
        mut found: impl FnMut(&[Event]) -> Option<T>,
    ) -> Option<T> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(v) = found(self.update()) {
                return Some(v);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The first event named `name` for which `pred` holds, at or after index
/// `from` of `events`: its index and itself.
pub fn first<'a>(
    events: &'a [Event],
    from: usize,
    name: &str,
    mut pred: impl FnMut(&Event) -> bool,
) -> Option<(usize, &'a Event)> {
    events
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, e)| e.is(name) && pred(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = rfc3339("2024-02-29T23:59:58.500000Z").unwrap();
        assert!((t - 1_709_251_198.5).abs() < 1e-6, "{t}");
        assert!((rfc3339("1970-01-01T00:00:01Z").unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(rfc3339("=== weft-tests"), None);
    }

    #[test]
    fn json_lines() {
        let e = parse_line(
            r#"{"timestamp":"1970-01-01T00:00:02.5Z","level":"INFO","message":"overlay programmed: 5 peers","event":"overlay_programmed","peers":5,"changes":12,"ms":3.25,"why":"controller","target":"weft_agent::agent"}"#,
        )
        .unwrap();
        assert_eq!(e.name, "overlay_programmed");
        assert!((e.time - 2.5).abs() < 1e-9);
        assert_eq!(e.u64("peers"), Some(5));
        assert_eq!(e.f64("ms"), Some(3.25));
        assert!(e.has("why", "controller"));
        assert_eq!(e.fields.len(), 4, "{:?}", e.fields);
        assert_eq!(
            parse_line(r#"{"timestamp":"1970-01-01T00:00:02Z","message":"x"}"#),
            None
        );
    }

    #[test]
    fn text_lines() {
        let e = parse_line(
            "1970-01-01T00:00:03.000001Z  INFO weft_agent::overlay: route add 10.244.4.0/24 via 10.244.4.0: peer h4 joined (controller) event=\"peer_change\" peer=\"h4\" subnet=10.244.4.0/24 change=\"joined\" why=\"a \\\"quoted\\\" word\" n=7",
        )
        .unwrap();
        assert_eq!(e.name, "peer_change");
        assert!(e.has("peer", "h4") && e.has("change", "joined"));
        assert!(e.has("subnet", "10.244.4.0/24"));
        assert!(e.has("why", "a \"quoted\" word"));
        assert_eq!(e.u64("n"), Some(7));
        // Prose alone is no event, even when it says the words.
        assert_eq!(
            parse_line("1970-01-01T00:00:03Z  INFO x: overlay programmed: 5 peers"),
            None
        );
        assert_eq!(parse_line("=== weft-tests: starting weft-agent"), None);
    }

    #[test]
    fn a_log_is_read_as_it_grows_whole_lines_only() {
        use std::io::Write;
        let dir = crate::tempdir::TempDir::new("events");
        let p = dir.path().join("a.log");
        let mut f = std::fs::File::create(&p).unwrap();
        writeln!(f, r#"{{"timestamp":"1970-01-01T00:00:01Z","event":"a"}}"#).unwrap();
        let mut log = EventLog::from_start(&p);
        assert_eq!(log.update().len(), 1);
        write!(f, r#"{{"timestamp":"1970-01-01T00:00:02Z","event":"b"}}"#).unwrap();
        assert_eq!(log.update().len(), 1, "half a line is not read");
        writeln!(f).unwrap();
        let names: Vec<&str> = log.update().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(first(log.events(), 1, "a", |_| true), None);
        assert_eq!(EventLog::from_now(&p).update().len(), 0);
    }
}
