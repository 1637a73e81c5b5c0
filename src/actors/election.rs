//! `Election`: the actor around the Raft core ([`crate::raft::core`]). It feeds the core what
//! arrives (peers' requests from `Connection`, answers from `LogStore`, the replicators'
//! progress, clients' writes and reads, its one timer) with the time, and carries out the
//! actions the core leaves: writes to `LogStore`, vote requests to `PeerLink`s, replicators
//! started and stopped, answers sent back. Every decision is the core's; this file holds IO.
//!
//! Besides the core it owns what is IO: the links to the peers, the replicators, the answer
//! channels of requests in progress, the writes waiting to be applied, leadership watchers.
//!
//! Receives: `AppendEntries` and `RequestVote` from peers, `ClientWrite`, `GetReadIndex` and
//! `ChangeMembers` from clients, `PeerProgress` / `HigherTermSeen` / `PeerDisconnected`,
//! `EntriesApplied` from `LogStore`, `GetElectionStatus`, `WatchLeadership`, `ForwardToLeader`,
//! `StopPeerLinks`.
//! Sends: `SaveHardState` / `AppendLocal` / `AppendFromLeader` / `CommitTo` to `LogStore`,
//! `Replicate` to replicators, `Call` (votes, forwarded writes and reads) to `PeerLink`s.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use actix::prelude::*;
use futures::channel::oneshot;
use tokio::time::Instant;

use crate::actors::log_store::LogStore;
use crate::actors::peer_link::{Call, PeerLink, StopLink};
use crate::actors::replicator::{Replicator, ReplicatorLinks};
use crate::admission::Admitted;
use crate::config::{Config, ReadMode};
use crate::error::ApiError;
use crate::messages::apply::EntriesApplied;
use crate::messages::client::{
    ChangeMembers, ClientWrite, ElectionStatus, GetElectionStatus, GetReadIndex, StopPeerLinks, TimeoutNow,
    TransferLeadership,
};
use crate::messages::raft::{
    AppendEntries, AppendFromLeader, AppendLocal, CommitTo, ForwardToLeader, HigherTermSeen, InstallFromLeader,
    InstallSnapshot, LeadershipChanged, PeerDisconnected, PeerProgress, Replicate, RequestVote, SaveHardState,
    SendLease, StopReplication, WatchLeadership,
};
use crate::metrics::MetricsRef;
use crate::raft::core::{Action, Core, Input, Timing, lease_for};
use crate::raft::members::{MemberChange, MemberLog, Members};
use crate::raft::{HardState, LogId, NodeId, Payload, Role};
use crate::transport::TransportRef;
use crate::wire::{
    AppendEntriesResponse, AppendOutcome, InstallOutcome, InstallSnapshotResponse, MemberStatus, PeerStatus, Request,
    Response, VoteResponse, WriteReply,
};

/// The configuration in effect and the newest committed one, as the threads that admit
/// peers' connections and check requests see them: `Election` replaces them whenever the
/// core's change.
#[derive(Debug, Default)]
pub struct MemberView(RwLock<(Arc<Members>, Arc<Members>)>);

impl MemberView {
    /// A view starting at `latest`, `committed`.
    pub fn new(latest: Arc<Members>, committed: Arc<Members>) -> Self {
        MemberView(RwLock::new((latest, committed)))
    }

    /// The configuration in effect.
    pub fn get(&self) -> Arc<Members> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// The newest committed configuration: a removal in it is final (an uncommitted one may
    /// still be undone, and the removed node may lead meanwhile).
    pub fn committed(&self) -> Arc<Members> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    fn set(&self, latest: Arc<Members>, committed: Arc<Members>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = (latest, committed);
    }
}

struct Waiter {
    term: u64,
    tx: oneshot::Sender<Result<WriteReply, ApiError>>,
    /// The client's admission place, given back when the write is answered.
    _place: Option<Admitted>,
}

/// The answer channels of requests the core has not answered yet, by token.
#[derive(Default)]
struct Answers {
    next: u64,
    votes: HashMap<u64, oneshot::Sender<VoteResponse>>,
    appends: HashMap<u64, oneshot::Sender<AppendEntriesResponse>>,
    installs: HashMap<u64, oneshot::Sender<InstallSnapshotResponse>>,
    reads: HashMap<u64, oneshot::Sender<Result<u64, ApiError>>>,
}

