//! t15: the pure Raft rules (`dister::raft`) stepped by a model cluster under generated faults,
//! with the five safety properties of the Raft paper's Figure 3 checked after every step.
//!
//! The model is what `Election`, `Replicator` and `LogStore` do, minus actors, IO and timers:
//! each node decides with the crate's own functions (`should_grant_vote`, `advance_commit`,
//! `MemLog::plan_append`, `quorum`) and the network is a bag of messages that proptest
//! delivers in any order, drops or duplicates. A node's writes are durable at once, so a crash
//! keeps exactly term, vote and log (and, if the action says so, the lazily persisted commit
//! index, capped to the log as `LogStore::new` does). Not modelled, because they only ever
//! refuse or delay and so cannot break safety: pre-vote, a live leader's followers ignoring
//! vote requests, pipelining windows, storage failures.
//!
//! Alongside the generated runs: a quiet election as a baseline, Figure 8 built by hand, and
//! proof that the checks bite (each fires on a broken state; a mutant commit rule and a
//! mutant vote rule are both caught).
//!
//! `DISTER_PROPTEST_CASES` sets the cases per property test (soak runs); `PROPTEST_RNG_SEED`
//! replays a run.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use dister::raft::commit::advance_commit;
use dister::raft::log::MemLog;
use dister::raft::vote::{Candidacy, VoterState, should_grant_vote};
use dister::raft::{Entry, LogId, NodeId, Payload, Role, quorum};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngAlgorithm, TestCaseError, TestError, TestRunner};

/// Longest generated action sequence: long enough for several elections, a conflict and a
/// restart in one case, short enough for 10,000 cases in well under a minute in debug mode.
const MAX_STEPS: usize = 200;

/// Messages in flight beyond this are lost, as a full socket buffer would lose them.
const NETWORK_CAPACITY: usize = 64;

/// The rules a node decides with: the crate's, or a mutant that must be caught.
#[derive(Clone, Copy)]
struct Rules {
    grant_vote: fn(VoterState, Candidacy) -> bool,
    advance_commit: fn(u64, &[u64], u64) -> Option<u64>,
}

/// The rules under test: the crate's own.
const CRATE_RULES: Rules = Rules { grant_vote: should_grant_vote, advance_commit };

/// What the generated sequence does next. Node and message choices are taken modulo what
/// exists, so every sequence is valid and shrinks towards "the first one".
#[derive(Clone, Copy, Debug)]
enum Action {
    /// The node's election timer fires: a leader steps down first (check-quorum, thesis §6.2),
    /// then it stands in term+1 with a durable vote for itself (§5.2).
    Timeout { node: usize },
    /// The `pick`-th message in flight arrives; any message may overtake any other.
    Deliver { pick: usize },
    /// The `pick`-th message in flight is lost.
    Drop { pick: usize },
    /// The `pick`-th message in flight is sent twice.
    Duplicate { pick: usize },
    /// A client writes to the `leader`-th node that believes it leads (a stale leader too).
    Propose { leader: usize },
    /// The `leader`-th believed leader sends AppendEntries from its `next_index` for a peer
    /// (`peer` places after it, or every peer), with up to `batch` entries (0: a heartbeat).
    Replicate { leader: usize, peer: Option<usize>, batch: usize },
    /// The node crashes and restarts with its durable state only.
    Crash { node: usize, keep_commit: bool },
}

/// What travels between nodes. Replies carry the term they answer (`asked_term`) and the
/// replicator's `epoch`, as the actors' futures capture them.
#[derive(Clone, Debug)]
enum Message {
    Vote { term: u64, last_log: LogId },
    VoteReply { asked_term: u64, term: u64, granted: bool },
    Append(AppendRequest),
    AppendReply { asked_term: u64, epoch: u64, term: u64, outcome: Outcome },
}

/// AppendEntries, as `AppendEntriesRequest` on the wire.
#[derive(Clone, Debug)]
struct AppendRequest {
    term: u64,
    prev: LogId,
    entries: Vec<Arc<Entry>>,
    leader_commit: u64,
    epoch: u64,
}

