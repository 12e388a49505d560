//! The agent's link to the controllers (cluster mode).
//!
//! The agent registers with one of the `--controller` addresses, receives
//! its subnet, then a peer snapshot and deltas. When the session breaks it
//! tries the next controller, backing off up to [`MAX_BACKOFF`] once all have
//! failed. Nothing on this host changes while no controller is reachable
//! (fail static): the endpoints keep working and the last peer set stays.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use ipnetwork::Ipv4Network;
use tracing::{debug, error, info, warn};
use weft_common::api::ControllerLink;
use weft_common::client::{ClientError, Session};
use weft_common::cluster::HostRecord;
use weft_common::wire::{AgentMsg, ControllerMsg, PeerChange};
use weft_common::MacAddr;

use crate::state::{save_peers, PeersState};

pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_secs(10);
/// A refusal repeated with the same reason is logged at error level at
/// most this often; the repeats in between go to debug.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// The last refusal logged at error level, and how many repeats of it were
/// not.
#[derive(Default)]
struct Refusals {
    last: Option<(String, tokio::time::Instant)>,
    repeats: u32,
}

#[derive(Default)]
struct LinkState {
    connected: bool,
    address: Option<String>,
    /// Unix seconds of the last change of `connected` (the start while
    /// never connected).
    since: u64,
    revision: i64,
    peers: BTreeMap<String, HostRecord>,
}

pub struct Link {
    controllers: Vec<String>,
    /// The client TLS config for the next connection (replaced when
    /// `--tls-dir` is reloaded), and this host's certificate for logs.
    tls: Mutex<(quinn::ClientConfig, Option<weft_common::tls::CertSummary>)>,
    endpoint: quinn::Endpoint,
    node: String,
    public_ip: Ipv4Addr,
    vtep_mac: MacAddr,
    state_dir: PathBuf,
    st: Mutex<LinkState>,
    refusals: Mutex<Refusals>,
    stopping: std::sync::atomic::AtomicBool,
    /// The peer set after each applied message, for the data plane.
    peers_tx: tokio::sync::watch::Sender<PeerSet>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Peers by name, shared between the link and the data plane.
pub type PeerSet = std::sync::Arc<BTreeMap<String, HostRecord>>;

/// Doubles up to `MAX_BACKOFF`, with ±20 % jitter so that a fleet that lost
/// its controllers together does not come back in lockstep.
fn jitter(d: Duration) -> Duration {
    let f: f64 = 0.8 + rand::random::<f64>() * 0.4;
    d.mul_f64(f)
}

impl Link {
    pub fn new(
        controllers: Vec<String>,
        tls: quinn::ClientConfig,
        node: String,
        public_ip: Ipv4Addr,
        vtep_mac: MacAddr,
        state_dir: PathBuf,
        saved: Option<PeersState>,
    ) -> std::io::Result<Link> {
        let mut st = LinkState {
            since: unix_now(),
            ..LinkState::default()
        };
        if let Some(p) = saved {
            st.revision = p.revision;
            st.peers = p
                .peers
                .into_iter()
                .filter(|h| h.name != node)
                .map(|h| (h.name.clone(), h))
                .collect();
        }
        let (peers_tx, _) = tokio::sync::watch::channel(std::sync::Arc::new(st.peers.clone()));
        Ok(Link {
            peers_tx,
            controllers,
            tls: Mutex::new((tls, None)),
            endpoint: weft_common::client::endpoint()?,
            node,
            public_ip,
            vtep_mac,
            state_dir,
            st: Mutex::new(st),
            refusals: Default::default(),
            stopping: Default::default(),
        })
    }

    /// Uses `tls` for the next connection (certificate rotation); the
    /// session in progress keeps its connection.
    pub fn set_tls(&self, tls: quinn::ClientConfig, cert: Option<weft_common::tls::CertSummary>) {
        *self.tls.lock().expect("tls config") = (tls, cert);
    }

