//! The wire enums: one per direction ([`Request`], [`Response`]) and the bodies they carry.
//! Peers and clients share them; [`Request::is_peer_only`] says which a client may not send.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::raft::members::{MemberChange, MemberRole};
use crate::raft::{Entry, LogId, NodeId, Role};

/// AppendEntries (§5.3): replicate entries, or an empty heartbeat.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppendEntriesRequest {
    /// The leader's term.
    pub term: u64,
    /// The leader, so followers can redirect and forward.
    pub leader: NodeId,
    /// The entry just before `entries`.
    pub prev: LogId,
    /// Entries to store (empty for a heartbeat).
    pub entries: Vec<Arc<Entry>>,
    /// The leader's commit index.
    pub leader_commit: u64,
    /// How far committed entries may be applied, and so seen: the commit index, or under
    /// follower leases (`read_mode = "lease"`) the highest index every follower holding a
    /// lease is known to have taken as committed.
    pub leader_visible: u64,
    /// A read lease for the follower (answering its ask), or the end of the one it holds.
    pub lease: Option<LeaseWord>,
}

/// What the leader says of a follower's read lease (`read_mode = "lease"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseWord {
    /// A lease, answering the follower's ask.
    Grant(LeaseGrant),
    /// Drop the lease now (a transfer of leadership is under way): the answer says it is
    /// dropped.
    Revoke,
}

/// A read lease the leader grants a follower (`read_mode = "lease"`): the follower may answer
/// linearizable reads from its own state until its lease (counted on its clock from when it
/// made the ask) runs out, at its commit index, and never below `floor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// The follower's ask this answers.
    pub ask: u64,
    /// The leader's commit index when it granted the lease.
    pub floor: u64,
}

/// The follower's answer to AppendEntries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppendEntriesResponse {
    /// The follower's term, for the leader to step down if it is behind.
    pub term: u64,
    /// What happened.
    pub outcome: AppendOutcome,
    /// The follower's commit index once it took the request in.
    pub commit: u64,
    /// The follower asks for a read lease (`read_mode = "lease"`), naming the ask.
    pub lease_ask: Option<u64>,
}

impl AppendEntriesResponse {
    /// An answer that reports no commit index and asks for no lease.
    pub fn new(term: u64, outcome: AppendOutcome) -> Self {
        AppendEntriesResponse { term, outcome, commit: 0, lease_ask: None }
    }
}

/// Result of an AppendEntries on the follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendOutcome {
    /// The log matches the leader's up to `match_index`, durably.
    Success {
        /// Highest index known to match the leader's log and be on disk.
        match_index: u64,
    },
    /// The consistency check failed; retry from `next_index`.
    Conflict {
        /// Where the leader should retry from.
        next_index: u64,
    },
    /// The request's term is stale; `term` in the response says which is current. Also
    /// answered when the follower could not store the entries.
    StaleTerm,
    /// A heartbeat (no entries) that matched: the follower takes this leader for its term,
    /// but claims nothing about durability, so it could answer without waiting for its disk.
    Heartbeat,
}

/// InstallSnapshot (§7): one chunk of the leader's newest snapshot, for a follower whose
/// next entry the leader's log no longer holds. Chunks go one at a time, in order; the
/// follower installs the snapshot once it holds every byte and the whole verifies.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstallSnapshotRequest {
    /// The leader's term.
    pub term: u64,
    /// The leader.
    pub leader: NodeId,
    /// The last entry the snapshot covers: names the transfer.
    pub last: LogId,
    /// The snapshot's whole size in bytes.
    pub size: u64,
    /// Where `data` starts in it.
    pub offset: u64,
    /// The chunk.
    pub data: Bytes,
}

/// The follower's answer to an InstallSnapshot chunk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstallSnapshotResponse {
    /// The follower's term.
    pub term: u64,
    /// What happened.
    pub outcome: InstallOutcome,
}

/// Result of an InstallSnapshot chunk on the follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstallOutcome {
    /// The follower holds the snapshot's bytes up to `next_offset`: send from there (0
    /// starts the transfer again).
    Accepted {
        /// Where the next chunk starts.
        next_offset: u64,
    },
    /// The snapshot is installed and durable: the follower's log goes on after its last
    /// entry.
    Installed,
    /// The request's term is stale, or the follower could not store the chunk.
    StaleTerm,
}

