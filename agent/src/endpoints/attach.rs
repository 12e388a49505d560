//! CNI attachments: a container runtime's namespace put on the bridge by
//! `weft-cni` (ADD), taken off (DEL, idempotent), checked (CHECK), swept
//! (GC), and whether ADD can be served (STATUS). An attachment is an
//! endpoint whose namespace is the runtime's: weft builds and removes its
//! veth pair, address and published ports, and never creates or deletes
//! the namespace. One whose namespace vanished (the runtime crashed) is
//! released here too, when a reconcile finds it gone.

use std::collections::BTreeSet;

use tracing::{debug, info, warn};
use weft_common::api::{AttachmentKey, Endpoint, GcReport};
use weft_common::{labels, Labels, PortMapping};

use super::add::Admission;
use super::{EndpointError, Endpoints, Result, Table};
use crate::kernel::{Cause as KernelCause, OnError};
use crate::model::attachment::{
    check_key, check_netns, check_network, endpoint_name, AttachmentRecord,
};
use crate::model::diff::{self, Cause, EndpointCheck};
use crate::model::endpoint::{check_add, short_id};
use crate::model::ipam::IpamError;
use crate::model::observed::{HostQuery, NetnsPresence};
use crate::model::MAX_ENDPOINTS;
use crate::telemetry::metrics;

/// What CNI STATUS reports when ADD can be served.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CniReady {
    /// Addresses of this host's subnet still free.
    pub free_addresses: u32,
}

impl Endpoints {
    /// CNI ADD: a veth pair into the runtime's namespace at `netns`, named
    /// `ifname` inside, with an address of this host's subnet and a
    /// default route; the published ports. Nothing stays on failure.
    pub async fn cni_add(
        &self,
        key: AttachmentKey,
        netns: String,
        network: String,
        publish: Vec<PortMapping>,
        labels: Labels,
    ) -> Result<Endpoint> {
        check_key(&key)?;
        labels::check(&labels)?;
        check_netns(&netns)?;
        check_network(&network)?;
        let mut t = self.table.lock().await;
        let name = endpoint_name(&key);
        if t.records.get(&name).is_some_and(|r| r.attachment.is_some()) {
            return Err(EndpointError::AttachmentExists(key));
        }
        let host_veth = check_add(&name, &publish, &t.records)?;
        if self.state.is_pending(&name) {
            self.remove_leftovers(&name).await?;
            self.state.clear_pending(&name)?;
            info!("removed the leftovers of an earlier failed ADD of {key}");
        }
        match self.kernel.netns_presence(&netns).await {
            NetnsPresence::Mounted => {}
            NetnsPresence::Absent => return Err(EndpointError::NetnsMissing(netns)),
            NetnsPresence::Other => return Err(EndpointError::NotANetns(netns)),
        }
        let attachment = AttachmentRecord {
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
            netns: netns.clone(),
            network,
        };
        let admission = Admission {
            name,
            host_veth,
            ip: None,
            publish,
            labels,
            attachment: Some(attachment),
        };
        let added = self.admit(&mut t, admission).await;
        match added {
            Err(e) if self.interface_taken(&e, &netns, &key.ifname).await => {
                Err(EndpointError::InterfaceExists {
                    ifname: key.ifname,
                    netns,
                })
            }
            r => r,
        }
    }

    /// Whether a failed ADD failed because the namespace already has an
    /// interface of that name (the kernel said "exists"; the namespace is
    /// looked into only then).
    async fn interface_taken(&self, e: &EndpointError, netns: &str, ifname: &str) -> bool {
        let exists = |k: &crate::kernel::KernelError| matches!(k.cause, KernelCause::Refused { errno, .. } if errno == libc::EEXIST);
        let eexist = match e {
            EndpointError::Kernel(k) => exists(k),
            EndpointError::RolledBackBadly { error, .. } => {
                matches!(&**error, EndpointError::Kernel(k) if exists(k))
            }
            _ => false,
        };
        eexist
            && matches!(
                self.kernel.observe_netns(netns).await,
                Ok(Some(v)) if v.devices.contains_key(ifname)
            )
    }

    /// CNI DEL: removes the attachment's veth pair, address and published
    /// ports. Succeeds when there is nothing to remove (no record, the
    /// namespace or the interface gone, a second DEL); kernel failures are
    /// logged and left to the repair loop, the address and ports are
    /// released whatever happens.
    pub async fn cni_del(&self, key: AttachmentKey) -> Result<Option<Endpoint>> {
        check_key(&key)?;
        let mut t = self.table.lock().await;
        let name = endpoint_name(&key);
        if t.records.get(&name).is_none_or(|r| r.attachment.is_none()) {
            debug!("CNI DEL of {key}: nothing attached");
            return Ok(None);
        }
        self.release(&mut t, &name, "CNI DEL").await.map(Some)
    }

