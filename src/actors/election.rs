//! `Election`: owns the node's role, current term and vote (mirroring `LogStore`'s hard
//! state), the leader id, the election deadline, the members, and on the leader the commit
//! index, the writes waiting to be applied and the reads waiting for a ReadIndex.
//!
//! Receives: `AppendEntries` and `RequestVote` from peers (via `Connection`), `ClientWrite`
//! and `GetReadIndex` from clients, `PeerProgress` / `HigherTermSeen` from its `Replicator`s,
//! `EntriesApplied` from `LogStore`, `GetElectionStatus`.
//! Sends: `SaveHardState` / `AppendLocal` / `AppendFromLeader` / `CommitTo` to `LogStore`,
//! `Replicate` to replicators, `Call` (votes, forwarded writes and reads) to `PeerLink`s.
//!
//! Durability rules (Figure 2): a vote is answered only after term and vote are durable; a
//! candidate asks for votes only after its own vote is durable; an AppendEntries success goes
//! out only after the entries are durable, and only if the term has not changed meanwhile.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::channel::oneshot;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

use crate::actors::log_store::LogStore;
use crate::actors::peer_link::{Call, PeerLink};
use crate::actors::replicator::{Replicator, ReplicatorLinks};
use crate::admission::Admitted;
use crate::config::Config;
use crate::error::ApiError;
use crate::messages::apply::EntriesApplied;
use crate::messages::client::{ClientWrite, ElectionStatus, GetElectionStatus, GetReadIndex};
use crate::messages::raft::{
    AppendEntries, AppendFromLeader, AppendLocal, AppendResult, CommitTo, ForwardToLeader, HigherTermSeen,
    LeadershipChanged, PeerDisconnected, PeerProgress, Replicate, RequestVote, SaveHardState, StopReplication,
    WatchLeadership,
};
use crate::raft::commit::{advance_commit, majority_value};
use crate::raft::vote::{Candidacy, VoterState, should_grant_pre_vote, should_grant_vote};
use crate::raft::{Entry, HardState, LogId, NodeId, Payload, Role, quorum};
use crate::wire::{
    AppendEntriesResponse, AppendOutcome, PeerStatus, Request, Response, VoteRequest, VoteResponse, WriteReply,
};

/// One other member, as `Election` sees it.
#[derive(Clone)]
pub struct Peer {
    /// Its address.
    pub addr: String,
    /// The link to it.
    pub link: Addr<PeerLink>,
}

struct Waiter {
    term: u64,
    tx: oneshot::Sender<Result<WriteReply, ApiError>>,
    /// The client's admission place, given back when the write is answered.
    _place: Option<Admitted>,
}

struct PendingRead {
    round: u64,
    read_index: u64,
    tx: oneshot::Sender<Result<u64, ApiError>>,
}

struct Campaign {
    term: u64,
    pre_vote: bool,
    granted: BTreeSet<NodeId>,
}

struct LeaderState {
    replicators: BTreeMap<NodeId, Addr<Replicator>>,
    match_index: BTreeMap<NodeId, u64>,
    self_durable: u64,
    /// Index of the leader's no-op: the first entry of its term (§5.4.2, §6.4).
    term_start: u64,
    /// Entries stamped but not yet handed to `LogStore` (flushed once per mailbox drain).
    pending: Vec<std::sync::Arc<Entry>>,
    flush_scheduled: bool,
    /// The newest read round issued, the rounds each peer confirmed, and the reads waiting.
    round: u64,
    round_scheduled: bool,
    acked_round: BTreeMap<NodeId, u64>,
    last_ack: BTreeMap<NodeId, Instant>,
    reads: VecDeque<PendingRead>,
    check_quorum: SpawnHandle,
}

/// The election and commit actor.
pub struct Election {
    id: NodeId,
    config: Arc<Config>,
    peers: BTreeMap<NodeId, Peer>,
    log_store: Addr<LogStore>,
    rng: StdRng,
    role: Role,
    term: u64,
    voted_for: Option<NodeId>,
    leader: Option<NodeId>,
    commit: u64,
    /// The last log entry as this actor knows it: stamped by itself as leader, reported by
    /// `LogStore` otherwise.
    last_log: LogId,
    /// Orders `LogStore` replies to follower appends, so the mirror only moves forward in time.
    append_seq: u64,
    append_seq_seen: u64,
    deadline: Instant,
    timer: Option<SpawnHandle>,
    last_leader_contact: Option<Instant>,
    campaign: Option<Campaign>,
    leader_state: Option<LeaderState>,
    waiters: BTreeMap<u64, Waiter>,
    /// Term and vote as last confirmed durable by `LogStore`: a vote is answered only once
    /// the state it rests on is in this.
    durable_vote: (u64, Option<NodeId>),
    storage_failed: bool,
    watchers: Vec<Recipient<LeadershipChanged>>,
}

