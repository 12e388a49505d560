//! `ns add`: check the request, take an address, build the endpoint (from
//! a spare namespace when there is one), publish its ports and save its
//! record. Every step that made something pushes its [`Undo`]; a failure
//! takes them back in reverse order, so a failed `ns add` leaves nothing.
//! A pending marker in the state directory covers a crash in between: the
//! next start (or the next `ns add` of the name) removes the pieces.

use std::net::Ipv4Addr;

use tracing::{debug, error, info, warn};
use weft_common::api::Endpoint;
use weft_common::name::host_veth_name;
use weft_common::{labels, Labels, MacAddr, PortMapping};

use super::undo::Undo;
use super::{EndpointError, Endpoints, Result, Table};
use crate::kernel::OnError;
use crate::model::attachment::AttachmentRecord;
use crate::model::endpoint::{check_add, EndpointRecord};
use crate::model::observed::NetnsPresence;
use crate::model::ops::Op;
use crate::model::BRIDGE;
use crate::telemetry::metrics;

/// Time spent in each step of an operation, for debug logs.
struct Phases {
    last: std::time::Instant,
    done: Vec<(&'static str, std::time::Duration)>,
}

impl Phases {
    fn start() -> Self {
        Phases {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    fn mark(&mut self, what: &'static str) {
        let now = std::time::Instant::now();
        self.done.push((what, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: std::time::Duration = self.done.iter().map(|(_, d)| *d).sum();
        write!(f, "{:.2} ms", total.as_secs_f64() * 1e3)?;
        for (what, d) in &self.done {
            write!(f, ", {what} {:.2}", d.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

/// What `ns add` and CNI ADD ask for, once checked.
pub(super) struct Admission {
    pub name: String,
    pub host_veth: String,
    pub ip: Option<Ipv4Addr>,
    pub publish: Vec<PortMapping>,
    pub labels: Labels,
    pub attachment: Option<AttachmentRecord>,
}

impl Endpoints {
    /// `weftctl ns add`: builds a namespace on the bridge. On any failure,
    /// everything created so far is removed again.
    pub async fn add(
        &self,
        name: String,
        ip: Option<Ipv4Addr>,
        publish: Vec<PortMapping>,
        labels: Labels,
    ) -> Result<Endpoint> {
        labels::check(&labels)?;
        let mut t = self.table.lock().await;
        let host_veth = check_add(&name, &publish, &t.records)?;
        if self.state.is_pending(&name) {
            // An earlier ns add of this name could not be undone completely.
            self.remove_leftovers(&name).await?;
            self.state.clear_pending(&name)?;
            info!("removed the leftovers of an earlier failed ns add {name}");
        }
        if self.kernel.netns_presence(&name).await != NetnsPresence::Absent {
            return Err(EndpointError::ForeignNetns(self.netns_dir.join(&name)));
        }
        let admission = Admission {
            name,
            host_veth,
            ip,
            publish,
            labels,
            attachment: None,
        };
        self.admit(&mut t, admission).await
    }

    /// What `ns add` and CNI ADD share once the request is checked: the
    /// published ports free, an address, the build, the record.
    pub(super) async fn admit(&self, t: &mut Table, a: Admission) -> Result<Endpoint> {
        let Admission {
            name,
            host_veth,
            ip,
            publish,
            labels,
            attachment,
        } = a;
        // A container runtime reserves the host ports it publishes itself
        // (podman's conmon listens on them): only ns add checks them here.
        let ports_checked = if attachment.is_none() {
            &publish[..]
        } else {
            &[]
        };
        for p in ports_checked {
            self.kernel
                .port_free(p)
                .await
                .map_err(|reason| EndpointError::PortUnavailable { spec: *p, reason })?;
        }
        let ip = t.ipam.allocate(&name, ip)?;
        let rec = EndpointRecord {
            name: name.clone(),
            ip,
            mac: MacAddr::from_ipv4(ip),
            host_veth,
            publish,
            attachment,
            labels,
        };
        let built = self.build(&rec).await;
        if rec.attachment.is_none() {
            self.pool.wake.notify_one();
        }
        match built {
            Ok(()) => {
                info!(
                    "added {}: {ip}/{} on {BRIDGE} via {}{}",
                    rec.describe(),
                    self.spec.subnet.prefix(),
                    rec.host_veth,
                    rec.published()
                );
                let ep = self.endpoint(&rec);
                t.records.insert(name, rec);
                self.changed(t);
                Ok(ep)
            }
            // Pieces that could not be removed may still hold the address
            // (an interface on the bridge): keep it until they are gone.
            Err(e @ EndpointError::RolledBackBadly { .. }) => Err(e),
            Err(e) => {
                t.ipam.release(ip);
                Err(e)
            }
        }
    }

    /// What a failed or interrupted `ns add` may have left: the veth and
    /// the namespace mount (only if it is one: the name was refused if
    /// something else was at that path).
    pub(super) async fn remove_leftovers(&self, name: &str) -> Result<()> {
        let mut ops = vec![Op::DeleteDevice {
            name: host_veth_name(name),
            index: None,
        }];
        if self.kernel.netns_presence(name).await == NetnsPresence::Mounted {
            ops.push(Op::DeleteNetns {
                name: name.to_string(),
            });
        }
        match self.kernel.apply(&ops, OnError::Stop).await.into_error() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Builds the endpoint `rec`; on failure, takes back what it made.
    async fn build(&self, rec: &EndpointRecord) -> Result<()> {
        let mut phases = Phases::start();
        self.state.mark_pending(&rec.name)?;
        phases.mark("pending");
        let mut undo: Vec<Undo> = Vec::new();
        let built = self.steps(rec, &mut undo, &mut phases).await;
        let Err(error) = built else {
            // The endpoint is complete and saved; a stale marker is harmless
            // (the next start sees the saved endpoint and drops the marker).
            if let Err(e) = self.state.clear_pending(&rec.name) {
                warn!("{e}");
            }
            phases.mark("cleared");
            debug!("add {}: {phases}", rec.describe());
            return Ok(());
        };
        let failed = self.roll_back(undo).await;
        if failed.is_empty() {
            if let Err(e) = self.state.clear_pending(&rec.name) {
                warn!("{e}");
            }
            warn!(
                "adding {} failed and was rolled back: {error}",
                rec.describe()
            );
            Err(error)
        } else {
            // The pending marker stays: the next ns add of this name, or the
            // next start, removes what is left.
            error!(
                "adding {} failed ({error}) and could not be fully rolled back: {}",
                rec.describe(),
                failed.join("; ")
            );
            Err(EndpointError::RolledBackBadly {
                error: Box::new(error),
                undo: failed,
            })
        }
    }

    /// The steps of a build, each pushing what it made onto `undo`.
    async fn steps(
        &self,
        rec: &EndpointRecord,
        undo: &mut Vec<Undo>,
        phases: &mut Phases,
    ) -> Result<()> {
        let spec = self.spec.endpoint(rec);
        // The record's write (and its fsyncs) overlaps the kernel work; a
        // failure below removes it again. A crash in between leaves a
        // saved endpoint that the next start completes.
        let saving = self.state.save_endpoint(rec);
        // Whatever the outcome, the record may exist: undo removes it.
        undo.push(Undo::Record(rec.name.clone()));
        let mut built = false;
        // A spare is a namespace of weft's: an attachment has its runtime's.
        let spare = match rec.attachment {
            None => self.pool.take(),
            Some(_) => None,
        };
        if let Some(spare) = spare {
            let adopt = Op::AdoptSpare {
                spare,
                netns: rec.name.clone(),
                host: rec.host_veth.clone(),
                master: BRIDGE.to_string(),
                inside: spec.spare_inside(),
            };
            match self.apply_one(&adopt).await {
                None => {
                    undo.push(Undo::Netns(rec.name.clone()));
                    undo.push(Undo::Veth(rec.host_veth.clone()));
                    built = true;
                    phases.mark("spare");
                }
                Some(e) => warn!(
                    "spare namespace unusable ({e}); building {} from scratch",
                    rec.name
                ),
            }
        }
        if !built {
            let ops = spec.build_ops();
            let report = self.kernel.apply(&ops, OnError::Stop).await;
            self.record(&report);
            undo.extend(ops[..report.done].iter().filter_map(Undo::of));
            if let Some(e) = report.into_error() {
                return Err(e.into());
            }
            phases.mark("namespace and veth");
        }
        let forwards = rec.forwards();
        if !forwards.is_empty() {
            let op = Op::AddForwards(forwards);
            if let Some(e) = self.apply_one(&op).await {
                return Err(e.into());
            }
            undo.extend(Undo::of(&op));
            phases.mark("nft");
        }
        saving.await?;
        phases.mark("state");
        Ok(())
    }

    /// Takes back what a failed build made, in reverse order; returns what
    /// could not be taken back.
    async fn roll_back(&self, undo: Vec<Undo>) -> Vec<String> {
        let mut failed = Vec::new();
        for u in undo.into_iter().rev() {
            let error = match (&u, u.op()) {
                (Undo::Record(name), _) => self
                    .state
                    .remove_endpoint(name)
                    .await
                    .err()
                    .map(|e| e.to_string()),
                (_, Some(op)) => self.apply_one(&op).await.map(|e| e.to_string()),
                (_, None) => None,
            };
            failed.extend(error);
        }
        failed
    }

    /// Applies one operation; its failure, if any.
    async fn apply_one(&self, op: &Op) -> Option<crate::kernel::KernelError> {
        let report = self
            .kernel
            .apply(std::slice::from_ref(op), OnError::Stop)
            .await;
        self.record(&report);
        report.into_error()
    }

    fn record(&self, report: &crate::kernel::Report) {
        metrics::applied(report.by_kind(), report.kernel_failures());
    }
}