/// RequestVote (§5.2), or a pre-vote (thesis §9.6) that changes no state.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct VoteRequest {
    /// The term the candidate stands in (for a pre-vote: would stand in).
    pub term: u64,
    /// The candidate.
    pub candidate: NodeId,
    /// The candidate's last log entry.
    pub last_log: LogId,
    /// True for a pre-vote.
    pub pre_vote: bool,
    /// True when the leader handed over (TimeoutNow, thesis §3.10): voters that still hear
    /// from that leader vote anyway.
    pub transfer: bool,
}

/// The answer to a vote request.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct VoteResponse {
    /// The voter's term (unchanged by a pre-vote).
    pub term: u64,
    /// Whether the vote is granted.
    pub granted: bool,
}

/// A write: a command for the state machine owning `namespace`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Write {
    /// The state machine (`kv`, `registry`, or an added one).
    pub namespace: String,
    /// The command in that state machine's encoding.
    pub data: Bytes,
}

/// The answer to a write, once it is applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteReply {
    /// The log index the write was committed at.
    pub index: u64,
    /// What the state machine answered.
    pub output: Bytes,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read started (ReadIndex, §6.4).
    #[default]
    Linearizable,
    /// Served from the local state machine at once; may be behind.
    Stale,
}

/// One peer as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's id.
    pub id: NodeId,
    /// Its address.
    pub addr: String,
    /// On the leader: highest index known replicated to it.
    pub match_index: Option<u64>,
    /// On the leader: whether it answered within the last election timeout.
    pub alive: Option<bool>,
}

/// One member as `status` and `member list` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its id.
    pub id: NodeId,
    /// Its address.
    pub addr: String,
    /// Voter or learner.
    pub role: MemberRole,
    /// Whether it is to be promoted once caught up (a learner added as a voter).
    pub promoting: bool,
    /// On the leader: highest index known replicated to it (the leader's own last index for
    /// itself).
    pub match_index: Option<u64>,
    /// On the leader: whether it answered within the last election timeout.
    pub reachable: Option<bool>,
}

/// Connections refused since the node started, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedConnections {
    /// Another cluster group.
    pub wrong_group: u64,
    /// Another protocol version.
    pub wrong_version: u64,
    /// Missing or wrong cluster token.
    pub bad_token: u64,
    /// A node id the cluster removed (or the node's own).
    pub unknown_node: u64,
    /// Raft traffic from a client connection.
    pub raft_from_client: u64,
    /// Not a dister handshake.
    pub malformed: u64,
    /// No hello in time.
    pub timeout: u64,
    /// Clients beyond `max_client_connections`.
    pub too_many_connections: u64,
    /// A TLS port's handshake failed (plain text, a certificate refused), or a peer came
    /// without a certificate.
    pub tls: u64,
    /// A peer with another `read_mode` (or lease timing).
    pub wrong_read_mode: u64,
}

impl RefusedConnections {
    /// Counts one refusal.
    pub fn count(&mut self, kind: crate::wire::RefusalKind) {
        use crate::wire::RefusalKind as K;
        let slot = match kind {
            K::WrongGroup => &mut self.wrong_group,
            K::WrongVersion => &mut self.wrong_version,
            K::BadToken => &mut self.bad_token,
            K::UnknownNode => &mut self.unknown_node,
            K::RaftFromClient => &mut self.raft_from_client,
            K::Malformed => &mut self.malformed,
            K::Timeout => &mut self.timeout,
            K::TooManyConnections => &mut self.too_many_connections,
            K::Tls => &mut self.tls,
            K::WrongReadMode => &mut self.wrong_read_mode,
        };
        *slot += 1;
    }
}

/// A node's view of itself and the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// This node.
    pub id: NodeId,
    /// The cluster group.
    pub group: String,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Highest index known committed.
    pub commit_index: u64,
    /// Highest index applied to every state machine.
    pub applied_index: u64,
    /// Last index in its log.
    pub last_log_index: u64,
    /// Term of the last entry.
    pub last_log_term: u64,
    /// The other members.
    pub peers: Vec<PeerStatus>,
    /// Every member of the configuration in effect, this node too if it is one.
    pub members: Vec<MemberStatus>,
    /// The index of the configuration in effect, and whether a change to it is under way.
    pub members_index: u64,
    /// Whether the configuration in effect is not committed yet.
    pub members_pending: bool,
    /// Connections refused since start, by reason.
    pub refused: RefusedConnections,
    /// The first entry still in the log (entries before it are in the snapshot).
    pub first_log_index: u64,
    /// The last entry the newest snapshot covers (0 if none was taken).
    pub snapshot_index: u64,
    /// Its term.
    pub snapshot_term: u64,
    /// Its size in bytes.
    pub snapshot_bytes: u64,
    /// Snapshots installed from a leader since this node started.
    pub snapshots_installed: u64,
}