impl Answers {
    fn token(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

/// A follower's linearizable reads, passed on to the leader as one ReadIndex for every read
/// waiting, not one per read (the dissertation's §6.4 batching, on the follower's side). A
/// read that arrives while one is asked waits for the next: the answer to a request sent
/// before it arrived may be older than a write it must see.
#[derive(Default)]
struct ForwardedReads {
    /// A ReadIndex is asked of the leader now.
    asking: bool,
    /// The reads that wait for the next one.
    waiting: Vec<oneshot::Sender<Result<u64, ApiError>>>,
}

/// The election and commit actor.
pub struct Election {
    core: Core,
    clock: Clock,
    /// The core's lease reads already counted in `metrics`.
    lease_reads_counted: u64,
    lease: Arc<LeaseShare>,
    config: Arc<Config>,
    transport: TransportRef,
    view: Arc<MemberView>,
    links: BTreeMap<NodeId, Addr<PeerLink>>,
    log_store: Addr<LogStore>,
    replicators: BTreeMap<NodeId, Addr<Replicator>>,
    answers: Answers,
    waiters: BTreeMap<u64, Waiter>,
    /// The one timer: when it fires, and its handle.
    timer: Option<(Instant, SpawnHandle)>,
    /// Requests passed on to a leader and not answered yet: to whom, and how to give up on
    /// them. When the leader changes, those sent to the old one fail at once (retryable),
    /// instead of waiting out their timeout on a leader that may be frozen or cut off.
    forwards: Vec<(NodeId, oneshot::Sender<NodeId>)>,
    /// The leader the forwards went to.
    forwarded_to: Option<NodeId>,
    /// `forwards` is pruned of answered ones when it grows this long.
    forwards_prune_at: usize,
    /// A follower's reads waiting for a read index from the leader (see [`ForwardedReads`]).
    forwarded_reads: ForwardedReads,
    /// Writes that arrived while leadership was being handed over: they wait for the new
    /// leader (or for this one, if the transfer fails) instead of failing.
    held: Vec<(ClientWrite, oneshot::Sender<Result<WriteReply, ApiError>>)>,
    /// Who asked for the transfer under way, and the target.
    transfer: Option<(NodeId, oneshot::Sender<Result<NodeId, ApiError>>)>,
    /// Until when, after handing leadership over, writes wait for the new leader to be
    /// known rather than fail with `NoLeader`.
    handed_over_until: Option<Instant>,
    /// The term whose handover set `handed_over_until`.
    handover_seen: Option<u64>,
    watchers: Vec<Recipient<LeadershipChanged>>,
    /// The leader this node last knew of, to count changes of it.
    seen_leader: Option<NodeId>,
    metrics: MetricsRef,
}

/// Feeds the core an input once the mailbox has drained (proposals and reads are batched).
#[derive(Message)]
#[rtype(result = "()")]
struct Later(LaterInput);

enum LaterInput {
    Flush,
    ReadRound,
}

/// The core's clock: tokio's, so a simulation's paused time is the core's time too; in a
/// simulation it may run fast or slow (`clock_skew_ppm`), as a real machine's may.
#[derive(Clone, Copy, Debug)]
struct Clock {
    start: Instant,
    skew_ppm: i32,
}

impl Clock {
    fn new(skew_ppm: i32) -> Clock {
        Clock { start: Instant::now(), skew_ppm }
    }

    fn now(&self) -> std::time::Instant {
        let now = Instant::now();
        if self.skew_ppm == 0 {
            return now.into_std();
        }
        let elapsed = now.saturating_duration_since(self.start);
        let skewed = elapsed.mul_f64(1.0 + f64::from(self.skew_ppm) / 1e6);
        (self.start + skewed).into_std()
    }

    /// How long, in tokio's time, until this clock shows `at`.
    fn until(&self, at: std::time::Instant) -> Duration {
        at.saturating_duration_since(self.now()).div_f64(1.0 + f64::from(self.skew_ppm) / 1e6)
    }
}

/// What a lease lets readers on other threads take without asking `Election`
/// ([`Core::lease_grant`]): on the leader, what every node may see, until half the lease is
/// gone (a read past that goes through `Election`, which renews the lease); on a follower
/// holding a read lease, its commit index until the lease runs out. Published after every
/// step, before its actions are carried out: a transfer's revocation is in place before
/// TimeoutNow leaves, and a follower's commit index before its answer tells the leader it
/// has it.
#[derive(Debug)]
pub struct LeaseShare {
    clock: Clock,
    grant: Mutex<Option<LeaseRead>>,
}

/// A read index a lease gives ([`LeaseShare::read_index`]).
#[derive(Clone, Copy, Debug)]
pub struct LeaseRead {
    until: std::time::Instant,
    /// The read index.
    pub index: u64,
    /// Given by a follower's read lease (not the leader's).
    pub follower: bool,
}

impl LeaseShare {
    /// The read index the lease gives now, if it gives one.
    pub fn read_index(&self) -> Option<LeaseRead> {
        let grant = *self.grant.lock().unwrap_or_else(|p| p.into_inner());
        grant.filter(|g| self.clock.now() < g.until)
    }

    fn set(&self, grant: Option<(std::time::Instant, u64)>, follower: bool) {
        let grant = grant.map(|(until, index)| LeaseRead { until, index, follower });
        *self.grant.lock().unwrap_or_else(|p| p.into_inner()) = grant;
    }
}

impl Election {
    /// What this node's lease lets other threads read without asking (see [`LeaseShare`]).
    pub fn lease(&self) -> Arc<LeaseShare> {
        self.lease.clone()
    }

    /// An election actor starting from the durable state recovered by `LogStore`: its hard
    /// state, last entry and the configurations its log holds. It opens a link (through
    /// `transport`) to each node the configurations name, and keeps `view` current.
    pub fn new(
        config: Arc<Config>,
        transport: TransportRef,
        view: Arc<MemberView>,
        start: (HardState, LogId, MemberLog),
        log_store: Addr<LogStore>,
        metrics: MetricsRef,
    ) -> Self {
        let (hard_state, last_log, configs) = start;
        let election_min = Duration::from_millis(config.election_timeout_min_ms);
        let timing = Timing {
            election_min,
            election_max: Duration::from_millis(config.election_timeout_max_ms),
            lease: (config.read_mode == ReadMode::Lease).then(|| lease_for(election_min)),
        };
        let seed = config.seed.unwrap_or_else(rand::random);
        let clock = Clock::new(config.clock_skew_ppm);
        let core = Core::new(config.id, configs, timing, hard_state, last_log, seed, clock.now());
        Election {
            core,
            clock,
            config,
            transport,
            view,
            links: BTreeMap::new(),
            log_store,
            replicators: BTreeMap::new(),
            forwards: Vec::new(),
            forwarded_to: None,
            forwards_prune_at: 64,
            forwarded_reads: ForwardedReads::default(),
            held: Vec::new(),
            transfer: None,
            handed_over_until: None,
            handover_seen: None,
            answers: Answers::default(),
            waiters: BTreeMap::new(),
            timer: None,
            watchers: Vec::new(),
            seen_leader: None,
            metrics,
            lease_reads_counted: 0,
            lease: Arc::new(LeaseShare { clock, grant: Mutex::new(None) }),
        }
    }

    /// Feeds one input to the core and carries out what it decided.
    fn step(&mut self, ctx: &mut Context<Self>, input: Input) {
        self.core.step(self.clock.now(), input);
        let by_lease = self.core.lease_reads();
        if by_lease > self.lease_reads_counted {
            self.metrics.read_indexes_by_lease.inc_by(by_lease - self.lease_reads_counted);
            self.lease_reads_counted = by_lease;
        }
        self.act(ctx);
    }

    /// Carries out the core's actions, in order, then keeps the timer on its wakeup.
    fn act(&mut self, ctx: &mut Context<Self>) {
        // Before any action: what the core decided about its lease (a transfer revoking it,
        // a new commit index) is what readers see before TimeoutNow or any answer leaves.
        if self.config.read_mode == ReadMode::Lease {
            self.lease.set(self.core.lease_grant(), self.core.role() != Role::Leader);
        }
        let leader = self.core.leader();
        if leader != self.seen_leader {
            // As etcd counts: a leader where there was another or none; losing one is no change
            // (A, none, B is one).
            if leader.is_some() {
                self.metrics.leader_changes.inc();
            }
            self.seen_leader = leader;
        }
        for action in self.core.take_actions() {
            self.carry_out(ctx, action);
        }
        let leader = self.core.leader();
        if leader != self.forwarded_to && !self.core.handed_over() {
            // Whatever was passed on to the old leader will not be answered by it in time, if
            // at all: say so now, so the client retries with the new one.
            let now_leader = leader.unwrap_or(0);
            for (to, cancel) in std::mem::take(&mut self.forwards) {
                if Some(to) == leader {
                    self.forwards.push((to, cancel));
                } else {
                    let _ = cancel.send(now_leader);
                }
            }
            self.forwarded_to = leader;
        }
        // Held writes go on once a leader is known again and no transfer is under way (or
        // the new leader took too long to show: they get the usual answer).
        if self.core.handed_over() && self.handover_seen != Some(self.core.term()) {
            // A handover is under way: writes wait for its winner, an election timeout at most.
            self.handover_seen = Some(self.core.term());
            let wait = Duration::from_millis(self.config.election_timeout_max_ms);
            self.handed_over_until = Some(Instant::now() + wait);
            ctx.run_later(wait, |act, ctx| act.act(ctx));
        }
        let waited = self.handed_over_until.is_none_or(|t| Instant::now() >= t);
        let settled = self.core.transferring().is_none() && (self.core.leader().is_some() || waited);
        if !self.held.is_empty() && settled {
            for (mut msg, tx) in std::mem::take(&mut self.held) {
                if tx.is_canceled() {
                    continue;
                }
                // A write a follower passed on to this node while it handed over goes one hop
                // further, to the new leader, once.
                msg.forwarded = false;
                let fut = <Self as Handler<ClientWrite>>::handle(self, msg, ctx);
                ctx.spawn(
                    async move {
                        let _ = tx.send(fut.await);
                    }
                    .into_actor(self),
                );
            }
        }
        let wakeup = Instant::from_std(self.core.next_wakeup());
        if self.timer.as_ref().is_none_or(|(at, _)| wakeup < *at) {
            if let Some((_, handle)) = self.timer.take() {
                ctx.cancel_future(handle);
            }
            let wait = self.clock.until(wakeup.into_std());
            let handle = ctx.run_later(wait, |act, ctx| {
                act.timer = None;
                act.step(ctx, Input::Tick);
            });
            self.timer = Some((wakeup, handle));
        }
    }

    fn carry_out(&mut self, ctx: &mut Context<Self>, action: Action) {
        match action {
            Action::SaveHardState { ticket } => {
                let msg = SaveHardState { term: ticket.term, voted_for: ticket.voted_for };
                ctx.spawn(self.log_store.send(msg).into_actor(self).map(move |res, act, ctx| {
                    act.step(ctx, Input::HardStateSaved { ticket, result: res.ok() });
                }));
            }
            Action::AppendLocal { term, entries, report } => {
                if !report {
                    self.log_store.do_send(AppendLocal { entries });
                    return;
                }
                ctx.spawn(self.log_store.send(AppendLocal { entries }).into_actor(self).map(move |res, act, ctx| {
                    act.step(ctx, Input::LocalAppended { term, result: res.ok() });
                }));
            }
            Action::StoreFromLeader { ticket, prev, entries } => {
                let msg = AppendFromLeader { term: ticket.term, prev, entries };
                ctx.spawn(self.log_store.send(msg).into_actor(self).map(move |res, act, ctx| {
                    act.step(ctx, Input::AppendStored { ticket, result: res.ok() });
                }));
            }
            Action::StoreSnapshotChunk { ticket, request } => {
                let msg = InstallFromLeader { term: ticket.term, chunk: request };
                ctx.spawn(self.log_store.send(msg).into_actor(self).map(move |res, act, ctx| {
                    act.step(ctx, Input::InstallStored { ticket, result: res.ok() });
                }));
            }
            Action::AnswerInstall { token, response } => {
                if let Some(tx) = self.answers.installs.remove(&token) {
                    let _ = tx.send(response);
                }
            }
            Action::CommitTo(c) => self.log_store.do_send(CommitTo(c)),
            Action::SendVote { to, request } => {
                let Some(link) = self.links.get(&to) else { return };
                let timeout = Duration::from_millis(self.config.election_timeout_min_ms);
                let call = Call { request: Request::Vote(request), timeout };
                ctx.spawn(link.send(call).into_actor(self).map(move |res, act, ctx| {
                    if let Ok(Ok(Response::Vote(response))) = res {
                        act.step(ctx, Input::VoteResponse { from: to, request, response });
                    }
                }));
            }
            Action::AnswerVote { token, response } => {
                if let Some(tx) = self.answers.votes.remove(&token) {
                    let _ = tx.send(response);
                }
            }
            Action::AnswerAppend { token, response } => {
                if let Some(tx) = self.answers.appends.remove(&token) {
                    let _ = tx.send(response);
                }
            }
            Action::AnswerRead { token, result } => {
                if let Some(tx) = self.answers.reads.remove(&token) {
                    let _ = tx.send(result);
                }
            }
            Action::StartReplication { term, next_index, peers } => {
                for peer in peers {
                    let Some(link) = self.links.get(&peer) else { continue };
                    let links = ReplicatorLinks {
                        link: link.clone(),
                        log_store: self.log_store.clone(),
                        progress: ctx.address().recipient(),
                        higher_term: ctx.address().recipient(),
                        metrics: self.metrics.peer(peer),
                    };
                    let r = Replicator::new(peer, self.core.id(), term, next_index, self.config.clone(), links).start();
                    self.replicators.insert(peer, r);
                }
            }
            Action::StopReplication => {
                for (_, r) in std::mem::take(&mut self.replicators) {
                    r.do_send(StopReplication);
                }
            }
            Action::StopPeer { peer } => {
                if let Some(r) = self.replicators.remove(&peer) {
                    r.do_send(StopReplication);
                }
            }
            Action::MembersChanged { members, peers } => {
                tracing::info!(
                    id = self.core.id(),
                    voters = ?members.voters.keys().collect::<Vec<_>>(),
                    learners = ?members.learners.keys().collect::<Vec<_>>(),
                    "configuration in effect"
                );
                self.view.set(members, self.core.member_log().committed().clone());
                self.follow_peers(peers);
            }
            Action::Replicate { last_index, commit, visible, round } => {
                let msg = Replicate { last_index, commit, visible, round };
                for r in self.replicators.values() {
                    r.do_send(msg);
                }
            }
            Action::SendLease { peer, word } => {
                if let Some(r) = self.replicators.get(&peer) {
                    r.do_send(SendLease(word));
                }
            }
            Action::LeadershipChanged { term, is_leader } => {
                let msg = LeadershipChanged { node: self.core.id(), term, is_leader };
                for w in &self.watchers {
                    w.do_send(msg);
                }
            }
            Action::SendTimeoutNow { to, term } => {
                if let Some(link) = self.links.get(&to) {
                    let call = Call { request: Request::TimeoutNow { term }, timeout: self.config.request_timeout() };
                    ctx.spawn(link.send(call).into_actor(self).map(|_, _, _| ()));
                }
            }
            Action::TransferEnded { handed_over } => {
                if handed_over {
                    let wait = Duration::from_millis(self.config.election_timeout_max_ms);
                    self.handed_over_until = Some(Instant::now() + wait);
                    ctx.run_later(wait, |act, ctx| act.act(ctx));
                }
                if let Some((target, tx)) = self.transfer.take() {
                    let _ = tx.send(if handed_over {
                        Ok(target)
                    } else {
                        Err(ApiError::Unavailable(format!(
                            "node {target} did not take over within an election timeout; this node leads on"
                        )))
                    });
                }
            }
            Action::ScheduleFlush => ctx.notify(Later(LaterInput::Flush)),
            Action::ScheduleReadRound => ctx.notify(Later(LaterInput::ReadRound)),
        }
    }

    /// Keeps one link per node to reach, and none to a node no configuration names.
    fn follow_peers(&mut self, peers: BTreeSet<NodeId>) {
        self.links.retain(|id, link| {
            let keep = peers.contains(id);
            if !keep {
                link.do_send(StopLink);
            }
            keep
        });
        for id in peers {
            if self.links.contains_key(&id) {
                continue;
            }
            let Some(addr) = self.core.member_log().addr_of(id) else { continue };
            let link = PeerLink::new(id, addr.to_string(), self.config.clone(), self.transport.clone()).start();
            self.links.insert(id, link);
        }
    }

    fn forward<T: 'static>(
        &mut self,
        request: Request,
        extract: fn(Response) -> Result<T, ApiError>,
    ) -> ResponseFuture<Result<T, ApiError>> {
        let Some(leader) = self.core.leader() else {
            let retry_after_ms = self.config.election_timeout_max_ms;
            return Box::pin(async move { Err(ApiError::NoLeader { retry_after_ms }) });
        };
        let Some(link) = self.links.get(&leader) else {
            return Box::pin(async move { Err(ApiError::Unavailable(format!("leader {leader} is not a member"))) });
        };
        // Writes and reads fail over to the next leader; a transfer or a membership change
        // waits for its answer (the leader changing is how a transfer ends).
        let cancellable = matches!(request, Request::Forward(_) | Request::ReadIndex);
        let is_write = matches!(request, Request::Forward(_));
        let started = Instant::now();
        let call = link.send(Call { request, timeout: self.config.request_timeout() });
        let (cancel, cancelled) = oneshot::channel();
        if self.forwards.len() >= self.forwards_prune_at {
            // Answered forwards are dropped in bulk, so the hot path does not scan them all.
            self.forwards.retain(|(_, c)| !c.is_canceled());
            self.forwards_prune_at = (2 * self.forwards.len()).max(64);
        }
        // Not cancellable: the sender travels with the future, so it never fires.
        let keep = if cancellable {
            self.forwards.push((leader, cancel));
            None
        } else {
            Some(cancel)
        };
        Box::pin(async move {
            let _keep = keep;
            futures::pin_mut!(call);
            match futures::future::select(call, cancelled).await {
                futures::future::Either::Left((Ok(Ok(resp)), _)) => extract(resp),
                futures::future::Either::Left((Ok(Err(e)), _)) => {
                    Err(ApiError::Unreachable { leader, reason: e.to_string() })
                }
                futures::future::Either::Left((Err(e), _)) => Err(ApiError::Unavailable(e.to_string())),
                // A write the old leader may have logged may still commit: say "unknown", as
                // a timeout does, not "retry" (a retry could apply it twice). A read is safe
                // to retry.
                futures::future::Either::Right(_) if is_write => {
                    Err(ApiError::Timeout { ms: started.elapsed().as_millis() as u64 })
                }
                futures::future::Either::Right((new_leader, _)) => {
                    let now = match new_leader {
                        Ok(0) | Err(_) => "no leader yet".to_string(),
                        Ok(l) => format!("node {l} leads now"),
                    };
                    Err(ApiError::Unreachable { leader, reason: format!("it lost office before answering ({now})") })
                }
            }
        })
    }

    /// What a follower does with a request only the leader serves: passes it on, unless it
    /// was passed on already (a request does not hop twice).
    fn pass_on<T: 'static>(
        &mut self,
        forwarded: bool,
        request: Request,
        extract: fn(Response) -> Result<T, ApiError>,
    ) -> ResponseFuture<Result<T, ApiError>> {
        if forwarded {
            let e = self.not_leader();
            return Box::pin(async move { Err(e) });
        }
        self.forward(request, extract)
    }