/// Used once by `Node` to flush proposals after the mailbox drains.
#[derive(Message)]
#[rtype(result = "()")]
struct FlushProposals;

#[derive(Message)]
#[rtype(result = "()")]
struct IssueReadRound;

impl Election {
    /// An election actor starting from the durable state recovered by `LogStore`.
    pub fn new(
        config: Arc<Config>,
        hard_state: HardState,
        last_log: LogId,
        peers: BTreeMap<NodeId, Peer>,
        log_store: Addr<LogStore>,
    ) -> Self {
        // Each node draws its own sequence from the configured seed, so a simulation with
        // one seed replays exactly, and nodes do not time out in lockstep.
        let seed = config.seed.unwrap_or_else(rand::random).wrapping_add(config.id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Election {
            id: config.id,
            rng: StdRng::seed_from_u64(seed),
            config,
            peers,
            log_store,
            role: Role::Follower,
            term: hard_state.term,
            voted_for: hard_state.voted_for,
            leader: None,
            commit: hard_state.commit.min(last_log.index),
            last_log,
            append_seq: 0,
            append_seq_seen: 0,
            deadline: Instant::now(),
            timer: None,
            last_leader_contact: None,
            campaign: None,
            leader_state: None,
            waiters: BTreeMap::new(),
            durable_vote: (hard_state.term, hard_state.voted_for),
            storage_failed: false,
            watchers: Vec::new(),
        }
    }

    fn random_timeout(&mut self) -> Duration {
        let ms = self.rng.random_range(self.config.election_timeout_min_ms..=self.config.election_timeout_max_ms);
        Duration::from_millis(ms)
    }

    fn reset_deadline(&mut self) {
        self.deadline = Instant::now() + self.random_timeout();
    }

    /// Keeps exactly one timer armed for the election deadline; it re-arms itself when the
    /// deadline moved while it slept, so heartbeats cost no timer churn.
    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        if self.timer.is_some() {
            return;
        }
        let wait = self.deadline.saturating_duration_since(Instant::now());
        self.timer = Some(ctx.run_later(wait, |act, ctx| {
            act.timer = None;
            if act.role == Role::Leader {
                return;
            }
            if Instant::now() >= act.deadline {
                act.start_campaign(ctx, true);
            }
            act.arm_timer(ctx);
        }));
    }

    fn leader_is_live(&self) -> bool {
        self.role == Role::Leader
            || self
                .last_leader_contact
                .is_some_and(|t| t.elapsed() < Duration::from_millis(self.config.election_timeout_min_ms))
    }

    fn hard_state_msg(&self) -> SaveHardState {
        SaveHardState { term: self.term, voted_for: self.voted_for }
    }

