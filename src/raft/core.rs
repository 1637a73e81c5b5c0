//! The Raft core: every decision `Election` makes, as a state machine with no actors, no IO and
//! no clock reads. The caller feeds it [`Input`]s with the time they happened and carries out
//! the [`Action`]s it leaves behind, in order; results of the IO come back as inputs.
//!
//! The core owns the role, term, vote, leader, commit index, the election deadline and check-
//! quorum, the campaign, the leader's view of its peers (match index, read rounds, last answer),
//! the reads waiting for a ReadIndex, and the cluster's configurations (the newest in the log is
//! in effect, committed or not: [`super::members`]). It does not hold the log (that is
//! `LogStore`'s), nor the clients' answer channels (the caller keys them by token or index).
//!
//! Membership: quorums, vote counting, check-quorum and read rounds count the voters of the
//! configuration in effect; the leader replicates to every member of every configuration it
//! holds (so a removed node hears of its removal); a node that is not a voter never stands.
//! As §4.1 has it, requests are handled without consulting the configuration: a lagging node
//! may not know of the leader or candidate yet. A leader whose removal commits steps down
//! (§4.2.2).
//!
//! Durability rules (Figure 2) are the core's: a vote is answered only once term and vote are
//! durable; a candidate asks for votes only once its own vote is; an AppendEntries success is
//! answered only once its entries are durable, and only if the term has not moved meanwhile.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::commit::{advance_commit, majority_value};
use super::members::{MemberChange, MemberLog, Members, PROMOTE_MAX_LAG};
use super::vote::{Candidacy, VoterState, should_grant_pre_vote, should_grant_vote};
use super::{Entry, HardState, LogId, NodeId, Payload, Role};
use crate::error::{ApiError, StorageError};
use crate::messages::raft::{AppendFromLeaderReply, AppendResult, InstallReply};
use crate::wire::{
    AppendEntriesRequest, AppendEntriesResponse, AppendOutcome, InstallOutcome, InstallSnapshotRequest,
    InstallSnapshotResponse, LeaseGrant, LeaseWord, VoteRequest, VoteResponse,
};

/// The rules the core decides with. Always [`Rules::RAFT`] in a node; the property tests swap
/// in broken rules to prove that their checks catch them.
#[derive(Clone, Copy)]
pub struct Rules {
    /// The vote rule (§5.2, §5.4.1).
    pub grant_vote: fn(VoterState, Candidacy) -> bool,
    /// The pre-vote rule (thesis §9.6); the last argument says whether a leader is live.
    pub grant_pre_vote: fn(VoterState, Candidacy, bool) -> bool,
    /// The commit rule (§5.3, §5.4.2).
    pub advance_commit: fn(u64, &[u64], u64) -> Option<u64>,
}

impl Rules {
    /// The rules of the paper.
    pub const RAFT: Rules =
        Rules { grant_vote: should_grant_vote, grant_pre_vote: should_grant_pre_vote, advance_commit };
}

/// The timing the core decides with.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Shortest election timeout; also how long a leader's last word keeps it "live".
    pub election_min: Duration,
    /// Longest election timeout; also check-quorum's window.
    pub election_max: Duration,
    /// Lease reads (`read_mode = "lease"`): how long after issuing a round a majority
    /// confirmed the leader answers read indexes without a round of its own. Shorter than
    /// `election_min` by the clock drift allowed ([`lease_for`]); `None`: every read index
    /// takes a round.
    pub lease: Option<Duration>,
}

/// The share of the shortest election timeout a leader's lease lasts: the lease is measured on
/// the leader's clock from before the round, the wait it relies on on each voter's clock from
/// after it, so this holds while no clock runs more than 5% fast or slow:
/// `(1 - 0.05) / (1 + 0.05) = 0.905`, and a little more margin.
pub const LEASE_SHARE: f64 = 0.85;

/// The lease for an election timeout of `election_min`.
pub fn lease_for(election_min: Duration) -> Duration {
    election_min.mul_f64(LEASE_SHARE)
}

/// How long the leader counts a follower's lease as held, as a share of the lease, from when
/// the follower's ask reached it: the follower counts its lease on its own clock from before
/// it sent the ask, so its lease ends within `1.05 / 0.95 = 1.105` leases of the leader's
/// clock while no clock runs more than 5% fast or slow; this leaves a little more margin.
pub const HOLDER_SHARE: f64 = 1.2;

/// Something that happened, for the core to decide on.
#[derive(Debug)]
pub enum Input {
    /// Time passed: the election deadline or the next check-quorum may be due.
    Tick,
    /// A peer asks for our (pre-)vote; answer with [`Action::AnswerVote`] and `token`.
    VoteRequest {
        /// Names the answer.
        token: u64,
        /// The request.
        request: VoteRequest,
    },
    /// A peer answered our vote request.
    VoteResponse {
        /// The peer.
        from: NodeId,
        /// The request it answers.
        request: VoteRequest,
        /// Its answer.
        response: VoteResponse,
    },
    /// A leader's AppendEntries; answer with [`Action::AnswerAppend`] and `token`.
    AppendRequest {
        /// Names the answer.
        token: u64,
        /// The request.
        request: AppendEntriesRequest,
    },
    /// `LogStore` handled an [`Action::StoreFromLeader`].
    AppendStored {
        /// The ticket of that action.
        ticket: AppendTicket,
        /// What `LogStore` answered (`None`: it could not be reached).
        result: Option<Result<AppendFromLeaderReply, StorageError>>,
    },
    /// A chunk of the leader's snapshot; answer with [`Action::AnswerInstall`] and `token`.
    InstallRequest {
        /// Names the answer.
        token: u64,
        /// The request.
        request: InstallSnapshotRequest,
    },
    /// `LogStore` handled an [`Action::StoreSnapshotChunk`].
    InstallStored {
        /// The ticket of that action.
        ticket: InstallTicket,
        /// What `LogStore` answered (`None`: it could not be reached).
        result: Option<Result<InstallReply, StorageError>>,
    },
    /// `LogStore` handled an [`Action::SaveHardState`]; `Ok` carries its last entry.
    HardStateSaved {
        /// The ticket of that action.
        ticket: SaveTicket,
        /// What `LogStore` answered (`None`: it could not be reached).
        result: Option<Result<LogId, StorageError>>,
    },
    /// `LogStore` handled an [`Action::AppendLocal`] that asked for an answer.
    LocalAppended {
        /// The term the entries were stamped in.
        term: u64,
        /// What `LogStore` answered (`None`: it could not be reached).
        result: Option<Result<LogId, StorageError>>,
    },
    /// The stamped entries may go to the log now (after [`Action::ScheduleFlush`]).
    Flush,
    /// A read round may start now (after [`Action::ScheduleReadRound`]).
    ReadRound,
    /// A replicator's report.
    PeerProgress {
        /// The peer.
        peer: NodeId,
        /// The term the replicator works for.
        term: u64,
        /// The read round the peer confirmed.
        acked_round: u64,
        /// Highest index durable on the peer, if it moved.
        match_index: Option<u64>,
        /// The peer's commit index, as it answered.
        commit: Option<u64>,
        /// The peer's ask for a read lease (`read_mode = "lease"`).
        lease_ask: Option<u64>,
        /// The peer answered a request revoking its read lease: it dropped it.
        lease_dropped: bool,
    },
    /// A peer answered with a higher term.
    HigherTerm {
        /// The peer.
        peer: NodeId,
        /// Its term.
        term: u64,
    },
    /// A peer's connection to us closed.
    PeerDisconnected {
        /// The peer.
        peer: NodeId,
    },
    /// A client asks for a ReadIndex; answered with [`Action::AnswerRead`] and `token`.
    ReadIndex {
        /// Names the answer.
        token: u64,
    },
    /// The leader of `term` hands leadership to this node: stand now (thesis §3.10).
    TimeoutNow {
        /// The leader.
        from: NodeId,
        /// Its term.
        term: u64,
    },
}

