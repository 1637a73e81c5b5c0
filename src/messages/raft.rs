//! Raft traffic inside a node: `Connection` → `Election` (peer requests), `Election` →
//! `LogStore` (durable writes), `Election` ⇄ `Replicator` (replication and its progress).

use std::sync::Arc;

use actix::Message;

use bytes::Bytes;

use crate::error::{ApiError, StorageError};
use crate::raft::log::AppendConflict;
use crate::raft::{Entry, LogId, NodeId};
use crate::wire::{AppendEntriesRequest, AppendEntriesResponse, LeaseWord, VoteRequest, VoteResponse};

/// A peer's AppendEntries, for `Election`.
#[derive(Debug, Message)]
#[rtype(result = "AppendEntriesResponse")]
pub struct AppendEntries(pub AppendEntriesRequest);

/// A leader's InstallSnapshot chunk, for `Election`.
#[derive(Debug, Message)]
#[rtype(result = "crate::wire::InstallSnapshotResponse")]
pub struct InstallSnapshot(pub crate::wire::InstallSnapshotRequest);

/// A peer's vote request, for `Election`.
#[derive(Debug, Message)]
#[rtype(result = "VoteResponse")]
pub struct RequestVote(pub VoteRequest);

/// The leader's own new entries, for `LogStore`; answered once they are durable, with the
/// last durable entry.
#[derive(Debug, Message)]
#[rtype(result = "Result<LogId, StorageError>")]
pub struct AppendLocal {
    /// Consecutive entries following the log.
    pub entries: Vec<Arc<Entry>>,
}

/// A leader's entries on a follower, for `LogStore`: term check, consistency check,
/// conflict truncation, append; answered once durable (an empty append that changes nothing
/// is answered at once, claiming no durability).
#[derive(Debug, Message)]
#[rtype(result = "Result<AppendFromLeaderReply, StorageError>")]
pub struct AppendFromLeader {
    /// The leader's term. `LogStore` refuses an older one and makes a newer one durable in
    /// the same batch as the entries, so no message ordering is needed for that rule.
    pub term: u64,
    /// The entry before `entries`.
    pub prev: LogId,
    /// The entries.
    pub entries: Vec<Arc<Entry>>,
}

/// What an append from the leader did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendResult {
    /// The log matches the leader's up to this index.
    Matched(u64),
    /// The consistency check failed.
    Conflict(AppendConflict),
    /// The log's hard state has a later term than the request.
    StaleTerm(u64),
}

/// The answer to [`AppendFromLeader`].
#[derive(Debug, Clone, Copy)]
pub struct AppendFromLeaderReply {
    /// What happened.
    pub result: AppendResult,
    /// Whether this reply waited for every earlier write to be durable (only then may a
    /// match be reported to the leader as replicated).
    pub durable: bool,
    /// The log's last entry as of this request.
    pub last: LogId,
}

/// A chunk of the leader's snapshot on a follower, for `LogStore`: term check (a newer term
/// made durable before the answer), then the bytes; once all are in and verify, the
/// snapshot is installed (state machines restored, the log reset or compacted to it) and
/// durable before the answer.
#[derive(Debug, Message)]
#[rtype(result = "Result<InstallReply, StorageError>")]
pub struct InstallFromLeader {
    /// The leader's term.
    pub term: u64,
    /// The chunk.
    pub chunk: crate::wire::InstallSnapshotRequest,
}

/// What a chunk did.
#[derive(Debug, Clone)]
pub enum InstallReply {
    /// Bytes up to this offset are held (0: start again).
    Accepted(u64),
    /// The snapshot is installed; `members` is its configuration (`None`: this node had
    /// applied past it already and kept its own state), `kept` says whether the log's
    /// entries after it stayed (it held the snapshot's last entry), `last` is the log's
    /// last entry now.
    Installed {
        /// The snapshot's last entry.
        snapshot: LogId,
        /// Its configuration, if it was installed.
        members: Option<crate::raft::members::Members>,
        /// Whether the entries after it stayed.
        kept: bool,
        /// The log's last entry.
        last: LogId,
    },
    /// The log's hard state has a later term than the request.
    StaleTerm(u64),
}

/// Make term and vote durable, for `LogStore`; answered once they are (and every earlier
/// write with them), with the log's last entry at that point: what a candidate must report.
#[derive(Debug, Message)]
#[rtype(result = "Result<LogId, StorageError>")]
pub struct SaveHardState {
    /// The current term.
    pub term: u64,
    /// The vote in that term.
    pub voted_for: Option<NodeId>,
}

/// Entries for a `Replicator` to ship.
#[derive(Debug, Message)]
#[rtype(result = "Result<FetchedEntries, FetchEntriesError>")]
pub struct FetchEntries {
    /// First index wanted.
    pub from: u64,
    /// Most entries.
    pub max_count: usize,
    /// Most bytes (one entry is returned even if larger).
    pub max_bytes: usize,
}

