//! The cluster state in etcd: network config, subnet allocation, host
//! records, leases. Only controllers and `weftctl` talk to etcd, and only
//! through this module.
//!
//! Keys (prefix default `/weft`):
//! - `<prefix>/config`: [`NetworkConfig`]
//! - `<prefix>/subnets/<a.b.c.d-len>`: [`SubnetRecord`]
//! - `<prefix>/hosts/<name>`: [`HostRecord`]
//! - `<prefix>/agents/<name>`: which controller the host's agent is
//!   connected to (`crate::presence`), on that controller's short lease
//!
//! A host's record and its (non-reserved) subnet key share one etcd lease;
//! when the lease ends both vanish in one revision and the subnet is free.
//! Every write that could race is an etcd transaction guarded by the exact
//! version or revision it was decided on, and retried when the guard fails.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
};
use ipnetwork::Ipv4Network;
use tracing::{debug, info};
use weft_common::cluster::{
    parse_subnet_key, served_subnet_refusal, subnet_key, HostRecord, NetworkConfig, SubnetRecord,
};
use weft_common::{validate_name, MacAddr};

pub const DEFAULT_PREFIX: &str = "/weft";
/// A registration gives up after this many lost races (each one means
/// another host got a subnet, so this bounds a pathological storm only).
const MAX_ATTEMPTS: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the cluster is not initialised: run `weftctl cluster init --cidr CIDR`")]
    NotInitialised,
    #[error("no free subnet left in {cidr}: all {count} /{len} subnets are held or reserved")]
    Exhausted {
        cidr: Ipv4Network,
        len: u8,
        count: u64,
    },
    #[error("no host named {0:?}")]
    NoHost(String),
    #[error("{0}")]
    Refused(String),
    #[error("etcd key {key} holds a value weft cannot read: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("gave up after {0} lost allocation races")]
    TooManyRaces(u32),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What an agent asks for when it registers.
#[derive(Debug, Clone)]
pub struct Registration {
    pub node: String,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    /// The subnet the host already serves, if any.
    pub want: Option<Ipv4Network>,
}

/// A successful registration.
#[derive(Debug, Clone)]
pub struct Registered {
    pub record: HostRecord,
    pub config: NetworkConfig,
    /// The etcd lease the host's keys hang on.
    pub lease: i64,
    /// Whether this registration allocated a new subnet.
    pub allocated: bool,
}

#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
    listing: std::sync::Arc<SharedListing>,
}

/// Every subnet key, as [`Store::subnets`] returns them.
pub type Subnets = BTreeMap<Ipv4Network, (SubnetRecord, KeyValue)>;

/// The subnet listing registrations share: a registration storm otherwise
/// lists every subnet once per host (O(hosts²) data out of etcd).
#[derive(Default)]
struct SharedListing {
    /// Listings started so far.
    started: std::sync::atomic::AtomicU64,
    /// The last listing and its sequence number.
    last: tokio::sync::Mutex<Option<(u64, std::sync::Arc<Subnets>)>>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn parse<T: for<'de> serde::Deserialize<'de>>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: e.to_string(),
    })
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

impl Store {
    /// Connects to etcd. `timeout` bounds each request, so an unreachable
    /// etcd gives an error instead of a hang.
    pub async fn connect(endpoints: &[String], prefix: &str, timeout: Duration) -> Result<Store> {
        Self::connect_with(endpoints, prefix, timeout, &Default::default()).await
    }