    /// Steps down (or stays) as follower in `term`; the caller persists if the term moved.
    fn become_follower(&mut self, ctx: &mut Context<Self>, term: u64, leader: Option<NodeId>) {
        let led = self.term;
        if term > self.term {
            self.term = term;
            self.voted_for = None;
        }
        if self.role != Role::Follower {
            tracing::info!(id = self.id, term = self.term, from = %self.role, "stepping down to follower");
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.campaign = None;
        if let Some(ls) = self.leader_state.take() {
            for w in &self.watchers {
                w.do_send(LeadershipChanged { node: self.id, term: led, is_leader: false });
            }
            ctx.cancel_future(ls.check_quorum);
            if !ls.pending.is_empty() {
                // Entries already stamped go to the log anyway, so the mirror stays true; they
                // are uncommitted and the next leader may replace them.
                self.log_store.do_send(AppendLocal { entries: ls.pending });
            }
            for r in ls.replicators.values() {
                r.do_send(StopReplication);
            }
            for read in ls.reads {
                let _ = read.tx.send(Err(ApiError::NotLeader { node: self.id, leader }));
            }
            // Waiting writes stay: their entries may still commit under the next leader, and
            // `EntriesApplied` tells each one what happened at its index.
        }
        self.reset_deadline();
        self.arm_timer(ctx);
    }

    /// Persists term and vote; the returned future resolves to whether they are durable. The
    /// reply also carries the log's last entry with every earlier append applied, which is
    /// what a candidate must report: it replaces the mirror unless a later reply already did.
    fn persist(&mut self) -> impl ActorFuture<Self, Output = bool> + 'static {
        self.append_seq += 1;
        let seq = self.append_seq;
        let sent = (self.term, self.voted_for);
        self.log_store.send(self.hard_state_msg()).into_actor(self).map(move |res, act, _| match res {
            Ok(Ok(last)) => {
                act.update_last_log(seq, last);
                // Completions may be polled out of order; within a term a vote only appears.
                let d = act.durable_vote;
                if sent.0 > d.0 || (sent.0 == d.0 && sent.1.is_some()) {
                    act.durable_vote = sent;
                }
                true
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot persist term and vote");
                act.storage_failed = true;
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "log store unreachable");
                false
            }
        })
    }

    /// Takes `LogStore`'s word for the last entry, unless a reply to a later request already
    /// came (replies are produced in order but their futures may be polled out of order). A
    /// leader stamps its own entries and ignores these.
    fn update_last_log(&mut self, seq: u64, last: LogId) {
        if seq > self.append_seq_seen {
            self.append_seq_seen = seq;
            if self.role != Role::Leader {
                self.last_log = last;
            }
        }
    }

    /// Starts a pre-vote (or, after one succeeds, a real election).
    fn start_campaign(&mut self, ctx: &mut Context<Self>, pre_vote: bool) {
        // The deadline moves first: a node that may not stand must not spin on its timer.
        self.reset_deadline();
        if self.storage_failed {
            return;
        }
        self.leader = None;
        if pre_vote && !self.peers.is_empty() {
            let term = self.term + 1;
            tracing::debug!(id = self.id, term, "starting pre-vote");
            self.campaign = Some(Campaign { term, pre_vote: true, granted: BTreeSet::from([self.id]) });
            self.request_votes(ctx, term, true);
            return;
        }
        self.term += 1;
        self.voted_for = Some(self.id);
        self.role = Role::Candidate;
        let term = self.term;
        tracing::info!(id = self.id, term, "starting election");
        self.campaign = Some(Campaign { term, pre_vote: false, granted: BTreeSet::from([self.id]) });
        // Our own vote must be durable before we ask for others (Figure 2).
        let fut = self.persist().map(move |ok, act, ctx| {
            if !ok || act.term != term || act.role != Role::Candidate {
                return;
            }
            if act.peers.is_empty() {
                act.become_leader(ctx);
            } else {
                act.request_votes(ctx, term, false);
            }
        });
        ctx.spawn(fut);
    }

    fn request_votes(&mut self, ctx: &mut Context<Self>, term: u64, pre_vote: bool) {
        let req = VoteRequest { term, candidate: self.id, last_log: self.last_log, pre_vote };
        let timeout = Duration::from_millis(self.config.election_timeout_min_ms);
        for (&peer, p) in &self.peers {
            let call = Call { request: Request::Vote(req), timeout };
            ctx.spawn(p.link.send(call).into_actor(self).map(move |res, act, ctx| {
                if let Ok(Ok(Response::Vote(v))) = res {
                    act.on_vote(ctx, peer, term, pre_vote, v);
                }
            }));
        }
    }

    fn on_vote(&mut self, ctx: &mut Context<Self>, peer: NodeId, term: u64, pre_vote: bool, v: VoteResponse) {
        if v.term > self.term && !v.granted {
            self.become_follower(ctx, v.term, None);
            let fut = self.persist().map(|_, _, _| ());
            ctx.spawn(fut);
            return;
        }
        let Some(c) = self.campaign.as_mut() else { return };
        if c.term != term || c.pre_vote != pre_vote || !v.granted {
            return;
        }
        c.granted.insert(peer);
        if c.granted.len() < quorum(self.config.voters()) {
            return;
        }
        if pre_vote {
            self.start_campaign(ctx, false);
        } else if self.role == Role::Candidate && self.term == term {
            self.become_leader(ctx);
        }
    }

    fn become_leader(&mut self, ctx: &mut Context<Self>) {
        tracing::info!(id = self.id, term = self.term, last_index = self.last_log.index, "became leader");
        for w in &self.watchers {
            w.do_send(LeadershipChanged { node: self.id, term: self.term, is_leader: true });
        }
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.campaign = None;
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        let term_start = self.last_log.index + 1;
        let mut replicators = BTreeMap::new();
        for (&peer, p) in &self.peers {
            let links = ReplicatorLinks {
                link: p.link.clone(),
                log_store: self.log_store.clone(),
                progress: ctx.address().recipient(),
                higher_term: ctx.address().recipient(),
            };
            let r = Replicator::new(peer, self.id, self.term, term_start, self.config.clone(), links).start();
            replicators.insert(peer, r);
        }
        let period = Duration::from_millis(self.config.election_timeout_max_ms);
        let check_quorum = ctx.run_interval(period, |act, ctx| act.check_quorum(ctx));
        let now = Instant::now();
        self.leader_state = Some(LeaderState {
            match_index: self.peers.keys().map(|&p| (p, 0)).collect(),
            last_ack: self.peers.keys().map(|&p| (p, now)).collect(),
            acked_round: self.peers.keys().map(|&p| (p, 0)).collect(),
            replicators,
            self_durable: 0,
            term_start,
            pending: Vec::new(),
            flush_scheduled: false,
            round: 0,
            round_scheduled: false,
            reads: VecDeque::new(),
            check_quorum,
        });
        // The no-op lets this leader commit what earlier terms left (§5.4.2) and serve reads.
        self.propose(ctx, Payload::Blank);
    }

    /// Steps down when a majority has not answered for a whole election timeout, so a leader
    /// cut off from the cluster stops taking writes it cannot commit (thesis §6.2).
    fn check_quorum(&mut self, ctx: &mut Context<Self>) {
        let Some(ls) = &self.leader_state else { return };
        let window = Duration::from_millis(self.config.election_timeout_max_ms);
        let alive = 1 + ls.last_ack.values().filter(|t| t.elapsed() < window).count();
        if alive < quorum(self.config.voters()) {
            tracing::warn!(id = self.id, term = self.term, alive, "lost contact with a majority; stepping down");
            self.become_follower(ctx, self.term, None);
        }
    }

    /// Stamps an entry with term and index and queues it for `LogStore`.
    fn propose(&mut self, ctx: &mut Context<Self>, payload: Payload) -> u64 {
        let index = self.last_log.index + 1;
        self.last_log = LogId::new(self.term, index);
        let entry = std::sync::Arc::new(Entry { term: self.term, index, payload });
        if let Some(ls) = self.leader_state.as_mut() {
            ls.pending.push(entry);
            if !ls.flush_scheduled {
                ls.flush_scheduled = true;
                ctx.notify(FlushProposals);
            }
        }
        index
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        let Some(ls) = self.leader_state.as_mut() else { return };
        ls.flush_scheduled = false;
        if ls.pending.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut ls.pending);
        let term = self.term;
        ctx.spawn(self.log_store.send(AppendLocal { entries }).into_actor(self).map(move |res, act, ctx| match res {
            Ok(Ok(last)) => {
                if act.term == term
                    && let Some(ls) = act.leader_state.as_mut()
                {
                    ls.self_durable = ls.self_durable.max(last.index);
                    act.advance_commit(ctx);
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot append to the log; stepping down");
                act.storage_failed = true;
                act.become_follower(ctx, act.term, None);
            }
            Err(e) => tracing::error!(error = %e, "log store unreachable"),
        }));
        self.broadcast();
    }

    fn broadcast(&self) {
        if let Some(ls) = &self.leader_state {
            let msg = Replicate { last_index: self.last_log.index, commit: self.commit, round: ls.round };
            for r in ls.replicators.values() {
                r.do_send(msg);
            }
        }
    }

    fn advance_commit(&mut self, ctx: &mut Context<Self>) {
        let Some(ls) = &self.leader_state else { return };
        let mut durable: Vec<u64> = ls.match_index.values().copied().collect();
        durable.push(ls.self_durable);
        if let Some(c) = advance_commit(self.commit, &durable, ls.term_start) {
            self.commit = c;
            self.log_store.do_send(CommitTo(c));
            self.broadcast();
            self.serve_reads(ctx);
        }
    }

    /// Answers the reads whose round a majority confirmed, once the commit index has reached
    /// their read index.
    fn serve_reads(&mut self, _: &mut Context<Self>) {
        let commit = self.commit;
        let Some(ls) = self.leader_state.as_mut() else { return };
        let mut rounds: Vec<u64> = ls.acked_round.values().copied().collect();
        rounds.push(ls.round);
        let confirmed = majority_value(&rounds);
        while let Some(r) = ls.reads.front() {
            if r.round > confirmed || r.read_index > commit {
                break;
            }
            if let Some(r) = ls.reads.pop_front() {
                let _ = r.tx.send(Ok(r.read_index));
            }
        }
    }

    fn forward<T: 'static>(
        &self,
        request: Request,
        extract: fn(Response) -> Result<T, ApiError>,
    ) -> ResponseFuture<Result<T, ApiError>> {
        let Some(leader) = self.leader else {
            let retry_after_ms = self.config.election_timeout_max_ms;
            return Box::pin(async move { Err(ApiError::NoLeader { retry_after_ms }) });
        };
        let Some(peer) = self.peers.get(&leader) else {
            return Box::pin(
                async move { Err(ApiError::Unavailable(format!("leader {leader} is not a configured peer"))) },
            );
        };
        let call = peer.link.send(Call { request, timeout: self.config.request_timeout() });
        Box::pin(async move {
            match call.await {
                Ok(Ok(resp)) => extract(resp),
                Ok(Err(e)) => Err(ApiError::Unreachable { leader, reason: e.to_string() }),
                Err(e) => Err(ApiError::Unavailable(e.to_string())),
            }
        })
    }
}