    fn not_leader(&self) -> ApiError {
        ApiError::NotLeader { node: self.core.id(), leader: self.core.leader() }
    }
}

/// The leader's answer was not the kind asked for (an error is passed through as it is).
fn unexpected(answer: Response) -> ApiError {
    match answer {
        Response::Error(e) => e,
        other => ApiError::Unavailable(format!("unexpected answer from leader: {other:?}")),
    }
}

/// Waits for an answer the client may time out on.
async fn answer<T>(rx: oneshot::Receiver<Result<T, ApiError>>, timeout: Duration) -> Result<T, ApiError> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(ApiError::Unavailable("node stopped".into())),
        Err(_) => Err(ApiError::Timeout { ms: timeout.as_millis() as u64 }),
    }
}

impl Actor for Election {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        // A waiter whose client gave up (every client times out by request_timeout) holds
        // its admission place until it is dropped: drop them on time, not only when entries
        // are applied (a deposed leader may see none applied at its indexes for long). The
        // same for the answer channels of reads whose client went away.
        ctx.run_interval(self.config.request_timeout(), |act, _| {
            act.waiters.retain(|_, w| !w.tx.is_canceled());
            act.answers.reads.retain(|_, tx| !tx.is_canceled());
        });
        // The core may have decided already (a single node stands at once).
        self.act(ctx);
    }
}

