//! The Raft decisions as pure code: no actors, no IO, no timers.
//!
//! `core` is the whole of `Election`'s decision making as a state machine fed inputs and
//! leaving actions; the actors (`Election`, `Replicator`, `LogStore`) do the IO around it and
//! these functions, so every rule here can be stepped by a unit or property test (t15 drives
//! the core itself). Section numbers refer to the Raft paper (Ongaro & Ousterhout, "In Search
//! of an Understandable Consensus Algorithm", extended version).

pub mod commit;
pub mod core;
pub mod log;
pub mod members;
pub mod vote;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A node's id inside its cluster; ids are configured, never assigned at run time.
pub type NodeId = u64;

/// The position of an entry: its term, then its index. Ordered the way §5.4.1 compares logs
/// ("the later term is more up to date; with equal terms the longer log is").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogId {
    /// Term of the entry.
    pub term: u64,
    /// Index of the entry; 0 means "before the first entry".
    pub index: u64,
}

impl LogId {
    /// Builds a log id.
    pub fn new(term: u64, index: u64) -> Self {
        Self { term, index }
    }
}

/// One replicated log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Term of the leader that created the entry.
    pub term: u64,
    /// Position in the log, starting at 1. Indexes are never reused or renumbered, so a
    /// compacted log keeps the same numbering.
    pub index: u64,
    /// What the entry carries.
    pub payload: Payload,
}

impl Entry {
    /// The entry's position.
    pub fn log_id(&self) -> LogId {
        LogId::new(self.term, self.index)
    }

    /// An estimate of the entry's encoded size, used to bound replication batches.
    pub fn size_hint(&self) -> usize {
        32 + match &self.payload {
            Payload::Blank => 0,
            Payload::Command { namespace, data } => namespace.len() + data.len(),
            Payload::Config(m) => m.all().map(|(_, addr, _)| 16 + addr.len()).sum(),
        }
    }
}

/// The content of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// The no-op a new leader appends so that it can commit entries of earlier terms
    /// (§5.4.2) and serve ReadIndex reads (§6.4).
    Blank,
    /// A command for the state machine that owns `namespace`; `data` is that state
    /// machine's own encoding, opaque to the core.
    Command {
        /// Which state machine applies the command (`kv`, `registry`, or an added one).
        namespace: String,
        /// The encoded command.
        data: Bytes,
    },
    /// A new cluster configuration, in effect on each node once appended (see
    /// [`members`]). Added last: postcard numbers the variants, and logs written before keep
    /// their meaning.
    Config(members::Members),
}

/// The state Raft requires to be durable before a node answers a vote or an append (Figure 2,
/// "persistent state on all servers"), plus the highest index known committed, kept so a
/// restarted node can rebuild its state machines before it hears from a leader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: u64,
    /// Candidate this node voted for in `term`, if any.
    pub voted_for: Option<NodeId>,
    /// Highest index known to be committed when this record was written.
    pub commit: u64,
}

/// The role a node plays in the current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Follows a leader, or waits for one.
    Follower,
    /// Asks for votes.
    Candidate,
    /// Accepts writes and replicates them.
    Leader,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        })
    }
}

/// Number of votes (or acknowledgements) that make a majority of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}