impl Actor for Election {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        // A waiter whose client gave up (every client times out by request_timeout) holds
        // its admission place until it is dropped: drop them on time, not only when entries
        // are applied (a deposed leader may see none applied at its indexes for long).
        ctx.run_interval(self.config.request_timeout(), |act, _| {
            act.waiters.retain(|_, w| !w.tx.is_canceled());
        });
        if self.peers.is_empty() {
            // A single-node cluster is its own majority: elect at once.
            self.start_campaign(ctx, false);
        } else {
            self.reset_deadline();
        }
        self.arm_timer(ctx);
    }
}

impl Handler<FlushProposals> for Election {
    type Result = ();

    fn handle(&mut self, _: FlushProposals, ctx: &mut Context<Self>) {
        self.flush(ctx);
    }
}

impl Handler<IssueReadRound> for Election {
    type Result = ();

    fn handle(&mut self, _: IssueReadRound, ctx: &mut Context<Self>) {
        if let Some(ls) = self.leader_state.as_mut() {
            ls.round += 1;
            ls.round_scheduled = false;
        }
        self.broadcast();
        self.serve_reads(ctx);
    }
}

impl Handler<RequestVote> for Election {
    type Result = ResponseActFuture<Self, VoteResponse>;

    fn handle(&mut self, RequestVote(req): RequestVote, ctx: &mut Context<Self>) -> Self::Result {
        let candidacy = Candidacy { term: req.term, candidate: req.candidate, last_log: req.last_log };
        if req.pre_vote {
            let voter = VoterState { term: self.term, voted_for: self.voted_for, last_log: self.last_log };
            let granted = !self.storage_failed && should_grant_pre_vote(voter, candidacy, self.leader_is_live());
            tracing::debug!(id = self.id, candidate = req.candidate, term = req.term, granted, "pre-vote");
            return Box::pin(actix::fut::ready(VoteResponse { term: self.term, granted }));
        }
        let before = (self.term, self.voted_for);
        if req.term > self.term {
            if self.leader_is_live() {
                // A live leader keeps its followers (thesis §4.2.3): a disruptive node is ignored.
                return Box::pin(actix::fut::ready(VoteResponse { term: self.term, granted: false }));
            }
            self.become_follower(ctx, req.term, None);
        }
        let voter = VoterState { term: self.term, voted_for: self.voted_for, last_log: self.last_log };
        let granted = !self.storage_failed && should_grant_vote(voter, candidacy);
        if granted {
            self.voted_for = Some(req.candidate);
            self.reset_deadline();
        }
        tracing::info!(id = self.id, candidate = req.candidate, term = req.term, granted, "vote");
        let term = self.term;
        let state = (self.term, self.voted_for);
        if state == before && (!granted || state == self.durable_vote) {
            return Box::pin(actix::fut::ready(VoteResponse { term, granted }));
        }
        // Term and vote are durable before the answer leaves (Figure 2).
        Box::pin(self.persist().map(move |ok, _, _| VoteResponse { term, granted: granted && ok }))
    }
}