/// The follower's answer, as `AppendOutcome` on the wire.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    Success { match_index: u64 },
    Heartbeat,
    Conflict { next_index: u64 },
    StaleTerm,
}

/// A message in flight.
#[derive(Clone, Debug)]
struct Envelope {
    from: usize,
    to: usize,
    message: Message,
}

/// What a leader keeps per term, as `LeaderState` and the `Replicator`s do.
struct Lead {
    term_start: u64,
    next_index: Vec<u64>,
    match_index: Vec<u64>,
    epoch: Vec<u64>,
}

/// One model node: what `Election` and `LogStore` hold between them.
struct Node {
    id: NodeId,
    // Durable (Figure 2, "persistent state on all servers").
    term: u64,
    voted_for: Option<NodeId>,
    log: MemLog,
    // Volatile.
    role: Role,
    leader: Option<NodeId>,
    commit: u64,
    votes: BTreeSet<NodeId>,
    lead: Option<Lead>,
    /// The entries this node's state machines applied, in order.
    applied: Vec<Arc<Entry>>,
}

impl Node {
    fn new(id: NodeId) -> Self {
        Node {
            id,
            term: 0,
            voted_for: None,
            log: MemLog::default(),
            role: Role::Follower,
            leader: None,
            commit: 0,
            votes: BTreeSet::new(),
            lead: None,
            applied: Vec::new(),
        }
    }

    /// `Election::become_follower`.
    fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.voted_for = None;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.lead = None;
    }

    /// The whole log, index 1 first.
    fn entries(&self) -> Vec<Arc<Entry>> {
        self.log.slice(1, usize::MAX, usize::MAX)
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
    }
}

/// The model cluster and the observer's records that the properties are checked against.
struct Cluster {
    rules: Rules,
    nodes: Vec<Node>,
    network: Vec<Envelope>,
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
    fn new(size: usize, rules: Rules) -> Self {
        Cluster {
            rules,
            nodes: (1..=size as NodeId).map(Node::new).collect(),
            network: Vec::new(),
            proposals: 0,
            elected: BTreeMap::new(),
            leader_logs: (0..size).map(|_| None).collect(),
            committed: Vec::new(),
            coverage: Coverage::default(),
        }
    }

    fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Runs one action, then checks every property.
    fn step(&mut self, action: Action) -> Result<(), Violation> {
        let n = self.size();
        match action {
            Action::Timeout { node } => self.timeout(node % n),
            Action::Deliver { pick } if !self.network.is_empty() => {
                let envelope = self.network.remove(pick % self.network.len());
                self.deliver(envelope)?;
            }
            Action::Drop { pick } if !self.network.is_empty() => {
                self.network.remove(pick % self.network.len());
            }
            Action::Duplicate { pick } if !self.network.is_empty() => {
                let envelope = self.network[pick % self.network.len()].clone();
                self.send(envelope.from, envelope.to, envelope.message);
            }
            Action::Deliver { .. } | Action::Drop { .. } | Action::Duplicate { .. } => {}
            Action::Propose { leader } => {
                if let Some(l) = self.believed_leader(leader) {
                    self.proposals += 1;
                    let data = Bytes::from(self.proposals.to_be_bytes().to_vec());
                    self.propose(l, Payload::Command { namespace: "kv".into(), data });
                }
            }
            Action::Replicate { leader, peer, batch } => {
                if let Some(l) = self.believed_leader(leader) {
                    match peer {
                        Some(offset) => self.replicate(l, (l + 1 + offset % (n - 1)) % n, batch),
                        None => (0..n).filter(|&p| p != l).for_each(|p| self.replicate(l, p, batch)),
                    }
                }
            }
            Action::Crash { node, keep_commit } => self.crash(node % n, keep_commit),
        }
        self.coverage.steps += 1;
        self.coverage.in_flight += self.network.len() as u64;
        self.check()
    }