/// Everything a connection may ask.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Raft replication (peers only).
    AppendEntries(AppendEntriesRequest),
    /// Raft election (peers only).
    Vote(VoteRequest),
    /// Raft snapshot transfer (peers only).
    InstallSnapshot(InstallSnapshotRequest),
    /// A follower asks the leader for a read index (peers only).
    ReadIndex,
    /// A follower forwards a client's write to the leader (peers only); not forwarded again.
    Forward(Write),
    /// A client write; forwarded to the leader if this node is not it.
    Write(Write),
    /// Read one key.
    Get {
        /// The key.
        key: String,
        /// How fresh.
        consistency: Consistency,
    },
    /// List keys starting with `prefix` (all keys for an empty prefix).
    List {
        /// The prefix.
        prefix: String,
        /// How fresh.
        consistency: Consistency,
    },
    /// A query for the state machine owning `namespace`.
    Query {
        /// The state machine.
        namespace: String,
        /// The query in its encoding.
        data: Bytes,
        /// How fresh.
        consistency: Consistency,
    },
    /// An instance is alive (a TTL check or an ephemeral instance); the leader records it.
    Beat {
        /// The instance.
        key: crate::messages::registry::InstanceKey,
        /// True once passed on to the leader; not passed on again.
        forwarded: bool,
    },
    /// This node's status.
    Status,
    /// The leader hands leadership over: stand for election now (peers only, thesis §3.10).
    TimeoutNow {
        /// The leader's term.
        term: u64,
    },
    /// Hand leadership to `to` (or to the most caught-up voter); answered once this leader
    /// has stepped down, or why it could not. Forwarded to the leader if this node is not it.
    TransferLeadership {
        /// The voter to hand it to.
        to: Option<NodeId>,
    },
    /// A membership change; forwarded to the leader if this node is not it, answered once
    /// committed with the index of its entry.
    ChangeMembers {
        /// The change.
        change: MemberChange,
        /// True once passed on to the leader; not passed on again.
        forwarded: bool,
    },
    /// Take a snapshot of this node's state now (unless the newest already covers every
    /// applied entry); answered with the snapshot, to be read with `ReadSnapshot`.
    TakeSnapshot,
    /// Up to `max` bytes of this node's newest snapshot from `offset`; refused, retryably,
    /// once a newer snapshot has replaced the one named.
    ReadSnapshot {
        /// The snapshot being read.
        last: LogId,
        /// Where to read from.
        offset: u64,
        /// Most bytes to answer.
        max: u32,
    },
}

impl Request {
    /// Requests only a configured peer may send: a client connection cannot inject Raft
    /// traffic or pose as a forwarding follower.
    pub fn is_peer_only(&self) -> bool {
        matches!(
            self,
            Request::AppendEntries(_)
                | Request::Vote(_)
                | Request::InstallSnapshot(_)
                | Request::ReadIndex
                | Request::Forward(_)
                | Request::TimeoutNow { .. }
        )
    }
}

/// Everything a connection may answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// To AppendEntries.
    AppendEntries(AppendEntriesResponse),
    /// To a vote.
    Vote(VoteResponse),
    /// To InstallSnapshot.
    InstallSnapshot(InstallSnapshotResponse),
    /// To ReadIndex.
    ReadIndex(u64),
    /// To a write.
    Written(WriteReply),
    /// To Get.
    Value(Option<String>),
    /// To List.
    Pairs(Vec<(String, String)>),
    /// To Query.
    QueryReply(Bytes),
    /// To Status.
    Status(Box<StatusInfo>),
    /// Done, nothing to say (a beat).
    Done,
    /// To TransferLeadership: the node now leading.
    HandedTo(NodeId),
    /// The request failed.
    Error(ApiError),
    /// To TakeSnapshot: the snapshot's last entry and size.
    Snapshot {
        /// The last entry it covers.
        last: LogId,
        /// Its size in bytes.
        bytes: u64,
    },
    /// To ReadSnapshot: the bytes (empty past the end).
    SnapshotBytes(Bytes),
}