    /// [`Store::connect`] over TLS and/or as an etcd user
    /// (`crate::etcd_access`). A wrong password fails here, as
    /// "etcd refused user NAME: authentication failed".
    pub async fn connect_with(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
        access: &crate::etcd_access::EtcdAccess,
    ) -> Result<Store> {
        let opts = access.apply(
            ConnectOptions::new()
                .with_connect_timeout(timeout)
                .with_timeout(timeout)
                .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5)),
        );
        let client = Client::connect(endpoints, Some(opts)).await.map_err(|e| {
            match crate::etcd_access::access_error(&e, access) {
                Some(why) => StoreError::Refused(why),
                None => StoreError::Etcd(e),
            }
        })?;
        Ok(Store {
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
            listing: Default::default(),
        })
    }

    /// A handle on the etcd client (cheap: it shares the connection).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }
    pub fn hosts_prefix(&self) -> String {
        format!("{}/hosts/", self.prefix)
    }
    pub fn host_key(&self, name: &str) -> String {
        format!("{}/hosts/{name}", self.prefix)
    }
    /// `<prefix>/agents/`: which agents are connected (see `presence`).
    pub fn agents_prefix(&self) -> String {
        format!("{}/agents/", self.prefix)
    }
    pub fn agent_key(&self, name: &str) -> String {
        format!("{}/agents/{name}", self.prefix)
    }
    pub fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }
    pub fn subnet_key(&self, net: Ipv4Network) -> String {
        format!("{}/subnets/{}", self.prefix, subnet_key(net))
    }

    async fn get_one(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut r = crate::metrics::etcd("get", self.client().get(key, None)).await?;
        Ok(r.take_kvs().into_iter().next())
    }

    pub async fn config(&self) -> Result<Option<NetworkConfig>> {
        match self.get_one(&self.config_key()).await? {
            Some(kv) => Ok(Some(parse(&kv)?)),
            None => Ok(None),
        }
    }

    pub async fn require_config(&self) -> Result<NetworkConfig> {
        self.config().await?.ok_or(StoreError::NotInitialised)
    }

    /// Writes the network config. Changing `cidr` or `subnet_len` is refused
    /// while any subnet is held or reserved; the check and the write are one
    /// transaction.
    pub async fn init_config(&self, cfg: &NetworkConfig) -> Result<Option<NetworkConfig>> {
        cfg.validate()
            .map_err(|e| StoreError::Refused(e.to_string()))?;
        let key = self.config_key();
        for _ in 0..MAX_ATTEMPTS {
            let old = self.get_one(&key).await?;
            let (old_cfg, guard) = match &old {
                Some(kv) => (
                    Some(parse::<NetworkConfig>(kv)?),
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()),
                ),
                None => (None, Compare::version(key.as_str(), CompareOp::Equal, 0)),
            };
            let mut when = vec![guard];
            let layout_changes = old_cfg
                .as_ref()
                .is_some_and(|o| o.cidr != cfg.cidr || o.subnet_len != cfg.subnet_len);
            if layout_changes {
                when.push(
                    Compare::version(self.subnets_prefix(), CompareOp::Equal, 0).with_prefix(),
                );
                when.push(Compare::version(self.hosts_prefix(), CompareOp::Equal, 0).with_prefix());
            }
            let txn = Txn::new()
                .when(when)
                .and_then([TxnOp::put(key.as_str(), json(cfg), None)]);
            if crate::metrics::etcd("txn", self.client().txn(txn))
                .await?
                .succeeded()
            {
                return Ok(old_cfg);
            }
            if layout_changes {
                let held = self.subnets().await?.len();
                if held > 0 || !self.hosts().await?.1.is_empty() {
                    let o = old_cfg.expect("layout change implies an old config");
                    return Err(StoreError::Refused(format!(
                        "cannot change cidr/subnet-len from {} /{} to {} /{}: {held} subnets are held or reserved (remove the hosts and reservations first)",
                        o.cidr, o.subnet_len, cfg.cidr, cfg.subnet_len
                    )));
                }
            }
        }
        Err(StoreError::TooManyRaces(MAX_ATTEMPTS))
    }

    /// Every host record, with the revision the list reflects.
    pub async fn hosts(&self) -> Result<(i64, BTreeMap<String, HostRecord>)> {
        let mut r = crate::metrics::etcd(
            "get",
            self.client()
                .get(self.hosts_prefix(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        let mut out = BTreeMap::new();
        for kv in r.take_kvs() {
            // One bad record must not hide every other host.
            match parse::<HostRecord>(&kv) {
                Ok(rec) => {
                    out.insert(rec.name.clone(), rec);
                }
                Err(e) => tracing::warn!("skipping host record: {e}"),
            }
        }
        Ok((rev, out))
    }

    pub async fn host(&self, name: &str) -> Result<Option<HostRecord>> {
        match self.get_one(&self.host_key(name)).await? {
            Some(kv) => Ok(Some(parse(&kv)?)),
            None => Ok(None),
        }
    }

    /// Every subnet key, from a listing that started after this call did:
    /// as fresh as a listing of its own (etcd reads are linearizable, so it
    /// holds every write that completed before the call), but concurrent
    /// callers share one listing instead of each making their own.
    pub async fn fresh_subnets(&self) -> Result<std::sync::Arc<Subnets>> {
        use std::sync::atomic::Ordering::SeqCst;
        let arrived = self.listing.started.load(SeqCst);
        let mut last = self.listing.last.lock().await;
        if let Some((seq, subnets)) = &*last {
            if *seq > arrived {
                return Ok(subnets.clone());
            }
        }
        let seq = self.listing.started.fetch_add(1, SeqCst) + 1;
        let subnets = std::sync::Arc::new(self.subnets().await?);
        *last = Some((seq, subnets.clone()));
        Ok(subnets)
    }

    /// Every subnet key: held or reserved.
    pub async fn subnets(&self) -> Result<Subnets> {
        let mut r = crate::metrics::etcd(
            "get",
            self.client()
                .get(self.subnets_prefix(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let mut out = BTreeMap::new();
        let p = self.subnets_prefix();
        for kv in r.take_kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let net = key
                .strip_prefix(&p)
                .and_then(parse_subnet_key)
                .ok_or_else(|| StoreError::Corrupt {
                    key: key.clone(),
                    reason: "not a subnet key".into(),
                })?;
            out.insert(net, (parse(&kv)?, kv));
        }
        Ok(out)
    }

    /// Gives `reg.node` its subnet: the one its host record holds, else (see
    /// [`choose`]) the one it serves (`want`) if free or reserved for it,
    /// else for a new host the one reserved for it or a free one at random.
    /// A host that serves a subnet is never given another one: when that
    /// subnet is held by or reserved for another host, is not a host subnet
    /// of the cluster, or differs from its record or its reservation, the
    /// registration is refused and nothing is written. Allocation is one
    /// transaction that creates the subnet key only if it does not exist,
    /// so two controllers can never hand one subnet to two hosts; a lost
    /// race is retried with a fresh view.
    pub async fn register(&self, reg: &Registration, ttl: i64) -> Result<Registered> {
        validate_name(&reg.node).map_err(|e| StoreError::Refused(e.to_string()))?;
        let cfg = self.require_config().await?;
        let host_key = self.host_key(&reg.node);
        let mut spare_lease: Option<i64> = None;
        let result = async {
            for attempt in 0..MAX_ATTEMPTS {
                if attempt > 0 {
                    debug!(node = %reg.node, attempt, "allocation race lost, retrying");
                }
                let existing = self.get_one(&host_key).await?;
                if let Some(kv) = existing {
                    let old: HostRecord = parse(&kv)?;
                    if let Some(w) = reg.want.filter(|w| *w != old.subnet) {
                        return Err(StoreError::Refused(format!(
                            "{}, but its host record holds {s} (another agent registered as {n}, or this host's state was replaced): nothing changed. To give {w} back to {n}: `weftctl host rm {n}` if no agent uses {s} any more; or {}",
                            served_subnet_refusal(&reg.node, w),
                            afresh(&reg.node),
                            n = reg.node,
                            s = old.subnet,
                        )));
                    }
                    if let Some(r) = self.renew(reg, &cfg, &kv, old, ttl).await? {
                        return Ok(r);
                    }
                    continue;
                }
                let subnets = self.fresh_subnets().await?;
                // Decided before anything is written: a refusal leaves etcd
                // as it was (no lease, no key).
                let choice = choose(&cfg, &reg.node, reg.want, &subnets, |(r, _)| r)?;
                let lease = match spare_lease {
                    Some(l) => l,
                    None => {
                        let l = crate::metrics::etcd("lease_grant", self.client().lease_grant(ttl, None)).await?.id();
                        spare_lease = Some(l);
                        l
                    }
                };
                let rec = HostRecord {
                    name: reg.node.clone(),
                    public_ip: reg.public_ip,
                    vtep_mac: reg.vtep_mac,
                    subnet: choice.subnet(),
                    last_seen: now(),
                };
                let put_host = TxnOp::put(host_key.as_str(), json(&rec), Some(PutOptions::new().with_lease(lease)));
                let skey = self.subnet_key(rec.subnet);
                let put_subnet = || {
                    let srec = SubnetRecord {
                        host: Some(reg.node.clone()),
                        reserved: false,
                    };
                    TxnOp::put(skey.as_str(), json(&srec), Some(PutOptions::new().with_lease(lease)))
                };
                let unchanged = |net: &Ipv4Network| {
                    let (_, kv) = &subnets[net];
                    Compare::mod_revision(kv.key(), CompareOp::Equal, kv.mod_revision())
                };
                let no_record = Compare::version(host_key.as_str(), CompareOp::Equal, 0);
                let txn = match choice {
                    // The reservation stays as it is (leaseless).
                    Choice::Pinned(net) => Txn::new().when([no_record, unchanged(&net)]).and_then([put_host]),
                    // A key naming this host without a record: it gets the
                    // record's lease again.
                    Choice::Reclaim(net) => Txn::new()
                        .when([no_record, unchanged(&net)])
                        .and_then([put_subnet(), put_host]),
                    // Created only if nobody else created it meanwhile.
                    Choice::Free(_) => Txn::new()
                        .when([no_record, Compare::version(skey.as_str(), CompareOp::Equal, 0)])
                        .and_then([put_subnet(), put_host]),
                };
                if crate::metrics::etcd("txn", self.client().txn(txn)).await?.succeeded() {
                    spare_lease = None;
                    info!(node = %reg.node, subnet = %rec.subnet, public_ip = %rec.public_ip, "allocated subnet {} to host {}", rec.subnet, reg.node);
                    return Ok(Registered {
                        record: rec,
                        config: cfg.clone(),
                        lease,
                        allocated: true,
                    });
                }
            }
            Err(StoreError::TooManyRaces(MAX_ATTEMPTS))
        }
        .await;
        if let Some(l) = spare_lease {
            let _ = crate::metrics::etcd("lease_revoke", self.client().lease_revoke(l)).await;
        }
        result
    }

    /// Re-registration of a known host: same subnet, refreshed record, same
    /// lease. `None` when the record changed under us (retry).
    async fn renew(
        &self,
        reg: &Registration,
        cfg: &NetworkConfig,
        kv: &KeyValue,
        old: HostRecord,
        ttl: i64,
    ) -> Result<Option<Registered>> {
        let host_key = self.host_key(&reg.node);
        let mut lease = kv.lease();
        if lease == 0 {
            lease = crate::metrics::etcd("lease_grant", self.client().lease_grant(ttl, None))
                .await?
                .id();
        }
        let rec = HostRecord {
            public_ip: reg.public_ip,
            vtep_mac: reg.vtep_mac,
            last_seen: now(),
            ..old.clone()
        };
        let skey = self.subnet_key(old.subnet);
        let mut ops = vec![TxnOp::put(
            host_key.as_str(),
            json(&rec),
            Some(PutOptions::new().with_lease(lease)),
        )];
        let mut when = vec![Compare::mod_revision(
            host_key.as_str(),
            CompareOp::Equal,
            kv.mod_revision(),
        )];
        // The subnet key must still name this host; re-attach it to the
        // lease unless it is a (leaseless) reservation.
        match self.get_one(&skey).await? {
            Some(skv) => {
                let srec: SubnetRecord = parse(&skv)?;
                if srec.host.as_deref() != Some(reg.node.as_str()) {
                    // Inconsistent (hand-edited etcd): drop the record and
                    // allocate afresh.
                    let t = Txn::new()
                        .when(when)
                        .and_then([TxnOp::delete(host_key.as_str(), None)]);
                    crate::metrics::etcd("txn", self.client().txn(t)).await?;
                    return Ok(None);
                }
                when.push(Compare::mod_revision(
                    skey.as_str(),
                    CompareOp::Equal,
                    skv.mod_revision(),
                ));
                if !srec.reserved && skv.lease() != lease {
                    ops.push(TxnOp::put(
                        skey.as_str(),
                        json(&srec),
                        Some(PutOptions::new().with_lease(lease)),
                    ));
                }
            }
            None => {
                when.push(Compare::version(skey.as_str(), CompareOp::Equal, 0));
                let srec = SubnetRecord {
                    host: Some(reg.node.clone()),
                    reserved: false,
                };
                ops.push(TxnOp::put(
                    skey.as_str(),
                    json(&srec),
                    Some(PutOptions::new().with_lease(lease)),
                ));
            }
        }
        if !cfg.is_host_subnet(old.subnet) {
            return Err(StoreError::Refused(format!(
                "host {} holds {}, which is not a /{} of the cluster cidr {}",
                reg.node, old.subnet, cfg.subnet_len, cfg.cidr
            )));
        }
        let t = Txn::new().when(when).and_then(ops);
        if !crate::metrics::etcd("txn", self.client().txn(t))
            .await?
            .succeeded()
        {
            return Ok(None);
        }
        if !rec.same_tunnel(&old) {
            info!(node = %reg.node, "host {} re-registered with a new tunnel endpoint: {} {}", reg.node, rec.public_ip, rec.vtep_mac);
        }
        Ok(Some(Registered {
            record: rec,
            config: cfg.clone(),
            lease,
            allocated: false,
        }))
    }

    /// Removes a host: its record and its subnet (a reservation stays).
    pub async fn remove_host(&self, name: &str) -> Result<HostRecord> {
        let key = self.host_key(name);
        let kv = self
            .get_one(&key)
            .await?
            .ok_or_else(|| StoreError::NoHost(name.to_string()))?;
        let rec: HostRecord = parse(&kv)?;
        let skey = self.subnet_key(rec.subnet);
        let mut ops = vec![TxnOp::delete(key.as_str(), None)];
        if let Some(skv) = self.get_one(&skey).await? {
            let srec: SubnetRecord = parse(&skv)?;
            if !srec.reserved && srec.host.as_deref() == Some(name) {
                ops.push(TxnOp::delete(skey.as_str(), None));
            }
        }
        crate::metrics::etcd("txn", self.client().txn(Txn::new().and_then(ops))).await?;
        if kv.lease() != 0 {
            // Nothing else hangs on a host's lease; revoking it stops any
            // controller's keep-alive for it at once.
            let _ =
                crate::metrics::etcd("lease_revoke", self.client().lease_revoke(kv.lease())).await;
        }
        Ok(rec)
    }

    /// Keeps `net` out of allocation, optionally pinned to `host`.
    pub async fn reserve(&self, net: Ipv4Network, host: Option<&str>) -> Result<SubnetRecord> {
        let cfg = self.require_config().await?;
        if let Some(h) = host {
            validate_name(h).map_err(|e| StoreError::Refused(e.to_string()))?;
        }
        check_subnet(&cfg, net)?;
        let key = self.subnet_key(net);
        let rec = SubnetRecord {
            host: host.map(str::to_string),
            reserved: true,
        };
        let t = Txn::new()
            .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), json(&rec), None)]);
        if crate::metrics::etcd("txn", self.client().txn(t))
            .await?
            .succeeded()
        {
            return Ok(rec);
        }
        let cur: SubnetRecord = match self.get_one(&key).await? {
            Some(kv) => parse(&kv)?,
            None => {
                return Err(StoreError::Refused(format!(
                    "subnet {net} changed while reserving it; try again"
                )))
            }
        };
        if cur == rec {
            return Ok(rec);
        }
        Err(StoreError::Refused(match (cur.reserved, cur.host) {
            (true, Some(h)) => format!("subnet {net} is already reserved for host {h}"),
            (true, None) => format!("subnet {net} is already reserved"),
            (false, Some(h)) => format!(
                "subnet {net} is held by host {h}; remove it first with `weftctl host rm {h}`"
            ),
            (false, None) => format!("subnet {net} is in use"),
        }))
    }

    /// Frees a reservation.
    pub async fn release(&self, net: Ipv4Network) -> Result<SubnetRecord> {
        let cfg = self.require_config().await?;
        check_subnet(&cfg, net)?;
        let key = self.subnet_key(net);
        let kv = self.get_one(&key).await?.ok_or_else(|| {
            StoreError::Refused(format!("subnet {net} is neither reserved nor held"))
        })?;
        let rec: SubnetRecord = parse(&kv)?;
        if !rec.reserved {
            let h = rec.host.unwrap_or_default();
            return Err(StoreError::Refused(format!(
                "subnet {net} is not reserved but held by host {h}; use `weftctl host rm {h}` to free it"
            )));
        }
        if let Some(h) = &rec.host {
            if self.host(h).await?.is_some_and(|r| r.subnet == net) {
                return Err(StoreError::Refused(format!(
                    "subnet {net} is reserved for host {h}, which is using it; use `weftctl host rm {h}` first"
                )));
            }
        }
        let t = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        if !crate::metrics::etcd("txn", self.client().txn(t))
            .await?
            .succeeded()
        {
            return Err(StoreError::Refused(format!(
                "subnet {net} changed while releasing it; try again"
            )));
        }
        Ok(rec)
    }
}

