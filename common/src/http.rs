//! The daemons' small HTTP listener (`--metrics-listen ADDR`):
//!
//! - `GET /metrics`: every metric of a [`Registry`] in the OpenMetrics text format;
//! - `GET /healthz`: `200 ok` while the daemon's runtime makes progress (a
//!   task on it ticks every [`TICK`]; no tick for [`STALL_LIMIT`] is `503`);
//! - `GET /readyz`: `200 ready`, or `503` with one line saying what is not ready;
//! - any other path `404`, any other method `405`.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections at once (more wait in
//! the listen backlog), [`HEADER_TIMEOUT`] to send a request's headers,
//! one request per connection, [`CONNECTION_LIMIT`] for the whole exchange,
//! and the readiness check is cut off after [`READY_TIMEOUT`]. The listener
//! runs on a thread and runtime of its own: a daemon whose cores are busy
//! (a registration storm) still answers at once, and nothing here waits on
//! the daemon's locks.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time one connection may take from accept to the end of the response.
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(30);
/// The longest `/readyz` waits for the readiness check.
pub const READY_TIMEOUT: Duration = Duration::from_millis(500);

/// How often the daemon's runtime proves it is alive.
pub const TICK: Duration = Duration::from_millis(250);
/// No tick for this long and `/healthz` says the daemon is stalled.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);

/// The content type of `/metrics`.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// What is not ready, as one line; `Ok` when ready.
pub type ReadyFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
/// The daemon's readiness check.
pub type ReadyCheck = Arc<dyn Fn() -> ReadyFuture + Send + Sync>;

/// What the listener serves.
#[derive(Clone)]
pub struct Endpoints {
    pub registry: Arc<Registry>,
    pub ready: ReadyCheck,
    /// Set by [`spawn`]: the daemon runtime's last sign of life.
    pub heartbeat: Heartbeat,
}

/// The last time a task on the daemon's runtime ran. The default never
/// ticks and never counts as stalled (for tests of the routing).
#[derive(Clone, Default)]
pub struct Heartbeat(Option<Arc<(std::time::Instant, std::sync::atomic::AtomicU64)>>);

impl Heartbeat {
    /// Starts ticking on the current runtime.
    fn start() -> Heartbeat {
        let beat = Arc::new((
            std::time::Instant::now(),
            std::sync::atomic::AtomicU64::new(0),
        ));
        let b = beat.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let ms = b.0.elapsed().as_millis() as u64;
                b.1.store(ms, std::sync::atomic::Ordering::Relaxed);
            }
        });
        Heartbeat(Some(beat))
    }

    /// How long since the last tick, when that is over [`STALL_LIMIT`].
    fn stalled(&self) -> Option<Duration> {
        self.stalled_at(std::time::Instant::now())
    }

    fn stalled_at(&self, now: std::time::Instant) -> Option<Duration> {
        let b = self.0.as_ref()?;
        let last = Duration::from_millis(b.1.load(std::sync::atomic::Ordering::Relaxed));
        let since = now.saturating_duration_since(b.0).saturating_sub(last);
        (since > STALL_LIMIT).then_some(since)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("--metrics-listen {addr:?}: expected IP:PORT, e.g. 0.0.0.0:7472 or [::1]:7472")]
    BadAddress { addr: String },
    #[error("--metrics-listen {addr}: cannot listen: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Parses a `--metrics-listen` value (IP:PORT).
pub fn parse_listen(addr: &str) -> Result<SocketAddr, HttpError> {
    addr.trim().parse().map_err(|_| HttpError::BadAddress {
        addr: addr.to_string(),
    })
}

/// Binds the listener; an error names the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves `listener` until the process ends, on a thread with a runtime of
/// its own; the heartbeat ticks on the caller's runtime (call from inside it).
pub fn spawn(listener: TcpListener, mut endpoints: Endpoints) -> std::io::Result<()> {
    if let Ok(a) = listener.local_addr() {
        info!("metrics and health checks on http://{a}/metrics, /healthz, /readyz");
    }
    endpoints.heartbeat = Heartbeat::start();
    let listener = listener.into_std()?;
    std::thread::Builder::new()
        .name("weft-http".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!("metrics listener: cannot start its runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => serve(l, endpoints).await,
                    Err(e) => warn!("metrics listener: {e}"),
                }
            });
        })?;
    Ok(())
}

async fn serve(listener: TcpListener, endpoints: Endpoints) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let endpoints = Arc::new(endpoints);
    let mut errors = 0u64;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                errors += 1;
                if errors <= 3 || errors.is_power_of_two() {
                    warn!("metrics listener: accept failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ep = endpoints.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let ep = ep.clone();
                async move { Ok::<_, Infallible>(handle(&req, &ep).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIMIT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!("metrics connection from {peer}: {e}"),
                Err(_) => debug!(
                    "metrics connection from {peer}: took longer than {CONNECTION_LIMIT:?}; closed"
                ),
            }
        });
    }
}

async fn handle(req: &Request<Incoming>, ep: &Endpoints) -> Response<Full<Bytes>> {
    let (status, ctype, body) = respond(req.method(), req.uri().path(), ep).await;
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
    }
    r
}