impl Handler<AppendEntries> for Election {
    type Result = ResponseActFuture<Self, AppendEntriesResponse>;

    fn handle(&mut self, AppendEntries(req): AppendEntries, ctx: &mut Context<Self>) -> Self::Result {
        if req.term < self.term {
            return Box::pin(actix::fut::ready(AppendEntriesResponse {
                term: self.term,
                outcome: AppendOutcome::StaleTerm,
            }));
        }
        if req.term > self.term || self.role != Role::Follower || self.leader != Some(req.leader) {
            // A newer term is made durable by `LogStore` in the same batch as the entries.
            self.become_follower(ctx, req.term, Some(req.leader));
        }
        self.last_leader_contact = Some(Instant::now());
        self.reset_deadline();
        let term = req.term;
        let leader_commit = req.leader_commit;
        self.append_seq += 1;
        let seq = self.append_seq;
        let msg = AppendFromLeader { term, prev: req.prev, entries: req.entries };
        Box::pin(self.log_store.send(msg).into_actor(self).map(move |res, act, _| {
            let stale = |act: &Self| AppendEntriesResponse { term: act.term, outcome: AppendOutcome::StaleTerm };
            let reply = match res {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot store entries from the leader");
                    act.storage_failed = true;
                    return stale(act);
                }
                Err(_) => return stale(act),
            };
            if reply.durable {
                act.update_last_log(seq, reply.last);
            }
            if act.term != term {
                // We moved to a later term (and may have voted on a shorter log) while these
                // entries were being written: acknowledging them now could let the old
                // leader count us for a commit the new one does not have.
                return stale(act);
            }
            match reply.result {
                AppendResult::Matched(match_index) => {
                    let commit = leader_commit.min(match_index);
                    if commit > act.commit {
                        act.commit = commit;
                        act.log_store.do_send(CommitTo(commit));
                    }
                    let outcome =
                        if reply.durable { AppendOutcome::Success { match_index } } else { AppendOutcome::Heartbeat };
                    AppendEntriesResponse { term, outcome }
                }
                AppendResult::Conflict(c) => {
                    AppendEntriesResponse { term, outcome: AppendOutcome::Conflict { next_index: c.next_index } }
                }
                AppendResult::StaleTerm(t) => {
                    AppendEntriesResponse { term: t.max(act.term), outcome: AppendOutcome::StaleTerm }
                }
            }
        }))
    }
}