/// What the core wants done, in order.
#[derive(Debug)]
pub enum Action {
    /// Make term and vote durable; report with [`Input::HardStateSaved`].
    SaveHardState {
        /// Return it with the result.
        ticket: SaveTicket,
    },
    /// Append the leader's own entries; report with [`Input::LocalAppended`] if `report`.
    AppendLocal {
        /// The term they were stamped in.
        term: u64,
        /// Consecutive entries.
        entries: Vec<Arc<Entry>>,
        /// Whether the core waits for the answer (not for entries flushed on stepping down).
        report: bool,
    },
    /// Store a leader's entries on this follower; report with [`Input::AppendStored`].
    StoreFromLeader {
        /// Return it with the result.
        ticket: AppendTicket,
        /// The entry before `entries`.
        prev: LogId,
        /// The entries.
        entries: Vec<Arc<Entry>>,
    },
    /// Hand a chunk of the leader's snapshot to the log; report with [`Input::InstallStored`].
    StoreSnapshotChunk {
        /// Return it with the result.
        ticket: InstallTicket,
        /// The chunk.
        request: InstallSnapshotRequest,
    },
    /// Answer an InstallSnapshot.
    AnswerInstall {
        /// The request's token.
        token: u64,
        /// The answer.
        response: InstallSnapshotResponse,
    },
    /// Committed entries may be applied up to here (the commit index, bounded by what may be
    /// seen: see [`AppendEntriesRequest::leader_visible`]).
    CommitTo(u64),
    /// Ask a peer for its vote; report its answer with [`Input::VoteResponse`].
    SendVote {
        /// The peer.
        to: NodeId,
        /// The request.
        request: VoteRequest,
    },
    /// Answer a vote request.
    AnswerVote {
        /// The request's token.
        token: u64,
        /// The answer.
        response: VoteResponse,
    },
    /// Answer an AppendEntries.
    AnswerAppend {
        /// The request's token.
        token: u64,
        /// The answer.
        response: AppendEntriesResponse,
    },
    /// Answer a ReadIndex request.
    AnswerRead {
        /// The request's token.
        token: u64,
        /// The read index, or why there is none.
        result: Result<u64, ApiError>,
    },
    /// Start a replicator for each of `peers` for `term`, each from `next_index`.
    StartReplication {
        /// The leader's term.
        term: u64,
        /// Where every peer starts (the leader's no-op).
        next_index: u64,
        /// The peers.
        peers: Vec<NodeId>,
    },
    /// Stop every replicator.
    StopReplication,
    /// Stop the replicator of one peer (no longer a member).
    StopPeer {
        /// The peer.
        peer: NodeId,
    },
    /// The configuration in effect changed (or the set of nodes to keep in touch with).
    MembersChanged {
        /// The configuration in effect.
        members: Arc<Members>,
        /// Every node this one must reach: the members of each configuration it holds, bar
        /// itself.
        peers: BTreeSet<NodeId>,
    },
    /// Tell every replicator what there is to ship.
    Replicate {
        /// The leader's last index.
        last_index: u64,
        /// The leader's commit index.
        commit: u64,
        /// How far committed entries may be applied and seen (see
        /// [`AppendEntriesRequest::leader_visible`]).
        visible: u64,
        /// The newest read round waiting for confirmation.
        round: u64,
    },
    /// Send `peer` this word on its read lease with the next request (`read_mode = "lease"`).
    SendLease {
        /// The follower.
        peer: NodeId,
        /// A grant, or the end of its lease.
        word: LeaseWord,
    },
    /// This node started (`true`) or stopped leading `term`.
    LeadershipChanged {
        /// The term.
        term: u64,
        /// Whether it now leads.
        is_leader: bool,
    },
    /// Tell `to`, caught up, to stand for election now (a leadership transfer).
    SendTimeoutNow {
        /// The voter taking over.
        to: NodeId,
        /// This leader's term.
        term: u64,
    },
    /// A leadership transfer ended: this node stepped down (`handed_over`), or gave up
    /// after an election timeout and leads on.
    TransferEnded {
        /// Whether leadership left this node.
        handed_over: bool,
    },
    /// Feed [`Input::Flush`] once the inputs at hand are handled (proposals are batched).
    ScheduleFlush,
    /// Feed [`Input::ReadRound`] once the inputs at hand are handled (reads are batched).
    ScheduleReadRound,
}

/// Travels with an [`Action::SaveHardState`] and back with its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaveTicket {
    /// Orders `LogStore`'s answers.
    pub seq: u64,
    /// The term to make durable.
    pub term: u64,
    /// The vote to make durable.
    pub voted_for: Option<NodeId>,
}

/// Travels with an [`Action::StoreFromLeader`] and back with its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendTicket {
    /// The answer's token.
    pub token: u64,
    /// Orders `LogStore`'s answers.
    pub seq: u64,
    /// The leader's term.
    pub term: u64,
    /// The leader's commit index.
    pub leader_commit: u64,
    /// The request's `prev` index.
    pub prev_index: u64,
    /// The index of the request's last entry (`prev_index` for a heartbeat).
    pub end: u64,
}

/// Travels with an [`Action::StoreSnapshotChunk`] and back with its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstallTicket {
    /// The answer's token.
    pub token: u64,
    /// Orders `LogStore`'s answers.
    pub seq: u64,
    /// The leader's term.
    pub term: u64,
}

/// An append (or a snapshot chunk) from a leader, as its configurations are followed.
#[derive(Debug)]
struct AppendToFollow {
    /// The request's `prev` index: following it changes no configuration at or below (0
    /// for a chunk that may complete a snapshot, which replaces them all).
    prev_index: u64,
    /// The configurations its entries carry, by index.
    configs: Vec<(u64, Arc<Members>)>,
    /// Once stored: what it did to the log (`None`: nothing).
    stored: Option<Option<Stored>>,
}

/// What a stored append or chunk did to the log.
#[derive(Debug)]
enum Stored {
    /// An append matched; the log's last entry right after `LogStore` applied it.
    Append(AppendTicket, LogId),
    /// A snapshot was installed: its configuration replaces every one up to its last entry,
    /// and those after it too unless the log `kept` its entries after it.
    Install { snapshot: LogId, members: Arc<Members>, kept: bool },
}

/// A campaign due while appends were unfollowed: it starts once they are followed, if the
/// term and the leader it was due under still stand.
#[derive(Clone, Copy, Debug)]
struct DueCampaign {
    pre_vote: bool,
    /// One the leader asked for (TimeoutNow).
    transfer: bool,
    term: u64,
    leader: Option<NodeId>,
}

/// How many appends from a leader may wait for `LogStore` at once. Past it (a disk that
/// hangs) an append is refused as unstored, so the leader retries later and the backlog
/// has a bound.
pub const MAX_APPENDS_TO_FOLLOW: usize = 1024;

/// What the leader knows of one peer, for status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerView {
    /// Highest index known durable on it.
    pub match_index: u64,
    /// Whether it answered within check-quorum's window.
    pub alive: bool,
}

struct Campaign {
    term: u64,
    pre_vote: bool,
    /// Standing because the leader handed over (voters skip the live-leader check).
    transfer: bool,
    granted: BTreeSet<NodeId>,
}

/// A leadership transfer under way (thesis §3.10).
struct Transfer {
    target: NodeId,
    /// Given up after one election timeout.
    deadline: Instant,
    /// TimeoutNow sent (the target had caught up).
    sent: bool,
}

struct PendingRead {
    token: u64,
    round: u64,
    read_index: u64,
}

/// A replicator's report ([`Input::PeerProgress`]).
struct PeerReport {
    peer: NodeId,
    term: u64,
    acked_round: u64,
    match_index: Option<u64>,
    commit: Option<u64>,
    lease_ask: Option<u64>,
    lease_dropped: bool,
}

/// A follower's ask for a read lease, as the leader holds it until a round issued after it
/// arrived is confirmed.
struct LeaseAsk {
    id: u64,
    received: Instant,
    /// The first round issued after it arrived.
    round: u64,
    /// The commit index when it arrived: a follower behind that is not granted a lease, so
    /// one that lags does not hold back what every node may see.
    commit: u64,
}

/// A read lease this follower holds (`read_mode = "lease"`).
#[derive(Clone, Copy, Debug)]
struct FollowerLease {
    term: u64,
    leader: NodeId,
    until: Instant,
    floor: u64,
}

struct Lead {
    match_index: BTreeMap<NodeId, u64>,
    self_durable: u64,
    /// Index of the leader's no-op: the first entry of its term (§5.4.2, §6.4).
    term_start: u64,
    /// Entries stamped but not yet handed to the log (flushed once per burst of inputs).
    pending: Vec<Arc<Entry>>,
    flush_scheduled: bool,
    /// The newest read round issued, the rounds each peer confirmed, and the reads waiting.
    round: u64,
    round_scheduled: bool,
    /// When each round not yet confirmed by a majority was issued (lease reads only).
    issued: VecDeque<(u64, Instant)>,
    /// Read indexes are answered without a round until then (lease reads only).
    lease_until: Option<Instant>,
    /// No lease for the rest of this term: a transfer began, and the target's election
    /// does not wait for this leader's lease to run out.
    lease_revoked: bool,
    acked_round: BTreeMap<NodeId, u64>,
    last_ack: BTreeMap<NodeId, Instant>,
    reads: VecDeque<PendingRead>,
    /// Follower leases (lease reads only): each peer's commit index as it last answered, the
    /// asks waiting for a round, and until when (at the latest) each holder's lease runs.
    peer_commit: BTreeMap<NodeId, u64>,
    asks: BTreeMap<NodeId, LeaseAsk>,
    holders: BTreeMap<NodeId, Instant>,
    /// The ask each peer was last granted: answers sent before the grant reached it still
    /// carry it, and start no round.
    granted: BTreeMap<NodeId, u64>,
    next_quorum_check: Instant,
    transfer: Option<Transfer>,
}

struct VoteToAnswer {
    seq: u64,
    token: u64,
    response: VoteResponse,
}

/// One value per voter in effect, for a majority to be read from: `own` for this node (if it
/// votes), each peer's from `theirs` (0 if it has none yet).
fn per_voter(members: &Members, me: NodeId, own: u64, theirs: &BTreeMap<NodeId, u64>) -> Vec<u64> {
    members.voters.keys().map(|v| if *v == me { own } else { theirs.get(v).copied().unwrap_or(0) }).collect()
}

