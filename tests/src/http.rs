//! A tiny blocking HTTP/1.1 client for the daemons' `--metrics-listen`
//! endpoints (`/metrics`, `/healthz`, `/readyz`), run inside a namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::in_netns;

/// Port of the controllers' metrics listener in the lab.
pub const CONTROLLER_METRICS_PORT: u16 = 7471;
/// Port of the agents' metrics listener in the lab.
pub const AGENT_METRICS_PORT: u16 = 7472;

/// Most bytes read from one response.
const MAX_RESPONSE: u64 = 16 << 20;

/// `GET path` from `addr`, connecting from inside namespace `ns` (a path or
/// a `/run/netns` name): status code and body. The whole exchange (connect,
/// send, read to the end) is bounded by `timeout`.
pub fn get_in(
    ns: impl AsRef<Path>,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String)> {
    let path = path.to_string();
    in_netns(ns, move || get(addr, &path, timeout))?
}

/// [`get_in`] in the caller's own namespace.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect to {addr}"))?;
    s.set_write_timeout(Some(left()))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: weft-tests\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("send request to {addr}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        s.set_read_timeout(Some(left()))?;
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) => bail!("read response to GET {path} from {addr}: {e}"),
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() as u64 > MAX_RESPONSE {
            bail!("response to GET {path} from {addr} exceeds {MAX_RESPONSE} bytes");
        }
        if Instant::now() >= deadline {
            bail!("GET {path} from {addr}: no complete response within {timeout:?}");
        }
    }
    parse_response(&raw).with_context(|| format!("response to GET {path} from {addr}"))
}

/// Status code and body of a complete HTTP/1.1 response (plain or chunked).
pub fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no end of headers in {} bytes: {text:?}", raw.len());
    };
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        bail!("bad status line {status_line:?}");
    };
    if !version.starts_with("HTTP/1.") {
        bail!("bad status line {status_line:?}");
    }
    let code: u16 = code
        .parse()
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = s.split_once("\r\n") else {
            bail!("truncated chunked body");
        };
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size {
            bail!("truncated chunk");
        }
        out.push_str(&rest[..size]);
        s = rest[size..].trim_start_matches("\r\n");
    }
}

/// The value of sample `name_with_labels` ([`metric_value`]) in
/// `/metrics` of `addr`, scraped from namespace `ns`; an error if the
/// request fails, does not answer 200 or lacks the sample.
pub fn metric_in(
    ns: impl AsRef<Path>,
    addr: SocketAddr,
    name_with_labels: &str,
    timeout: Duration,
) -> Result<f64> {
    let (code, body) = get_in(ns, addr, "/metrics", timeout)?;
    if code != 200 {
        bail!("GET /metrics from {addr}: {code}: {body}");
    }
    metric_value(&body, name_with_labels)
        .with_context(|| format!("no {name_with_labels} in /metrics of {addr}:\n{body}"))
}

/// Polls `/readyz` of `addr` from namespace `ns` until it answers 200, for
/// at most `timeout`; the error is the last answer.
pub fn wait_ready_in(ns: impl AsRef<Path>, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let ns = ns.as_ref();
    let mut last = String::from("no answer yet");
    let each = timeout.min(Duration::from_secs(5));
    let ok = crate::wait_until(timeout, || match get_in(ns, addr, "/readyz", each) {
        Ok((200, _)) => true,
        Ok((code, body)) => {
            last = format!("{code}: {body}");
            false
        }
        Err(e) => {
            last = format!("{e:#}");
            false
        }
    });
    if !ok {
        bail!("{addr} not ready within {timeout:?}: {last}");
    }
    Ok(())
}

/// The value of one sample in a Prometheus/OpenMetrics text body, e.g.
/// `metric_value(body, "weft_agent_endpoints")` or
/// `metric_value(body, r#"weft_agent_peers{mode="vxlan"}"#)`. The name
/// must match the sample's name and labels exactly as written.
pub fn metric_value(body: &str, name_with_labels: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name_with_labels)?;
        let rest = rest.strip_prefix(' ')?;
        let v = rest.split_whitespace().next()?;
        match v {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            v => v.parse().ok(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses_and_samples() {
        let r = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 12\r\n\r\nnot ready: x";
        assert_eq!(parse_response(r).unwrap(), (503, "not ready: x".into()));
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(r).unwrap(), (200, "abcde".into()));
        assert!(parse_response(b"garbage").is_err());
        let body = "# HELP weft_agent_peers x\nweft_agent_peers{mode=\"vxlan\"} 2\nweft_agent_peers{mode=\"direct\"} 0\nweft_agent_endpoints 3\nweft_agent_endpoints_x 9\n# EOF\n";
        assert_eq!(metric_value(body, "weft_agent_endpoints"), Some(3.0));
        assert_eq!(
            metric_value(body, r#"weft_agent_peers{mode="vxlan"}"#),
            Some(2.0)
        );
        assert_eq!(metric_value(body, "weft_agent_peers"), None);
        assert_eq!(metric_value(body, "weft_agent_nothing"), None);
    }
}
