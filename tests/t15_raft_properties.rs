//! t15: the Raft core (`dister::raft::core::Core`, the very code `Election` runs) stepped in a
//! model cluster under generated faults, with the five safety properties of the Raft paper's
//! Figure 3 checked after every step.
//!
//! Each model node is a real `Core` plus what the actors around it do: a log and hard state
//! that behave as `LogStore`'s (the same `MemLog::plan_append`, the same refusals), and a
//! replicator per peer as `Replicator` keeps it (next index, epochs, optimistic pipelining).
//! The network is a bag of messages that proptest delivers in any order, drops or duplicates,
//! and time moves only when the sequence says so, so pre-vote, a live leader's followers
//! ignoring candidates and check-quorum are all exercised as the core decides them. A node's
//! writes are durable at once, so a crash keeps exactly term, vote and log (and, if the action
//! says so, the lazily persisted commit index, capped to the log as `LogStore::new` does).
//!
//! Membership changes run through the same cases: two spare nodes start empty, as a node
//! started with `--join` or `--no-bootstrap` does, and leaders are asked to add them, promote
//! learners and remove members (themselves too). A restarted node rebuilds its configurations
//! from its log as `Node::start` does. Beyond Figure 3, only voters are elected and a leader
//! holds at most one uncommitted configuration.
//!
//! Alongside the generated runs: a quiet election as a baseline, Figure 8 built by hand, and
//! proof that the checks bite (each fires on a broken state; a mutant commit rule and a
//! mutant vote rule, swapped into the core, are both caught).
//!
//! `DISTER_PROPTEST_CASES` sets the cases per property test (soak runs); `PROPTEST_RNG_SEED`
//! replays a run.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dister::messages::raft::{AppendFromLeaderReply, AppendResult};
use dister::raft::commit::advance_commit;
use dister::raft::core::{Action as Do, AppendTicket, Core, Input, Rules, Timing};
use dister::raft::log::MemLog;
use dister::raft::members::{MemberChange, MemberLog, Members};
use dister::raft::{Entry, HardState, LogId, NodeId, Payload, Role};
use dister::wire::{AppendEntriesRequest, AppendEntriesResponse, AppendOutcome, VoteRequest, VoteResponse};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngAlgorithm, TestCaseError, TestError, TestRunner};

/// Longest generated action sequence: long enough for several elections (each a pre-vote
/// round, then a vote), a conflict and a restart in one case, short enough for 10,000 cases
/// in well under a minute in debug mode.
const MAX_STEPS: usize = 400;

/// Nodes beyond the founding voters in the generated runs, waiting to be added.
const SPARES: usize = 2;

/// Messages in flight beyond this are lost, as a full socket buffer would lose them.
const NETWORK_CAPACITY: usize = 64;

/// The timing of every node: the defaults of `Config`.
const TIMING: Timing =
    Timing { election_min: Duration::from_millis(300), election_max: Duration::from_millis(600), lease: None };

/// What the generated sequence does next. Node and message choices are taken modulo what
/// exists, so every sequence is valid and shrinks towards "the first one".
#[derive(Clone, Copy, Debug)]
enum Action {
    /// Time moves on to the node's next wakeup (its election deadline, or on a leader its next
    /// check-quorum) and the core is told so.
    Timeout { node: usize },
    /// Time moves on by `ms` milliseconds (leaders' words age, deadlines near).
    Elapse { ms: u16 },
    /// The `pick`-th message in flight arrives; any message may overtake any other. (An
    /// answer `LogStore` owes a core is in flight too: answers to appends from a leader come
    /// back in any order, as the actor's futures complete, though `LogStore` applied the
    /// appends in the order they were sent.)
    Deliver { pick: usize },
    /// The `pick`-th message in flight is lost (`LogStore`'s answers never are).
    Drop { pick: usize },
    /// The `pick`-th message in flight is sent twice (`LogStore`'s answers never are).
    Duplicate { pick: usize },
    /// A client writes to the `leader`-th node that believes it leads (a stale leader too).
    Propose { leader: usize },
    /// The `leader`-th believed leader sends AppendEntries from its `next_index` for a peer
    /// (`peer` places after it, or every peer), with up to `batch` entries (0: a heartbeat).
    Replicate { leader: usize, peer: Option<usize>, batch: usize },
    /// The node crashes and restarts with its durable state only.
    Crash { node: usize, keep_commit: bool },
    /// The `leader`-th believed leader is asked for a membership change: add the next spare
    /// node (as a voter to be, or a learner), promote a learner, or remove the `target`-th
    /// member (itself too). Refusals (one change at a time, a lagging learner) are expected.
    Change { leader: usize, kind: u8, target: usize },
    /// The `leader`-th believed leader hands leadership over, to its `target`-th voter or (if
    /// none) the one it picks.
    Transfer { leader: usize, target: Option<usize> },
}

/// What travels between nodes. Append answers carry what the replicator's future captured:
/// the term it works for and its epoch.
#[derive(Clone, Debug)]
enum Message {
    Vote(VoteRequest),
    VoteReply {
        request: VoteRequest,
        response: VoteResponse,
    },
    Append {
        request: AppendEntriesRequest,
        epoch: u64,
    },
    AppendReply {
        asked_term: u64,
        epoch: u64,
        response: AppendEntriesResponse,
    },
    TimeoutNow {
        term: u64,
    },
    /// `LogStore`'s answer to an append from a leader, to the node's own core.
    Stored {
        ticket: AppendTicket,
        reply: AppendFromLeaderReply,
    },
}

/// A message in flight.
#[derive(Clone, Debug)]
struct Envelope {
    from: usize,
    to: usize,
    message: Message,
}

/// Who waits for an answer the core will give by token.
enum Asker {
    Vote { from: usize, request: VoteRequest },
    Append { from: usize, asked_term: u64, epoch: u64 },
}

/// A `Replicator`, for one peer.
#[derive(Clone, Copy)]
struct Progress {
    next_index: u64,
    match_index: u64,
    epoch: u64,
}

/// The replicators of a leader's term and what `Replicate` last told them.
struct Replication {
    term: u64,
    peers: BTreeMap<usize, Progress>,
    commit: u64,
    visible: u64,
}

/// One model node: the real core, and what `LogStore` and the replicators hold.
struct Node {
    id: NodeId,
    core: Core,
    /// The configuration it was started with (empty for a spare).
    base: Members,
    // Durable (Figure 2, "persistent state on all servers"), as `LogStore` keeps it.
    hard: HardState,
    log: MemLog,
    /// The commit index `LogStore` was told (`CommitTo`), which it applies up to.
    log_commit: u64,
    replication: Option<Replication>,
    askers: BTreeMap<u64, Asker>,
    next_token: u64,
    /// The entries this node's state machines applied, in order.
    applied: Vec<Arc<Entry>>,
}