/// The Raft core of one node. See the module header.
pub struct Core {
    id: NodeId,
    configs: MemberLog,
    timing: Timing,
    rules: Rules,
    rng: StdRng,
    role: Role,
    term: u64,
    voted_for: Option<NodeId>,
    /// Term and vote as last confirmed durable.
    durable_vote: (u64, Option<NodeId>),
    leader: Option<NodeId>,
    commit: u64,
    /// How far committed entries may be applied and seen: on the leader, the commit index
    /// every follower holding a lease is known to have (the commit index without leases); on
    /// a follower, what the leader last said. Only moves forward.
    visible: u64,
    /// What `CommitTo` last said: the commit index, bounded by `visible`.
    released: u64,
    /// The read lease this follower holds, and its ask for the next one.
    follower_lease: Option<FollowerLease>,
    lease_ask: Option<(u64, Instant)>,
    /// The last log entry as the core knows it: stamped by itself as leader, reported by
    /// `LogStore` otherwise.
    last_log: LogId,
    /// Orders `LogStore`'s answers, so the view of the log only moves forward.
    seq: u64,
    seq_seen: u64,
    deadline: Instant,
    last_leader_contact: Option<Instant>,
    campaign: Option<Campaign>,
    lead: Option<Lead>,
    votes_to_answer: Vec<VoteToAnswer>,
    /// Read indexes answered from a lease, without a round.
    lease_reads: u64,
    /// The term a leader handed over into (a TimeoutNow candidate asked for it): the old
    /// leader is alive, so what was passed on to it will be answered.
    handover_term: Option<u64>,
    /// Appends from a leader sent to `LogStore` whose configurations are not yet followed,
    /// by `seq`: `LogStore` applies them in that order, and their answers may come back in
    /// another, so the configurations follow the log in `seq` order, never answer order.
    appends_to_follow: BTreeMap<u64, AppendToFollow>,
    /// A campaign due while `appends_to_follow` was not empty: it starts once the
    /// configuration follows the whole log.
    campaign_due: Option<DueCampaign>,
    storage_failed: bool,
    actions: Vec<Action>,
}

impl Core {
    /// A core starting at `now` from the durable state `LogStore` recovered, `configs` being
    /// the configurations its log holds. `seed` makes the election timeouts replayable; each
    /// node mixes its id in, so nodes do not time out in step.
    pub fn new(
        id: NodeId,
        configs: MemberLog,
        timing: Timing,
        hard_state: HardState,
        last_log: LogId,
        seed: u64,
        now: Instant,
    ) -> Self {
        let mut core = Core {
            id,
            configs,
            timing,
            rules: Rules::RAFT,
            rng: StdRng::seed_from_u64(seed.wrapping_add(id.wrapping_mul(0x9E37_79B9_7F4A_7C15))),
            role: Role::Follower,
            term: hard_state.term,
            voted_for: hard_state.voted_for,
            durable_vote: (hard_state.term, hard_state.voted_for),
            leader: None,
            commit: hard_state.commit.min(last_log.index),
            // What `LogStore` holds as applied may be seen: it was, before a restart.
            visible: hard_state.commit.min(last_log.index),
            released: hard_state.commit.min(last_log.index),
            follower_lease: None,
            lease_ask: None,
            last_log,
            seq: 0,
            seq_seen: 0,
            deadline: now,
            last_leader_contact: None,
            campaign: None,
            lead: None,
            votes_to_answer: Vec::new(),
            appends_to_follow: BTreeMap::new(),
            campaign_due: None,
            handover_term: None,
            lease_reads: 0,
            storage_failed: false,
            actions: Vec::new(),
        };
        if core.timing.lease.is_some() {
            // Before it crashed this node may have answered a round a leader's lease counts
            // on: it votes for no one until `election_min` has passed.
            core.last_leader_contact = Some(now);
        }
        core.configs.commit_to(core.commit);
        core.members_changed();
        if core.is_alone() {
            // A single-node cluster is its own majority: stand at once.
            core.start_campaign(now, false, false);
        } else {
            core.reset_deadline(now);
        }
        core
    }

    /// The same core deciding with other rules (tests of the tests only).
    #[doc(hidden)]
    pub fn with_rules(mut self, rules: Rules) -> Self {
        self.rules = rules;
        self
    }

    /// Handles one input at `now`; the actions it causes wait in [`Core::take_actions`].
    pub fn step(&mut self, now: Instant, input: Input) {
        match input {
            Input::Tick => self.tick(now),
            Input::VoteRequest { token, request } => self.on_vote_request(now, token, request),
            Input::VoteResponse { from, request, response } => self.on_vote_response(now, from, request, response),
            Input::AppendRequest { token, request } => self.on_append_request(now, token, request),
            Input::AppendStored { ticket, result } => self.on_append_stored(now, ticket, result),
            Input::InstallRequest { token, request } => self.on_install_request(now, token, request),
            Input::InstallStored { ticket, result } => self.on_install_stored(now, ticket, result),
            Input::HardStateSaved { ticket, result } => self.on_hard_state_saved(now, ticket, result),
            Input::LocalAppended { term, result } => self.on_local_appended(now, term, result),
            Input::Flush => self.flush(),
            Input::ReadRound => {
                let lease = self.timing.lease.is_some();
                if let Some(lead) = self.lead.as_mut() {
                    lead.round += 1;
                    lead.round_scheduled = false;
                    if lease {
                        lead.issued.push_back((lead.round, now));
                    }
                }
                self.broadcast();
                self.serve_reads(now);
            }
            Input::PeerProgress { peer, term, acked_round, match_index, commit, lease_ask, lease_dropped } => {
                let report = PeerReport { peer, term, acked_round, match_index, commit, lease_ask, lease_dropped };
                self.on_peer_progress(now, report)
            }
            Input::HigherTerm { peer, term } => {
                if term > self.term {
                    tracing::info!(id = self.id, term = self.term, peer, peer_term = term, "peer has a higher term");
                    self.become_follower(now, term, None);
                    self.persist();
                }
            }
            Input::PeerDisconnected { peer } => self.on_peer_disconnected(now, peer),
            Input::ReadIndex { token } => self.on_read_index(now, token),
            Input::TimeoutNow { from, term } => {
                // A view of the members that lags the log cannot say whether this node votes:
                // the campaign then waits for it.
                let may_vote = self.is_voter() || !self.appends_to_follow.is_empty();
                if term == self.term && self.role == Role::Follower && self.leader == Some(from) && may_vote {
                    tracing::info!(id = self.id, term, leader = from, "leadership handed over; standing now");
                    self.start_campaign(now, false, true);
                }
            }
        }
    }

    /// Hands leadership to `target`, or to the voter with the most of the log: once it has
    /// every entry it is told to stand (TimeoutNow), and its election unseats this leader.
    /// Given up after an election timeout. The caller holds new writes meanwhile, so the
    /// target can catch up. Answers the target.
    pub fn transfer_leadership(&mut self, now: Instant, target: Option<NodeId>) -> Result<NodeId, ApiError> {
        self.check_can_propose()?;
        let members = self.configs.latest().clone();
        let Some(lead) = self.lead.as_mut() else { return Err(ApiError::NotLeader { node: self.id, leader: None }) };
        let target = match target {
            Some(t) if t == self.id => return Err(ApiError::BadRequest(format!("node {t} leads already"))),
            Some(t) if !members.is_voter(t) => {
                return Err(ApiError::BadRequest(format!("node {t} is not a voter: only a voter can lead")));
            }
            Some(t) => t,
            None => members
                .voters
                .keys()
                .copied()
                .filter(|&v| v != self.id)
                .max_by_key(|v| {
                    let live = lead
                        .last_ack
                        .get(v)
                        .is_some_and(|t| now.saturating_duration_since(*t) < self.timing.election_max);
                    (live, lead.match_index.get(v).copied())
                })
                .ok_or_else(|| ApiError::BadRequest("no other voter to hand leadership to".into()))?,
        };
        tracing::info!(id = self.id, term = self.term, target, "transferring leadership");
        lead.transfer = Some(Transfer { target, deadline: now + self.timing.election_max, sent: false });
        // The target's election skips the voters' wait for this leader's silence (it was
        // asked for), so no lease may be relied on from now on in this term.
        // Nor is a follower's lease granted: each holder is told to drop its lease, and
        // TimeoutNow waits until every one has answered that it did, or its lease ran out.
        lead.lease_revoked = true;
        lead.lease_until = None;
        lead.asks.clear();
        for (&peer, _) in lead.holders.iter().filter(|(_, until)| **until > now) {
            self.actions.push(Action::SendLease { peer, word: LeaseWord::Revoke });
        }
        self.try_hand_over(now);
        Ok(target)
    }

    /// Whether the current term began with a leader handing over (rather than losing office):
    /// requests passed on to the old leader are still answered.
    pub fn handed_over(&self) -> bool {
        self.handover_term == Some(self.term)
    }

    /// The voter leadership is being handed to, while a transfer is under way.
    pub fn transferring(&self) -> Option<NodeId> {
        self.lead.as_ref().and_then(|l| l.transfer.as_ref()).map(|t| t.target)
    }

