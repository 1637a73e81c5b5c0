//! `ServiceRegistry`: the service state machine. Owns services and their instances with the
//! health the checks found (replicated), the load-balancing cursors (local), and, while its
//! node leads, the health checks: when each is due, which probe is running, when each TTL
//! instance last beat.
//!
//! Receives: `ApplyEntries` (committed `registry` commands, in index order), `GetService`,
//! `ListServices`, `Balance`, generic `Query`s, `Beat`, and `LeadershipChanged` from
//! `Election`. Sends: `ClientWrite` to `Election`, only as leader and only when a health
//! changes (or an ephemeral instance expires): no log growth while nothing changes.
//! Probes run as async tasks with deadlines, never on this actor's time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;

use crate::config::Config;
use crate::error::ApiError;
use crate::messages::apply::{ApplyEntries, Query};
use crate::messages::client::ClientWrite;
use crate::messages::raft::LeadershipChanged;
use crate::messages::registry::{
    Balance, Beat, CheckKind, GetService, Health, InstanceKey, ListServices, REGISTRY_NAMESPACE, RegistryCommand,
    RegistryQuery, Service, ServiceNode,
};
use crate::raft::{NodeId, Payload};
use crate::registry::probe::Probe;
use crate::registry::{Registry, health_of, pick};
use crate::state_machine::{AppliedGate, read_after};
use crate::transport::TransportRef;
use crate::wire::Write;

/// Leader-only bookkeeping for one instance.
#[derive(Debug)]
struct CheckState {
    due: Instant,
    probing: bool,
    /// A health write in flight, so a slow commit is not proposed twice.
    proposed: Option<Health>,
    last_beat: Instant,
    removing: bool,
}

impl CheckState {
    fn new(now: Instant) -> Self {
        // A new leader (or a new instance) starts every TTL clock now: beats sent to the
        // previous leader are not lost against the instance.
        CheckState { due: now, probing: false, proposed: None, last_beat: now, removing: false }
    }
}

/// The service registry state machine.
pub struct ServiceRegistry {
    id: NodeId,
    config: Arc<Config>,
    registry: Registry,
    gate: AppliedGate,
    rng: StdRng,
    cursors: BTreeMap<String, usize>,
    proposer: Recipient<ClientWrite>,
    transport: TransportRef,
    /// The term this node leads, if it does.
    leading: Option<u64>,
    checks: BTreeMap<InstanceKey, CheckState>,
}

impl ServiceRegistry {
    /// A registry for node `config.id`, proposing health changes to `proposer` (`Election`)
    /// and probing through `transport`.
    pub fn new(config: Arc<Config>, proposer: Recipient<ClientWrite>, transport: TransportRef) -> Self {
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
            leading: None,
            checks: BTreeMap::new(),
        }
    }

    fn apply(&mut self, data: &[u8]) -> Result<Bytes, String> {
        let cmd: RegistryCommand = serde_json::from_slice(data).map_err(|e| format!("bad registry command: {e}"))?;
        // A (re-)registration is a sign of life and a fresh start: its TTL clock, a removal
        // or a health write in flight for the instance it replaces no longer apply.
        let registered: Vec<InstanceKey> = match &cmd {
            RegistryCommand::Register { service, node, .. } => {
                vec![InstanceKey { service: service.clone(), host: node.host.clone(), port: node.port }]
            }
            RegistryCommand::Set(services) => services
                .iter()
                .flat_map(|s| {
                    s.nodes.iter().map(|n| InstanceKey { service: s.name.clone(), host: n.host.clone(), port: n.port })
                })
                .collect(),
            _ => Vec::new(),
        };
        let count = self.registry.apply(cmd)?;
        for key in registered {
            self.checks.remove(&key);
        }
        self.cursors.retain(|name, _| self.registry.get(name).is_some());
        Ok(Bytes::from(format!("{{\"count\":{count}}}")))
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

    fn interval(&self, node: &ServiceNode) -> Duration {
        Duration::from_millis(node.interval_ms.unwrap_or(self.config.check_interval_ms).max(10))
    }

    /// Proposes a registry command as this leader (never forwarded: a checker that lost
    /// leadership must not write); `done` runs with the outcome.
    fn propose(
        &mut self,
        ctx: &mut Context<Self>,
        cmd: RegistryCommand,
        done: impl FnOnce(&mut Self, bool) + Send + 'static,
    ) {
        let data = match serde_json::to_vec(&cmd) {
            Ok(d) => Bytes::from(d),
            Err(_) => return,
        };
        let write = ClientWrite { write: Write { namespace: REGISTRY_NAMESPACE.into(), data }, forwarded: true };
        // Awaited in a task of its own, not in this actor's context: actix polls every
        // future spawned in a context whenever the actor wakes, and a leader may have
        // thousands of these in flight.
        let send = self.proposer.send(write);
        let me = ctx.address();
        actix_rt::spawn(async move {
            let ok = matches!(send.await, Ok(Ok(_)));
            if !ok {
                tracing::debug!(?cmd, "health write not applied");
            }
            me.do_send(Proposed { ok, done: Box::new(done) });
        });
    }

    fn propose_health(&mut self, ctx: &mut Context<Self>, key: InstanceKey, health: Health) {
        let Some(st) = self.checks.get_mut(&key) else { return };
        if st.proposed == Some(health) {
            return;
        }
        st.proposed = Some(health);
        tracing::info!(instance = %key, ?health, "health changed");
        let k = key.clone();
        self.propose(ctx, RegistryCommand::SetHealth { key, health }, move |act, _| {
            if let Some(st) = act.checks.get_mut(&k) {
                st.proposed = None;
            }
        });
    }

    /// The leader's periodic pass: start due probes, judge TTL instances, expire ephemeral
    /// ones.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let Some(term) = self.leading else { return };
        let now = Instant::now();
        let instances: Vec<(InstanceKey, ServiceNode)> =
            self.registry.instances().map(|(k, n)| (k, n.clone())).collect();
        // Forget instances that went (a set, not a scan per instance: this runs on the
        // node's one thread, beside the heartbeats, with thousands of instances).
        let present: std::collections::BTreeSet<&InstanceKey> = instances.iter().map(|(k, _)| k).collect();
        self.checks.retain(|k, _| present.contains(k));
        for (key, node) in instances {
            let interval = self.interval(&node);
            let st = self.checks.entry(key.clone()).or_insert_with(|| CheckState::new(now));
            match node.effective_check() {
                None => {}
                Some(CheckKind::Ttl) => {
                    let ttl = Duration::from_millis(node.ttl_ms.unwrap_or(self.config.ephemeral_unhealthy_after_ms));
                    let remove_after = Duration::from_millis(self.config.ephemeral_remove_after_ms);
                    let silent = now.duration_since(st.last_beat);
                    // Removal comes only after the instance was marked unhealthy, whatever its TTL.
                    let expired = silent >= remove_after.max(ttl) && node.health == Health::Unhealthy;
                    if node.ephemeral && expired && !st.removing {
                        st.removing = true;
                        tracing::info!(instance = %key, silent_ms = silent.as_millis() as u64, "ephemeral instance expired");
                        let k = key.clone();
                        self.propose(ctx, RegistryCommand::Deregister(key), move |act, ok| {
                            if !ok && let Some(st) = act.checks.get_mut(&k) {
                                st.removing = false;
                            }
                        });
                    } else if silent >= ttl && node.health != Health::Unhealthy {
                        self.propose_health(ctx, key, Health::Unhealthy);
                    }
                }
                Some(_) => {
                    if st.probing || now < st.due {
                        continue;
                    }
                    let Some(probe) = Probe::for_node(&node) else { continue };
                    st.probing = true;
                    st.due = now + interval;
                    let timeout = node.timeout_ms.map(Duration::from_millis).unwrap_or(interval);
                    let fut = probe.run(self.transport.clone(), timeout, self.config.allow_script_checks);
                    // A task of its own, as in `propose`: thousands of probes may be pending.
                    let me = ctx.address();
                    actix_rt::spawn(async move {
                        let ok = fut.await;
                        me.do_send(Probed { term, key, probed: Box::new(node), ok });
                    });
                }
            }
        }
    }
}