fn addr(id: NodeId) -> String {
    format!("127.0.0.1:{}", 7000 + id)
}

/// The voters of a cluster of `size`, ids 1..=size.
fn members(size: usize) -> Members {
    Members::of_voters((1..=size as NodeId).map(|id| (id, addr(id))))
}

/// The configurations a node starts with, as `Node::start` finds them: those in its log, over
/// the configured cluster for a founding node (its log holds no configuration of its own:
/// `base`) or nothing for a spare, which waits to be added.
fn member_log(base: &Members, log: &MemLog) -> MemberLog {
    let logged = log.slice(1, usize::MAX, usize::MAX).into_iter().filter_map(|e| match &e.payload {
        Payload::Config(m) => Some((e.index, m.clone())),
        _ => None,
    });
    MemberLog::new(base.clone(), logged)
}

impl Node {
    fn new(id: NodeId, base: Members, rules: Rules, now: Instant) -> Self {
        let configs = member_log(&base, &MemLog::default());
        Node {
            id,
            core: Core::new(id, configs, TIMING, HardState::default(), LogId::default(), id, now).with_rules(rules),
            base,
            hard: HardState::default(),
            log: MemLog::default(),
            log_commit: 0,
            replication: None,
            askers: BTreeMap::new(),
            next_token: 0,
            applied: Vec::new(),
        }
    }

    fn token(&mut self, asker: Asker) -> u64 {
        self.next_token += 1;
        self.askers.insert(self.next_token, asker);
        self.next_token
    }

    /// The whole log, index 1 first.
    fn entries(&self) -> Vec<Arc<Entry>> {
        self.log.slice(1, usize::MAX, usize::MAX)
    }

    /// `LogStore::refuse_truncating_committed`: an applied entry would change.
    fn refuse_truncating_committed(&self, from: u64) -> Result<(), Violation> {
        if from <= self.log_commit {
            let detail = format!("node {} told to truncate from {from}, commit {}", self.id, self.log_commit);
            return violated(Property::StateMachineSafety, detail);
        }
        Ok(())
    }
}

/// One of the five properties of Figure 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Property {
    ElectionSafety,
    LeaderAppendOnly,
    LogMatching,
    LeaderCompleteness,
    StateMachineSafety,
    /// Not Figure 3's: only a voter of its own configuration is elected, and a leader's log
    /// holds at most one uncommitted configuration (thesis §4.1).
    Membership,
}

/// A property that failed, and how.
#[derive(Debug)]
struct Violation {
    property: Property,
    detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} violated: {}", self.property, self.detail)
    }
}

fn violated(property: Property, detail: String) -> Result<(), Violation> {
    Err(Violation { property, detail })
}

/// What the generated cases reached, summed, so a run that never elects or commits fails.
#[derive(Clone, Copy, Debug, Default)]
struct Coverage {
    cases: u64,
    steps: u64,
    /// Messages in flight, summed over steps.
    in_flight: u64,
    elections: u64,
    cases_with_three_leader_terms: u64,
    conflicts: u64,
    truncations: u64,
    cases_with_truncation: u64,
    committed: u64,
    cases_with_commit: u64,
    /// Entries of an earlier term committed with the current leader's own (§5.4.2).
    carried_commits: u64,
    crashes: u64,
    /// Membership changes proposed and committed, and cases with one committed; cases where a
    /// removed leader stepped down, where a spare joined and was promoted.
    changes_proposed: u64,
    changes_committed: u64,
    /// Leadership transfers begun.
    transfers: u64,
    cases_with_change: u64,
    cases_removing_leader: u64,
    cases_promoting: u64,
}

impl Coverage {
    fn add_case(&mut self, c: &Cluster) {
        let s = &c.coverage;
        self.cases += 1;
        self.steps += s.steps;
        self.in_flight += s.in_flight;
        self.elections += s.elections;
        self.cases_with_three_leader_terms += u64::from(c.elected.len() >= 3);
        self.conflicts += s.conflicts;
        self.truncations += s.truncations;
        self.cases_with_truncation += u64::from(s.truncations > 0);
        self.committed += c.committed.len() as u64;
        self.cases_with_commit += u64::from(!c.committed.is_empty());
        self.carried_commits += s.carried_commits;
        self.crashes += s.crashes;
        // Not the founding configuration the first leader logs: a change.
        let founding = &c.nodes[0].base;
        let changes =
            c.committed.iter().filter(|(e, _)| matches!(&e.payload, Payload::Config(m) if m != founding)).count()
                as u64;
        self.changes_committed += changes;
        self.cases_with_change += u64::from(changes > 0);
        self.changes_proposed += s.changes_proposed;
        self.transfers += s.transfers;
        self.cases_removing_leader += u64::from(s.cases_removing_leader > 0);
        let spare_voter = |e: &Entry| match &e.payload {
            Payload::Config(m) => {
                m.voters.keys().any(|id| c.nodes.iter().any(|n| n.id == *id && n.base.voters.is_empty()))
            }
            _ => false,
        };
        self.cases_promoting += u64::from(c.committed.iter().any(|(e, _)| spare_voter(e)));
    }
}

/// The model cluster and the observer's records that the properties are checked against.
struct Cluster {
    rules: Rules,
    nodes: Vec<Node>,
    network: Vec<Envelope>,
    /// Whether `LogStore`'s answers to appends from a leader may travel as messages
    /// (generated cases), or are all given to the core at once (scripted ones); and whether
    /// the delivery under way has them travel.
    defer_stored: bool,
    defer_this_store: bool,
    now: Instant,
    proposals: u64,
    /// Every leader ever elected, by term.
    elected: BTreeMap<u64, BTreeSet<NodeId>>,
    /// Each leader's log as the previous step left it, while it leads in that term.
    leader_logs: Vec<Option<(u64, Vec<Arc<Entry>>)>>,
    /// The entry committed at each index (position index - 1), with the earliest term in
    /// which some node knew it committed.
    committed: Vec<(Arc<Entry>, u64)>,
    coverage: Coverage,
}

impl Cluster {
    /// `size` founding voters, and `spares` nodes that wait, empty, to be added.
    fn new(size: usize, spares: usize, rules: Rules) -> Self {
        let now = Instant::now();
        let base = |id: NodeId| if id as usize <= size { members(size) } else { Members::default() };
        let all = size + spares;
        let mut c = Cluster {
            rules,
            nodes: (1..=all as NodeId).map(|id| Node::new(id, base(id), rules, now)).collect(),
            network: Vec::new(),
            defer_stored: false,
            defer_this_store: false,
            now,
            proposals: 0,
            elected: BTreeMap::new(),
            leader_logs: (0..all).map(|_| None).collect(),
            committed: Vec::new(),
            coverage: Coverage::default(),
        };
        for i in 0..all {
            c.drive(i).expect("a fresh node breaks nothing");
        }
        c
    }

    fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Runs one action, then checks every property.
    fn step(&mut self, action: Action) -> Result<(), Violation> {
        let n = self.size();
        match action {
            Action::Timeout { node } => {
                let i = node % n;
                self.now = self.now.max(self.nodes[i].core.next_wakeup());
                self.input(i, Input::Tick)?;
            }
            Action::Elapse { ms } => self.now += Duration::from_millis(u64::from(ms)),
            Action::Deliver { pick } if !self.network.is_empty() => {
                let envelope = self.network.remove(pick % self.network.len());
                // Half the appends this delivers are answered later, in any order.
                self.defer_this_store = self.defer_stored && pick % 2 == 1;
                self.deliver(envelope)?;
                self.defer_this_store = false;
            }
            Action::Drop { pick } if !self.network.is_empty() => {
                let k = pick % self.network.len();
                if !matches!(self.network[k].message, Message::Stored { .. }) {
                    self.network.remove(k);
                }
            }
            Action::Duplicate { pick } if !self.network.is_empty() => {
                let envelope = self.network[pick % self.network.len()].clone();
                if !matches!(envelope.message, Message::Stored { .. }) {
                    self.send(envelope.from, envelope.to, envelope.message);
                }
            }
            Action::Deliver { .. } | Action::Drop { .. } | Action::Duplicate { .. } => {}
            Action::Propose { leader } => {
                if let Some(l) = self.believed_leader(leader) {
                    self.proposals += 1;
                    let data = Bytes::from(self.proposals.to_be_bytes().to_vec());
                    let payload = Payload::Command { namespace: "kv".into(), data };
                    match self.nodes[l].core.propose(payload) {
                        Ok(_) => {}
                        // No new entries while leadership is handed over (§3.10).
                        Err(_) if self.nodes[l].core.transferring().is_some() => {}
                        Err(e) => panic!("a leader refused a proposal: {e}"),
                    }
                    self.drive(l)?;
                }
            }
            Action::Replicate { leader, peer, batch } => {
                if let Some(l) = self.believed_leader(leader) {
                    let peers = self.replicated(l);
                    match peer {
                        Some(_) if peers.is_empty() => {}
                        Some(offset) => self.replicate(l, peers[offset % peers.len()], batch),
                        None => peers.into_iter().for_each(|p| self.replicate(l, p, batch)),
                    }
                }
            }
            Action::Crash { node, keep_commit } => self.crash(node % n, keep_commit)?,
            Action::Change { leader, kind, target } => {
                if let Some(l) = self.believed_leader(leader) {
                    self.change(l, kind, target)?;
                }
            }
            Action::Transfer { leader, target } => {
                if let Some(l) = self.believed_leader(leader) {
                    let voters: Vec<NodeId> = self.nodes[l].core.members().voters.keys().copied().collect();
                    let to = target.map(|t| voters[t % voters.len()]);
                    let now = self.now;
                    if self.nodes[l].core.transfer_leadership(now, to).is_ok() {
                        self.coverage.transfers += 1;
                    }
                    self.drive(l)?;
                }
            }
        }
        self.coverage.steps += 1;
        self.coverage.in_flight += self.network.len() as u64;
        self.check()
    }

    /// The nodes leader `l` replicates to, by index, in id order.
    fn replicated(&self, l: usize) -> Vec<usize> {
        self.nodes[l].replication.as_ref().map(|r| r.peers.keys().copied().collect()).unwrap_or_default()
    }

    /// Asks leader `l` for a membership change (see [`Action::Change`]).
    fn change(&mut self, l: usize, kind: u8, target: usize) -> Result<(), Violation> {
        let members = self.nodes[l].core.members().clone();
        let listed: Vec<NodeId> = members.all().map(|(id, _, _)| id).collect();
        let change = match kind % 3 {
            0 => {
                let spare = self.nodes.iter().map(|n| n.id).find(|id| {
                    !listed.contains(id)
                        && !members.removed.contains(id)
                        && self.nodes[self.index_of(*id)].base.voters.is_empty()
                });
                let Some(id) = spare else { return Ok(()) };
                MemberChange::Add { id, addr: addr(id), promote: target.is_multiple_of(2) }
            }
            1 => {
                let learners: Vec<NodeId> = members.learners.keys().copied().collect();
                if learners.is_empty() {
                    return Ok(());
                }
                MemberChange::Promote { id: learners[target % learners.len()] }
            }
            _ => MemberChange::Remove { id: listed[target % listed.len()] },
        };
        let now = self.now;
        if self.nodes[l].core.propose_change(now, change).is_ok() {
            self.coverage.changes_proposed += 1;
        }
        self.drive(l)
    }

    /// The `k`-th node (by id, wrapping) that believes it is leader.
    fn believed_leader(&self, k: usize) -> Option<usize> {
        let leaders: Vec<usize> = (0..self.size()).filter(|&i| self.nodes[i].core.role() == Role::Leader).collect();
        (!leaders.is_empty()).then(|| leaders[k % leaders.len()])
    }

    fn send(&mut self, from: usize, to: usize, message: Message) {
        if self.network.len() < NETWORK_CAPACITY {
            self.network.push(Envelope { from, to, message });
        }
    }

    fn index_of(&self, id: NodeId) -> usize {
        self.nodes.iter().position(|n| n.id == id).expect("ids name nodes")
    }

    /// Feeds node `i`'s core an input now, then carries out what it decided.
    fn input(&mut self, i: usize, input: Input) -> Result<(), Violation> {
        self.nodes[i].core.step(self.now, input);
        self.drive(i)
    }

    /// Carries out node `i`'s actions as the actors would, until the core has none left: IO
    /// completes at once, messages go into the network.
    fn drive(&mut self, i: usize) -> Result<(), Violation> {
        loop {
            let actions = self.nodes[i].core.take_actions();
            if actions.is_empty() {
                return Ok(());
            }
            for action in actions {
                self.carry_out(i, action)?;
            }
        }
    }