    /// Sends TimeoutNow once the target holds every entry.
    fn try_hand_over(&mut self, now: Instant) {
        let last = self.last_log.index;
        let term = self.term;
        let Some(lead) = self.lead.as_mut() else { return };
        let Some(t) = lead.transfer.as_mut() else { return };
        // A follower's lease must have run out first: the target's election does not wait.
        let leases_out = lead.holders.values().all(|&until| until <= now);
        if !t.sent && leases_out && lead.match_index.get(&t.target).is_some_and(|&m| m >= last) {
            t.sent = true;
            self.actions.push(Action::SendTimeoutNow { to: t.target, term });
        }
    }

    /// Stamps a client's command with term and index, for the log; refused unless leading.
    pub fn propose(&mut self, payload: Payload) -> Result<u64, ApiError> {
        self.check_can_propose()?;
        if matches!(payload, Payload::Config(_)) {
            return Err(ApiError::BadRequest("configurations change only through propose_change".into()));
        }
        Ok(self.stamp(payload))
    }

    fn check_can_propose(&self) -> Result<(), ApiError> {
        if self.storage_failed {
            return Err(ApiError::Unavailable("log storage failed".into()));
        }
        if self.role != Role::Leader {
            return Err(ApiError::NotLeader { node: self.id, leader: self.leader });
        }
        if let Some(target) = self.transferring() {
            // §3.10: no new entries while the target catches up; it leads in a moment.
            return Err(ApiError::NotLeader { node: self.id, leader: Some(target) });
        }
        Ok(())
    }

    /// Stamps a configuration change, in effect at once; answers the index of its entry. One
    /// at a time, and only once this leader has committed an entry of its own term (so no
    /// change of an earlier leader's, unknown to it, may be pending). A learner is promoted
    /// only within [`PROMOTE_MAX_LAG`] entries of the leader's log.
    pub fn propose_change(&mut self, now: Instant, change: MemberChange) -> Result<u64, ApiError> {
        self.check_can_propose()?;
        let Some(lead) = &self.lead else { return Err(ApiError::NotLeader { node: self.id, leader: self.leader }) };
        if self.commit < lead.term_start {
            return Err(ApiError::ChangeInProgress(format!(
                "leader {} has not committed an entry of its term {} yet; retry shortly",
                self.id, self.term
            )));
        }
        if self.configs.pending(self.commit) {
            return Err(ApiError::ChangeInProgress(format!(
                "the configuration change at index {} is not committed yet; one change at a time",
                self.configs.latest_index()
            )));
        }
        if let MemberChange::Promote { id } = change
            && self.configs.latest().learners.contains_key(&id)
        {
            self.check_caught_up(now, id)?;
        }
        let next = self.configs.latest().changed(&change).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        tracing::info!(id = self.id, term = self.term, ?change, "configuration change");
        let index = self.stamp(Payload::Config(next.clone()));
        self.configs.insert(index, Arc::new(next));
        self.members_changed();
        self.sync_replication(now);
        Ok(index)
    }

    /// Whether learner `id` is close enough to the leader's log to become a voter.
    fn check_caught_up(&self, now: Instant, id: NodeId) -> Result<(), ApiError> {
        let last = self.last_log.index;
        match self.peer_view(now, id) {
            // It must have acknowledged entries in this term, not merely be new.
            Some(v) if v.match_index == 0 => Err(ApiError::BadRequest(format!(
                "learner {id} has not acknowledged any entry from this leader yet; it cannot be promoted until it does"
            ))),
            Some(v) if v.alive && last.saturating_sub(v.match_index) <= PROMOTE_MAX_LAG => Ok(()),
            Some(v) if v.alive => Err(ApiError::BadRequest(format!(
                "learner {id} is {} entries behind the leader (at most {PROMOTE_MAX_LAG}); retry once it has caught up",
                last - v.match_index
            ))),
            _ => Err(ApiError::BadRequest(format!(
                "learner {id} has not answered the leader lately; it cannot be promoted until it does"
            ))),
        }
    }