    /// The `k`-th node (by id, wrapping) that believes it is leader.
    fn believed_leader(&self, k: usize) -> Option<usize> {
        let leaders: Vec<usize> = (0..self.size()).filter(|&i| self.nodes[i].role == Role::Leader).collect();
        (!leaders.is_empty()).then(|| leaders[k % leaders.len()])
    }

    fn send(&mut self, from: usize, to: usize, message: Message) {
        if self.network.len() < NETWORK_CAPACITY {
            self.network.push(Envelope { from, to, message });
        }
    }

    /// `Election::start_campaign` without the pre-vote round, which changes no state.
    fn timeout(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.become_follower(node.term, None);
        node.term += 1;
        node.voted_for = Some(node.id);
        node.role = Role::Candidate;
        node.votes.insert(node.id);
        // Our own vote is durable (at once, here) before we ask for others (Figure 2).
        let request = Message::Vote { term: node.term, last_log: node.log.last() };
        for p in (0..self.size()).filter(|&p| p != i) {
            self.send(i, p, request.clone());
        }
        if self.nodes[i].votes.len() >= quorum(self.size()) {
            self.become_leader(i);
        }
    }

    /// `Election::become_leader`: the no-op opens the term so that earlier entries can commit
    /// with it (§5.4.2).
    fn become_leader(&mut self, i: usize) {
        let size = self.size();
        let node = &mut self.nodes[i];
        node.role = Role::Leader;
        node.leader = Some(node.id);
        node.votes.clear();
        let term_start = node.log.last().index + 1;
        node.lead = Some(Lead {
            term_start,
            next_index: vec![term_start; size],
            match_index: vec![0; size],
            epoch: vec![0; size],
        });
        self.elected.entry(node.term).or_default().insert(node.id);
        self.coverage.elections += 1;
        self.propose(i, Payload::Blank);
    }

    /// `Election::propose`; the leader's own append is durable at once.
    fn propose(&mut self, i: usize, payload: Payload) {
        let node = &mut self.nodes[i];
        let entry = Entry { term: node.term, index: node.log.last().index + 1, payload };
        node.log.push(Arc::new(entry));
        self.leader_advance_commit(i);
    }

    /// `Election::advance_commit`: counts the durable index of every voter, itself included.
    fn leader_advance_commit(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some(lead) = &node.lead else { return };
        let mut durable: Vec<u64> =
            (0..lead.match_index.len()).filter(|&p| p != i).map(|p| lead.match_index[p]).collect();
        durable.push(node.log.last().index);
        if let Some(c) = (self.rules.advance_commit)(node.commit, &durable, lead.term_start) {
            let carried = (node.commit + 1..=c).filter(|&x| node.log.term_at(x) < Some(node.term)).count();
            self.coverage.carried_commits += carried as u64;
            node.commit = c;
        }
    }

    /// A `Replicator` sending one AppendEntries from `next_index`, which then moves on
    /// optimistically.
    fn replicate(&mut self, i: usize, p: usize, batch: usize) {
        let node = &mut self.nodes[i];
        let Some(lead) = node.lead.as_mut() else { return };
        let next = lead.next_index[p];
        let prev_term = node.log.term_at(next - 1).expect("next_index stays within the leader's log");
        let prev = LogId::new(prev_term, next - 1);
        let entries = node.log.slice(next, batch, usize::MAX);
        lead.next_index[p] = next + entries.len() as u64;
        let request =
            AppendRequest { term: node.term, prev, entries, leader_commit: node.commit, epoch: lead.epoch[p] };
        self.send(i, p, Message::Append(request));
    }

    /// A crash and restart: term, vote and log survive; the commit index survives if it was
    /// persisted, capped to the log as `LogStore::new` caps it; the state machines replay.
    fn crash(&mut self, i: usize, keep_commit: bool) {
        let node = &mut self.nodes[i];
        node.become_follower(node.term, None);
        node.commit = if keep_commit { node.commit.min(node.log.last().index) } else { 0 };
        node.applied.clear();
        self.coverage.crashes += 1;
    }