impl Actor for ServiceRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        let every = Duration::from_millis((self.config.check_interval_ms / 4).clamp(10, 250));
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
                Payload::Command { data, .. } => self.apply(data),
                Payload::Blank => Ok(Bytes::new()),
            })
            .collect();
        self.gate.advance(msg.applied_to);
        out
    }
}

/// What waits for a proposed write's outcome.
type AfterProposal = Box<dyn FnOnce(&mut ServiceRegistry, bool) + Send>;

/// A write `propose` sent was answered: run what waited for it.
#[derive(Message)]
#[rtype(result = "()")]
struct Proposed {
    ok: bool,
    done: AfterProposal,
}

impl Handler<Proposed> for ServiceRegistry {
    type Result = ();

    fn handle(&mut self, msg: Proposed, _: &mut Context<Self>) {
        (msg.done)(self, msg.ok);
    }
}

/// A probe finished.
#[derive(Message)]
#[rtype(result = "()")]
struct Probed {
    /// The term of the leadership that started it.
    term: u64,
    key: InstanceKey,
    /// The instance as it was when probed.
    probed: Box<ServiceNode>,
    ok: bool,
}

impl Handler<Probed> for ServiceRegistry {
    type Result = ();

    fn handle(&mut self, msg: Probed, ctx: &mut Context<Self>) {
        if self.leading != Some(msg.term) {
            return;
        }
        if let Some(st) = self.checks.get_mut(&msg.key) {
            st.probing = false;
        }
        let health = health_of(msg.ok);
        // A result speaks only for the instance as it was checked: one set again with another
        // check (or url, or script) waits for its own probe.
        let current = self.registry.instance(&msg.key);
        if current.is_some_and(|n| n.same_checking(&msg.probed) && n.health != health) {
            self.propose_health(ctx, msg.key, health);
        }
    }
}

impl Handler<LeadershipChanged> for ServiceRegistry {
    type Result = ();

    fn handle(&mut self, msg: LeadershipChanged, ctx: &mut Context<Self>) {
        if msg.node != self.id {
            return;
        }
        if msg.is_leader {
            tracing::info!(term = msg.term, "leading: taking over health checks");
            self.leading = Some(msg.term);
            self.checks.clear();
            self.tick(ctx);
        } else if self.leading == Some(msg.term) {
            self.leading = None;
            self.checks.clear();
        }
    }
}

impl Handler<Beat> for ServiceRegistry {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, Beat(key): Beat, ctx: &mut Context<Self>) -> Self::Result {
        if self.leading.is_none() {
            return Err(ApiError::NotLeader { node: self.id, leader: None });
        }
        let Some(node) = self.registry.instance(&key) else {
            return Err(ApiError::NotFound(format!("instance {key} is not registered")));
        };
        let now = Instant::now();
        let st = self.checks.entry(key.clone()).or_insert_with(|| CheckState::new(now));
        st.last_beat = now;
        // Back to healthy if it is not, or if an "unhealthy" it missed is on its way.
        let back_to_life = node.effective_check() == Some(CheckKind::Ttl)
            && (node.health != Health::Healthy || st.proposed == Some(Health::Unhealthy));
        if back_to_life {
            self.propose_health(ctx, key, Health::Healthy);
        }
        Ok(())
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
