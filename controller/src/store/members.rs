//! Keeps the etcd client's requests off etcd members that are down.
//!
//! etcd-client 0.21 sends requests over one balanced tonic channel across
//! all `--etcd-endpoints`. A member that is down fails its requests at
//! once ("tcp connect error"), so it always looks the least loaded and the
//! balancer keeps choosing it: with one member of three killed, most
//! requests failed until it came back (etcdv3/etcd-client#39). This task
//! probes every endpoint with a TCP connect every [`PERIOD`] and takes an
//! unreachable one out of the channel (`Client::remove_endpoint`, through
//! [`Etcd`]), and puts
//! it back once it accepts connections again. The last reachable endpoints
//! are never removed; if none answers, all stay in, so errors still say
//! what is wrong.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::{info, warn};

use super::etcd::Etcd;

/// How often every endpoint is probed.
pub const PERIOD: Duration = Duration::from_millis(500);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// `host:port` of an endpoint URL (`http://10.0.0.1:2379`, `https://…`,
/// or a bare `host:port`); port 2379 if none is given.
pub fn authority(url: &str) -> String {
    match url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().cloned())
    {
        Some(a) if a.port_u16().is_some() => a.to_string(),
        Some(a) => format!("{a}:2379"),
        None => url.to_string(),
    }
}

async fn reachable(addr: &str) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

/// Starts the probe task when there is more than one endpoint.
pub(super) fn spawn(client: Etcd, endpoints: Vec<String>) {
    if endpoints.len() < 2 {
        return;
    }
    tokio::spawn(run(client, endpoints));
}

async fn run(client: Etcd, endpoints: Vec<String>) {
    let mut out: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut down = Vec::new();
        for e in &endpoints {
            if let Err(why) = reachable(&authority(e)).await {
                down.push((e.clone(), why));
            }
        }
        if down.len() == endpoints.len() {
            // Nothing answers: keep (or put back) everything.
            for e in std::mem::take(&mut out) {
                if let Err(err) = client.add_endpoint(&e).await {
                    warn!("etcd endpoint {e}: cannot put it back: {err}");
                }
            }
            continue;
        }
        let down_set: BTreeSet<&String> = down.iter().map(|(e, _)| e).collect();
        for (e, why) in &down {
            if !out.contains(e) {
                match client.remove_endpoint(e).await {
                    Ok(()) => {
                        warn!("etcd endpoint {e} is unreachable ({why}): sending requests to the other members until it answers");
                        out.insert(e.clone());
                    }
                    Err(err) => warn!(
                        "etcd endpoint {e} is unreachable ({why}) but cannot be taken out: {err}"
                    ),
                }
            }
        }
        let back: Vec<String> = out
            .iter()
            .filter(|e| !down_set.contains(e))
            .cloned()
            .collect();
        for e in back {
            match client.add_endpoint(&e).await {
                Ok(()) => {
                    info!("etcd endpoint {e} answers again: back in use");
                    out.remove(&e);
                }
                Err(err) => warn!("etcd endpoint {e}: cannot put it back: {err}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::authority;

    #[test]
    fn authorities() {
        assert_eq!(authority("http://10.0.0.1:2379"), "10.0.0.1:2379");
        assert_eq!(
            authority("https://etcd.example:12379/"),
            "etcd.example:12379"
        );
        assert_eq!(authority("10.0.0.2:2379"), "10.0.0.2:2379");
        assert_eq!(authority("http://etcd"), "etcd:2379");
        assert_eq!(authority("http://[fd00::1]:2379"), "[fd00::1]:2379");
        assert_eq!(authority("http://[fd00::1]"), "[fd00::1]:2379");
    }
}