    fn carry_out(&mut self, i: usize, action: Do) -> Result<(), Violation> {
        let now = self.now;
        match action {
            Do::SaveHardState { ticket } => {
                let node = &mut self.nodes[i];
                assert!(ticket.term >= node.hard.term, "node {}: durable term would go back", node.id);
                node.hard.term = ticket.term;
                node.hard.voted_for = ticket.voted_for;
                let result = Some(Ok(node.log.last()));
                node.core.step(now, Input::HardStateSaved { ticket, result });
            }
            Do::AppendLocal { term, entries, report } => {
                let node = &mut self.nodes[i];
                for e in entries {
                    assert!(e.term <= node.hard.term, "node {}: entry {e:?} ahead of the durable term", node.id);
                    if e.index <= node.log.last().index {
                        // A new leader drops the uncommitted suffix it did not report.
                        node.refuse_truncating_committed(e.index)?;
                        node.log.truncate_from(e.index);
                    }
                    assert_eq!(e.index, node.log.last().index + 1, "node {}: a gap in the log", node.id);
                    node.log.push(e);
                }
                if report {
                    let result = Some(Ok(node.log.last()));
                    node.core.step(now, Input::LocalAppended { term, result });
                }
            }
            Do::StoreFromLeader { ticket, prev, entries } => {
                let node = &mut self.nodes[i];
                let reply = if ticket.term < node.hard.term {
                    let result = AppendResult::StaleTerm(node.hard.term);
                    AppendFromLeaderReply { result, durable: false, last: node.log.last() }
                } else {
                    let mut wrote = false;
                    if ticket.term > node.hard.term {
                        node.hard.term = ticket.term;
                        node.hard.voted_for = None;
                        wrote = true;
                    }
                    let result = match node.log.plan_append(prev, &entries) {
                        Err(conflict) => {
                            self.coverage.conflicts += 1;
                            AppendResult::Conflict(conflict)
                        }
                        Ok(plan) => {
                            if let Some(from) = plan.truncate_from {
                                node.refuse_truncating_committed(from)?;
                                self.coverage.truncations += 1;
                            }
                            node.log.apply(&plan);
                            wrote |= !plan.append.is_empty();
                            AppendResult::Matched(plan.match_index)
                        }
                    };
                    // A heartbeat that changes nothing is answered without the disk.
                    let durable = !entries.is_empty() || wrote;
                    AppendFromLeaderReply { result, durable, last: node.log.last() }
                };
                if self.defer_this_store {
                    // Never lost to the network's capacity; among the first picked, as
                    // `LogStore` answers within moments (the newest first, often).
                    self.network.insert(0, Envelope { from: i, to: i, message: Message::Stored { ticket, reply } });
                } else {
                    node.core.step(now, Input::AppendStored { ticket, result: Some(Ok(reply)) });
                }
            }
            Do::CommitTo(c) => {
                let node = &mut self.nodes[i];
                if node.core.role() == Role::Leader {
                    let term = node.core.term();
                    let carried = (node.log_commit + 1..=c).filter(|&x| node.log.term_at(x) < Some(term)).count();
                    self.coverage.carried_commits += carried as u64;
                }
                node.log_commit = node.log_commit.max(c.min(node.log.last().index));
            }
            Do::SendVote { to, request } => {
                let to = self.index_of(to);
                self.send(i, to, Message::Vote(request));
            }
            Do::AnswerVote { token, response } => {
                if let Some(Asker::Vote { from, request }) = self.nodes[i].askers.remove(&token) {
                    self.send(i, from, Message::VoteReply { request, response });
                }
            }
            // The model's logs are never compacted, so no leader here sends a snapshot (t80
            // drives installs through the real actors).
            Do::StoreSnapshotChunk { .. } | Do::AnswerInstall { .. } => {
                unreachable!("node {}: a snapshot transfer where no log is compacted", self.nodes[i].id)
            }
            Do::AnswerAppend { token, response } => {
                if let Some(Asker::Append { from, asked_term, epoch }) = self.nodes[i].askers.remove(&token) {
                    self.send(i, from, Message::AppendReply { asked_term, epoch, response });
                }
            }
            Do::AnswerRead { .. } => {}
            Do::StartReplication { term, next_index, peers } => {
                let progress = Progress { next_index, match_index: 0, epoch: 0 };
                let peers: Vec<usize> = peers.into_iter().map(|id| self.index_of(id)).collect();
                let node = &mut self.nodes[i];
                // A new member's replicator joins the term's others.
                let r = match node.replication.take() {
                    Some(r) if r.term == term => node.replication.insert(r),
                    _ => node.replication.insert(Replication { term, peers: BTreeMap::new(), commit: 0, visible: 0 }),
                };
                r.peers.extend(peers.into_iter().map(|p| (p, progress)));
            }
            Do::StopReplication => self.nodes[i].replication = None,
            Do::StopPeer { peer } => {
                let p = self.index_of(peer);
                if let Some(r) = self.nodes[i].replication.as_mut() {
                    r.peers.remove(&p);
                }
            }
            Do::MembersChanged { .. } | Do::TransferEnded { .. } => {}
            Do::SendTimeoutNow { to, term } => {
                let to = self.index_of(to);
                self.send(i, to, Message::TimeoutNow { term });
            }
            Do::Replicate { commit, visible, .. } => {
                if let Some(r) = self.nodes[i].replication.as_mut() {
                    r.commit = r.commit.max(commit);
                    r.visible = r.visible.max(visible);
                }
            }
            Do::SendLease { .. } => unreachable!("a read lease granted or revoked with read_mode = index"),
            Do::LeadershipChanged { term, is_leader } => {
                let node = &self.nodes[i];
                if is_leader {
                    if !node.core.members().is_voter(node.id) {
                        let detail =
                            format!("node {} leads term {term} but is not a voter: {:?}", node.id, node.core.members());
                        return violated(Property::Membership, detail);
                    }
                    self.elected.entry(term).or_default().insert(node.id);
                    self.coverage.elections += 1;
                } else if node.core.role() == Role::Follower && !node.core.members().is_voter(node.id) {
                    self.coverage.cases_removing_leader += 1;
                }
            }
            Do::ScheduleFlush => self.nodes[i].core.step(now, Input::Flush),
            Do::ScheduleReadRound => self.nodes[i].core.step(now, Input::ReadRound),
        }
        Ok(())
    }

    /// A `Replicator` sending one AppendEntries from `next_index`, which then moves on
    /// optimistically.
    fn replicate(&mut self, i: usize, p: usize, batch: usize) {
        let node = &mut self.nodes[i];
        let id = node.id;
        let Some(r) = node.replication.as_mut() else { return };
        let Some(progress) = r.peers.get_mut(&p) else { return };
        let next = progress.next_index;
        let prev_term = node.log.term_at(next - 1).expect("next_index stays within the leader's log");
        let prev = LogId::new(prev_term, next - 1);
        let entries = node.log.slice(next, batch, usize::MAX);
        progress.next_index = next + entries.len() as u64;
        let (leader_commit, leader_visible) = (r.commit, r.visible);
        let request = AppendEntriesRequest {
            term: r.term,
            leader: id,
            prev,
            entries,
            leader_commit,
            leader_visible,
            lease: None,
        };
        let epoch = progress.epoch;
        self.send(i, p, Message::Append { request, epoch });
    }