fn check_subnet(cfg: &NetworkConfig, net: Ipv4Network) -> Result<()> {
    if !cfg.is_host_subnet(net) {
        return Err(StoreError::Refused(format!(
            "{net} is not a /{} subnet of the cluster cidr {}",
            cfg.subnet_len, cfg.cidr
        )));
    }
    Ok(())
}

/// Where a registration without a host record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// A subnet reserved for this host (the reservation stays, leaseless).
    Pinned(Ipv4Network),
    /// A subnet whose key names this host though it has no record (a
    /// hand-edited or half-restored etcd): taken over as it is.
    Reclaim(Ipv4Network),
    /// A free subnet: its key is created.
    Free(Ipv4Network),
}

impl Choice {
    pub fn subnet(self) -> Ipv4Network {
        match self {
            Choice::Pinned(n) | Choice::Reclaim(n) | Choice::Free(n) => n,
        }
    }
}

/// The other remedy of every refusal: the host gives up its subnet.
fn afresh(node: &str) -> String {
    format!("start {node} afresh on a new subnet: delete its namespaces (`weftctl ns del NAME` on {node}), stop its agent, remove its state directory and start the agent again")
}

/// Decides the subnet of `node`, which has no host record, from every
/// subnet key (`rec` gives a key's record). `want` is the subnet the host
/// already serves: it keeps that one or nothing. Refused (nothing to
/// write) when `want` is not a host subnet of the cluster, is held by or
/// reserved for another host (or for none), or another subnet is reserved
/// for this host. Without `want`: the subnet reserved for it, else a free
/// one.
pub fn choose<V>(
    cfg: &NetworkConfig,
    node: &str,
    want: Option<Ipv4Network>,
    subnets: &BTreeMap<Ipv4Network, V>,
    rec: impl Fn(&V) -> &SubnetRecord,
) -> Result<Choice> {
    let mine = |r: &SubnetRecord| r.host.as_deref() == Some(node);
    let pinned = subnets
        .iter()
        .find(|(net, v)| rec(v).reserved && mine(rec(v)) && cfg.is_host_subnet(**net))
        .map(|(net, _)| *net);
    let Some(want) = want else {
        if let Some(net) = pinned {
            return Ok(Choice::Pinned(net));
        }
        let used: HashSet<Ipv4Network> = subnets.keys().copied().collect();
        return pick_free(cfg, &used)
            .map(Choice::Free)
            .ok_or(StoreError::Exhausted {
                cidr: cfg.cidr,
                len: cfg.subnet_len,
                count: cfg.subnet_count(),
            });
    };
    // What happened, then how to give the host its subnet back (if it can
    // be), then the other way out.
    let refuse = |why: String, back: Option<String>| {
        let back = back.map_or_else(
            || " To go on:".to_string(),
            |b| format!(" To give {want} back to {node}: {b}; or"),
        );
        Err(StoreError::Refused(format!(
            "{}, {why}: nothing allocated.{back} {}",
            served_subnet_refusal(node, want),
            afresh(node)
        )))
    };
    if !cfg.is_host_subnet(want) {
        return refuse(
            format!(
                "which is not a /{} subnet of the cluster cidr {}",
                cfg.subnet_len, cfg.cidr
            ),
            None,
        );
    }
    match subnets.get(&want).map(&rec) {
        Some(r) if mine(r) && r.reserved => Ok(Choice::Pinned(want)),
        Some(r) if mine(r) => Ok(Choice::Reclaim(want)),
        Some(SubnetRecord { reserved: false, host: Some(h) }) => refuse(
            format!("which is now held by host {h} ({node}'s lease ended while it was away, or it was removed)"),
            Some(format!("stop the agent of {h} (its namespaces use {want}), `weftctl host rm {h}`, then `weftctl subnet reserve {want} --host {node}`")),
        ),
        Some(SubnetRecord { reserved: true, host: Some(h) }) => refuse(
            format!("which is reserved for host {h}"),
            Some(format!("`weftctl subnet release {want}`, then `weftctl subnet reserve {want} --host {node}`")),
        ),
        Some(SubnetRecord { host: None, .. }) => refuse(
            "which is reserved".to_string(),
            Some(format!("`weftctl subnet release {want}`, then `weftctl subnet reserve {want} --host {node}`")),
        ),
        None => match pinned {
            Some(p) => refuse(
                format!("but {p} is reserved for it"),
                Some(format!("`weftctl subnet release {p}` (it then keeps {want})")),
            ),
            None => Ok(Choice::Free(want)),
        },
    }
}

