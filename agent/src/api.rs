//! The local API on `<run-dir>/agent.sock` that `weftctl` talks to: one JSON
//! request per line, one JSON response per line (see `weft_common::api`).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};
use weft_common::api::{AttachmentKey, ErrorCode, Request, Response, MAX_LINE};

use crate::agent::Agent;
use crate::endpoints::EndpointError;
use crate::telemetry::metrics;

/// Binds the socket, mode 0600. Refuses to take over a socket another agent
/// is still serving.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod {}", dir.display()))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another weft-agent is already serving {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("remove stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, agent: Arc<Agent>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let agent = agent.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_conn(stream, agent).await {
                        debug!("api connection ended: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("api accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// A line from a client that is not a request: the error to answer, and
/// whether to close the connection after it (a line over [`MAX_LINE`] is not
/// read to its end).
pub struct BadLine {
    pub response: Response,
    pub close: bool,
}

/// Reads one line (at most [`MAX_LINE`] bytes before its newline) into
/// `line` and decodes it; `Ok(None)` at the end of the stream.
pub async fn read_request<R: AsyncBufRead + Unpin>(
    rd: &mut R,
    line: &mut Vec<u8>,
) -> io::Result<Option<Result<Request, BadLine>>> {
    line.clear();
    let n = rd.take(MAX_LINE as u64 + 1).read_until(b'\n', line).await?;
    if n == 0 {
        return Ok(None);
    }
    if line.len() > MAX_LINE && line.last() != Some(&b'\n') {
        return Ok(Some(Err(BadLine {
            response: Response::error_coded(
                ErrorCode::Invalid,
                format!("request longer than {MAX_LINE} bytes"),
            ),
            close: true,
        })));
    }
    Ok(Some(serde_json::from_slice::<Request>(line).map_err(|e| {
        BadLine {
            response: Response::error_coded(ErrorCode::Invalid, format!("malformed request: {e}")),
            close: false,
        }
    })))
}

async fn handle_conn(stream: UnixStream, agent: Arc<Agent>) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        let (response, close) = match read_request(&mut rd, &mut line).await? {
            None => return Ok(()),
            Some(Ok(req)) => (dispatch(&agent, req).await, false),
            Some(Err(bad)) => (bad.response, bad.close),
        };
        let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
        out.push(b'\n');
        wr.write_all(&out).await?;
        if close {
            return Ok(());
        }
    }
}

async fn dispatch(agent: &Agent, req: Request) -> Response {
    fn ok<T: serde::Serialize>(v: T) -> Response {
        match serde_json::to_value(v) {
            Ok(v) => Response::ok(v),
            Err(e) => Response::error_coded(ErrorCode::Internal, e.to_string()),
        }
    }
    fn answer<T: serde::Serialize>(r: Result<T, EndpointError>) -> Response {
        match r {
            Ok(v) => ok(v),
            Err(e) => Response::error_coded(e.code(), e.to_string()),
        }
    }
    let eps = &agent.endpoints;
    let key = |container_id, ifname| AttachmentKey {
        container_id,
        ifname,
    };
    match req {
        Request::NsAdd {
            name,
            ip,
            publish,
            labels,
        } => {
            let r = metrics::endpoint_op("add", eps.add(name, ip, publish, labels).await);
            if r.is_ok() {
                agent.enforce_now().await;
            }
            answer(r)
        }
        Request::NsLabel { name, set, remove } => {
            let r = eps.label(&name, set, remove).await;
            if r.is_ok() {
                agent.enforce_now().await;
            }
            answer(r)
        }
        Request::NsDel { name } => answer(metrics::endpoint_op("del", eps.del(&name).await)),
        Request::NsList => ok(eps.list().await),
        Request::NsShow { name } => answer(eps.show(&name).await),
        Request::Status { probe } => ok(crate::status::status(agent, probe).await),
        Request::CniAdd {
            container_id,
            ifname,
            netns,
            network,
            publish,
            labels,
        } => {
            let r = metrics::endpoint_op(
                "cni_add",
                eps.cni_add(key(container_id, ifname), netns, network, publish, labels)
                    .await,
            );
            if r.is_ok() {
                agent.enforce_now().await;
            }
            answer(r)
        }
        Request::CniDel {
            container_id,
            ifname,
        } => answer(metrics::endpoint_op(
            "cni_del",
            eps.cni_del(key(container_id, ifname)).await,
        )),
        Request::CniCheck {
            container_id,
            ifname,
            netns,
        } => answer(eps.cni_check(key(container_id, ifname), netns).await),
        Request::CniGc { network, keep } => answer(eps.cni_gc(network, keep).await),
        Request::CniStatus => answer(eps.cni_status().await),
    }
}
