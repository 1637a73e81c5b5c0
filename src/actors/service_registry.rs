//! `ServiceRegistry`: the service state machine. Owns services and their instances with the
//! health the checks found (replicated), the load-balancing cursors (local), and, while its
//! node leads, the health checks ([`HealthChecks`]: the schedule, the probes running, the
//! outcomes waiting to be written).
//!
//! Receives: `ApplyEntries` (committed `registry` commands, in index order), `GetService`,
//! `ListServices`, `GetRegistryStats`, `Balance`, generic `Query`s, `Beat`, and
//! `LeadershipChanged` from `Election`. Sends: `ClientWrite` to `Election`, only as leader,
//! at most one entry at a time carrying a tick's check outcomes: nothing while nothing
//! changes. Probes run as async tasks with deadlines, at most `check_concurrency` at once,
//! never on this actor's time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::Config;
use crate::error::ApiError;
use crate::messages::apply::{ApplyEntries, Query};
use crate::messages::client::ClientWrite;
use crate::messages::raft::LeadershipChanged;
use crate::messages::registry::{
    Balance, Beat, GetRegistryStats, GetService, InstanceKey, ListServices, REGISTRY_NAMESPACE, RegistryCommand,
    RegistryQuery, RegistryStats, Service, ServiceNode,
};
use crate::raft::{Entry, NodeId, Payload};
use crate::registry::checks::{CheckSettings, HealthChecks, ProbeJob};
use crate::registry::{Registry, Services, pick};
use crate::snapshot::{RestoreSnapshot, SnapshotView, TakeSnapshot, read_frame, write_frame};
use crate::state_machine::{AppliedGate, PublishView, Publisher, Reader, read_after, views};
use crate::transport::TransportRef;
use crate::wire::Write;

/// Where the registry proposes its check outcomes: `Election`, set once it exists (the two
/// address each other, and may live on different threads).
pub type Proposer = Arc<OnceLock<Recipient<ClientWrite>>>;

/// What the registry does while its node leads.
struct Leading {
    term: u64,
    checks: HealthChecks,
    /// Results of this leadership's probes, as they finish: the tasks push here and wake
    /// the actor only when it was empty, so thousands of results a second cost a few
    /// messages, and each wake starts the next probes once.
    results: ProbeResults,
}

/// Probe results waiting for the actor: (instance, generation, ok). Shared with the probe
/// tasks, which may run on another thread.
type ProbeResults = Arc<Mutex<Vec<(InstanceKey, u64, bool)>>>;

/// The way back to the registry, shared by a burst of probes.
struct Back {
    term: u64,
    me: Addr<ServiceRegistry>,
    results: ProbeResults,
}

impl Back {
    /// Records a result; true if the caller should wake the actor (the list was empty).
    fn record(&self, key: InstanceKey, generation: u64, ok: bool) -> bool {
        let mut r = lock(&self.results);
        r.push((key, generation, ok));
        r.len() == 1
    }

    fn wake(&self) {
        self.me.do_send(Probed { term: self.term });
    }
}

/// One probe's report: `record` its result, or, dropped without one, it records a failure
/// (and wakes the actor itself).
struct Report {
    job: Option<(InstanceKey, u64)>,
    back: Arc<Back>,
}

impl Report {
    /// Records the result; true if the caller should wake the actor.
    fn record(&mut self, ok: bool) -> bool {
        self.job.take().is_some_and(|(key, generation)| self.back.record(key, generation, ok))
    }

    fn wake(&self) {
        self.back.wake();
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        // Recorded already, or never run.
        if let Some((key, generation)) = self.job.take()
            && self.back.record(key, generation, false)
        {
            self.back.wake();
        }
    }
}