impl Handler<Later> for Election {
    type Result = ();

    fn handle(&mut self, msg: Later, ctx: &mut Context<Self>) {
        let input = match msg.0 {
            LaterInput::Flush => Input::Flush,
            LaterInput::ReadRound => Input::ReadRound,
        };
        self.step(ctx, input);
    }
}

impl Handler<RequestVote> for Election {
    type Result = ResponseFuture<VoteResponse>;

    fn handle(&mut self, RequestVote(request): RequestVote, ctx: &mut Context<Self>) -> Self::Result {
        let token = self.answers.token();
        let (tx, rx) = oneshot::channel();
        self.answers.votes.insert(token, tx);
        self.step(ctx, Input::VoteRequest { token, request });
        let refused = VoteResponse { term: request.term, granted: false };
        Box::pin(async move { rx.await.unwrap_or(refused) })
    }
}

impl Handler<AppendEntries> for Election {
    type Result = ResponseFuture<AppendEntriesResponse>;

    fn handle(&mut self, AppendEntries(request): AppendEntries, ctx: &mut Context<Self>) -> Self::Result {
        let token = self.answers.token();
        let (tx, rx) = oneshot::channel();
        self.answers.appends.insert(token, tx);
        let stale = AppendEntriesResponse::new(request.term, AppendOutcome::StaleTerm);
        self.step(ctx, Input::AppendRequest { token, request });
        Box::pin(async move { rx.await.unwrap_or(stale) })
    }
}