    /// The actions decided so far, oldest first.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// When the core next wants an [`Input::Tick`]: the election deadline, or on the leader the
    /// next check-quorum.
    pub fn next_wakeup(&self) -> Instant {
        match &self.lead {
            Some(lead) => {
                let at = match &lead.transfer {
                    Some(t) => lead.next_quorum_check.min(t.deadline),
                    None => lead.next_quorum_check,
                };
                // A follower's lease running out may let more be seen, or a transfer go on.
                lead.holders.values().fold(at, |at, &until| at.min(until))
            }
            None => self.deadline,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The role in the current term.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The vote in the current term.
    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }

    /// The leader this node follows (itself when leading), if it knows one.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// What a lease lets readers take without asking the core, and until when. On the
    /// leader: what every node may see, until half the lease is gone (past that, a read
    /// through the core renews it); `None` before this term's no-op is committed or once a
    /// transfer began. On a follower holding a lease from the leader it follows: its commit
    /// index (never below the lease's floor), until the lease runs out.
    pub fn lease_grant(&self) -> Option<(Instant, u64)> {
        let lease = self.timing.lease?;
        let Some(lead) = self.lead.as_ref() else {
            let l = self.follower_lease?;
            let holds = self.role == Role::Follower && l.term == self.term && self.leader == Some(l.leader);
            return holds.then_some((l.until, self.commit.max(l.floor)));
        };
        let until = lead.lease_until?;
        if lead.lease_revoked || self.commit < lead.term_start {
            return None;
        }
        Some((until - lease / 2, self.visible))
    }

    /// How many read indexes this node answered from a lease, without a round.
    pub fn lease_reads(&self) -> u64 {
        self.lease_reads
    }

    /// The newest read round this leader issued (0 when it does not lead).
    pub fn read_round(&self) -> u64 {
        self.lead.as_ref().map_or(0, |l| l.round)
    }

    /// The commit index as this node knows it.
    pub fn commit(&self) -> u64 {
        self.commit
    }

    /// The last log entry as this node knows it.
    pub fn last_log(&self) -> LogId {
        self.last_log
    }

    /// Whether the log storage failed (the node then refuses writes and votes).
    pub fn storage_failed(&self) -> bool {
        self.storage_failed
    }

    /// The configuration in effect.
    pub fn members(&self) -> &Arc<Members> {
        self.configs.latest()
    }

    /// The configurations this node's log holds.
    pub fn member_log(&self) -> &MemberLog {
        &self.configs
    }

    /// On the leader, what it knows of `peer`.
    pub fn peer_view(&self, now: Instant, peer: NodeId) -> Option<PeerView> {
        let lead = self.lead.as_ref()?;
        let match_index = lead.match_index.get(&peer).copied()?;
        let alive =
            lead.last_ack.get(&peer).is_some_and(|t| now.saturating_duration_since(*t) < self.timing.election_max);
        Some(PeerView { match_index, alive })
    }

    /// The only voter: its own majority.
    fn is_alone(&self) -> bool {
        let voters = &self.configs.latest().voters;
        voters.len() == 1 && voters.contains_key(&self.id)
    }

    fn is_voter(&self) -> bool {
        self.configs.latest().is_voter(self.id)
    }

    /// Every node to keep in touch with, bar this one.
    fn peers(&self) -> BTreeSet<NodeId> {
        let mut ids = self.configs.all_members();
        ids.remove(&self.id);
        ids
    }

    fn members_changed(&mut self) {
        let members = self.configs.latest().clone();
        let peers = self.peers();
        self.actions.push(Action::MembersChanged { members, peers });
    }

    /// On the leader: a replicator for each peer, and none for a node no longer one.
    fn sync_replication(&mut self, now: Instant) {
        let peers = self.peers();
        let next_index = self.last_log.index;
        let Some(lead) = self.lead.as_mut() else { return };
        let gone: Vec<NodeId> = lead.match_index.keys().copied().filter(|p| !peers.contains(p)).collect();
        for peer in gone {
            lead.match_index.remove(&peer);
            lead.last_ack.remove(&peer);
            lead.acked_round.remove(&peer);
            lead.asks.remove(&peer);
            self.actions.push(Action::StopPeer { peer });
        }
        let new: Vec<NodeId> = peers.iter().copied().filter(|p| !lead.match_index.contains_key(p)).collect();
        if new.is_empty() {
            return;
        }
        for &peer in &new {
            lead.match_index.insert(peer, 0);
            lead.last_ack.insert(peer, now);
            lead.acked_round.insert(peer, 0);
        }
        self.actions.push(Action::StartReplication { term: self.term, next_index, peers: new });
        self.broadcast();
    }

    /// The commit index moved to `self.commit`: a configuration may have committed. A leader
    /// no longer among the voters steps down once its removal is committed (§4.2.2).
    fn on_commit_moved(&mut self, now: Instant) {
        // Appends not yet followed may still replace configurations after their `prev`:
        // only those at or below it are settled.
        let settled = self.appends_to_follow.values().map(|a| a.prev_index).min().unwrap_or(u64::MAX);
        if !self.configs.commit_to(self.commit.min(settled)) {
            return;
        }
        self.members_changed();
        if self.lead.is_none() {
            return;
        }
        self.sync_replication(now);
        if !self.is_voter() {
            tracing::info!(id = self.id, term = self.term, "removed from the voters; stepping down");
            self.become_follower(now, self.term, None);
            return;
        }
        self.maybe_promote(now);
    }

    /// On the leader: promotes a learner added as a voter once it holds every committed entry
    /// and is within [`PROMOTE_MAX_LAG`] of the leader.
    fn maybe_promote(&mut self, now: Instant) {
        let Some(lead) = &self.lead else { return };
        if self.commit < lead.term_start || self.configs.pending(self.commit) {
            return;
        }
        let ready = self.configs.latest().promoting.iter().copied().find(|id| {
            lead.match_index.get(id).is_some_and(|&m| m >= self.commit && m > 0)
                && self.check_caught_up(now, *id).is_ok()
        });
        if let Some(id) = ready
            && let Err(e) = self.propose_change(now, MemberChange::Promote { id })
        {
            tracing::warn!(id = self.id, learner = id, error = %e, "cannot promote");
        }
    }

    fn random_timeout(&mut self) -> Duration {
        let min = self.timing.election_min.as_millis() as u64;
        let max = self.timing.election_max.as_millis() as u64;
        Duration::from_millis(self.rng.random_range(min..=max.max(min)))
    }

    fn reset_deadline(&mut self, now: Instant) {
        self.deadline = now + self.random_timeout();
    }

    fn leader_is_live(&self, now: Instant) -> bool {
        self.role == Role::Leader
            || self.last_leader_contact.is_some_and(|t| now.saturating_duration_since(t) < self.timing.election_min)
    }

    fn tick(&mut self, now: Instant) {
        if let Some(lead) = self.lead.as_mut() {
            if lead.transfer.as_ref().is_some_and(|t| now >= t.deadline) {
                tracing::warn!(id = self.id, term = self.term, "leadership transfer timed out; leading on");
                // No target was told to stand, so no election skips the voters' wait: leases
                // may be granted again.
                if lead.transfer.as_ref().is_some_and(|t| !t.sent) {
                    lead.lease_revoked = false;
                }
                lead.transfer = None;
                self.actions.push(Action::TransferEnded { handed_over: false });
            }
            if now >= lead.next_quorum_check {
                self.check_quorum(now);
            }
            if self.lead.as_ref().is_some_and(|l| l.holders.values().any(|&until| until <= now)) {
                if self.advance_visible(now) {
                    self.broadcast();
                }
                self.try_hand_over(now);
            }
        } else if now >= self.deadline {
            if self.is_voter() || !self.appends_to_follow.is_empty() {
                self.start_campaign(now, true, false);
            } else {
                // A learner, a removed node or one not yet added never stands (§4.2.3).
                self.campaign = None;
                self.reset_deadline(now);
            }
        }
    }

    /// Steps down (or stays) as follower in `term`; the caller persists if the term moved.
    fn become_follower(&mut self, now: Instant, term: u64, leader: Option<NodeId>) {
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
        if let Some(lead) = self.lead.take() {
            self.actions.push(Action::LeadershipChanged { term: led, is_leader: false });
            if self.timing.lease.is_some() {
                // It counted itself in the majorities that confirmed its rounds, and so the
                // leases granted on them (a follower's outlives its leader's office): it votes
                // for no one until `election_min` has passed, as every voter that confirmed
                // a round does (found by review).
                self.last_leader_contact = Some(now);
            }
            if let Some(t) = &lead.transfer {
                // Handed over when the target was told to stand and a later term began;
                // any other step-down (lost quorum, storage) is a failed transfer.
                let handed_over = t.sent && self.term > led;
                self.actions.push(Action::TransferEnded { handed_over });
            }
            if !lead.pending.is_empty() {
                // Entries already stamped go to the log anyway, so the view of the log stays
                // true; they are uncommitted and the next leader may replace them.
                self.actions.push(Action::AppendLocal { term: led, entries: lead.pending, report: false });
            }
            self.actions.push(Action::StopReplication);
            for read in lead.reads {
                let result = Err(ApiError::NotLeader { node: self.id, leader });
                self.actions.push(Action::AnswerRead { token: read.token, result });
            }
            // Waiting writes stay with the caller: their entries may still commit under the
            // next leader, and what is applied at their indexes tells each one what happened.
        }
        self.reset_deadline(now);
    }

    /// Asks for term and vote to be made durable.
    fn persist(&mut self) -> u64 {
        self.seq += 1;
        let ticket = SaveTicket { seq: self.seq, term: self.term, voted_for: self.voted_for };
        self.actions.push(Action::SaveHardState { ticket });
        self.seq
    }

    /// Takes `LogStore`'s word for the last entry, unless an answer to a later request came
    /// first. A leader stamps its own entries and ignores these.
    fn update_last_log(&mut self, seq: u64, last: LogId) {
        if seq > self.seq_seen {
            self.seq_seen = seq;
            if self.role != Role::Leader {
                self.last_log = last;
            }
        }
    }

    fn on_hard_state_saved(&mut self, now: Instant, ticket: SaveTicket, result: Option<Result<LogId, StorageError>>) {
        let ok = match result {
            Some(Ok(last)) => {
                self.update_last_log(ticket.seq, last);
                // Answers may come out of order; within a term a vote only appears.
                let (t, v) = self.durable_vote;
                if ticket.term > t || (ticket.term == t && v.is_none() && ticket.voted_for.is_some()) {
                    self.durable_vote = (ticket.term, ticket.voted_for);
                }
                true
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot persist term and vote");
                self.storage_failed = true;
                false
            }
            None => {
                tracing::error!("log store unreachable");
                false
            }
        };
        // Votes that waited for this write.
        let mut k = 0;
        while k < self.votes_to_answer.len() {
            if self.votes_to_answer[k].seq == ticket.seq {
                let v = self.votes_to_answer.swap_remove(k);
                let response = VoteResponse { term: v.response.term, granted: v.response.granted && ok };
                self.actions.push(Action::AnswerVote { token: v.token, response });
            } else {
                k += 1;
            }
        }
        // Our own candidacy, once our vote for ourselves is durable (Figure 2).
        let standing = self.campaign.as_ref().filter(|c| !c.pre_vote && c.term == ticket.term).map(|c| c.transfer);
        if let Some(transfer) = standing
            && ok
            && self.is_voter()
            && self.role == Role::Candidate
            && self.term == ticket.term
            && ticket.voted_for == Some(self.id)
        {
            if self.is_alone() {
                self.become_leader(now);
            } else {
                self.request_votes(ticket.term, false, transfer);
            }
        }
    }

    /// Starts a pre-vote (or, after one succeeds, a real election; `transfer`: one the leader
    /// asked for).
    fn start_campaign(&mut self, now: Instant, pre_vote: bool, transfer: bool) {
        // The deadline moves first: a node that may not stand must not spin on its timer.
        self.reset_deadline(now);
        if !self.appends_to_follow.is_empty() {
            // `LogStore` has appended entries whose configurations this core has not seen:
            // who the voters are is known only once they are in (in moments).
            let pending = self.appends_to_follow.len();
            let oldest = self.appends_to_follow.keys().next().copied();
            tracing::debug!(id = self.id, pending, ?oldest, "campaign waits for appends to be stored");
            self.campaign_due = Some(DueCampaign { pre_vote, transfer, term: self.term, leader: self.leader });
            return;
        }
        if self.storage_failed || !self.is_voter() {
            return;
        }
        self.leader = None;
        if pre_vote && !self.is_alone() {
            let term = self.term + 1;
            tracing::debug!(id = self.id, term, "starting pre-vote");
            self.campaign =
                Some(Campaign { term, pre_vote: true, transfer: false, granted: BTreeSet::from([self.id]) });
            self.request_votes(term, true, false);
            return;
        }
        self.term += 1;
        self.voted_for = Some(self.id);
        self.role = Role::Candidate;
        let term = self.term;
        tracing::info!(id = self.id, term, "starting election");
        self.campaign = Some(Campaign { term, pre_vote: false, transfer, granted: BTreeSet::from([self.id]) });
        if transfer {
            self.handover_term = Some(term);
        }
        self.persist();
    }

    fn request_votes(&mut self, term: u64, pre_vote: bool, transfer: bool) {
        let request = VoteRequest { term, candidate: self.id, last_log: self.last_log, pre_vote, transfer };
        let me = self.id;
        let voters: Vec<NodeId> = self.configs.latest().voters.keys().copied().filter(|&v| v != me).collect();
        for to in voters {
            self.actions.push(Action::SendVote { to, request });
        }
    }

    fn on_vote_response(&mut self, now: Instant, from: NodeId, request: VoteRequest, v: VoteResponse) {
        if v.term > self.term && !v.granted {
            self.become_follower(now, v.term, None);
            self.persist();
            return;
        }
        // Only the voters of the configuration in effect count (a learner answers too).
        if !self.configs.latest().is_voter(from) {
            return;
        }
        let quorum = self.configs.latest().quorum();
        let Some(c) = self.campaign.as_mut() else { return };
        if c.term != request.term || c.pre_vote != request.pre_vote || !v.granted {
            return;
        }
        c.granted.insert(from);
        // Grants count only from the voters in effect now: a configuration appended during
        // the campaign may have removed a granter, or this node itself.
        let latest = self.configs.latest().clone();
        if !latest.is_voter(self.id) || c.granted.iter().filter(|g| latest.is_voter(**g)).count() < quorum {
            return;
        }
        if request.pre_vote {
            self.start_campaign(now, false, false);
        } else if self.role == Role::Candidate && self.term == request.term {
            self.become_leader(now);
        }
    }

    fn become_leader(&mut self, now: Instant) {
        tracing::info!(id = self.id, term = self.term, last_index = self.last_log.index, "became leader");
        self.actions.push(Action::LeadershipChanged { term: self.term, is_leader: true });
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.campaign = None;
        let term_start = self.last_log.index + 1;
        let peers: Vec<NodeId> = self.peers().into_iter().collect();
        self.actions.push(Action::StartReplication { term: self.term, next_index: term_start, peers: peers.clone() });
        self.lead = Some(Lead {
            match_index: peers.iter().map(|&p| (p, 0)).collect(),
            last_ack: peers.iter().map(|&p| (p, now)).collect(),
            acked_round: peers.iter().map(|&p| (p, 0)).collect(),
            self_durable: 0,
            term_start,
            pending: Vec::new(),
            flush_scheduled: false,
            round: 0,
            round_scheduled: false,
            issued: VecDeque::new(),
            lease_until: None,
            lease_revoked: false,
            reads: VecDeque::new(),
            peer_commit: BTreeMap::new(),
            asks: BTreeMap::new(),
            holders: BTreeMap::new(),
            granted: BTreeMap::new(),
            next_quorum_check: now + self.timing.election_max,
            transfer: None,
        });
        // The no-op lets this leader commit what earlier terms left (§5.4.2) and serve reads.
        self.stamp(Payload::Blank);
        if self.configs.latest_index() == 0 {
            // The first leader of a new cluster (or of a log older than logged
            // configurations) logs the configuration it started from, so every node, and any
            // added later, reads the members from the log.
            let members = self.configs.latest().clone();
            let index = self.stamp(Payload::Config((*members).clone()));
            self.configs.insert(index, members);
            self.members_changed();
        }
    }

    /// Steps down when a majority has not answered for a whole election timeout, so a leader
    /// cut off from the cluster stops taking writes it cannot commit (thesis §6.2).
    fn check_quorum(&mut self, now: Instant) {
        let window = self.timing.election_max;
        let members = self.configs.latest().clone();
        let me = self.id;
        let Some(lead) = self.lead.as_mut() else { return };
        lead.next_quorum_check = now + window;
        let heard =
            |v: &NodeId| *v == me || lead.last_ack.get(v).is_some_and(|t| now.saturating_duration_since(*t) < window);
        let alive = members.voters.keys().filter(|v| heard(v)).count();
        let quorum = members.quorum();
        if alive < quorum {
            tracing::warn!(id = self.id, term = self.term, alive, "lost contact with a majority; stepping down");
            self.become_follower(now, self.term, None);
        }
    }

    /// Stamps an entry with term and index and queues it for the log.
    fn stamp(&mut self, payload: Payload) -> u64 {
        let index = self.last_log.index + 1;
        self.last_log = LogId::new(self.term, index);
        let entry = Arc::new(Entry { term: self.term, index, payload });
        if let Some(lead) = self.lead.as_mut() {
            lead.pending.push(entry);
            if !lead.flush_scheduled {
                lead.flush_scheduled = true;
                self.actions.push(Action::ScheduleFlush);
            }
        }
        index
    }

    fn flush(&mut self) {
        let Some(lead) = self.lead.as_mut() else { return };
        lead.flush_scheduled = false;
        if lead.pending.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut lead.pending);
        self.actions.push(Action::AppendLocal { term: self.term, entries, report: true });
        self.broadcast();
    }