impl Handler<PeerProgress> for Election {
    type Result = ();

    fn handle(&mut self, msg: PeerProgress, ctx: &mut Context<Self>) {
        if msg.term != self.term {
            return;
        }
        let Some(ls) = self.leader_state.as_mut() else { return };
        ls.last_ack.insert(msg.peer, Instant::now());
        let r = ls.acked_round.entry(msg.peer).or_default();
        *r = (*r).max(msg.acked_round);
        if let Some(m) = msg.match_index {
            let e = ls.match_index.entry(msg.peer).or_default();
            *e = (*e).max(m);
            self.advance_commit(ctx);
        }
        self.serve_reads(ctx);
    }
}

impl Handler<HigherTermSeen> for Election {
    type Result = ();

    fn handle(&mut self, msg: HigherTermSeen, ctx: &mut Context<Self>) {
        if msg.term > self.term {
            tracing::info!(
                id = self.id,
                term = self.term,
                peer = msg.peer,
                peer_term = msg.term,
                "peer has a higher term"
            );
            self.become_follower(ctx, msg.term, None);
            let fut = self.persist().map(|_, _, _| ());
            ctx.spawn(fut);
        }
    }
}

impl Handler<PeerDisconnected> for Election {
    type Result = ();

    /// The leader's connection to us closed: stop vouching for it (pre-votes are granted
    /// again) and move the election deadline close, randomized so the survivors do not split
    /// the vote. A live leader that merely reconnects keeps its followers: its next
    /// heartbeat resets both. Timing only; no safety rule depends on it.
    fn handle(&mut self, msg: PeerDisconnected, ctx: &mut Context<Self>) {
        if self.role != Role::Follower || self.leader != Some(msg.peer) {
            return;
        }
        self.last_leader_contact = None;
        let soon = self.rng.random_range(0..=self.config.election_timeout_min_ms / 2);
        let soon = Instant::now() + Duration::from_millis(soon);
        if soon < self.deadline {
            tracing::info!(id = self.id, leader = msg.peer, "leader connection closed; election soon");
            self.deadline = soon;
            if let Some(t) = self.timer.take() {
                ctx.cancel_future(t);
            }
            self.arm_timer(ctx);
        }
    }
}