/// How long probe results gather before the actor is woken for them.
const RESULT_BATCH_WINDOW: Duration = Duration::from_millis(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The service registry state machine.
pub struct ServiceRegistry {
    id: NodeId,
    config: Arc<Config>,
    registry: Registry,
    gate: AppliedGate,
    rng: StdRng,
    cursors: BTreeMap<String, usize>,
    proposer: Proposer,
    transport: TransportRef,
    /// Where probes run (`None`: on this actor's thread).
    prober: Option<ArbiterHandle>,
    leading: Option<Leading>,
    /// The services as applied, published when a reader on another thread waits for them.
    views: Publisher<Services>,
}

impl ServiceRegistry {
    /// A reader of the services as applied (give it this actor's address with
    /// [`Reader::poking`] once started).
    pub fn reader(&self) -> Reader<Services> {
        self.views.reader(None)
    }

    fn publish(&self) {
        self.views.publish(self.gate.applied(), self.registry.view());
    }

    /// A registry for node `config.id`, proposing check outcomes to `proposer` (`Election`)
    /// and probing through `transport`.
    pub fn new(config: Arc<Config>, proposer: Proposer, transport: TransportRef) -> Self {
        let seed = config.seed.unwrap_or_else(rand::random).wrapping_add(config.id).wrapping_mul(0x2545_F491_4F6C_DD1D);
        ServiceRegistry {
            id: config.id,
            config,
            registry: Registry::default(),
            gate: AppliedGate::default(),
            rng: StdRng::seed_from_u64(seed),
            cursors: BTreeMap::new(),
            proposer,
            transport,
            prober: None,
            leading: None,
            views: views(Services::new()).0,
        }
    }

    fn apply(&mut self, entry: &Entry, data: &[u8]) -> Result<Bytes, String> {
        let cmd: RegistryCommand = serde_json::from_slice(data).map_err(|e| format!("bad registry command: {e}"))?;
        let applied = self.registry.apply(cmd, entry.index)?;
        if let Some(l) = self.leading.as_mut() {
            // A (re-)registration is a sign of life and a fresh start for its checks.
            let now = Instant::now();
            for key in &applied.removed {
                l.checks.removed(key);
            }
            for key in &applied.registered {
                l.checks.registered(&self.registry, key, now);
            }
        }
        if !applied.removed.is_empty() {
            self.cursors.retain(|name, _| self.registry.get(name).is_some());
        }
        Ok(Bytes::from(format!("{{\"count\":{}}}", applied.count)))
    }

    fn answer(&mut self, q: RegistryQuery) -> Result<Bytes, ApiError> {
        let json = match q {
            RegistryQuery::Get(name) => serde_json::to_vec(&self.registry.get(&name)),
            RegistryQuery::List => serde_json::to_vec(&self.registry.services().collect::<Vec<_>>()),
            RegistryQuery::Balance { name, strategy } => serde_json::to_vec(&self.balance(&name, strategy)?),
        };
        json.map(Bytes::from).map_err(|e| ApiError::BadRequest(e.to_string()))
    }

    fn balance(&mut self, name: &str, strategy: crate::messages::registry::Strategy) -> Result<ServiceNode, ApiError> {
        let service = self.registry.get(name);
        // Only a service that exists gets a cursor: asking for random names grows nothing.
        let mut spare = 0;
        let cursor = match (service, strategy) {
            (Some(_), crate::messages::registry::Strategy::RoundRobin) => {
                self.cursors.entry(name.to_string()).or_default()
            }
            _ => &mut spare,
        };
        pick(service, name, strategy, cursor, &mut self.rng).cloned()
    }

    /// Probes run on `prober`'s thread instead of this actor's: a busy probe schedule
    /// then never holds up what the registry applies and answers.
    pub fn with_prober(mut self, prober: ArbiterHandle) -> Self {
        self.prober = Some(prober);
        self
    }

    /// Starts the probes that are due and have a slot.
    fn start_probes(&mut self, ctx: &mut Context<Self>) {
        let Some(l) = self.leading.as_mut() else { return };
        let jobs = l.checks.due(&self.registry, Instant::now());
        if jobs.is_empty() {
            return;
        }
        let back = Arc::new(Back { term: l.term, me: ctx.address(), results: l.results.clone() });
        let (transport, scripts) = (self.transport.clone(), self.config.allow_script_checks);
        // Every job reports, whatever happens to it (a probe task that panics, a probe
        // thread that is gone): a slot is never lost.
        let jobs: Vec<_> = jobs
            .into_iter()
            .map(|ProbeJob { key, generation, probe, timeout }| {
                (probe, timeout, Report { job: Some((key, generation)), back: back.clone() })
            })
            .collect();
        // Each probe is a task of its own: actix polls every future spawned in a context
        // whenever the actor wakes, and hundreds of probes may be pending.
        let start = move || {
            for (probe, timeout, mut report) in jobs {
                let fut = probe.run(transport.clone(), timeout, scripts);
                actix_rt::spawn(async move {
                    let ok = fut.await;
                    if report.record(ok) {
                        // Whatever finishes in the next moment rides along: one wake of
                        // the actor (and one crossing between threads) per burst.
                        tokio::time::sleep(RESULT_BATCH_WINDOW).await;
                        report.wake();
                    }
                });
            }
        };
        match &self.prober {
            Some(p) => {
                // If the thread is gone the closure is dropped, and every job reports failed.
                p.spawn_fn(start);
            }
            None => start(),
        }
    }

    /// Proposes the next batch of check outcomes, if one waits and none is out. Never
    /// forwarded: a checker that lost leadership must not write.
    fn write_outcomes(&mut self, ctx: &mut Context<Self>) {
        let Some(l) = self.leading.as_mut() else { return };
        let Some(batch) = l.checks.take_batch() else { return };
        let term = l.term;
        let Some(proposer) = self.proposer.get().cloned() else {
            l.checks.batch_done(false);
            return;
        };
        let outcomes = batch.len();
        let data = match serde_json::to_vec(&RegistryCommand::Checked(batch)) {
            Ok(d) => Bytes::from(d),
            Err(_) => {
                l.checks.batch_done(false);
                return;
            }
        };
        tracing::debug!(term, outcomes, bytes = data.len(), "writing check outcomes");
        let write = ClientWrite {
            write: Write { namespace: REGISTRY_NAMESPACE.into(), data },
            forwarded: true,
            place: None,
            term: Some(term),
        };
        let send = proposer.send(write);
        let me = ctx.address();
        actix_rt::spawn(async move {
            let result = send.await;
            let written = matches!(result, Ok(Ok(_)));
            if !written {
                tracing::debug!(term, outcomes, ?result, "check outcomes not written");
            }
            me.do_send(OutcomesWritten { term, written });
        });
    }

    /// The leader's periodic pass: judge silences, start due probes, write what they found.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.start_probes(ctx);
        self.write_outcomes(ctx);
    }
}