    fn on_local_appended(&mut self, now: Instant, term: u64, result: Option<Result<LogId, StorageError>>) {
        match result {
            Some(Ok(last)) => {
                if self.term == term
                    && let Some(lead) = self.lead.as_mut()
                {
                    lead.self_durable = lead.self_durable.max(last.index);
                    self.advance_commit(now);
                }
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot append to the log; stepping down");
                self.storage_failed = true;
                let term = self.term;
                self.become_follower(now, term, None);
            }
            None => tracing::error!("log store unreachable"),
        }
    }

    fn broadcast(&mut self) {
        if let Some(lead) = &self.lead {
            self.actions.push(Action::Replicate {
                last_index: self.last_log.index,
                commit: self.commit,
                visible: self.visible,
                round: lead.round,
            });
        }
    }

    /// The commit index: the highest index durable on a majority of the voters in effect
    /// (the leader among them unless it is removing itself), counting entries of this term.
    /// Answers whether it moved (and was broadcast).
    fn advance_commit(&mut self, now: Instant) -> bool {
        let Some(lead) = &self.lead else { return false };
        let durable = per_voter(self.configs.latest(), self.id, lead.self_durable, &lead.match_index);
        if let Some(c) = (self.rules.advance_commit)(self.commit, &durable, lead.term_start) {
            self.commit = c;
            self.advance_visible(now);
            self.broadcast();
            self.serve_reads(now);
            self.on_commit_moved(now);
            return true;
        }
        false
    }

    /// How far committed entries may be applied and seen, on the leader: the commit index,
    /// but no further than every follower holding a lease is known to have taken as
    /// committed, so a read answered from a follower's lease misses nothing another node has
    /// shown or acknowledged. Drops the holders whose lease ran out. Answers whether it moved.
    fn advance_visible(&mut self, now: Instant) -> bool {
        let Some(lead) = self.lead.as_mut() else { return false };
        lead.holders.retain(|_, until| *until > now);
        let held = lead.holders.keys().map(|p| lead.peer_commit.get(p).copied().unwrap_or(0)).min();
        let visible = held.map_or(self.commit, |h| h.min(self.commit));
        let moved = visible > self.visible;
        self.visible = self.visible.max(visible);
        // Even if it did not move: it may stand above the commit index (learnt as a follower,
        // or at a restart), and then what the commit index reached is released now.
        self.release();
        moved
    }

    /// Tells `LogStore` to apply what is committed and may be seen.
    fn release(&mut self) {
        let to = self.commit.min(self.visible);
        if to > self.released {
            self.released = to;
            self.actions.push(Action::CommitTo(to));
        }
    }

    /// Grants the follower leases whose asks arrived before a round a majority has since
    /// confirmed was issued: no other leader can be elected before `election_min` has passed
    /// since that round on a majority's clocks, and the follower counts its lease from before
    /// it asked. Only once this term's no-op is committed (the floor then covers every entry
    /// an earlier leader acknowledged), and never once a transfer began.
    fn grant_leases(&mut self, now: Instant, confirmed: u64) {
        let (Some(lease), commit) = (self.timing.lease, self.commit) else { return };
        let Some(lead) = self.lead.as_mut() else { return };
        if lead.lease_revoked || commit < lead.term_start {
            return;
        }
        let ready: Vec<NodeId> = lead
            .asks
            .iter()
            .filter(|(p, a)| {
                // Not to a node this leader no longer replicates to (removed): it would hold
                // back what may be seen, for nothing.
                a.round <= confirmed
                    && lead.match_index.contains_key(p)
                    && lead.peer_commit.get(p).is_some_and(|&c| c >= a.commit)
            })
            .map(|(&p, _)| p)
            .collect();
        for peer in ready {
            let Some(ask) = lead.asks.remove(&peer) else { continue };
            lead.granted.insert(peer, ask.id);
            let until = (ask.received + lease.mul_f64(HOLDER_SHARE)).max(now);
            let held = lead.holders.entry(peer).or_insert(until);
            *held = (*held).max(until);
            let word = LeaseWord::Grant(LeaseGrant { ask: ask.id, floor: commit });
            self.actions.push(Action::SendLease { peer, word });
        }
    }

    /// Answers the reads whose round a majority confirmed, once the commit index has reached
    /// their read index.
    fn serve_reads(&mut self, now: Instant) {
        let commit = self.commit;
        let lease = self.timing.lease;
        let Some(lead) = self.lead.as_mut() else { return };
        let rounds = per_voter(self.configs.latest(), self.id, lead.round, &lead.acked_round);
        let confirmed = majority_value(&rounds);
        // A majority heard from this leader after the newest confirmed round was issued: none
        // of them votes for another before `election_min` has passed since, on its clock.
        while let Some(&(round, issued)) = lead.issued.front() {
            if round > confirmed {
                break;
            }
            lead.issued.pop_front();
            if let Some(lease) = lease
                && !lead.lease_revoked
            {
                lead.lease_until = lead.lease_until.max(Some(issued + lease));
            }
        }
        while let Some(r) = lead.reads.front() {
            if r.round > confirmed || r.read_index > commit {
                break;
            }
            if let Some(r) = lead.reads.pop_front() {
                self.actions.push(Action::AnswerRead { token: r.token, result: Ok(r.read_index) });
            }
        }
        self.grant_leases(now, confirmed);
    }