    fn deliver(&mut self, envelope: Envelope) -> Result<(), Violation> {
        let Envelope { from, to, message } = envelope;
        match message {
            Message::Vote { term, last_log } => self.on_vote(to, from, term, last_log),
            Message::VoteReply { asked_term, term, granted } => self.on_vote_reply(to, from, asked_term, term, granted),
            Message::Append(request) => return self.on_append(to, from, request),
            Message::AppendReply { asked_term, epoch, term, outcome } => {
                self.on_append_reply(to, from, asked_term, epoch, term, outcome)
            }
        }
        Ok(())
    }

    /// `Handler<RequestVote>`: adopt a higher term, then let the rule decide (§5.2, §5.4.1).
    fn on_vote(&mut self, i: usize, candidate: usize, term: u64, last_log: LogId) {
        let candidate_id = self.nodes[candidate].id;
        let node = &mut self.nodes[i];
        if term > node.term {
            node.become_follower(term, None);
        }
        let voter = VoterState { term: node.term, voted_for: node.voted_for, last_log: node.log.last() };
        let granted = (self.rules.grant_vote)(voter, Candidacy { term, candidate: candidate_id, last_log });
        if granted {
            node.voted_for = Some(candidate_id);
        }
        let reply = Message::VoteReply { asked_term: term, term: node.term, granted };
        self.send(i, candidate, reply);
    }

    /// `Election::on_vote`.
    fn on_vote_reply(&mut self, i: usize, voter: usize, asked_term: u64, term: u64, granted: bool) {
        let voter_id = self.nodes[voter].id;
        let node = &mut self.nodes[i];
        if term > node.term && !granted {
            node.become_follower(term, None);
            return;
        }
        if node.role != Role::Candidate || node.term != asked_term || !granted {
            return;
        }
        node.votes.insert(voter_id);
        if node.votes.len() >= quorum(self.size()) {
            self.become_leader(i);
        }
    }

    /// `Handler<AppendEntries>` with `LogStore`'s `AppendFromLeader`: the consistency check
    /// and conflict truncation (§5.3), then commit = min(leader commit, match index).
    fn on_append(&mut self, i: usize, leader: usize, request: AppendRequest) -> Result<(), Violation> {
        let AppendRequest { term, prev, entries, leader_commit, epoch } = request;
        let leader_id = self.nodes[leader].id;
        let node = &mut self.nodes[i];
        if term < node.term {
            let message =
                Message::AppendReply { asked_term: term, epoch, term: node.term, outcome: Outcome::StaleTerm };
            self.send(i, leader, message);
            return Ok(());
        }
        let term_moved = term > node.term;
        if term_moved || node.role != Role::Follower || node.leader != Some(leader_id) {
            node.become_follower(term, Some(leader_id));
        }
        let outcome = match node.log.plan_append(prev, &entries) {
            Err(conflict) => {
                self.coverage.conflicts += 1;
                Outcome::Conflict { next_index: conflict.next_index }
            }
            Ok(plan) => {
                if let Some(from) = plan.truncate_from {
                    if from <= node.commit {
                        // `LogStore` refuses this and stops: an applied entry would change.
                        let detail = format!("node {} told to truncate from {from}, commit {}", node.id, node.commit);
                        return violated(Property::StateMachineSafety, detail);
                    }
                    self.coverage.truncations += 1;
                }
                node.log.apply(&plan);
                node.commit = node.commit.max(leader_commit.min(plan.match_index));
                // A heartbeat that wrote nothing is not waited for and not counted (`LogStore`).
                if entries.is_empty() && !term_moved {
                    Outcome::Heartbeat
                } else {
                    Outcome::Success { match_index: plan.match_index }
                }
            }
        };
        let message = Message::AppendReply { asked_term: term, epoch, term, outcome };
        self.send(i, leader, message);
        Ok(())
    }