/// A free subnet, starting at a random place (so concurrent allocators
/// rarely collide); `None` when every subnet is used.
pub fn pick_free(cfg: &NetworkConfig, used: &HashSet<Ipv4Network>) -> Option<Ipv4Network> {
    let n = cfg.subnet_count();
    if used.len() as u64 >= n {
        return None;
    }
    let start = rand::random_range(0..n);
    (0..n)
        .map(|i| (start + i) % n)
        .filter_map(|i| cfg.nth_subnet(i))
        .find(|s| !used.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(len: u8) -> NetworkConfig {
        NetworkConfig {
            subnet_len: len,
            ..NetworkConfig::new("10.244.0.0/16".parse().unwrap())
        }
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn held(h: &str) -> SubnetRecord {
        SubnetRecord {
            host: Some(h.into()),
            reserved: false,
        }
    }

    fn reserved(h: Option<&str>) -> SubnetRecord {
        SubnetRecord {
            host: h.map(str::to_string),
            reserved: true,
        }
    }

    fn choose_in(
        subnets: &[(&str, SubnetRecord)],
        want: Option<&str>,
    ) -> std::result::Result<Choice, String> {
        let map: BTreeMap<Ipv4Network, SubnetRecord> =
            subnets.iter().map(|(n, r)| (net(n), r.clone())).collect();
        choose(&cfg(24), "h3", want.map(net), &map, |r| r).map_err(|e| e.to_string())
    }

    /// A host that comes back to find its subnet taken is refused with
    /// both names and both remedies; it is never given another subnet.
    #[test]
    fn a_taken_subnet_is_refused_not_swapped() {
        let y = "10.244.2.0/24";
        let e = choose_in(&[(y, held("h4"))], Some(y)).unwrap_err();
        assert_eq!(
            e,
            "host h3 serves 10.244.2.0/24, which is now held by host h4 (h3's lease ended while it was away, or it was removed): nothing allocated. \
             To give 10.244.2.0/24 back to h3: stop the agent of h4 (its namespaces use 10.244.2.0/24), `weftctl host rm h4`, then `weftctl subnet reserve 10.244.2.0/24 --host h3`; \
             or start h3 afresh on a new subnet: delete its namespaces (`weftctl ns del NAME` on h3), stop its agent, remove its state directory and start the agent again"
        );
        for part in [
            "host h3 serves 10.244.2.0/24, which is now held by host h4",
            "nothing allocated",
            "`weftctl host rm h4`",
            "`weftctl subnet reserve 10.244.2.0/24 --host h3`",
            "start h3 afresh",
        ] {
            assert!(e.contains(part), "{part:?} missing: {e}");
        }
        let e = choose_in(&[(y, reserved(Some("h5")))], Some(y)).unwrap_err();
        assert!(
            e.contains("which is reserved for host h5")
                && e.contains("`weftctl subnet release 10.244.2.0/24`"),
            "{e}"
        );
        let e = choose_in(&[(y, reserved(None))], Some(y)).unwrap_err();
        assert!(
            e.contains("which is reserved: nothing allocated. To give"),
            "{e}"
        );
        // Outside the cluster: no way back, only the other way out.
        let e = choose_in(&[], Some("10.245.2.0/24")).unwrap_err();
        assert!(
            e.ends_with("nothing allocated. To go on: start h3 afresh on a new subnet: delete its namespaces (`weftctl ns del NAME` on h3), stop its agent, remove its state directory and start the agent again"),
            "{e}"
        );
        for bad in ["10.245.2.0/24", "10.244.2.0/25"] {
            let e = choose_in(&[], Some(bad)).unwrap_err();
            assert!(
                e.contains(&format!(
                    "host h3 serves {bad}, which is not a /24 subnet of the cluster cidr 10.244.0.0/16"
                )),
                "{e}"
            );
        }
        // Another subnet reserved for it: it cannot follow, so refused too.
        let e = choose_in(&[("10.244.7.0/24", reserved(Some("h3")))], Some(y)).unwrap_err();
        assert!(
            e.contains("but 10.244.7.0/24 is reserved for it")
                && e.contains("`weftctl subnet release 10.244.7.0/24`"),
            "{e}"
        );
    }

    #[test]
    fn a_served_subnet_that_is_free_or_its_own_is_given_back() {
        let y = "10.244.2.0/24";
        assert_eq!(
            choose_in(&[("10.244.1.0/24", held("h4"))], Some(y)),
            Ok(Choice::Free(net(y)))
        );
        assert_eq!(
            choose_in(&[(y, reserved(Some("h3")))], Some(y)),
            Ok(Choice::Pinned(net(y)))
        );
        // Its own reservation wins over another one pinned to it.
        assert_eq!(
            choose_in(
                &[
                    ("10.244.1.0/24", reserved(Some("h3"))),
                    (y, reserved(Some("h3")))
                ],
                Some(y)
            ),
            Ok(Choice::Pinned(net(y)))
        );
        assert_eq!(
            choose_in(&[(y, held("h3"))], Some(y)),
            Ok(Choice::Reclaim(net(y)))
        );
        // A new host: its reservation, else any free subnet.
        assert_eq!(
            choose_in(&[(y, reserved(Some("h3")))], None),
            Ok(Choice::Pinned(net(y)))
        );
        match choose_in(&[(y, held("h4"))], None) {
            Ok(Choice::Free(n)) => assert_ne!(n, net(y)),
            other => panic!("{other:?}"),
        }
    }

    fn record(host: u8, reserved: bool) -> SubnetRecord {
        SubnetRecord {
            host: (host < 4).then(|| format!("h{host}")),
            reserved,
        }
    }

    proptest! {
        /// pick_free never returns a used subnet or one outside the cidr, and
        /// finds one whenever one is free.
        #[test]
        fn pick_free_is_sound(len in 17u8..22, used_idx in proptest::collection::hash_set(0u64..32, 0..32)) {
            let cfg = cfg(len);
            let used: HashSet<Ipv4Network> = used_idx.iter().filter_map(|i| cfg.nth_subnet(*i)).collect();
            match pick_free(&cfg, &used) {
                Some(s) => {
                    prop_assert!(cfg.is_host_subnet(s));
                    prop_assert!(!used.contains(&s));
                }
                None => prop_assert_eq!(used.len() as u64, cfg.subnet_count()),
            }
        }

        /// Whatever etcd holds, `choose` never hands out a subnet another
        /// host holds or that is reserved for another host (or for none),
        /// gives a host that serves a subnet that subnet or nothing, and
        /// refuses only for one of the documented reasons.
        #[test]
        fn choose_is_sound(
            len in 17u8..22,
            keys in proptest::collection::btree_map(0u64..32, (0u8..5, any::<bool>()), 0..32),
            want in proptest::option::of(0u64..40),
            outside in any::<bool>(),
        ) {
            let cfg = cfg(len);
            let subnets: BTreeMap<Ipv4Network, SubnetRecord> = keys
                .iter()
                .filter_map(|(i, (h, r))| Some((cfg.nth_subnet(*i)?, record(*h, *r))))
                .collect();
            let want = match (want, outside) {
                (Some(_), true) => Some(net("10.99.0.0/24")),
                (w, _) => w.and_then(|i| cfg.nth_subnet(i)),
            };
            match choose(&cfg, "h3", want, &subnets, |r| r) {
                Ok(c) => {
                    let s = c.subnet();
                    prop_assert!(cfg.is_host_subnet(s));
                    if let Some(w) = want { prop_assert_eq!(s, w); }
                    match (c, subnets.get(&s)) {
                        (Choice::Free(_), None) => {}
                        (Choice::Pinned(_), Some(r)) => prop_assert!(r.reserved && r.host.as_deref() == Some("h3")),
                        (Choice::Reclaim(_), Some(r)) => prop_assert!(!r.reserved && r.host.as_deref() == Some("h3")),
                        (c, r) => prop_assert!(false, "{c:?} of a key {r:?}"),
                    }
                }
                Err(StoreError::Exhausted { .. }) => {
                    prop_assert!(want.is_none());
                    prop_assert_eq!(subnets.len() as u64, cfg.subnet_count());
                }
                Err(StoreError::Refused(why)) => {
                    let w = want.expect("a new host is never refused");
                    prop_assert!(why.starts_with(&format!("host h3 serves {w}")), "{}", why);
                    let theirs = subnets.get(&w).is_some_and(|r| r.host.as_deref() != Some("h3"));
                    let pinned_elsewhere = subnets.iter().any(|(n, r)| *n != w && r.reserved && r.host.as_deref() == Some("h3"));
                    prop_assert!(!cfg.is_host_subnet(w) || theirs || pinned_elsewhere, "{}", why);
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }
}