    fn on_read_index(&mut self, now: Instant, token: u64) {
        let commit = self.commit;
        let lease = self.timing.lease;
        let Some(lead) = self.lead.as_mut() else {
            let result = Err(ApiError::NotLeader { node: self.id, leader: self.leader });
            self.actions.push(Action::AnswerRead { token, result });
            return;
        };
        // The read must see every write committed before it arrived, and the no-op of this
        // term, which may commit entries of earlier terms this leader does not yet know are
        // committed (§6.4).
        let read_index = commit.max(lead.term_start);
        // Under a lease no other leader can have been elected yet: what every node may see is
        // the read index (nothing beyond it was shown or acknowledged anywhere), once this
        // term's no-op is committed (TiKV's lease read).
        if let (Some(lease), Some(until)) = (lease, lead.lease_until)
            && now < until
            && commit >= lead.term_start
        {
            self.actions.push(Action::AnswerRead { token, result: Ok(self.visible) });
            self.lease_reads += 1;
            // Renewed ahead of its end while reads come, so they never wait for a round.
            if until.saturating_duration_since(now) < lease / 2 && !lead.round_scheduled {
                lead.round_scheduled = true;
                self.actions.push(Action::ScheduleReadRound);
            }
            return;
        }
        lead.reads.push_back(PendingRead { token, round: lead.round + 1, read_index });
        if !lead.round_scheduled {
            lead.round_scheduled = true;
            self.actions.push(Action::ScheduleReadRound);
        }
    }

    fn on_peer_progress(&mut self, now: Instant, report: PeerReport) {
        let PeerReport { peer, term, acked_round, match_index, commit, lease_ask, lease_dropped } = report;
        if term != self.term {
            return;
        }
        let (lease, leader_commit) = (self.timing.lease, self.commit);
        let Some(lead) = self.lead.as_mut() else { return };
        if !lead.match_index.contains_key(&peer) {
            return;
        }
        lead.last_ack.insert(peer, now);
        let r = lead.acked_round.entry(peer).or_default();
        *r = (*r).max(acked_round);
        if let Some(c) = commit {
            let e = lead.peer_commit.entry(peer).or_default();
            *e = (*e).max(c);
        }
        if let (Some(_), Some(id)) = (lease, lease_ask)
            && !lead.lease_revoked
            && lead.asks.get(&peer).is_none_or(|a| a.id != id)
            && lead.granted.get(&peer) != Some(&id)
        {
            // Granted once a round issued from now on is confirmed.
            lead.asks.insert(peer, LeaseAsk { id, received: now, round: lead.round + 1, commit: leader_commit });
            if !lead.round_scheduled {
                lead.round_scheduled = true;
                self.actions.push(Action::ScheduleReadRound);
            }
        }
        // What may be seen moved with the peer's commit index: the next requests say so
        // (a moved commit index broadcasts it itself).
        if lease_dropped && lead.lease_revoked {
            lead.holders.remove(&peer);
        }
        let mut moved = commit.is_some() && self.advance_visible(now);
        if let Some(m) = match_index {
            let Some(lead) = self.lead.as_mut() else { return };
            let e = lead.match_index.entry(peer).or_default();
            *e = (*e).max(m);
            if self.advance_commit(now) {
                moved = false;
            }
            if self.configs.latest().promoting.contains(&peer) {
                self.maybe_promote(now);
            }
            self.try_hand_over(now);
        }
        if moved {
            self.broadcast();
        }
        if lease_dropped {
            self.try_hand_over(now);
        }
        self.serve_reads(now);
    }

    /// The leader's connection to us closed: stop vouching for it (pre-votes are granted
    /// again) and move the election deadline close, randomized so the survivors do not split
    /// the vote. A live leader that merely reconnects keeps its followers: its next heartbeat
    /// resets both. Timing only; no safety rule depends on it.
    fn on_peer_disconnected(&mut self, now: Instant, peer: NodeId) {
        if self.role != Role::Follower || self.leader != Some(peer) {
            return;
        }
        let half = self.timing.election_min.as_millis() as u64 / 2;
        let mut soon = now + Duration::from_millis(self.rng.random_range(0..=half));
        if self.timing.lease.is_some() {
            // The leader may hold a lease on this node's word: keep it until `election_min`
            // has passed since the leader was last heard, connection or not.
            if let Some(heard) = self.last_leader_contact {
                soon = soon.max(heard + self.timing.election_min);
            }
        } else {
            self.last_leader_contact = None;
        }
        if soon < self.deadline {
            tracing::info!(id = self.id, leader = peer, "leader connection closed; election soon");
            self.deadline = soon;
        }
    }

    fn on_vote_request(&mut self, now: Instant, token: u64, req: VoteRequest) {
        let candidacy = Candidacy { term: req.term, candidate: req.candidate, last_log: req.last_log };
        if req.pre_vote {
            let voter = VoterState { term: self.term, voted_for: self.voted_for, last_log: self.last_log };
            let granted =
                !self.storage_failed && (self.rules.grant_pre_vote)(voter, candidacy, self.leader_is_live(now));
            tracing::debug!(id = self.id, candidate = req.candidate, term = req.term, granted, "pre-vote");
            let response = VoteResponse { term: self.term, granted };
            self.actions.push(Action::AnswerVote { token, response });
            return;
        }
        let before = (self.term, self.voted_for);
        if req.term > self.term {
            // A live leader keeps its followers, unless it handed over itself.
            if self.leader_is_live(now) && !req.transfer {
                // A live leader keeps its followers (thesis §4.2.3): a disruptive node is ignored.
                let response = VoteResponse { term: self.term, granted: false };
                self.actions.push(Action::AnswerVote { token, response });
                return;
            }
            self.become_follower(now, req.term, None);
            if req.transfer {
                self.handover_term = Some(req.term);
            }
        }
        if self.timing.lease.is_some()
            && self.leader_is_live(now)
            && !req.transfer
            && self.voted_for != Some(req.candidate)
        {
            // In the current term too (this node may have taken it from a refusal of its own
            // old pre-vote, without voting): a leader heard within `election_min` may hold a
            // lease on this node's word (thesis §4.2.3 applies to every request then).
            let response = VoteResponse { term: self.term, granted: false };
            self.actions.push(Action::AnswerVote { token, response });
            return;
        }
        let voter = VoterState { term: self.term, voted_for: self.voted_for, last_log: self.last_log };
        let granted = !self.storage_failed && (self.rules.grant_vote)(voter, candidacy);
        if granted {
            self.voted_for = Some(req.candidate);
            self.reset_deadline(now);
        }
        tracing::info!(id = self.id, candidate = req.candidate, term = req.term, granted, "vote");
        let response = VoteResponse { term: self.term, granted };
        let state = (self.term, self.voted_for);
        if state == before && (!granted || state == self.durable_vote) {
            self.actions.push(Action::AnswerVote { token, response });
            return;
        }
        // Term and vote are durable before the answer leaves (Figure 2).
        let seq = self.persist();
        self.votes_to_answer.push(VoteToAnswer { seq, token, response });
    }

    /// The common part of taking an append or a snapshot chunk from `leader` of `term`:
    /// refused (`false`, to be answered as stale) if the term is old or too many wait for
    /// `LogStore`; otherwise the leader is followed and its contact recorded.
    fn hear_leader(&mut self, now: Instant, term: u64, leader: NodeId) -> bool {
        if term < self.term {
            return false;
        }
        if self.appends_to_follow.len() >= MAX_APPENDS_TO_FOLLOW {
            // `LogStore` is not answering: refuse as unstored, the leader retries later.
            tracing::debug!(
                id = self.id,
                pending = self.appends_to_follow.len(),
                "appends wait for the disk; refusing one"
            );
            return false;
        }
        if term > self.term || self.role != Role::Follower || self.leader != Some(leader) {
            // A newer term is made durable by `LogStore` in the same batch as the entries.
            self.become_follower(now, term, Some(leader));
        }
        self.last_leader_contact = Some(now);
        self.reset_deadline(now);
        // A leader is live: only a handover it asked for still stands.
        self.campaign_due = self.campaign_due.filter(|c| c.transfer);
        true
    }