impl Actor for ServiceRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        let every = Duration::from_millis((self.config.check_interval_ms / 4).clamp(10, 100));
        ctx.run_interval(every, |act, ctx| act.tick(ctx));
    }
}

impl Handler<ApplyEntries> for ServiceRegistry {
    type Result = Vec<Result<Bytes, String>>;

    fn handle(&mut self, msg: ApplyEntries, _: &mut Context<Self>) -> Self::Result {
        let out = msg
            .entries
            .iter()
            .map(|e| match &e.payload {
                Payload::Command { data, .. } => self.apply(e, data),
                Payload::Blank | Payload::Config(_) => Ok(Bytes::new()),
            })
            .collect();
        self.gate.advance(msg.applied_to);
        if self.views.applied(msg.applied_to) {
            self.publish();
        }
        out
    }
}

impl Handler<PublishView> for ServiceRegistry {
    type Result = ();

    fn handle(&mut self, _: PublishView, _: &mut Context<Self>) {
        self.publish();
    }
}

impl Handler<TakeSnapshot> for ServiceRegistry {
    type Result = Result<SnapshotView, String>;

    fn handle(&mut self, msg: TakeSnapshot, _: &mut Context<Self>) -> Self::Result {
        self.gate.check_view(msg.index)?;
        // A copy, for the registry is not a persistent map (yet); its size is the instance
        // count, far below the key space's.
        let registry = self.registry.clone();
        Ok(SnapshotView {
            items: registry.counts().0 as u64,
            write: Box::new(move |out| {
                // A service, then its instances one record each: no record grows with the
                // size of a service.
                for (implicit, service) in registry.snapshot_services() {
                    let head = Service { nodes: Vec::new(), ..service.clone() };
                    let record = SnapshotRecord::Service { implicit, service: head };
                    write_frame(out, &serde_json::to_vec(&record).map_err(std::io::Error::other)?)?;
                    for node in &service.nodes {
                        // Revisions are not part of an instance's JSON, and outcomes are judged by them.
                        let record = SnapshotRecord::Node { node: node.clone(), revision: node.revision };
                        write_frame(out, &serde_json::to_vec(&record).map_err(std::io::Error::other)?)?;
                    }
                }
                Ok(())
            }),
        })
    }
}