    /// A crash and restart: term, vote and log survive; the commit index survives if it was
    /// persisted, capped to the log as `LogStore::new` caps it; the state machines replay.
    fn crash(&mut self, i: usize, keep_commit: bool) -> Result<(), Violation> {
        self.coverage.crashes += 1;
        let node = &mut self.nodes[i];
        let commit = if keep_commit { node.log_commit.min(node.log.last().index) } else { 0 };
        let hard = HardState { commit, ..node.hard };
        let seed = node.id + 1000 * self.coverage.crashes;
        let configs = member_log(&node.base, &node.log);
        node.core = Core::new(node.id, configs, TIMING, hard, node.log.last(), seed, self.now).with_rules(self.rules);
        node.log_commit = commit;
        node.replication = None;
        node.askers.clear();
        node.applied.clear();
        // What the actor waited for dies with it.
        self.network.retain(|e| !(e.to == i && matches!(e.message, Message::Stored { .. })));
        self.drive(i)
    }

    fn deliver(&mut self, envelope: Envelope) -> Result<(), Violation> {
        let Envelope { from, to, message } = envelope;
        match message {
            Message::Vote(request) => {
                let token = self.nodes[to].token(Asker::Vote { from, request });
                self.input(to, Input::VoteRequest { token, request })
            }
            Message::VoteReply { request, response } => {
                let from = self.nodes[from].id;
                self.input(to, Input::VoteResponse { from, request, response })
            }
            Message::Append { request, epoch } => {
                let asked_term = request.term;
                let token = self.nodes[to].token(Asker::Append { from, asked_term, epoch });
                self.input(to, Input::AppendRequest { token, request })
            }
            Message::AppendReply { asked_term, epoch, response } => {
                self.on_append_reply(to, from, asked_term, epoch, response)
            }
            Message::TimeoutNow { term } => {
                let from = self.nodes[from].id;
                self.input(to, Input::TimeoutNow { from, term })
            }
            Message::Stored { ticket, reply } => {
                self.input(to, Input::AppendStored { ticket, result: Some(Ok(reply)) })
            }
        }
    }

    /// The `Replicator`'s handling of an answer: its progress and a higher term go to the core.
    fn on_append_reply(
        &mut self,
        i: usize,
        p: usize,
        asked_term: u64,
        epoch: u64,
        response: AppendEntriesResponse,
    ) -> Result<(), Violation> {
        let peer = self.nodes[p].id;
        let last = self.nodes[i].log.last().index;
        let Some(r) = self.nodes[i].replication.as_mut() else { return Ok(()) };
        let term = r.term;
        if term != asked_term {
            return Ok(());
        }
        if response.term > term {
            self.nodes[i].replication = None;
            return self.input(i, Input::HigherTerm { peer, term: response.term });
        }
        let Some(progress) = r.peers.get_mut(&p) else { return Ok(()) };
        let restart = |progress: &mut Progress, next: u64| {
            progress.epoch += 1;
            progress.next_index = next.clamp(progress.match_index + 1, last + 1);
        };
        let (commit, lease_ask) = (Some(response.commit), response.lease_ask);
        let report = |match_index| Input::PeerProgress {
            peer,
            term,
            acked_round: 0,
            match_index,
            commit,
            lease_ask,
            lease_dropped: false,
        };
        match response.outcome {
            AppendOutcome::Success { match_index } => {
                let moved = match_index > progress.match_index;
                progress.match_index = progress.match_index.max(match_index);
                let m = progress.match_index;
                self.input(i, report(moved.then_some(m)))
            }
            AppendOutcome::Heartbeat => self.input(i, report(None)),
            AppendOutcome::Conflict { next_index } => {
                if epoch == progress.epoch {
                    restart(progress, next_index);
                }
                self.input(i, report(None))
            }
            AppendOutcome::StaleTerm => {
                if epoch == progress.epoch {
                    let next = progress.match_index + 1;
                    restart(progress, next);
                }
                Ok(())
            }
        }
    }

    /// Checks Figure 3 against the cluster as it stands and the observer's records.
    fn check(&mut self) -> Result<(), Violation> {
        self.check_election_safety()?;
        self.check_leader_append_only()?;
        self.apply_committed()?;
        self.check_log_matching()?;
        self.check_leader_completeness()?;
        self.check_one_change_at_a_time()?;
        self.check_configuration_follows_log()
    }

    /// A node's configuration is the newest one its log holds (or the one it started with),
    /// once its core has every answer `LogStore` owed it: a configuration is in effect as soon
    /// as it is appended, and gone when its entry is cut (§4.1), whatever order the answers
    /// came back in.
    ///
    /// A node stands only once its configuration follows its whole log: no candidate or
    /// leader waits for an answer to a leader's append (it would count votes, or lead, by a
    /// configuration its log has moved past).
    fn check_configuration_follows_log(&self) -> Result<(), Violation> {
        for (i, node) in self.nodes.iter().enumerate() {
            if self.network.iter().any(|e| e.to == i && matches!(e.message, Message::Stored { .. })) {
                if node.core.role() != Role::Follower {
                    let detail =
                        format!("node {} is {} with appends from a leader not yet followed", node.id, node.core.role());
                    return violated(Property::Membership, detail);
                }
                continue;
            }
            let logged = node.entries().iter().rev().find_map(|e| match &e.payload {
                Payload::Config(m) => Some(m.clone()),
                _ => None,
            });
            let expected = logged.unwrap_or_else(|| node.base.clone());
            if **node.core.members() != expected {
                let detail =
                    format!("node {}: configuration {:?}, its log's newest {expected:?}", node.id, node.core.members());
                return violated(Property::Membership, detail);
            }
        }
        Ok(())
    }

    /// A leader's log holds at most one configuration past what any node knows committed:
    /// the next change waits for the last to commit (§4.1).
    fn check_one_change_at_a_time(&self) -> Result<(), Violation> {
        let committed = self.committed.len() as u64;
        for node in self.nodes.iter().filter(|n| n.core.role() == Role::Leader) {
            let pending: Vec<u64> = node
                .entries()
                .iter()
                .filter(|e| e.index > committed && matches!(e.payload, Payload::Config(_)))
                .map(|e| e.index)
                .collect();
            if pending.len() > 1 {
                let detail = format!("leader {} holds uncommitted configurations at {pending:?}", node.id);
                return violated(Property::Membership, detail);
            }
        }
        Ok(())
    }

    /// Election Safety: at most one leader is elected in a given term (§5.2).
    fn check_election_safety(&self) -> Result<(), Violation> {
        match self.elected.iter().find(|(_, leaders)| leaders.len() > 1) {
            Some((term, leaders)) => violated(Property::ElectionSafety, format!("term {term} elected {leaders:?}")),
            None => Ok(()),
        }
    }

