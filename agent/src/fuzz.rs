//! Property tests ("fuzzing" with proptest) of the agent's own decoders of
//! untrusted input: the local API's line handling (`api::read_request`) and
//! the configuration (TOML file, flags) with `config::resolve`.
//!
//! Case counts are high by default; `PROPTEST_CASES=N` overrides them.

use std::io::Write;
use std::path::PathBuf;

use proptest::prelude::*;
use tokio::io::BufReader;
use weft_common::api::{Request, MAX_LINE};

use crate::api::read_request;
use crate::config::{parse_subnet, resolve, Args, Mode};

fn cases(n: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = n;
    }
    c
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// What the connection handler does with a byte stream: one outcome per
/// line (`Ok` request or `Err(close)`), stopping at a close.
fn lines_of(input: &[u8], chunk: usize) -> Vec<Result<Request, bool>> {
    // A small BufReader capacity splits lines across reads, as a slow
    // client does.
    let mut rd = BufReader::with_capacity(chunk.max(1), input);
    let mut line = Vec::new();
    let mut out = Vec::new();
    block_on(async {
        // Bounded: every call consumes at least one byte or ends.
        for _ in 0..=input.len() {
            match read_request(&mut rd, &mut line)
                .await
                .expect("reading a slice")
            {
                None => break,
                Some(Ok(r)) => out.push(Ok(r)),
                Some(Err(bad)) => {
                    out.push(Err(bad.close));
                    if bad.close {
                        break;
                    }
                }
            }
        }
    });
    out
}

fn arb_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Requests weftctl sends, or close to them.
        r#"\{"op":"(ns_add|ns_del|ns_show|ns_list|status|rm_rf)"(,"(name|ip|publish|x)":("[ -~]{0,12}"|[0-9]{1,6}|null|\["[0-9:./a-z]{0,16}"\]))*\}"#
            .prop_map(String::into_bytes),
        r#"\{"op":"ns_list"\}"#.prop_map(String::into_bytes),
        // Anything at all, invalid UTF-8 and NULs included.
        proptest::collection::vec(any::<u8>(), 0..200),
        "\\PC{0,64}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(cases(10_000))]

    /// Any sequence of lines, read in any piece size: one outcome per line,
    /// in order, a request exactly when the line is one, no panic, no close
    /// for lines within the limit.
    #[test]
    fn api_lines_one_answer_each(lines in proptest::collection::vec(arb_line(), 0..8), chunk in 1usize..64, last_newline in any::<bool>()) {
        let mut input = Vec::new();
        let mut expect = Vec::new();
        let mut last_empty = false;
        for l in &lines {
            // A line is what lies between newlines.
            for part in l.split(|b| *b == b'\n') {
                input.extend_from_slice(part);
                input.push(b'\n');
                expect.push(serde_json::from_slice::<Request>(part).ok());
                last_empty = part.is_empty();
            }
        }
        if !last_newline && !lines.is_empty() {
            // The last line without its newline is still answered; if it
            // was empty, there is no last line.
            input.pop();
            if last_empty {
                expect.pop();
            }
        }
        let got = lines_of(&input, chunk);
        prop_assert_eq!(got.len(), expect.len());
        for (g, e) in got.iter().zip(&expect) {
            match (g, e) {
                (Ok(r), Some(want)) => prop_assert_eq!(r, want),
                (Err(close), None) => prop_assert!(!close),
                _ => prop_assert!(false, "line outcome {:?}, expected {:?}", g, e),
            }
        }
    }
}

proptest! {
    #![proptest_config(cases(16))]

    /// A line over the limit is answered once and closes the connection,
    /// whatever follows it; it is never read to its end into memory.
    #[test]
    fn api_overlong_lines_close(extra in 1usize..4096, fill in any::<u8>(), then in arb_line()) {
        let fill = if fill == b'\n' { b'x' } else { fill };
        let mut input = vec![fill; MAX_LINE + extra];
        input.push(b'\n');
        input.extend(then);
        input.push(b'\n');
        let got = lines_of(&input, 8192);
        prop_assert_eq!(got.len(), 1);
        prop_assert!(matches!(got[0], Err(true)));
    }
}