/// How a registry snapshot lays out its items.
#[derive(Serialize, Deserialize)]
enum SnapshotRecord {
    /// A service without its instances, which follow it.
    Service { implicit: bool, service: Service },
    /// An instance of the service before it.
    Node { node: ServiceNode, revision: u64 },
}

impl Handler<RestoreSnapshot> for ServiceRegistry {
    type Result = Result<(), String>;

    fn handle(&mut self, mut msg: RestoreSnapshot, ctx: &mut Context<Self>) -> Self::Result {
        let mut registry = Registry::default();
        let mut buf = Vec::new();
        let mut current: Option<(bool, Service)> = None;
        while read_frame(&mut msg.data, &mut buf).map_err(|e| e.to_string())? {
            match serde_json::from_slice(&buf).map_err(|e| format!("a registry record in the snapshot: {e}"))? {
                SnapshotRecord::Service { implicit, service } => {
                    if let Some((implicit, s)) = current.replace((implicit, service)) {
                        registry.restore_service(implicit, s);
                    }
                }
                SnapshotRecord::Node { mut node, revision } => {
                    let Some((_, s)) = current.as_mut() else {
                        return Err("an instance before any service in the snapshot".into());
                    };
                    node.revision = revision;
                    s.nodes.push(node);
                }
            }
        }
        if let Some((implicit, s)) = current {
            registry.restore_service(implicit, s);
        }
        let (services, instances) = registry.counts();
        tracing::info!(index = msg.index, services, instances, "registry restored from a snapshot");
        self.registry = registry;
        self.gate.advance(msg.index);
        self.publish();
        if let Some(l) = self.leading.as_mut() {
            // The checks follow the registry: start them over on what it now holds.
            let settings = CheckSettings::from_config(&self.config);
            l.checks = HealthChecks::start(settings, &self.registry, Instant::now(), &mut self.rng);
            self.tick(ctx);
        }
        Ok(())
    }
}

/// A batch of check outcomes was written, or failed.
#[derive(Message)]
#[rtype(result = "()")]
struct OutcomesWritten {
    term: u64,
    written: bool,
}

impl Handler<OutcomesWritten> for ServiceRegistry {
    type Result = ();

    fn handle(&mut self, msg: OutcomesWritten, _: &mut Context<Self>) {
        if let Some(l) = self.leading.as_mut().filter(|l| l.term == msg.term) {
            l.checks.batch_done(msg.written);
        }
    }
}

/// Probes finished: their results wait in the leadership's `results`.
#[derive(Message)]
#[rtype(result = "()")]
struct Probed {
    /// The term of the leadership that started them.
    term: u64,
}

impl Handler<Probed> for ServiceRegistry {
    type Result = ();