/// Entries read from the log, with the entry before them (the AppendEntries `prev`).
#[derive(Debug, Clone)]
pub struct FetchedEntries {
    /// The entry before `entries`.
    pub prev: LogId,
    /// The entries (may be empty: a heartbeat).
    pub entries: Vec<Arc<Entry>>,
}

/// Why entries cannot be fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FetchEntriesError {
    /// The entry before `from` is no longer in the log (compacted): the peer needs a snapshot.
    #[error("index {0} is compacted")]
    Compacted(u64),
    /// `from` is past the end of the log.
    #[error("index {from} is past the last index {last}")]
    PastEnd {
        /// Asked from.
        from: u64,
        /// The last index.
        last: u64,
    },
}

/// The commit index moved, for `LogStore`: apply up to it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CommitTo(pub u64);

/// Ask `LogStore` where the log stands.
#[derive(Debug, Message)]
#[rtype(result = "LogState")]
pub struct GetLogState;

/// Where the log stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogState {
    /// The last entry.
    pub last: LogId,
    /// The highest index known committed.
    pub commit: u64,
    /// The highest index every state machine has applied.
    pub applied: u64,
    /// The first entry still in the log.
    pub first_index: u64,
    /// The newest snapshot, if one was taken.
    pub snapshot: Option<SnapshotStatus>,
    /// Snapshots installed from a leader since start.
    pub installed: u64,
}

/// Take a snapshot now, unless the newest covers every applied entry (`snapshot save`).
#[derive(Debug, Message)]
#[rtype(result = "Result<SnapshotStatus, ApiError>")]
pub struct SnapshotNow;

/// Bytes of the newest snapshot, if it is still the one covering `last`.
#[derive(Debug, Message)]
#[rtype(result = "Result<Bytes, ApiError>")]
pub struct ReadSnapshotBytes {
    /// The snapshot being read.
    pub last: LogId,
    /// Where to read from.
    pub offset: u64,
    /// Most bytes to answer.
    pub max: usize,
}

/// A snapshot as status shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// The last entry it covers.
    pub last: LogId,
    /// Its size in bytes.
    pub bytes: u64,
}

/// New work for a `Replicator`: ship up to `last_index`, tell the peer `commit`, and confirm
/// leadership for read `round`.
#[derive(Debug, Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct Replicate {
    /// The leader's last index.
    pub last_index: u64,
    /// The leader's commit index.
    pub commit: u64,
    /// How far committed entries may be applied and seen (`leader_visible`).
    pub visible: u64,
    /// The newest read round waiting for confirmation.
    pub round: u64,
}

/// Send the peer this word on its read lease with the next request (`read_mode = "lease"`).
#[derive(Clone, Copy, Debug, Message)]
#[rtype(result = "()")]
pub struct SendLease(pub LeaseWord);

/// Stop replicating (the leader stepped down).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopReplication;

/// A `Replicator`'s report to `Election`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PeerProgress {
    /// The peer.
    pub peer: NodeId,
    /// The leader term the replicator works for.
    pub term: u64,
    /// The peer answered in our term: it still takes us as leader for reads up to this
    /// round, and check-quorum counts it as alive.
    pub acked_round: u64,
    /// Highest index known durable on the peer, if it moved.
    pub match_index: Option<u64>,
    /// The peer's commit index, as it answered.
    pub commit: Option<u64>,
    /// The peer's ask for a read lease.
    pub lease_ask: Option<u64>,
    /// The peer answered a request that revoked its read lease: it dropped it.
    pub lease_dropped: bool,
}

/// A peer answered with a higher term: the leader must step down.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct HigherTermSeen {
    /// The peer's term.
    pub term: u64,
    /// The peer.
    pub peer: NodeId,
}

/// A peer's inbound connection closed. When the peer is our leader, its process has most
/// likely died (a crash closes its sockets at once), so an election need not wait for the
/// whole timeout.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PeerDisconnected {
    /// The peer whose connection closed.
    pub peer: NodeId,
}

/// Event: this node became leader of `term` (`is_leader`), or stopped leading it. Sent to
/// every watcher registered with [`WatchLeadership`]: the service registry runs health checks
/// only while its node leads; the fault suite checks Election Safety from these.
#[derive(Debug, Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct LeadershipChanged {
    /// The node.
    pub node: NodeId,
    /// The term it leads, or led.
    pub term: u64,
    /// Whether it now leads.
    pub is_leader: bool,
}

/// Register a watcher of [`LeadershipChanged`] events; if the node leads already, the
/// watcher hears of it at once.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct WatchLeadership(pub actix::Recipient<LeadershipChanged>);

/// Send `request` to the current leader and relay its answer (a follower passing on
/// something only the leader can do, such as a beat).
#[derive(Debug, Message)]
#[rtype(result = "Result<crate::wire::Response, crate::error::ApiError>")]
pub struct ForwardToLeader(pub crate::wire::Request);