impl Handler<InstallSnapshot> for Election {
    type Result = ResponseFuture<InstallSnapshotResponse>;

    fn handle(&mut self, InstallSnapshot(request): InstallSnapshot, ctx: &mut Context<Self>) -> Self::Result {
        let token = self.answers.token();
        let (tx, rx) = oneshot::channel();
        self.answers.installs.insert(token, tx);
        let stale = InstallSnapshotResponse { term: request.term, outcome: InstallOutcome::StaleTerm };
        self.step(ctx, Input::InstallRequest { token, request });
        Box::pin(async move { rx.await.unwrap_or(stale) })
    }
}

impl Handler<PeerProgress> for Election {
    type Result = ();

    fn handle(&mut self, msg: PeerProgress, ctx: &mut Context<Self>) {
        let PeerProgress { peer, term, acked_round, match_index, commit, lease_ask, lease_dropped } = msg;
        let input = Input::PeerProgress { peer, term, acked_round, match_index, commit, lease_ask, lease_dropped };
        self.step(ctx, input);
    }
}

impl Handler<HigherTermSeen> for Election {
    type Result = ();

    fn handle(&mut self, msg: HigherTermSeen, ctx: &mut Context<Self>) {
        self.step(ctx, Input::HigherTerm { peer: msg.peer, term: msg.term });
    }
}