    /// Leader Append-Only: a leader never overwrites or deletes entries in its log, only
    /// appends (§5.3). Compared with its log at the previous step, while it leads that term.
    fn check_leader_append_only(&mut self) -> Result<(), Violation> {
        for (i, node) in self.nodes.iter().enumerate() {
            let now = (node.core.role() == Role::Leader).then(|| (node.core.term(), node.entries()));
            if let (Some((term, before)), Some((t, after))) = (&self.leader_logs[i], &now)
                && term == t
                && !(before.len() <= after.len() && before.iter().zip(after).all(|(a, b)| a == b))
            {
                let detail =
                    format!("leader {} of term {term} went from {:?} to {:?}", node.id, terms(before), terms(after));
                return violated(Property::LeaderAppendOnly, detail);
            }
            self.leader_logs[i] = now;
        }
        Ok(())
    }

    /// State Machine Safety: once a node applies an entry at an index, no node applies
    /// another there (§5.4.3). Each node applies its log up to its commit index; the first
    /// to apply an index records the entry as committed, for Leader Completeness.
    fn apply_committed(&mut self) -> Result<(), Violation> {
        for node in &mut self.nodes {
            while (node.applied.len() as u64) < node.log_commit {
                let index = node.applied.len() as u64 + 1;
                let Some(entry) = node.log.get(index).cloned() else {
                    let detail = format!(
                        "node {} commits {} past its last entry {:?}",
                        node.id,
                        node.log_commit,
                        node.log.last()
                    );
                    return violated(Property::StateMachineSafety, detail);
                };
                match self.committed.get_mut(index as usize - 1) {
                    Some((first, term)) if *first == entry => *term = (*term).min(node.core.term()),
                    Some((first, _)) => {
                        let detail = format!("node {} applies {entry:?}, another applied {first:?}", node.id);
                        return violated(Property::StateMachineSafety, detail);
                    }
                    None => self.committed.push((entry.clone(), node.core.term())),
                }
                node.applied.push(entry);
            }
        }
        Ok(())
    }

    /// Log Matching: if two logs hold an entry with the same index and term, they are
    /// identical in all entries up through that index (§5.3).
    fn check_log_matching(&self) -> Result<(), Violation> {
        for (a, x) in self.nodes.iter().enumerate() {
            for y in &self.nodes[a + 1..] {
                let mut diverged = None;
                for index in 1..=x.log.last().index.min(y.log.last().index) {
                    let (ex, ey) = (x.log.get(index), y.log.get(index));
                    let (Some(ex), Some(ey)) = (ex, ey) else { unreachable!("logs have no gaps") };
                    if ex.term != ey.term {
                        diverged.get_or_insert(index);
                    } else if ex != ey || diverged.is_some() {
                        let detail = format!(
                            "nodes {} and {} both hold term {} at index {index} but differ at index {}: {:?} / {:?}",
                            x.id,
                            y.id,
                            ex.term,
                            diverged.unwrap_or(index),
                            terms(&x.entries()),
                            terms(&y.entries()),
                        );
                        return violated(Property::LogMatching, detail);
                    }
                }
            }
        }
        Ok(())
    }

    /// Leader Completeness: an entry committed in a term is in the log of every leader of a
    /// higher term (§5.4).
    fn check_leader_completeness(&self) -> Result<(), Violation> {
        for node in self.nodes.iter().filter(|n| n.core.role() == Role::Leader) {
            for (k, (entry, term)) in self.committed.iter().enumerate() {
                if *term < node.core.term() && node.log.get(k as u64 + 1) != Some(entry) {
                    let detail = format!(
                        "leader {} of term {} lacks {entry:?}, committed in term {term}; its log {:?}",
                        node.id,
                        node.core.term(),
                        terms(&node.entries())
                    );
                    return violated(Property::LeaderCompleteness, detail);
                }
            }
        }
        Ok(())
    }

    // Script helpers for the hand-built scenarios; each goes through `step`, so every
    // property is still checked after every action.

    /// Delivers, oldest first, every message in flight from `from` to `to`.
    fn deliver_between(&mut self, from: usize, to: usize) -> Result<(), Violation> {
        while let Some(pick) = self.network.iter().position(|e| e.from == from && e.to == to) {
            self.step(Action::Deliver { pick })?;
        }
        Ok(())
    }

    /// Makes node `i` leader: time passes (every leader's word ages), it times out and
    /// campaigns (pre-vote, then vote), with whatever it sends to the `deaf` nodes lost; a
    /// leader first steps down at its check-quorum, a node behind in term first learns the
    /// term from the refusals, so this takes up to three rounds.
    fn elect(&mut self, i: usize, deaf: &[usize]) -> Result<(), Violation> {
        for _ in 0..3 {
            self.step(Action::Elapse { ms: 700 })?;
            self.step(Action::Timeout { node: i })?;
            while let Some(e) = self.network.first() {
                let lost = e.from == i && deaf.contains(&e.to);
                self.step(if lost { Action::Drop { pick: 0 } } else { Action::Deliver { pick: 0 } })?;
            }
            if self.nodes[i].core.role() == Role::Leader {
                return Ok(());
            }
        }
        panic!("node {} did not get elected:\n{self}", i + 1);
    }

    /// Delivers everything in flight, oldest first, until nothing is.
    fn settle(&mut self) -> Result<(), Violation> {
        while !self.network.is_empty() {
            self.step(Action::Deliver { pick: 0 })?;
        }
        Ok(())
    }

    /// The `leader` argument that makes `Propose` and `Replicate` pick node `i`.
    fn rank(&self, i: usize) -> usize {
        assert_eq!(self.nodes[i].core.role(), Role::Leader, "node {} is not leader:\n{self}", i + 1);
        (0..i).filter(|&j| self.nodes[j].core.role() == Role::Leader).count()
    }

    fn propose_at(&mut self, i: usize) -> Result<(), Violation> {
        self.step(Action::Propose { leader: self.rank(i) })
    }

    /// Node `i` replicates to `peer` (or every peer) with up to `batch` entries.
    fn replicate_at(&mut self, i: usize, peer: Option<usize>, batch: usize) -> Result<(), Violation> {
        let peers = self.replicated(i);
        let peer = peer.map(|p| peers.iter().position(|&q| q == p).expect("the leader replicates to that peer"));
        self.step(Action::Replicate { leader: self.rank(i), peer, batch })
    }
}

impl fmt::Display for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in &self.nodes {
            let log = terms(&n.entries());
            writeln!(
                f,
                "node {} {} term {} voted {:?} commit {} log terms {log:?}",
                n.id,
                n.core.role(),
                n.core.term(),
                n.core.voted_for(),
                n.core.commit()
            )?;
        }
        writeln!(f, "elected {:?}, {} messages in flight", self.elected, self.network.len())
    }
}

/// A log as the terms of its entries, index 1 first.
fn terms(entries: &[Arc<Entry>]) -> Vec<u64> {
    entries.iter().map(|e| e.term).collect()
}