    fn handle(&mut self, msg: Probed, ctx: &mut Context<Self>) {
        let Some(l) = self.leading.as_mut().filter(|l| l.term == msg.term) else { return };
        let now = Instant::now();
        let done = std::mem::take(&mut *lock(&l.results));
        for (key, generation, ok) in done {
            l.checks.probed(&self.registry, &key, generation, ok, now);
        }
        // The slots they held go to the next probes that are due.
        self.start_probes(ctx);
    }
}

impl Handler<LeadershipChanged> for ServiceRegistry {
    type Result = ();

    fn handle(&mut self, msg: LeadershipChanged, ctx: &mut Context<Self>) {
        if msg.node != self.id {
            return;
        }
        if msg.is_leader {
            let settings = CheckSettings::from_config(&self.config);
            let checks = HealthChecks::start(settings, &self.registry, Instant::now(), &mut self.rng);
            tracing::info!(term = msg.term, instances = self.registry.counts().1, "leading: taking over health checks");
            self.leading = Some(Leading { term: msg.term, checks, results: ProbeResults::default() });
            self.tick(ctx);
        } else if self.leading.as_ref().is_some_and(|l| l.term == msg.term) {
            self.leading = None;
        }
    }
}

impl Handler<Beat> for ServiceRegistry {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, Beat(key): Beat, _: &mut Context<Self>) -> Self::Result {
        let Some(l) = self.leading.as_mut() else {
            return Err(ApiError::NotLeader { node: self.id, leader: None });
        };
        if self.registry.instance(&key).is_none() {
            return Err(ApiError::NotFound(format!("instance {key} is not registered")));
        }
        l.checks.beat(&self.registry, &key, Instant::now());
        Ok(())
    }
}

impl Handler<GetRegistryStats> for ServiceRegistry {
    type Result = MessageResult<GetRegistryStats>;

    fn handle(&mut self, _: GetRegistryStats, _: &mut Context<Self>) -> Self::Result {
        let (services, instances) = self.registry.counts();
        let (probes_running, outcomes_pending, probes_done, outcomes_written) =
            self.leading.as_ref().map_or((0, 0, 0, 0), |l| l.checks.load());
        let by_health = self.registry.health_counts();
        MessageResult(RegistryStats {
            services,
            instances,
            probes_running,
            outcomes_pending,
            probes_done,
            outcomes_written,
            by_health,
        })
    }
}

impl Handler<Balance> for ServiceRegistry {
    type Result = Result<ServiceNode, ApiError>;

    fn handle(&mut self, msg: Balance, _: &mut Context<Self>) -> Self::Result {
        self.balance(&msg.name, msg.strategy)
    }
}

impl Handler<GetService> for ServiceRegistry {
    type Result = ResponseActFuture<Self, Option<Service>>;

    fn handle(&mut self, msg: GetService, _: &mut Context<Self>) -> Self::Result {
        read_after(self, |a| &mut a.gate, msg.min_applied, move |a| a.registry.get(&msg.name).cloned())
    }
}

impl Handler<ListServices> for ServiceRegistry {
    type Result = ResponseActFuture<Self, Vec<Service>>;

    fn handle(&mut self, msg: ListServices, _: &mut Context<Self>) -> Self::Result {
        read_after(self, |a| &mut a.gate, msg.min_applied, |a| a.registry.services().cloned().collect())
    }
}

impl Handler<Query> for ServiceRegistry {
    type Result = ResponseActFuture<Self, Result<Bytes, ApiError>>;

    fn handle(&mut self, msg: Query, _: &mut Context<Self>) -> Self::Result {
        let q: Result<RegistryQuery, _> = serde_json::from_slice(&msg.data);
        read_after(
            self,
            |a| &mut a.gate,
            msg.min_applied,
            move |a| a.answer(q.map_err(|e| ApiError::BadRequest(format!("bad registry query: {e}")))?),
        )
    }
}