    /// CNI CHECK: the attachment against its record and the kernel: the
    /// namespace, the host end (a port of the bridge, up, the MTU), the
    /// interface inside (up, the MTU, the address, the default route).
    pub async fn cni_check(&self, key: AttachmentKey, netns: String) -> Result<Endpoint> {
        check_key(&key)?;
        check_netns(&netns)?;
        let t = self.table.lock().await;
        let name = endpoint_name(&key);
        let rec = t
            .records
            .get(&name)
            .filter(|r| r.attachment.is_some())
            .ok_or_else(|| EndpointError::NoAttachment(key.clone()))?;
        let recorded = rec.netns();
        let mut what = Vec::new();
        if recorded != netns {
            what.push(format!(
                "the namespace given is {netns}, weft attached {recorded}"
            ));
        }
        let spec = self.spec.endpoint(rec);
        let q = HostQuery {
            netns: vec![recorded.to_string()],
            ..HostQuery::default()
        };
        let seen = self.kernel.observe_host(&q).await?;
        let inside = self.kernel.observe_netns(recorded).await?;
        match diff::endpoint(&spec, &seen, inside.as_ref(), Cause::Start) {
            EndpointCheck::Healthy | EndpointCheck::LookInside => {}
            EndpointCheck::Gone => what.push(format!("network namespace {recorded} is gone")),
            EndpointCheck::Repair(changes) => {
                what.extend(changes.iter().map(|c| format!("needs `{}`", c.op)));
            }
        }
        if what.is_empty() {
            Ok(self.endpoint(rec))
        } else {
            Err(EndpointError::Differs { key, what })
        }
    }

    /// CNI GC: removes every attachment of `network` that is not in
    /// `keep`. Every one is attempted; the first failure is returned after.
    pub async fn cni_gc(&self, network: String, keep: Vec<AttachmentKey>) -> Result<GcReport> {
        check_network(&network)?;
        let keep: BTreeSet<AttachmentKey> = keep.into_iter().collect();
        let mut t = self.table.lock().await;
        let stale: Vec<(String, AttachmentKey)> = t
            .records
            .values()
            .filter_map(|r| {
                let a = r.attachment.as_ref()?;
                (a.network == network && !keep.contains(&a.key()))
                    .then(|| (r.name.clone(), a.key()))
            })
            .collect();
        let mut removed = Vec::new();
        let mut first_error = None;
        for (name, key) in stale {
            match self
                .release(
                    &mut t,
                    &name,
                    "CNI GC: not among the runtime's valid attachments",
                )
                .await
            {
                Ok(_) => removed.push(key),
                Err(e) => {
                    warn!("CNI GC of {key}: {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(GcReport { removed }),
        }
    }

    /// CNI STATUS: whether an ADD can be served now (an address and a
    /// bridge port are free).
    pub async fn cni_status(&self) -> Result<CniReady> {
        let t = self.table.lock().await;
        if t.records.len() >= MAX_ENDPOINTS {
            return Err(crate::model::endpoint::AddRefusal::BridgeFull.into());
        }
        let capacity = t.ipam.capacity();
        let free = capacity.saturating_sub(t.records.len() as u32);
        if free == 0 {
            return Err(IpamError::Full {
                subnet: self.spec.subnet,
                capacity,
            }
            .into());
        }
        Ok(CniReady {
            free_addresses: free,
        })
    }

    /// Releases the attachments a reconcile found without their namespace.
    pub async fn release_gone(&self, t: &mut Table, names: &[String]) {
        for name in names {
            let why = "its network namespace is gone (removed without CNI DEL)";
            if let Err(e) = self.release(t, name, why).await {
                warn!("cannot release attachment {name}: {e}; retrying at the next repair");
            }
        }
    }

    /// Takes attachment `name` off the bridge: its published ports and its
    /// veth pair (failures are logged; the repair loop removes a veth no
    /// endpoint owns), then its record and its address.
    async fn release(&self, t: &mut Table, name: &str, why: &str) -> Result<Endpoint> {
        let rec = t
            .records
            .get(name)
            .cloned()
            .ok_or_else(|| EndpointError::NotFound(name.to_string()))?;
        let report = self
            .kernel
            .apply(&rec.teardown_ops(), OnError::Continue)
            .await;
        metrics::applied(report.by_kind(), report.kernel_failures());
        for f in &report.failures {
            warn!(
                "removing {}: {}; the repair loop retries",
                rec.describe(),
                f.error
            );
        }
        self.state.remove_endpoint(name).await?;
        t.records.remove(name);
        t.ipam.release(rec.ip);
        self.changed(t);
        let container = rec
            .attachment
            .as_ref()
            .map_or("", |a| short_id(&a.container_id));
        info!(
            container,
            "removed {} ({}): {why}{}",
            rec.describe(),
            rec.ip,
            rec.published()
        );
        Ok(self.endpoint(&rec))
    }
}