/// Runs `actions` on a fresh cluster of `size` voters and `spares` nodes waiting to be added;
/// the error names the property, the step and the state.
fn run_case(size: usize, spares: usize, rules: Rules, actions: &[Action]) -> Result<Cluster, String> {
    let mut cluster = Cluster::new(size, spares, rules);
    cluster.defer_stored = true;
    for (k, &action) in actions.iter().enumerate() {
        if let Err(v) = cluster.step(action) {
            return Err(format!("{v}\nat step {k}: {action:?}\n{cluster}"));
        }
    }
    Ok(cluster)
}

/// Action sequences for a cluster of `size`. The weights favour delivery so that elections
/// finish and entries commit between the faults.
///
/// With `spares`, that many more nodes wait to be added, and membership changes are asked for.
fn actions(size: usize, spares: usize) -> impl Strategy<Value = Vec<Action>> {
    let node = 0..size + spares;
    let change_weight = if spares > 0 { 6 } else { 0 };
    // Mostly one of the oldest messages, so that elections finish; sometimes any.
    let pick = prop_oneof![3 => 0..4usize, 1 => any::<u8>().prop_map(usize::from)];
    let action = prop_oneof![
        // Founding nodes mostly: a spare not yet added does nothing on its timeout.
        4 => prop_oneof![3 => 0..size, 1 => node.clone()].prop_map(|node| Action::Timeout { node }),
        2 => (0..700u16).prop_map(|ms| Action::Elapse { ms }),
        80 => pick.clone().prop_map(|pick| Action::Deliver { pick }),
        3 => pick.clone().prop_map(|pick| Action::Drop { pick }),
        2 => pick.prop_map(|pick| Action::Duplicate { pick }),
        8 => (0..2usize).prop_map(|leader| Action::Propose { leader }),
        12 => (0..2usize, prop::option::weighted(0.5, 0..size + spares), 0..4usize)
            .prop_map(|(leader, peer, batch)| Action::Replicate { leader, peer, batch }),
        1 => (node, any::<bool>()).prop_map(|(node, keep_commit)| Action::Crash { node, keep_commit }),
        change_weight => (0..2usize, any::<u8>(), 0..8usize)
            .prop_map(|(leader, kind, target)| Action::Change { leader, kind, target }),
        1 => (0..2usize, prop::option::of(0..8usize)).prop_map(|(leader, target)| Action::Transfer { leader, target }),
    ];
    // Mostly long runs, which reach several terms; short ones shrink well.
    prop_oneof![
        1 => prop::collection::vec(action.clone(), 1..50),
        4 => prop::collection::vec(action, 50..=MAX_STEPS),
    ]
}

/// Cases per property test: `DISTER_PROPTEST_CASES` if set, else `default`.
fn cases(default: u32) -> u32 {
    match std::env::var("DISTER_PROPTEST_CASES") {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("DISTER_PROPTEST_CASES must be a whole number, got {v:?}")),
        Err(_) => default,
    }
}

/// The runner's settings: XorShift because ChaCha, unoptimised, took most of the time.
fn config() -> Config {
    Config { rng_algorithm: RngAlgorithm::XorShift, ..Config::default() }
}

/// Runs the generated cases on `size` nodes with the crate's rules, then checks that they
/// reached the paths worth checking: a property test that never elects proves nothing.
fn check_figure_3(size: usize, default_cases: u32) {
    let config = Config {
        cases: cases(default_cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/t15_raft_properties.txt",
        ))),
        ..config()
    };
    let coverage = RefCell::new(Coverage::default());
    let result = TestRunner::new(config).run(&actions(size, SPARES), |actions| {
        let cluster = run_case(size, SPARES, Rules::RAFT, &actions).map_err(TestCaseError::fail)?;
        coverage.borrow_mut().add_case(&cluster);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{size} nodes: {e}");
    }
    let c = coverage.into_inner();
    eprintln!("{size} nodes: {c:?}");
    if c.cases < 1_000 {
        return; // Too few to judge the mix.
    }
    let share = |x: u64| x as f64 / c.cases as f64;
    // Each floor sits below what five nodes (and two spares), the harder case, reach: about
    // 1.3 elections per case, 12% of cases in three terms, 20% truncating, 53% committing
    // (pre-vote and a live leader's followers make elections rarer than without them).
    assert!(c.elections >= c.cases, "fewer elections than cases: {c:?}");
    assert!(share(c.cases_with_three_leader_terms) >= 0.1, "few cases elect in three terms: {c:?}");
    assert!(share(c.cases_with_truncation) >= 0.08, "few cases truncate a divergent suffix: {c:?}");
    assert!(share(c.cases_with_commit) >= 0.3, "few cases commit: {c:?}");
    assert!(c.carried_commits > 0 && c.conflicts > 0 && c.crashes > 0, "paths never taken: {c:?}");
    // Membership: five nodes commit a change in about 8% of cases and remove a leader in
    // 1.7%; three nodes, 27% and 9%, and promote a spare in 0.8% (five nodes, in about one
    // case in 5,000: too rare for a floor).
    assert!(share(c.cases_with_change) >= 0.05, "few cases commit a membership change: {c:?}");
    assert!(c.cases_removing_leader > 0, "no case removed a leader: {c:?}");
    assert!(size > 3 || c.cases_promoting > 0, "no case promoted a spare: {c:?}");
}

/// Figure 3 holds on three nodes under delivery in any order, loss, duplication, competing
/// elections, stale leaders and crashes. Reference: §5, Figure 3.
#[test]
fn three_nodes_keep_the_five_properties_under_faults() {
    check_figure_3(3, 5_000);
}

/// As above, on five nodes, where two quorums may overlap in a single node.
#[test]
fn five_nodes_keep_the_five_properties_under_faults() {
    check_figure_3(5, 5_000);
}

/// The model is not vacuous in the simplest case.
///
/// 1. Three nodes; node 1 times out and every message arrives: its pre-vote and its vote
///    succeed and it leads term 1.
/// 2. A client writes; the leader replicates its no-op, the configuration it logs as the
///    cluster's first leader, and the write, then the commit index.
/// 3. Every node has committed and applied the three entries.
#[test]
fn a_quiet_network_elects_and_commits_everywhere() {
    let mut c = Cluster::new(3, 0, Rules::RAFT);
    let run = |c: &mut Cluster| -> Result<(), Violation> {
        c.step(Action::Timeout { node: 0 })?;
        c.settle()?;
        c.propose_at(0)?;
        c.replicate_at(0, None, 8)?;
        c.settle()?;
        c.replicate_at(0, None, 8)?;
        c.settle()
    };
    run(&mut c).unwrap_or_else(|v| panic!("{v}\n{c}"));
    assert_eq!(c.elected, BTreeMap::from([(1, BTreeSet::from([1]))]));
    for node in &c.nodes {
        assert_eq!((node.log_commit, node.applied.len()), (3, 3), "{c}");
        assert!(matches!(node.applied[1].payload, Payload::Config(_)), "{c}");
    }
}