#[test]
fn api_line_of_exactly_the_limit_is_read() {
    let req = br#"{"op":"ns_list"}"#;
    let mut input = req.to_vec();
    input.resize(MAX_LINE, b' ');
    input.push(b'\n');
    input.extend_from_slice(b"{\"op\":\"status\"}\n");
    let got = lines_of(&input, 8192);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].as_ref().ok(), Some(&Request::NsList));
    assert_eq!(
        got[1].as_ref().ok(),
        Some(&Request::Status { probe: false })
    );
    // One byte more and it is refused, and the connection closes.
    let mut input = req.to_vec();
    input.resize(MAX_LINE + 1, b' ');
    input.push(b'\n');
    input.extend_from_slice(b"{\"op\":\"status\"}\n");
    assert!(matches!(lines_of(&input, 8192)[..], [Err(true)]));
}

// ---------------------------------------------------------------- config

/// A config file of this test thread's own.
fn config_file(text: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "weft-agent-fuzz-{}-{:?}.toml",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut f = std::fs::File::create(&p).expect("create config file");
    f.write_all(text).expect("write config file");
    p
}

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "\"[ -~]{0,24}\"",
        "\"(10\\.244\\.[0-9]{1,3}\\.[0-9]{1,3}/[0-9]{1,2}|198\\.18\\.0\\.[0-9]{1,3}(:[0-9]{1,5})?|h[0-9]|[a-z0-9-]{1,10})\"",
        "-?[0-9]{1,20}",
        "(true|false)",
        "\\[(\"[ -~&&[^\"\\\\]]{0,16}\"(, )?){0,3}\\]",
        "\\{\\}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}",
    ]
}

fn toml_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("node-name".to_string()),
        Just("controller".to_string()),
        Just("subnet".to_string()),
        Just("underlay-iface".to_string()),
        Just("public-ip".to_string()),
        Just("tls-dir".to_string()),
        Just("state-dir".to_string()),
        Just("run-dir".to_string()),
        Just("netns-dir".to_string()),
        Just("direct-routing".to_string()),
        Just("ns-pool".to_string()),
        Just("metrics-listen".to_string()),
        "[a-z-]{1,12}",
    ]
}

proptest! {
    #![proptest_config(cases(10_000))]

    /// Arbitrary files (bytes, or TOML with the agent's keys and values of
    /// any type) never panic `resolve`; a refused file is named in the
    /// error; an accepted one gives a config the agent can run with.
    #[test]
    fn config_files_never_panic_and_accepted_ones_are_sound(
        file in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec((toml_key(), toml_value()), 0..6).prop_map(|kv| {
                kv.iter().map(|(k, v)| format!("{k} = {v}\n")).collect::<String>().into_bytes()
            }),
        ],
    ) {
        let path = config_file(&file);
        let r = resolve(Args { config: Some(path.clone()), ..Default::default() });
        let text_ok = std::str::from_utf8(&file).is_ok_and(|t| toml::from_str::<toml::Table>(t).is_ok());
        match r {
            Ok(c) => {
                prop_assert!(text_ok, "accepted a file that is not TOML: {:?}", String::from_utf8_lossy(&file));
                prop_assert!(weft_common::validate_name(&c.node_name).is_ok());
                match &c.mode {
                    Mode::Standalone { subnet: s } => {
                        prop_assert!(s.network() == s.ip() && s.prefix() <= 30);
                    }
                    Mode::Cluster(cl) => {
                        prop_assert!(!cl.controllers.is_empty());
                        for ctl in &cl.controllers {
                            prop_assert!(weft_common::client::split_controller(ctl).is_some());
                        }
                    }
                }
                prop_assert!(c.ns_pool <= crate::model::MAX_POOL);
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if !text_ok {
                    prop_assert!(msg.contains(&path.display().to_string()), "{}", msg);
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }

    /// `--subnet` values: no panic; an accepted one has room for the
    /// gateway and a namespace; an error names the value.
    #[test]
    fn subnet_values(s in prop_oneof!["\\PC{0,24}", "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}/[0-9]{1,3}"]) {
        match parse_subnet(&s) {
            Ok(n) => prop_assert!(n.network() == n.ip() && n.prefix() <= 30),
            Err(e) => prop_assert!(e.to_string().contains(&s) || e.to_string().contains(&format!("{s:?}")), "{}", e),
        }
    }
}
