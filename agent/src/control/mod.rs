//! The agent's link to the controllers (cluster mode): [`Controllers`].
//!
//! The agent registers with one of the `--controller` addresses, receives
//! its subnet, then a peer snapshot and deltas. When the session breaks it
//! tries the next controller, backing off up to [`pace::MAX_BACKOFF`] once
//! all have failed. Nothing on this host changes while no controller is
//! reachable (fail static): the endpoints keep working and the last peer
//! set stays.
//!
//! - `pace.rs`: backoff, and which refusals wait for an operator (pure);
//! - `peers.rs`: the peer set from snapshots and deltas (pure);
//! - `policy.rs`: the network policy and its address sets, likewise (pure);
//! - `session.rs`: one registered session.

pub mod pace;
pub mod peers;
pub mod policy;
mod session;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use ipnetwork::Ipv4Network;
use tracing::{debug, error, info, warn};
use weft_common::api::ControllerLink;
use weft_common::client::{ClientError, Session};
use weft_common::wire::AgentMsg;
use weft_common::MacAddr;

use crate::model::overlay::PeerSet;
use crate::state::{PolicyState, SavedLink, Writer};
use crate::telemetry::metrics;
use pace::{Refusals, Say};
use peers::PeerBook;
use policy::PolicyBook;
pub use session::Directory;

#[derive(Default)]
struct LinkState {
    connected: bool,
    address: Option<String>,
    /// Unix seconds of the last change of `connected` (the start while
    /// never connected).
    since: u64,
}

/// The controllers this agent registers with, and its session with one of
/// them.
pub struct Controllers {
    addresses: Vec<String>,
    /// The client TLS config for the next connection (replaced when
    /// `--tls-dir` is reloaded), and this host's certificate for logs.
    tls: Mutex<(quinn::ClientConfig, Option<weft_common::tls::CertSummary>)>,
    endpoint: quinn::Endpoint,
    node: String,
    public_ip: Ipv4Addr,
    vtep_mac: MacAddr,
    /// For messages: where this host's state lives.
    state_dir: PathBuf,
    state: Writer,
    st: Mutex<LinkState>,
    book: Mutex<PeerBook>,
    /// The network policy, from the controller or as saved.
    policy: Mutex<PolicyBook>,
    /// The policy after each change, for enforcement.
    policy_tx: tokio::sync::watch::Sender<std::sync::Arc<PolicyState>>,
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

/// Who this host is to its controllers.
pub struct Identity {
    pub node: String,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
}

impl Controllers {
    pub fn new(
        addresses: Vec<String>,
        tls: quinn::ClientConfig,
        me: Identity,
        state_dir: PathBuf,
        state: Writer,
        saved: SavedLink,
    ) -> std::io::Result<Controllers> {
        let book = PeerBook::new(&me.node, saved.peers);
        let policy = PolicyBook::new(saved.policy);
        let (policy_tx, _) = tokio::sync::watch::channel(std::sync::Arc::new(policy.saved()));
        let (peers_tx, _) = tokio::sync::watch::channel(std::sync::Arc::new(book.peers.clone()));
        Ok(Controllers {
            peers_tx,
            addresses,
            tls: Mutex::new((tls, None)),
            endpoint: weft_common::client::endpoint()?,
            node: me.node,
            public_ip: me.public_ip,
            vtep_mac: me.vtep_mac,
            state_dir,
            state,
            st: Mutex::new(LinkState {
                since: unix_now(),
                ..Default::default()
            }),
            book: Mutex::new(book),
            policy: Mutex::new(policy),
            policy_tx,
            refusals: Default::default(),
            stopping: Default::default(),
        })
    }

    /// Where failover starts: spread over the controllers by this host's
    /// name, so that hosts spread over them.
    pub fn first(&self) -> usize {
        weft_common::name::host_veth_name(&self.node)
            .bytes()
            .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize))
            % self.addresses.len()
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
        for i in 0..self.addresses.len() {
            let idx = (*next + i) % self.addresses.len();
            let addr = &self.addresses[idx];
            self.st.lock().expect("link state").address = Some(addr.clone());
            metrics::controller(addr, false);
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
                                "controller {c} refused this host ({}; retrying every {:?} or so): {why}",
                                match serving {
                                    Some(s) => format!(
                                        "changing nothing on it: it serves {s}, state in {}",
                                        self.state_dir.display()
                                    ),
                                    None => "nothing changed".to_string(),
                                },
                                pace::MAX_BACKOFF,
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
        *next = (*next + 1) % self.addresses.len();
        Err(errors)
    }