    fn on_append_request(&mut self, now: Instant, token: u64, req: AppendEntriesRequest) {
        if !self.hear_leader(now, req.term, req.leader) {
            let response = AppendEntriesResponse::new(self.term, AppendOutcome::StaleTerm);
            self.actions.push(Action::AnswerAppend { token, response });
            return;
        }
        self.visible = self.visible.max(req.leader_visible);
        self.release();
        match (self.timing.lease, req.lease, self.lease_ask) {
            (Some(lease), Some(LeaseWord::Grant(grant)), Some((ask, asked))) if grant.ask == ask => {
                // Counted from before the ask left: the round that granted it was issued after.
                self.lease_ask = None;
                let (term, leader, until, floor) = (req.term, req.leader, asked + lease, grant.floor);
                self.follower_lease = Some(FollowerLease { term, leader, until, floor });
            }
            // Dropped before the answer says so (`LeaseShare` is published before it leaves).
            (_, Some(LeaseWord::Revoke), _) => {
                self.follower_lease = None;
                self.lease_ask = None;
            }
            _ => {}
        }
        self.seq += 1;
        let configs: Vec<(u64, Arc<Members>)> = req
            .entries
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::Config(m) => Some((e.index, Arc::new(m.clone()))),
                _ => None,
            })
            .collect();
        let prev_index = req.prev.index;
        self.appends_to_follow.insert(self.seq, AppendToFollow { prev_index, configs, stored: None });
        let ticket = AppendTicket {
            token,
            seq: self.seq,
            term: req.term,
            leader_commit: req.leader_commit,
            prev_index: req.prev.index,
            end: req.prev.index + req.entries.len() as u64,
        };
        self.actions.push(Action::StoreFromLeader { ticket, prev: req.prev, entries: req.entries });
    }

    fn on_append_stored(
        &mut self,
        now: Instant,
        ticket: AppendTicket,
        result: Option<Result<AppendFromLeaderReply, StorageError>>,
    ) {
        self.answer_append_stored(now, ticket, result);
        // Only now, with the reply's log and commit taken in, may a waiting campaign start.
        self.start_due_campaign(now);
    }

    fn answer_append_stored(
        &mut self,
        now: Instant,
        ticket: AppendTicket,
        result: Option<Result<AppendFromLeaderReply, StorageError>>,
    ) {
        let matched = match &result {
            Some(Ok(AppendFromLeaderReply { result: AppendResult::Matched(_), last, .. })) => {
                Some(Stored::Append(ticket, *last))
            }
            _ => None,
        };
        if let Some(a) = self.appends_to_follow.get_mut(&ticket.seq) {
            a.stored = Some(matched);
        }
        self.follow_stored_appends(now);
        let stale = AppendEntriesResponse::new(self.term, AppendOutcome::StaleTerm);
        let reply = match result {
            Some(Ok(r)) => r,
            None => {
                self.actions.push(Action::AnswerAppend { token: ticket.token, response: stale });
                return;
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot store entries from the leader");
                self.storage_failed = true;
                self.actions.push(Action::AnswerAppend { token: ticket.token, response: stale });
                return;
            }
        };
        if reply.durable {
            self.update_last_log(ticket.seq, reply.last);
        }
        if self.term != ticket.term {
            // We moved to a later term (and may have voted on a shorter log) while these
            // entries were being written: acknowledging them now could let the old leader
            // count us for a commit the new one does not have.
            self.actions.push(Action::AnswerAppend { token: ticket.token, response: stale });
            return;
        }
        let term = ticket.term;
        let response = match reply.result {
            AppendResult::Matched(match_index) => {
                let commit = ticket.leader_commit.min(match_index);
                if commit > self.commit {
                    self.commit = commit;
                    self.release();
                    self.on_commit_moved(now);
                }
                let outcome =
                    if reply.durable { AppendOutcome::Success { match_index } } else { AppendOutcome::Heartbeat };
                AppendEntriesResponse { term, outcome, commit: self.commit, lease_ask: self.lease_ask(now) }
            }
            AppendResult::Conflict(c) => {
                AppendEntriesResponse::new(term, AppendOutcome::Conflict { next_index: c.next_index })
            }
            AppendResult::StaleTerm(t) => AppendEntriesResponse::new(t.max(self.term), AppendOutcome::StaleTerm),
        };
        self.actions.push(Action::AnswerAppend { token: ticket.token, response });
    }

    /// The ask for a read lease to send the leader, if this follower wants one
    /// (`read_mode = "lease"`): once less than half of its lease is left. An ask is made anew
    /// once half a lease old, so a lease granted on it is worth having.
    fn lease_ask(&mut self, now: Instant) -> Option<u64> {
        let lease = self.timing.lease?;
        if self.lease_grant().is_some_and(|(until, _)| until > now + lease / 2) {
            return None;
        }
        match self.lease_ask {
            Some((id, asked)) if now < asked + lease / 2 => Some(id),
            _ => {
                let id = self.rng.random();
                self.lease_ask = Some((id, now));
                Some(id)
            }
        }
    }

    fn on_install_request(&mut self, now: Instant, token: u64, req: InstallSnapshotRequest) {
        if !self.hear_leader(now, req.term, req.leader) {
            let response = InstallSnapshotResponse { term: self.term, outcome: InstallOutcome::StaleTerm };
            self.actions.push(Action::AnswerInstall { token, response });
            return;
        }
        self.seq += 1;
        // A chunk that may complete the snapshot replaces every configuration once stored.
        let completes = req.offset.saturating_add(req.data.len() as u64) >= req.size;
        let prev_index = if completes { 0 } else { u64::MAX };
        self.appends_to_follow.insert(self.seq, AppendToFollow { prev_index, configs: Vec::new(), stored: None });
        let ticket = InstallTicket { token, seq: self.seq, term: req.term };
        self.actions.push(Action::StoreSnapshotChunk { ticket, request: req });
    }

    fn on_install_stored(
        &mut self,
        now: Instant,
        ticket: InstallTicket,
        result: Option<Result<InstallReply, StorageError>>,
    ) {
        let installed = match &result {
            Some(Ok(InstallReply::Installed { snapshot, members: Some(members), kept, .. })) => {
                Some(Stored::Install { snapshot: *snapshot, members: Arc::new(members.clone()), kept: *kept })
            }
            _ => None,
        };
        if let Some(a) = self.appends_to_follow.get_mut(&ticket.seq) {
            a.stored = Some(installed);
        }
        if let Some(Ok(InstallReply::Installed { snapshot, last, .. })) = &result {
            self.update_last_log(ticket.seq, *last);
            // A snapshot holds committed entries only, and only what may be seen (the leader's
            // state machines had applied them); the log has applied it already.
            self.commit = self.commit.max(snapshot.index);
            self.visible = self.visible.max(snapshot.index);
            self.released = self.released.max(snapshot.index);
        }
        self.follow_stored_appends(now);
        let stale = InstallSnapshotResponse { term: self.term, outcome: InstallOutcome::StaleTerm };
        let response = match result {
            None => stale,
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot store a snapshot from the leader");
                self.storage_failed = true;
                stale
            }
            // As for appends: an answer from an older term must not count for its leader.
            Some(Ok(_)) if self.term != ticket.term => stale,
            Some(Ok(InstallReply::Accepted(next_offset))) => {
                InstallSnapshotResponse { term: self.term, outcome: InstallOutcome::Accepted { next_offset } }
            }
            Some(Ok(InstallReply::Installed { .. })) => {
                InstallSnapshotResponse { term: self.term, outcome: InstallOutcome::Installed }
            }
            Some(Ok(InstallReply::StaleTerm(t))) => {
                InstallSnapshotResponse { term: t.max(self.term), outcome: InstallOutcome::StaleTerm }
            }
        };
        self.actions.push(Action::AnswerInstall { token: ticket.token, response });
        self.start_due_campaign(now);
    }

    /// Follows the configurations of every stored append whose predecessors are followed
    /// too, in the order `LogStore` applied them.
    fn follow_stored_appends(&mut self, now: Instant) {
        let before = (self.configs.latest_index(), self.configs.latest().clone());
        while let Some(entry) = self.appends_to_follow.first_entry() {
            if entry.get().stored.is_none() {
                break;
            }
            let AppendToFollow { configs, stored, .. } = entry.remove();
            let Some(stored) = stored.flatten() else { continue };
            match stored {
                Stored::Append(ticket, last) => self.follow_configs(ticket, last, configs),
                Stored::Install { snapshot, members, kept } => self.configs.install(snapshot.index, members, kept),
            }
        }
        if (self.configs.latest_index(), self.configs.latest().clone()) != before {
            if !self.is_voter() && self.campaign.take().is_some() && self.role == Role::Candidate {
                // No longer a voter: the campaign ends here.
                self.role = Role::Follower;
            }
            self.members_changed();
        }
        // A configuration followed late may be committed already.
        self.on_commit_moved(now);
    }

    /// Starts the campaign that waited for appends, once all are followed, unless the term
    /// or the leader it was due under has changed since (a handover a deposed leader asked
    /// for must not unseat the next one).
    fn start_due_campaign(&mut self, now: Instant) {
        if !self.appends_to_follow.is_empty() || self.role == Role::Leader {
            return;
        }
        let Some(due) = self.campaign_due.take() else { return };
        if due.term != self.term || due.leader != self.leader {
            tracing::debug!(
                id = self.id,
                term = self.term,
                due_term = due.term,
                "a campaign due under another term or leader is dropped"
            );
            return;
        }
        self.start_campaign(now, due.pre_vote, due.transfer);
    }

    /// An append matched: right after `LogStore` applied it, the log held the request's
    /// entries at `prev_index + 1..=end`, and nothing after `end` unless it ended later at
    /// `last` (no conflict cut it). The configurations follow the log.
    fn follow_configs(&mut self, ticket: AppendTicket, last: LogId, configs: Vec<(u64, Arc<Members>)>) {
        self.configs.remove_range(ticket.prev_index + 1, ticket.end);
        if last.index <= ticket.end {
            self.configs.truncate_from(ticket.end + 1);
        }
        for (index, members) in configs {
            self.configs.insert(index, members);
        }
    }
}
