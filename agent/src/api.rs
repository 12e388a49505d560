//! The local API on `<run-dir>/agent.sock` that `weftctl` talks to: one JSON
//! request per line, one JSON response per line (see `weft_common::api`).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};
use weft_common::api::{Request, Response, MAX_LINE};

use crate::agent::Agent;

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

async fn handle_conn(stream: UnixStream, agent: Arc<Agent>) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut rd)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let too_long = line.len() > MAX_LINE;
        let response = if too_long {
            Response::Error(format!("request longer than {MAX_LINE} bytes"))
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(req) => dispatch(&agent, req).await,
                Err(e) => Response::Error(format!("malformed request: {e}")),
            }
        };
        let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
        out.push(b'\n');
        wr.write_all(&out).await?;
        if too_long {
            return Ok(());
        }
    }
}

async fn dispatch(agent: &Agent, req: Request) -> Response {
    fn ok<T: serde::Serialize>(v: T) -> Response {
        match serde_json::to_value(v) {
            Ok(v) => Response::Ok(v),
            Err(e) => Response::Error(e.to_string()),
        }
    }
    match req {
        Request::NsAdd { name, ip, publish } => match agent.ns_add(name, ip, publish).await {
            Ok(ep) => ok(ep),
            Err(e) => Response::Error(e.to_string()),
        },
        Request::NsDel { name } => match agent.ns_del(&name).await {
            Ok(ep) => ok(ep),
            Err(e) => Response::Error(e.to_string()),
        },
        Request::NsList => ok(agent.ns_list().await),
        Request::NsShow { name } => match agent.ns_show(&name).await {
            Ok(ep) => ok(ep),
            Err(e) => Response::Error(e.to_string()),
        },
        Request::Status => ok(agent.status().await),
    }
}