    /// Logs a refusal at error level, or at debug when the same one was
    /// logged less than a minute ago (see [`Refusals`]).
    fn note_refusal(&self, reason: &str, line: String) {
        let say = self
            .refusals
            .lock()
            .expect("refusals")
            .note(reason, tokio::time::Instant::now());
        match say {
            Say::Debug => debug!("{line}"),
            Say::Error(0) => error!("{line}"),
            Say::Error(n) => error!("{line} ({n} more times since the last such line)"),
        }
    }

    /// Blocks until some controller assigns a subnet (first start of a host
    /// without saved state: there is nothing to serve before that).
    pub async fn until_assigned(&self, next: &mut usize, want: Option<Ipv4Network>) -> Session {
        let mut backoff = pace::MIN_BACKOFF;
        loop {
            match self.connect_round(next, want).await {
                Ok(s) => {
                    *self.refusals.lock().expect("refusals") = Refusals::default();
                    return s;
                }
                Err(errors) => {
                    let refused = pace::waits_for_operator(&errors, want);
                    if refused {
                        backoff = pace::MAX_BACKOFF;
                    }
                    let d = pace::jitter(backoff);
                    if refused {
                        debug!("no controller assigned a subnet; retrying in {d:.1?}");
                    } else {
                        warn!("no controller assigned a subnet yet; retrying in {d:.1?}");
                    }
                    tokio::time::sleep(d).await;
                    backoff = pace::next(backoff);
                }
            }
        }
    }

    /// Runs the link forever: sessions, failover, backoff. `directory`:
    /// this host's endpoints as network policy sees them, reported to
    /// every controller that takes them.
    pub async fn run(
        &self,
        serving: Ipv4Network,
        mut first: Option<Session>,
        mut next: usize,
        mut directory: Directory,
    ) {
        let mut backoff = pace::MIN_BACKOFF;
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
                        "controller {} assigned subnet {x} but this host serves {y}; not following it (that would re-address its namespaces); keeping the data plane as it is and retrying every {:?} or so. To give this host {y} back: `weftctl host rm {n}` (frees {x}), free {y} if another host holds it (`weftctl subnet list`), then `weftctl subnet reserve {y} --host {n}`; or start this host afresh on a new subnet: delete its namespaces (`weftctl ns del NAME`), stop weft-agent, remove {} and start it again",
                        s.controller,
                        pace::MAX_BACKOFF,
                        self.state_dir.display()
                    ));
                    s.conn.close(0u32.into(), b"subnet mismatch");
                    true
                }
                Ok(s) => {
                    backoff = pace::MIN_BACKOFF;
                    *self.refusals.lock().expect("refusals") = Refusals::default();
                    let addr = s.controller.clone();
                    info!("connected to controller {addr}: subnet {}", s.subnet);
                    self.set_connected(true, &addr);
                    let why = self.session(s, &mut directory).await;
                    self.set_connected(false, &addr);
                    self.policy.lock().expect("policy book").session_ended();
                    if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    warn!("lost controller {addr}: {why}; trying the next one");
                    next = (next + 1) % self.addresses.len();
                    continue;
                }
                Err(errors) => pace::waits_for_operator(&errors, Some(serving)),
            };
            if refused {
                backoff = pace::MAX_BACKOFF;
            }
            let d = pace::jitter(backoff);
            if refused {
                debug!("refused; retrying in {d:.1?}");
            } else {
                warn!(
                    "no controller reachable; keeping the data plane as it is and retrying in {d:.1?}"
                );
            }
            tokio::time::sleep(d).await;
            backoff = pace::next(backoff);
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
        metrics::controller(addr, up);
    }

    pub fn controller_link(&self) -> ControllerLink {
        let st = self.st.lock().expect("link state");
        ControllerLink {
            connected: st.connected,
            address: st.address.clone(),
            since: Some(st.since),
        }
    }

    /// The network policy's summary for `status`.
    pub fn policy_status(&self) -> weft_common::api::PolicyStatus {
        let b = self.policy.lock().expect("policy book");
        weft_common::api::PolicyStatus {
            revision: b.revision,
            policies: b.policies.len(),
            sets: b.sets.len(),
            addresses: b.addresses(),
            current: b.current,
            enforced: 0,
            same_host: false,
            error: None,
        }
    }

    /// The network policy now and after each change.
    pub fn policy_watch(&self) -> tokio::sync::watch::Receiver<std::sync::Arc<PolicyState>> {
        self.policy_tx.subscribe()
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