impl Handler<ClientWrite> for Election {
    type Result = ResponseFuture<Result<WriteReply, ApiError>>;

    fn handle(&mut self, msg: ClientWrite, ctx: &mut Context<Self>) -> Self::Result {
        if self.storage_failed {
            return Box::pin(async { Err(ApiError::Unavailable("log storage failed".into())) });
        }
        if msg.term.is_some_and(|t| t != self.term || self.role != Role::Leader) {
            let (node, leader) = (self.id, self.leader);
            return Box::pin(async move { Err(ApiError::NotLeader { node, leader }) });
        }
        if self.role != Role::Leader {
            if msg.forwarded {
                let (node, leader) = (self.id, self.leader);
                return Box::pin(async move { Err(ApiError::NotLeader { node, leader }) });
            }
            let forwarded = self.forward(Request::Forward(msg.write), |r| match r {
                Response::Written(w) => Ok(w),
                Response::Error(e) => Err(e),
                other => Err(ApiError::Unavailable(format!("unexpected answer from leader: {other:?}"))),
            });
            let place = msg.place;
            return Box::pin(async move {
                let _place = place;
                forwarded.await
            });
        }
        let payload = Payload::Command { namespace: msg.write.namespace, data: msg.write.data };
        let index = self.propose(ctx, payload);
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(index, Waiter { term: self.term, tx, _place: msg.place });
        let timeout = self.config.request_timeout();
        Box::pin(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(ApiError::Unavailable("node stopped".into())),
                Err(_) => Err(ApiError::Timeout { ms: timeout.as_millis() as u64 }),
            }
        })
    }
}

impl Handler<GetReadIndex> for Election {
    type Result = ResponseFuture<Result<u64, ApiError>>;

    fn handle(&mut self, msg: GetReadIndex, ctx: &mut Context<Self>) -> Self::Result {
        if self.role != Role::Leader {
            if msg.forwarded {
                let (node, leader) = (self.id, self.leader);
                return Box::pin(async move { Err(ApiError::NotLeader { node, leader }) });
            }
            return self.forward(Request::ReadIndex, |r| match r {
                Response::ReadIndex(i) => Ok(i),
                Response::Error(e) => Err(e),
                other => Err(ApiError::Unavailable(format!("unexpected answer from leader: {other:?}"))),
            });
        }
        let commit = self.commit;
        let Some(ls) = self.leader_state.as_mut() else {
            return Box::pin(async { Err(ApiError::Unavailable("leader state missing".into())) });
        };
        // The read must see every write committed before it arrived, and the no-op of this
        // term, which may commit entries of earlier terms this leader does not yet know are
        // committed (§6.4).
        let read_index = commit.max(ls.term_start);
        let (tx, rx) = oneshot::channel();
        ls.reads.push_back(PendingRead { round: ls.round + 1, read_index, tx });
        if !ls.round_scheduled {
            ls.round_scheduled = true;
            ctx.notify(IssueReadRound);
        }
        let timeout = self.config.request_timeout();
        Box::pin(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(ApiError::Unavailable("node stopped".into())),
                Err(_) => Err(ApiError::Timeout { ms: timeout.as_millis() as u64 }),
            }
        })
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
        if self.role == Role::Leader {
            msg.0.do_send(LeadershipChanged { node: self.id, term: self.term, is_leader: true });
        }
        self.watchers.push(msg.0);
    }
}

impl Handler<ForwardToLeader> for Election {
    type Result = ResponseFuture<Result<Response, ApiError>>;

    fn handle(&mut self, msg: ForwardToLeader, _: &mut Context<Self>) -> Self::Result {
        if self.role == Role::Leader {
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
        let peers = self
            .peers
            .iter()
            .map(|(&id, p)| {
                let ls = self.leader_state.as_ref();
                let window = Duration::from_millis(self.config.election_timeout_max_ms);
                PeerStatus {
                    id,
                    addr: p.addr.clone(),
                    match_index: ls.and_then(|ls| ls.match_index.get(&id).copied()),
                    alive: ls.and_then(|ls| ls.last_ack.get(&id)).map(|t| t.elapsed() < window),
                }
            })
            .collect();
        MessageResult(ElectionStatus {
            id: self.id,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit_index: self.commit,
            last_log: self.last_log,
            peers,
        })
    }
}