/// Status, content type and body for a request.
pub async fn respond(
    method: &Method,
    path: &str,
    ep: &Endpoints,
) -> (StatusCode, &'static str, String) {
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    if !known {
        return (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        );
    }
    if method != Method::GET {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            format!("method {method} not allowed: only GET\n"),
        );
    }
    match path {
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &ep.registry) {
                Ok(()) => (StatusCode::OK, OPENMETRICS, out),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    format!("cannot encode metrics: {e}\n"),
                ),
            }
        }
        "/healthz" => match ep.heartbeat.stalled() {
            None => (StatusCode::OK, TEXT, "ok\n".into()),
            Some(d) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!(
                    "stalled: the daemon's runtime has not run for {:.1} s\n",
                    d.as_secs_f64()
                ),
            ),
        },
        _ => match tokio::time::timeout(READY_TIMEOUT, (ep.ready)()).await {
            Ok(Ok(())) => (StatusCode::OK, TEXT, "ready\n".into()),
            Ok(Err(why)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {}\n", one_line(&why)),
            ),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: the readiness check took longer than {READY_TIMEOUT:?}\n"),
            ),
        },
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A readiness check from a synchronous function.
pub fn ready_fn(f: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> ReadyCheck {
    Arc::new(move || {
        let r = f();
        Box::pin(async move { r })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};

    fn endpoints(ready: Arc<AtomicBool>) -> Endpoints {
        let mut reg = Registry::default();
        let c = Counter::<u64>::default();
        c.inc_by(3);
        reg.register("weft_test_things", "Things counted", c);
        Endpoints {
            heartbeat: Heartbeat::default(),
            registry: Arc::new(reg),
            ready: ready_fn(move || {
                if ready.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("the thing\nis not there".into())
                }
            }),
        }
    }

    #[tokio::test]
    async fn routing() {
        let ready = Arc::new(AtomicBool::new(false));
        let ep = endpoints(ready.clone());
        let (s, _, _) = respond(&Method::GET, "/nope", &ep).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _, _) = respond(&Method::POST, "/metrics", &ep).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        let (s, _, b) = respond(&Method::GET, "/healthz", &ep).await;
        assert_eq!((s, b.as_str()), (StatusCode::OK, "ok\n"));
        let (s, _, b) = respond(&Method::GET, "/readyz", &ep).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(b, "not ready: the thing is not there\n");
        ready.store(true, Ordering::SeqCst);
        let (s, _, b) = respond(&Method::GET, "/readyz", &ep).await;
        assert_eq!((s, b.as_str()), (StatusCode::OK, "ready\n"));
        let (s, ct, b) = respond(&Method::GET, "/metrics", &ep).await;
        assert_eq!((s, ct), (StatusCode::OK, OPENMETRICS));
        assert!(b.contains("weft_test_things_total 3"), "{b}");
        assert!(b.ends_with("# EOF\n"), "{b}");
    }

    #[tokio::test]
    async fn a_stalled_runtime_fails_the_health_check() {
        let beat = Heartbeat::start();
        tokio::time::sleep(TICK * 2).await;
        let now = std::time::Instant::now();
        assert_eq!(beat.stalled_at(now), None, "ticking");
        let later = beat.stalled_at(now + STALL_LIMIT * 2).expect("stalled");
        assert!(later > STALL_LIMIT, "{later:?}");
        let ep = Endpoints {
            heartbeat: beat,
            ..endpoints(Arc::new(AtomicBool::new(true)))
        };
        let (s, _, b) = respond(&Method::GET, "/healthz", &ep).await;
        assert_eq!((s, b.as_str()), (StatusCode::OK, "ok\n"));
        // What a stalled daemon answers.
        let stalled = Heartbeat(Some(Arc::new((now, std::sync::atomic::AtomicU64::new(0)))));
        assert!(stalled.stalled_at(now + STALL_LIMIT * 3).is_some());
    }

    #[tokio::test]
    async fn slow_readiness_is_cut_off() {
        let ep = Endpoints {
            heartbeat: Heartbeat::default(),
            registry: Arc::new(Registry::default()),
            ready: Arc::new(|| {
                Box::pin(async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(())
                })
            }),
        };
        let t = std::time::Instant::now();
        let (s, _, b) = respond(&Method::GET, "/readyz", &ep).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(b.contains("took longer"), "{b}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn bad_addresses_are_named() {
        assert!(parse_listen("127.0.0.1:7472").is_ok());
        let e = parse_listen("localhost").unwrap_err().to_string();
        assert!(e.contains("\"localhost\"") && e.contains("IP:PORT"), "{e}");
    }

    /// Over a real socket on loopback: status lines and headers.
    #[test]
    fn over_tcp() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(bind("127.0.0.1:0".parse().unwrap())).unwrap();
        let addr = listener.local_addr().unwrap();
        let taken = rt.block_on(bind(addr)).unwrap_err().to_string();
        assert!(taken.contains(&addr.to_string()), "{taken}");
        rt.block_on(async {
            spawn(listener, endpoints(Arc::new(AtomicBool::new(true)))).unwrap();
        });
        let get = |req: &str| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let r = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains(OPENMETRICS), "{r}");
        let r = get("DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        assert!(r.to_ascii_lowercase().contains("allow: get"), "{r}");
        let r = get("GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = get("garbage\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400") || r.is_empty(), "{r}");
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}