impl Handler<PeerDisconnected> for Election {
    type Result = ();

    fn handle(&mut self, msg: PeerDisconnected, ctx: &mut Context<Self>) {
        self.step(ctx, Input::PeerDisconnected { peer: msg.peer });
    }
}

impl Handler<ClientWrite> for Election {
    type Result = ResponseFuture<Result<WriteReply, ApiError>>;

    fn handle(&mut self, msg: ClientWrite, ctx: &mut Context<Self>) -> Self::Result {
        if self.core.storage_failed() {
            return Box::pin(async { Err(ApiError::Unavailable("log storage failed".into())) });
        }
        let leading = self.core.role() == Role::Leader;
        if msg.term.is_some_and(|t| t != self.core.term() || !leading) || (!leading && msg.forwarded) {
            let e = self.not_leader();
            return Box::pin(async move { Err(e) });
        }
        // While leadership is handed over, writes wait for the new leader: on the old leader,
        // and on any node that knows a handover is under way but not yet who won it.
        let handing_over = (leading && self.core.transferring().is_some())
            || (!leading && self.core.leader().is_none() && self.handed_over_until.is_some_and(|t| Instant::now() < t));
        if leading && self.core.transferring().is_some() && msg.forwarded {
            // Refused, not held: the follower that passed it on sends it again to the new
            // leader (nothing was logged, so that cannot apply it twice).
            let e = ApiError::NotLeader { node: self.core.id(), leader: self.core.transferring() };
            return Box::pin(async move { Err(e) });
        }
        if handing_over && msg.term.is_none() {
            self.held.retain(|(_, tx)| !tx.is_canceled());
            let (tx, rx) = oneshot::channel();
            self.held.push((msg, tx));
            return Box::pin(answer(rx, self.config.request_timeout()));
        }
        if !leading {
            let write = msg.write.clone();
            let forwarded = self.forward(Request::Forward(msg.write), |r| match r {
                Response::Written(w) => Ok(w),
                other => Err(unexpected(other)),
            });
            let place = msg.place;
            let me = ctx.address();
            let (pause, until) = (
                Duration::from_millis(self.config.heartbeat_interval_ms),
                Instant::now() + Duration::from_millis(self.config.election_timeout_max_ms),
            );
            return Box::pin(async move {
                let _place = place;
                let mut result = forwarded.await;
                // The leader was handing over and logged nothing: send it again, to the new
                // leader, for up to an election timeout.
                let handing_over = matches!(result, Err(ApiError::NotLeader { leader: Some(_), .. }));
                while handing_over
                    && let Err(ApiError::NotLeader { leader: Some(_), .. } | ApiError::NoLeader { .. }) = &result
                {
                    if Instant::now() >= until {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                    let again = ClientWrite { write: write.clone(), forwarded: false, place: None, term: None };
                    result = match me.send(again).await {
                        Ok(r) => r,
                        Err(e) => Err(ApiError::Unavailable(e.to_string())),
                    };
                }
                result
            });
        }
        let payload = Payload::Command { namespace: msg.write.namespace, data: msg.write.data };
        let index = match self.core.propose(payload) {
            Ok(index) => index,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        self.act(ctx);
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(index, Waiter { term: self.core.term(), tx, _place: msg.place });
        Box::pin(answer(rx, self.config.request_timeout()))
    }
}

impl Handler<GetReadIndex> for Election {
    type Result = ResponseFuture<Result<u64, ApiError>>;

    fn handle(&mut self, msg: GetReadIndex, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if self.core.role() == Role::Leader {
            let token = self.answers.token();
            self.answers.reads.insert(token, tx);
            self.step(ctx, Input::ReadIndex { token });
        } else if msg.forwarded {
            // Passed on once already: a follower does not pass it on again.
            let e = self.not_leader();
            return Box::pin(async move { Err(e) });
        } else {
            self.forwarded_reads.waiting.push(tx);
            if !self.forwarded_reads.asking {
                self.ask_read_index(ctx);
            }
        }
        Box::pin(answer(rx, self.config.request_timeout()))
    }
}

impl Election {
    /// Asks the leader for one read index for every read waiting (or, if this node leads
    /// now, serves them itself); when it answers, the reads that arrived meanwhile go next.
    fn ask_read_index(&mut self, ctx: &mut Context<Self>) {
        let mut batch = std::mem::take(&mut self.forwarded_reads.waiting);
        // Reads whose client gave up are not asked for.
        batch.retain(|tx| !tx.is_canceled());
        if batch.is_empty() {
            return;
        }
        if self.core.role() == Role::Leader {
            for tx in batch {
                let token = self.answers.token();
                self.answers.reads.insert(token, tx);
                self.step(ctx, Input::ReadIndex { token });
            }
            return;
        }
        self.forwarded_reads.asking = true;
        self.metrics.read_indexes_forwarded.inc();
        let asked = self.forward(Request::ReadIndex, |r| match r {
            Response::ReadIndex(i) => Ok(i),
            other => Err(unexpected(other)),
        });
        ctx.spawn(asked.into_actor(self).map(move |result, act, ctx| {
            for tx in batch {
                let _ = tx.send(result.clone());
            }
            act.forwarded_reads.asking = false;
            if !act.forwarded_reads.waiting.is_empty() {
                act.ask_read_index(ctx);
            }
        }));
    }
}

impl Handler<EntriesApplied> for Election {
    type Result = ();

    fn handle(&mut self, msg: EntriesApplied, _: &mut Context<Self>) {
        for out in msg.outputs {
            let Some(w) = self.waiters.remove(&out.index) else { continue };
            let reply = if w.term != out.term {
                Err(ApiError::Dropped { index: out.index })
            } else {
                out.result.map(|output| WriteReply { index: out.index, output }).map_err(ApiError::Apply)
            };
            let _ = w.tx.send(reply);
        }
        // Waiters that gave up (timed out) are dropped so the map cannot grow without bound.
        if self.waiters.len() > 1024 {
            self.waiters.retain(|_, w| !w.tx.is_canceled());
        }
    }
}

impl Handler<WatchLeadership> for Election {
    type Result = ();

    fn handle(&mut self, msg: WatchLeadership, _: &mut Context<Self>) {
        if self.core.role() == Role::Leader {
            msg.0.do_send(LeadershipChanged { node: self.core.id(), term: self.core.term(), is_leader: true });
        }
        self.watchers.push(msg.0);
    }
}

impl Handler<ForwardToLeader> for Election {
    type Result = ResponseFuture<Result<Response, ApiError>>;

    fn handle(&mut self, msg: ForwardToLeader, _: &mut Context<Self>) -> Self::Result {
        if self.core.role() == Role::Leader {
            // Leadership moved here since the caller asked: it should retry locally.
            let retry_after_ms = self.config.heartbeat_interval_ms;
            return Box::pin(async move { Err(ApiError::NoLeader { retry_after_ms }) });
        }
        self.forward(msg.0, |r| match r {
            Response::Error(e) => Err(e),
            other => Ok(other),
        })
    }
}

impl Handler<GetElectionStatus> for Election {
    type Result = MessageResult<GetElectionStatus>;

    fn handle(&mut self, _: GetElectionStatus, _: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        let me = self.core.id();
        let peers = self
            .core
            .members()
            .all()
            .filter(|(id, _, _)| *id != me)
            .map(|(id, addr, _)| {
                let view = self.core.peer_view(now, id);
                PeerStatus {
                    id,
                    addr: addr.to_string(),
                    match_index: view.map(|v| v.match_index),
                    alive: view.map(|v| v.alive),
                }
            })
            .collect();
        let members_now = self.core.members().clone();
        let members = members_now
            .all()
            .map(|(id, addr, role)| {
                let (match_index, reachable) = if id == me && self.core.role() == Role::Leader {
                    (Some(self.core.last_log().index), Some(true))
                } else {
                    let view = self.core.peer_view(now, id);
                    (view.map(|v| v.match_index), view.map(|v| v.alive))
                };
                MemberStatus {
                    id,
                    addr: addr.to_string(),
                    role,
                    promoting: members_now.promoting.contains(&id),
                    match_index,
                    reachable,
                }
            })
            .collect();
        MessageResult(ElectionStatus {
            id: me,
            role: self.core.role(),
            term: self.core.term(),
            leader: self.core.leader(),
            commit_index: self.core.commit(),
            last_log: self.core.last_log(),
            peers,
            members,
            members_index: self.core.member_log().latest_index(),
            members_pending: self.core.member_log().pending(self.core.commit()),
        })
    }
}

impl Handler<ChangeMembers> for Election {
    type Result = ResponseFuture<Result<WriteReply, ApiError>>;

    fn handle(&mut self, msg: ChangeMembers, ctx: &mut Context<Self>) -> Self::Result {
        if self.core.role() != Role::Leader {
            return self.pass_on(msg.forwarded, Request::ChangeMembers { change: msg.change, forwarded: true }, |r| {
                match r {
                    Response::Written(w) => Ok(w),
                    other => Err(unexpected(other)),
                }
            });
        }
        // Asking again for what is already so (a node joining a second time) is done at once.
        let members = self.core.members();
        let done = match &msg.change {
            MemberChange::Add { id, addr, promote } => {
                members.addr(*id) == Some(addr.as_str())
                    && (!promote || members.is_voter(*id) || members.promoting.contains(id))
            }
            MemberChange::Promote { id } => members.is_voter(*id),
            MemberChange::Remove { .. } => false,
        };
        if done {
            let index = self.core.member_log().latest_index();
            return Box::pin(async move { Ok(WriteReply { index, output: Default::default() }) });
        }
        let index = match self.core.propose_change(self.clock.now(), msg.change) {
            Ok(index) => index,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        self.act(ctx);
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(index, Waiter { term: self.core.term(), tx, _place: None });
        Box::pin(answer(rx, self.config.request_timeout()))
    }
}

impl Handler<StopPeerLinks> for Election {
    type Result = ();

    fn handle(&mut self, _: StopPeerLinks, _: &mut Context<Self>) {
        for (_, link) in std::mem::take(&mut self.links) {
            link.do_send(StopLink);
        }
    }
}

impl Handler<TransferLeadership> for Election {
    type Result = ResponseFuture<Result<NodeId, ApiError>>;

    fn handle(&mut self, msg: TransferLeadership, ctx: &mut Context<Self>) -> Self::Result {
        if self.core.role() != Role::Leader {
            return self.pass_on(msg.forwarded, Request::TransferLeadership { to: msg.to }, |r| match r {
                Response::HandedTo(id) => Ok(id),
                other => Err(unexpected(other)),
            });
        }
        if self.transfer.is_some() {
            let e = ApiError::ChangeInProgress("a leadership transfer is under way".into());
            return Box::pin(async move { Err(e) });
        }
        let target = match self.core.transfer_leadership(self.clock.now(), msg.to) {
            Ok(t) => t,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let (tx, rx) = oneshot::channel();
        self.transfer = Some((target, tx));
        self.act(ctx);
        Box::pin(answer(rx, self.config.request_timeout()))
    }
}

impl Handler<TimeoutNow> for Election {
    type Result = ();

    fn handle(&mut self, msg: TimeoutNow, ctx: &mut Context<Self>) {
        self.step(ctx, Input::TimeoutNow { from: msg.from, term: msg.term });
    }
}