    fn register_msg(&self, serving: Option<Ipv4Network>) -> AgentMsg {
        AgentMsg::Register {
            node: self.node.clone(),
            public_ip: self.public_ip,
            vtep_mac: self.vtep_mac,
            subnet: serving,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Tries each controller once, starting at `*next`; on success `*next`
    /// points at the one that answered.
    async fn connect_round(
        &self,
        next: &mut usize,
        serving: Option<Ipv4Network>,
    ) -> Result<Session, Vec<ClientError>> {
        let reg = self.register_msg(serving);
        let mut errors = Vec::new();
        for i in 0..self.controllers.len() {
            let idx = (*next + i) % self.controllers.len();
            let addr = &self.controllers[idx];
            self.st.lock().expect("link state").address = Some(addr.clone());
            crate::metrics::controller(addr, false);
            let (tls, cert) = self.tls.lock().expect("tls config").clone();
            match Session::open(&self.endpoint, addr, tls, &reg).await {
                Ok(s) => {
                    *next = idx;
                    return Ok(s);
                }
                Err(e) => {
                    match &e {
                        ClientError::Refused {
                            controller: c,
                            message: why,
                            ..
                        } => self.note_refusal(
                            why,
                            format!(
                                "controller {c} refused this host ({}; retrying every {MAX_BACKOFF:?} or so): {why}",
                                match serving {
                                    Some(s) => format!(
                                        "changing nothing on it: it serves {s}, state in {}",
                                        self.state_dir.display()
                                    ),
                                    None => "nothing changed".to_string(),
                                },
                            ),
                        ),
                        ClientError::Connect {
                            controller: c,
                            tls: Some(why),
                            ..
                        } if why.by_peer => {
                            let mine = cert.map_or_else(
                                || "this host's certificate".to_string(),
                                |s| {
                                    format!(
                                        "this host's certificate {} (valid until {})",
                                        s.name,
                                        s.valid_until()
                                    )
                                },
                            );
                            error!("controller {c} refused {mine}: {why}; retrying with backoff")
                        }
                        ClientError::Connect {
                            controller: c,
                            tls: Some(why),
                            ..
                        } if why.problem().is_some() => {
                            error!(
                                "refused the certificate of controller {c}: {why}; retrying with backoff"
                            )
                        }
                        _ => warn!("{e}"),
                    }
                    errors.push(e);
                }
            }
        }
        *next = (*next + 1) % self.controllers.len();
        Err(errors)
    }

    /// Logs a refusal at error level, unless the same one was logged less
    /// than [`REFUSAL_LOG_EVERY`] ago (then at debug): an agent refused
    /// for a reason only an operator can fix retries for as long as it
    /// runs, and says so once a minute, not on every retry.
    /// `reason` identifies the refusal (the same from every controller).
    fn note_refusal(&self, reason: &str, line: String) {
        let mut r = self.refusals.lock().expect("refusals");
        let now = tokio::time::Instant::now();
        if let Some((last, at)) = &r.last {
            if last == reason && now.duration_since(*at) < REFUSAL_LOG_EVERY {
                r.repeats += 1;
                debug!("{line}");
                return;
            }
        }
        match std::mem::take(&mut r.repeats) {
            0 => error!("{line}"),
            n => error!("{line} ({n} more times since the last such line)"),
        }
        r.last = Some((reason.to_string(), now));
    }

    /// Whether a failed round of a host that serves a subnet (`want`) had
    /// a controller refuse it with a code that persists until an operator
    /// acts (`RefusalCode::persists`): the retries go at the slowest pace.
    /// Other refusals (an etcd leader change, …) may pass at once and are
    /// retried as usual.
    fn subnet_refused(&self, errors: &[ClientError], want: Option<Ipv4Network>) -> bool {
        want.is_some()
            && errors.iter().any(
                |e| matches!(e, ClientError::Refused { code: Some(code), .. } if code.persists()),
            )
    }

    /// Blocks until some controller assigns a subnet (first start of a host
    /// without saved state: there is nothing to serve before that).
    pub async fn until_assigned(&self, next: &mut usize, want: Option<Ipv4Network>) -> Session {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.connect_round(next, want).await {
                Ok(s) => {
                    *self.refusals.lock().expect("refusals") = Refusals::default();
                    return s;
                }
                Err(errors) => {
                    let refused = self.subnet_refused(&errors, want);
                    if refused {
                        backoff = MAX_BACKOFF;
                    }
                    let d = jitter(backoff);
                    if refused {
                        debug!("no controller assigned a subnet; retrying in {d:.1?}");
                    } else {
                        warn!("no controller assigned a subnet yet; retrying in {d:.1?}");
                    }
                    tokio::time::sleep(d).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Runs the link forever: sessions, failover, backoff.
    pub async fn run(&self, serving: Ipv4Network, mut first: Option<Session>, mut next: usize) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let session = match first.take() {
                Some(s) => Ok(s),
                None => self.connect_round(&mut next, Some(serving)).await,
            };
            let refused = match session {
                Ok(s) if s.subnet != serving => {
                    // A controller of this version refuses instead (nothing
                    // allocated); an older one, or a hand-edited etcd, may
                    // still assign another subnet.
                    let (n, x, y) = (&self.node, s.subnet, serving);
                    self.note_refusal(&format!("assigned {x}"), format!(
                        "controller {} assigned subnet {x} but this host serves {y}; not following it (that would re-address its namespaces); keeping the data plane as it is and retrying every {MAX_BACKOFF:?} or so. To give this host {y} back: `weftctl host rm {n}` (frees {x}), free {y} if another host holds it (`weftctl subnet list`), then `weftctl subnet reserve {y} --host {n}`; or start this host afresh on a new subnet: delete its namespaces (`weftctl ns del NAME`), stop weft-agent, remove {} and start it again",
                        s.controller,
                        self.state_dir.display()
                    ));
                    s.conn.close(0u32.into(), b"subnet mismatch");
                    true
                }
                Ok(s) => {
                    backoff = MIN_BACKOFF;
                    *self.refusals.lock().expect("refusals") = Refusals::default();
                    let addr = s.controller.clone();
                    info!("connected to controller {addr}: subnet {}", s.subnet);
                    self.set_connected(true, &addr);
                    let why = self.session(s).await;
                    self.set_connected(false, &addr);
                    if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    warn!("lost controller {addr}: {why}; trying the next one");
                    next = (next + 1) % self.controllers.len();
                    continue;
                }
                Err(errors) => self.subnet_refused(&errors, Some(serving)),
            };
            if refused {
                backoff = MAX_BACKOFF;
            }
            let d = jitter(backoff);
            if refused {
                debug!("refused; retrying in {d:.1?}");
            } else {
                warn!(
                    "no controller reachable; keeping the data plane as it is and retrying in {d:.1?}"
                );
            }
            tokio::time::sleep(d).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Closes any session politely (the controller then stops keeping this
    /// host's lease alive at once instead of after the idle timeout).
    pub async fn close(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.endpoint.close(0u32.into(), b"agent stopping");
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }

    fn set_connected(&self, up: bool, addr: &str) {
        let mut st = self.st.lock().expect("link state");
        if st.connected != up {
            st.since = unix_now();
        }
        st.connected = up;
        st.address = Some(addr.to_string());
        crate::metrics::controller(addr, up);
    }

    /// One registered session: apply what arrives, send heartbeats. Returns
    /// why it ended.
    async fn session(&self, mut s: Session) -> String {
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.tick().await;
        loop {
            tokio::select! {
                m = s.next() => match m {
                    Ok(Some(msg)) => {
                        if let Err(why) = self.apply(msg) {
                            s.conn.close(1u32.into(), why.as_bytes());
                            return why;
                        }
                    }
                    Ok(None) => return "the controller closed the session".into(),
                    Err(e) => return e.to_string(),
                },
                _ = beat.tick() => {
                    if let Err(e) = s.heartbeat().await {
                        return e.to_string();
                    }
                }
            }
        }
    }

    /// Applies one message to the peer set and saves it.
    fn apply(&self, msg: ControllerMsg) -> Result<(), String> {
        let is_snapshot = matches!(msg, ControllerMsg::Snapshot { .. });
        let mut st = self.st.lock().expect("link state");
        match msg {
            ControllerMsg::Snapshot { revision, peers } => {
                let before = st.peers.len();
                st.peers = peers
                    .into_iter()
                    .filter(|h| h.name != self.node)
                    .map(|h| (h.name.clone(), h))
                    .collect();
                st.revision = revision;
                info!(
                    "peer snapshot at revision {revision}: {} peers (had {before})",
                    st.peers.len()
                );
            }
            ControllerMsg::Delta { revision, changes } => {
                if revision <= st.revision {
                    debug!(
                        "ignoring delta at revision {revision} (have {})",
                        st.revision
                    );
                    return Ok(());
                }
                for c in changes {
                    match c {
                        PeerChange::Upsert { host } if host.name != self.node => {
                            debug!(
                                "peer {} at {} with subnet {} (revision {revision})",
                                host.name, host.public_ip, host.subnet
                            );
                            st.peers.insert(host.name.clone(), host);
                        }
                        PeerChange::Upsert { .. } => {}
                        PeerChange::Remove { name } => {
                            if st.peers.remove(&name).is_some() {
                                debug!("peer {name} left (revision {revision})");
                            }
                        }
                    }
                }
                st.revision = revision;
            }
            ControllerMsg::Error { message, .. } => {
                return Err(format!("controller error: {message}"));
            }
            ControllerMsg::Assigned { .. } => {
                return Err("out-of-order frame: a second assignment".into());
            }
        }
        let saved = PeersState {
            revision: st.revision,
            peers: st.peers.values().cloned().collect(),
        };
        self.peers_tx
            .send_replace(std::sync::Arc::new(st.peers.clone()));
        crate::metrics::peer_message(is_snapshot, st.revision);
        if is_snapshot {
            // After publishing the set (see the data plane's loop in main.rs).
            crate::metrics::ready().snapshot_received();
        }
        drop(st);
        if let Err(e) = save_peers(&self.state_dir, &saved) {
            warn!("save peer set: {e}");
        }
        Ok(())
    }

    pub fn controller_link(&self) -> ControllerLink {
        let st = self.st.lock().expect("link state");
        ControllerLink {
            connected: st.connected,
            address: st.address.clone(),
            since: Some(st.since),
        }
    }

    /// The peer set now (as saved or last received).
    pub fn peer_set(&self) -> PeerSet {
        self.peers_tx.borrow().clone()
    }

    /// Wakes on every change of the peer set.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<PeerSet> {
        self.peers_tx.subscribe()
    }
}