    /// The `Replicator`'s handling of an answer, and `PeerProgress` / `HigherTermSeen`.
    fn on_append_reply(&mut self, i: usize, peer: usize, asked_term: u64, epoch: u64, term: u64, outcome: Outcome) {
        let node = &mut self.nodes[i];
        if term > node.term {
            node.become_follower(term, None);
            return;
        }
        if node.term != asked_term {
            return;
        }
        let last = node.log.last().index;
        let Some(lead) = node.lead.as_mut() else { return };
        let restart = |lead: &mut Lead, next: u64| {
            lead.epoch[peer] += 1;
            lead.next_index[peer] = next.clamp(lead.match_index[peer] + 1, last + 1);
        };
        match outcome {
            Outcome::Success { match_index } => {
                lead.match_index[peer] = lead.match_index[peer].max(match_index);
                self.leader_advance_commit(i);
            }
            Outcome::Heartbeat => {}
            Outcome::Conflict { next_index } if epoch == lead.epoch[peer] => restart(lead, next_index),
            Outcome::StaleTerm if epoch == lead.epoch[peer] => {
                let next = lead.match_index[peer] + 1;
                restart(lead, next);
            }
            Outcome::Conflict { .. } | Outcome::StaleTerm => {}
        }
    }

    /// Checks Figure 3 against the cluster as it stands and the observer's records.
    fn check(&mut self) -> Result<(), Violation> {
        self.check_election_safety()?;
        self.check_leader_append_only()?;
        self.apply_committed()?;
        self.check_log_matching()?;
        self.check_leader_completeness()
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
            let now = (node.role == Role::Leader).then(|| (node.term, node.entries()));
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
            while (node.applied.len() as u64) < node.commit {
                let index = node.applied.len() as u64 + 1;
                let Some(entry) = node.log.get(index).cloned() else {
                    let detail =
                        format!("node {} commits {} past its last entry {:?}", node.id, node.commit, node.log.last());
                    return violated(Property::StateMachineSafety, detail);
                };
                match self.committed.get_mut(index as usize - 1) {
                    Some((first, term)) if *first == entry => *term = (*term).min(node.term),
                    Some((first, _)) => {
                        let detail = format!("node {} applies {entry:?}, another applied {first:?}", node.id);
                        return violated(Property::StateMachineSafety, detail);
                    }
                    None => self.committed.push((entry.clone(), node.term)),
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
        for node in self.nodes.iter().filter(|n| n.role == Role::Leader) {
            for (k, (entry, term)) in self.committed.iter().enumerate() {
                if *term < node.term && node.log.get(k as u64 + 1) != Some(entry) {
                    let detail = format!(
                        "leader {} of term {} lacks {entry:?}, committed in term {term}; its log {:?}",
                        node.id,
                        node.term,
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

    /// Loses every message in flight from `from` to `to`.
    fn drop_between(&mut self, from: usize, to: usize) -> Result<(), Violation> {
        while let Some(pick) = self.network.iter().position(|e| e.from == from && e.to == to) {
            self.step(Action::Drop { pick })?;
        }
        Ok(())
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
        assert_eq!(self.nodes[i].role, Role::Leader, "node {} is not leader:\n{self}", i + 1);
        (0..i).filter(|&j| self.nodes[j].role == Role::Leader).count()
    }

    fn propose_at(&mut self, i: usize) -> Result<(), Violation> {
        self.step(Action::Propose { leader: self.rank(i) })
    }

    /// Node `i` replicates to `peer` (or every peer) with up to `batch` entries.
    fn replicate_at(&mut self, i: usize, peer: Option<usize>, batch: usize) -> Result<(), Violation> {
        let n = self.size();
        let peer = peer.map(|p| (p + n - i - 1) % n);
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
                n.id, n.role, n.term, n.voted_for, n.commit
            )?;
        }
        writeln!(f, "elected {:?}, {} messages in flight", self.elected, self.network.len())
    }
}

/// A log as the terms of its entries, index 1 first.
fn terms(entries: &[Arc<Entry>]) -> Vec<u64> {
    entries.iter().map(|e| e.term).collect()
}

/// Runs `actions` on a fresh cluster; the error names the property, the step and the state.
fn run_case(size: usize, rules: Rules, actions: &[Action]) -> Result<Cluster, String> {
    let mut cluster = Cluster::new(size, rules);
    for (k, &action) in actions.iter().enumerate() {
        if let Err(v) = cluster.step(action) {
            return Err(format!("{v}\nat step {k}: {action:?}\n{cluster}"));
        }
    }
    Ok(cluster)
}

/// Action sequences for a cluster of `size`. The weights favour delivery so that elections
/// finish and entries commit between the faults.
fn actions(size: usize) -> impl Strategy<Value = Vec<Action>> {
    let node = 0..size;
    // Mostly one of the oldest messages, so that elections finish; sometimes any.
    let pick = prop_oneof![3 => 0..4usize, 1 => any::<u8>().prop_map(usize::from)];
    let action = prop_oneof![
        3 => node.clone().prop_map(|node| Action::Timeout { node }),
        60 => pick.clone().prop_map(|pick| Action::Deliver { pick }),
        3 => pick.clone().prop_map(|pick| Action::Drop { pick }),
        2 => pick.prop_map(|pick| Action::Duplicate { pick }),
        8 => (0..2usize).prop_map(|leader| Action::Propose { leader }),
        12 => (0..2usize, prop::option::weighted(0.5, 0..size - 1), 0..4usize)
            .prop_map(|(leader, peer, batch)| Action::Replicate { leader, peer, batch }),
        1 => (node, any::<bool>()).prop_map(|(node, keep_commit)| Action::Crash { node, keep_commit }),
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
    let result = TestRunner::new(config).run(&actions(size), |actions| {
        let cluster = run_case(size, CRATE_RULES, &actions).map_err(TestCaseError::fail)?;
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
    // Each floor sits well below what five nodes, the harder case, reach: about 1.6 elections
    // per case, 20% of cases in three terms, 19% truncating, 45% committing.
    assert!(c.elections >= c.cases, "fewer elections than cases: {c:?}");
    assert!(share(c.cases_with_three_leader_terms) >= 0.1, "few cases elect in three terms: {c:?}");
    assert!(share(c.cases_with_truncation) >= 0.08, "few cases truncate a divergent suffix: {c:?}");
    assert!(share(c.cases_with_commit) >= 0.3, "few cases commit: {c:?}");
    assert!(c.carried_commits > 0 && c.conflicts > 0 && c.crashes > 0, "paths never taken: {c:?}");
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
/// 1. Three nodes; node 1 times out and every message arrives: it leads term 1.
/// 2. A client writes; the leader replicates the no-op and the write, then the commit index.
/// 3. Every node has committed and applied both entries.
#[test]
fn a_quiet_network_elects_and_commits_everywhere() {
    let mut c = Cluster::new(3, CRATE_RULES);
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
        assert_eq!((node.commit, node.applied.len()), (2, 2), "{c}");
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
        let mut c = Cluster::new(3, CRATE_RULES);
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
        c.nodes[0].commit = 1;
        c.nodes[1].commit = 1;
    };
    assert_eq!(caught(&second_leader), Property::ElectionSafety);
    assert_eq!(caught(&rewritten), Property::LeaderAppendOnly);
    assert_eq!(caught(&same_position_other_entry), Property::LogMatching);
    assert_eq!(caught(&committed_missing), Property::LeaderCompleteness);
    assert_eq!(caught(&applied_differently), Property::StateMachineSafety);
}

/// Figure 8 of the paper, on five nodes S1..S5 (indexes 0..4). Each leader's no-op is the
/// first entry of its term.
///
/// 1. S1 leads term 1; index 1 reaches everyone.
/// 2. (a) S1 leads term 2 and writes indexes 2 and 3; they reach S2 only.
/// 3. (b) S1 crashes; S5 leads term 3 with S3 and S4, and writes indexes 2 and 3 of term 3.
/// 4. (c) S5 crashes; S1 leads term 4 with S3 and S4 (S2 does not hear the vote request). S1
///    repairs S3 after one conflict and reaches S2 with a heartbeat: index 3 (term 2) is on
///    S1, S2, S3, a majority, but S1's no-op of term 4 is on S1 alone.
/// 5. (d) S1 crashes; S5 leads term 5 with S2, S3, S4, whose logs end in an older term,
///    and overwrites indexes 2 and 3 everywhere.
fn figure_8(rules: Rules) -> Result<Cluster, Violation> {
    let mut c = Cluster::new(5, rules);
    c.step(Action::Timeout { node: 0 })?;
    c.settle()?;
    c.replicate_at(0, None, 1)?;
    c.settle()?;
    // (a)
    c.step(Action::Timeout { node: 0 })?;
    c.settle()?;
    c.propose_at(0)?;
    c.replicate_at(0, Some(1), 2)?;
    c.settle()?;
    // (b)
    c.step(Action::Crash { node: 0, keep_commit: true })?;
    c.step(Action::Timeout { node: 4 })?;
    c.settle()?;
    c.propose_at(4)?;
    // (c)
    c.step(Action::Crash { node: 4, keep_commit: true })?;
    c.step(Action::Timeout { node: 0 })?;
    c.drop_between(0, 1)?;
    c.settle()?;
    c.replicate_at(0, Some(2), 2)?;
    c.deliver_between(0, 2)?;
    c.deliver_between(2, 0)?;
    c.replicate_at(0, Some(2), 2)?;
    c.replicate_at(0, Some(1), 0)?;
    c.settle()?;
    // (d)
    c.step(Action::Crash { node: 0, keep_commit: true })?;
    c.step(Action::Timeout { node: 4 })?;
    c.settle()?;
    for _ in 0..3 {
        c.replicate_at(4, None, 4)?;
        c.settle()?;
    }
    Ok(c)
}

/// With the crate's commit rule, Figure 8 runs to the end safely: index 3 of term 2 was on a
/// majority but never committed, so S5 may overwrite it. Reference: §5.4.2, Figure 8.
#[test]
fn figure_8_an_old_term_entry_on_a_majority_is_not_committed() {
    let c = figure_8(CRATE_RULES).unwrap_or_else(|v| panic!("{v}"));
    for node in &c.nodes {
        assert_eq!(terms(&node.entries()), [1, 3, 3, 5], "{c}");
        assert_eq!(node.commit, 4, "{c}");
    }
    assert!(c.coverage.truncations >= 3, "{:?}", c.coverage);
}

/// The checks bite: a commit rule that counts replicas of an older term's entry (ignores
/// `term_start`) commits index 3 in step (c) of Figure 8, and S5's election in step (d) then
/// breaks Leader Completeness. Reference: §5.4.2.
#[test]
fn committing_an_old_term_entry_by_counting_is_caught() {
    let counting_any_term =
        Rules { advance_commit: |commit, durable, _| advance_commit(commit, durable, 0), ..CRATE_RULES };
    let Err(v) = figure_8(counting_any_term) else { panic!("the mutant commit rule went unnoticed") };
    assert_eq!(v.property, Property::LeaderCompleteness, "{v}");
}

/// The checks bite on generated cases too: with a vote rule that skips the up-to-date check,
/// a node missing committed entries gets elected, and the search finds it. Reference: §5.4.1.
#[test]
fn granting_votes_without_the_log_check_is_caught() {
    let careless = Rules {
        grant_vote: |voter, req| req.term == voter.term && voter.voted_for.is_none_or(|c| c == req.candidate),
        ..CRATE_RULES
    };
    let config = Config { cases: 2_000, failure_persistence: None, ..config() };
    let result = TestRunner::new(config)
        .run(&actions(3), |actions| run_case(3, careless, &actions).map(drop).map_err(TestCaseError::fail));
    match result {
        Err(TestError::Fail(reason, minimal)) => {
            assert!(reason.message().contains("violated"), "{reason}");
            eprintln!("mutant vote rule caught in {} steps: {reason}", minimal.len());
        }
        other => panic!("the mutant vote rule went unnoticed: {other:?}"),
    }
}