/// No check is vacuous: each fires on a state that breaks its property.
///
/// 1. Three nodes; node 1 wins term 1 and holds its no-op at index 1.
/// 2. One corruption per property, each on a fresh copy of that cluster, then the checks.
#[test]
fn each_check_fires_on_a_state_that_breaks_it() {
    let write = |data: &'static [u8]| {
        Arc::new(Entry { term: 1, index: 1, payload: Payload::Command { namespace: "kv".into(), data: data.into() } })
    };
    let caught = |corrupt: &dyn Fn(&mut Cluster)| {
        let mut c = Cluster::new(3, 0, Rules::RAFT);
        c.step(Action::Timeout { node: 0 }).and_then(|()| c.settle()).unwrap_or_else(|v| panic!("{v}"));
        corrupt(&mut c);
        c.check().expect_err("a broken state passed the checks").property
    };
    let second_leader = |c: &mut Cluster| {
        c.elected.entry(1).or_default().insert(2);
    };
    let rewritten = |c: &mut Cluster| {
        c.nodes[0].log.truncate_from(1);
        c.nodes[0].log.push(write(b"x"));
    };
    let same_position_other_entry = |c: &mut Cluster| c.nodes[1].log.push(write(b"y"));
    let committed_missing = |c: &mut Cluster| c.committed.push((write(b"z"), 0));
    let applied_differently = |c: &mut Cluster| {
        c.nodes[1].log.push(write(b"y"));
        c.nodes[0].log_commit = 1;
        c.nodes[1].log_commit = 1;
    };
    assert_eq!(caught(&second_leader), Property::ElectionSafety);
    assert_eq!(caught(&rewritten), Property::LeaderAppendOnly);
    assert_eq!(caught(&same_position_other_entry), Property::LogMatching);
    assert_eq!(caught(&committed_missing), Property::LeaderCompleteness);
    assert_eq!(caught(&applied_differently), Property::StateMachineSafety);
}

/// Figure 8 of the paper, on five nodes S1..S5 (indexes 0..4), one index later than the
/// paper's: the first leader logs the cluster's configuration after its no-op. Each leader's
/// no-op is the first entry of its term.
///
/// 1. S1 leads term 1; indexes 1 and 2 reach everyone.
/// 2. (a) S1 leads term 2 and writes indexes 3 and 4; they reach S2 only.
/// 3. (b) S1 crashes; S5 leads term 3 with S3 and S4, and writes indexes 3 and 4 of term 3.
/// 4. (c) S5 crashes; S1 leads term 4 with S3 and S4 (S2 does not hear its campaign). S1
///    repairs S3 after one conflict and reaches S2 with a heartbeat: index 4 (term 2) is on
///    S1, S2, S3, a majority, but S1's no-op of term 4 is on S1 alone.
/// 5. (d) S1 crashes; S5 leads term 5 with S2, S3, S4, whose logs end in an older term,
///    and overwrites indexes 3 and 4 everywhere.
fn figure_8(rules: Rules) -> Result<Cluster, Violation> {
    let mut c = Cluster::new(5, 0, rules);
    c.elect(0, &[])?;
    c.replicate_at(0, None, 2)?;
    c.settle()?;
    // (a)
    c.elect(0, &[])?;
    c.propose_at(0)?;
    c.replicate_at(0, Some(1), 2)?;
    c.settle()?;
    // (b)
    c.step(Action::Crash { node: 0, keep_commit: true })?;
    c.elect(4, &[])?;
    c.propose_at(4)?;
    // (c)
    c.step(Action::Crash { node: 4, keep_commit: true })?;
    c.elect(0, &[1])?;
    c.replicate_at(0, Some(2), 2)?;
    c.deliver_between(0, 2)?;
    c.deliver_between(2, 0)?;
    c.replicate_at(0, Some(2), 2)?;
    c.replicate_at(0, Some(1), 0)?;
    c.settle()?;
    // (d)
    c.step(Action::Crash { node: 0, keep_commit: true })?;
    c.elect(4, &[])?;
    for _ in 0..3 {
        c.replicate_at(4, None, 4)?;
        c.settle()?;
    }
    Ok(c)
}

/// With the crate's commit rule, Figure 8 runs to the end safely: index 4 of term 2 was on a
/// majority but never committed, so S5 may overwrite it. Reference: §5.4.2, Figure 8.
#[test]
fn figure_8_an_old_term_entry_on_a_majority_is_not_committed() {
    let c = figure_8(Rules::RAFT).unwrap_or_else(|v| panic!("{v}"));
    for node in &c.nodes {
        assert_eq!(terms(&node.entries()), [1, 1, 3, 3, 5], "{c}");
        assert_eq!(node.log_commit, 5, "{c}");
    }
    assert!(c.coverage.truncations >= 3, "{:?}", c.coverage);
}

/// The checks bite: a commit rule that counts replicas of an older term's entry (ignores
/// `term_start`) commits index 4 in step (c) of Figure 8, and S5's election in step (d) then
/// breaks Leader Completeness. Reference: §5.4.2.
#[test]
fn committing_an_old_term_entry_by_counting_is_caught() {
    let counting_any_term =
        Rules { advance_commit: |commit, durable, _| advance_commit(commit, durable, 0), ..Rules::RAFT };
    let Err(v) = figure_8(counting_any_term) else { panic!("the mutant commit rule went unnoticed") };
    assert_eq!(v.property, Property::LeaderCompleteness, "{v}");
}

/// The checks bite on generated cases too: with vote rules (the vote and the pre-vote) that
/// skip the up-to-date check, a node missing committed entries gets elected, and the search
/// finds it. Reference: §5.4.1.
#[test]
fn granting_votes_without_the_log_check_is_caught() {
    let careless = Rules {
        grant_vote: |voter, req| req.term == voter.term && voter.voted_for.is_none_or(|c| c == req.candidate),
        grant_pre_vote: |voter, req, leader_is_live| !leader_is_live && req.term > voter.term,
        ..Rules::RAFT
    };
    let config = Config { cases: 2_000, failure_persistence: None, ..config() };
    let result = TestRunner::new(config)
        .run(&actions(3, 0), |actions| run_case(3, 0, careless, &actions).map(drop).map_err(TestCaseError::fail));
    match result {
        Err(TestError::Fail(reason, minimal)) => {
            assert!(reason.message().contains("violated"), "{reason}");
            eprintln!("mutant vote rule caught in {} steps: {reason}", minimal.len());
        }
        other => panic!("the mutant vote rule went unnoticed: {other:?}"),
    }
}
