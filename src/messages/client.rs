//! Client requests as they reach `Election` (writes to be replicated, read indexes,
//! membership and leadership changes), and what the `Listener` is asked about connections.

use actix::Message;

use crate::admission::Admitted;
use crate::error::ApiError;
use crate::raft::{LogId, NodeId, Role};
use crate::wire::{PeerStatus, Write, WriteReply};

/// A write, for `Election`: the leader replicates it and answers after it is applied; a
/// follower forwards it to the leader unless it was already forwarded.
#[derive(Debug, Message)]
#[rtype(result = "Result<WriteReply, ApiError>")]
pub struct ClientWrite {
    /// The command.
    pub write: Write,
    /// True when a follower forwarded it here; it is not forwarded again.
    pub forwarded: bool,
    /// The client's place among the node's pending writes, held until the write is
    /// answered here (not until the client gives up): what admission counts is what the
    /// node holds. `None` for the node's own writes (the registry's check outcomes).
    pub place: Option<Admitted>,
    /// Only as leader of this term: the node's own writes decided by what it saw while it
    /// led (the registry's check outcomes) must not land in a later term it leads again,
    /// having missed what happened in between.
    pub term: Option<u64>,
}

/// Ask for a read index (§6.4): the leader confirms it still leads, then answers its commit
/// index; a follower asks the leader.
#[derive(Debug, Message)]
#[rtype(result = "Result<u64, ApiError>")]
pub struct GetReadIndex {
    /// True when a follower forwarded it here.
    pub forwarded: bool,
}

/// Ask `Election` for its view.
#[derive(Debug, Message)]
#[rtype(result = "ElectionStatus")]
pub struct GetElectionStatus;

/// `Election`'s view.
#[derive(Debug, Clone)]
pub struct ElectionStatus {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// The commit index it knows of.
    pub commit_index: u64,
    /// Its last log entry as it sees it.
    pub last_log: LogId,
    /// The other members.
    pub peers: Vec<PeerStatus>,
    /// Every member of the configuration in effect.
    pub members: Vec<crate::wire::MemberStatus>,
    /// The index of the configuration in effect.
    pub members_index: u64,
    /// Whether it is not committed yet.
    pub members_pending: bool,
}

/// A membership change, for `Election`: proposed on the leader (a follower passes it on,
/// unless it was passed on already), answered once committed with the index of its entry.
#[derive(Debug, Message)]
#[rtype(result = "Result<WriteReply, ApiError>")]
pub struct ChangeMembers {
    /// The change.
    pub change: crate::raft::members::MemberChange,
    /// True on the leader when a follower passed it on.
    pub forwarded: bool,
}

/// Hand leadership over (to `to`, or to the most caught-up voter), for `Election`; a follower
/// passes it on to the leader unless `forwarded`. Answered once the leader has stepped down,
/// with the node it handed to.
#[derive(Debug, Message)]
#[rtype(result = "Result<crate::raft::NodeId, ApiError>")]
pub struct TransferLeadership {
    /// The voter to hand to.
    pub to: Option<crate::raft::NodeId>,
    /// True on the leader when a follower passed it on.
    pub forwarded: bool,
}

/// The leader `from` of `term` hands leadership to this node (TimeoutNow), for `Election`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct TimeoutNow {
    /// The leader.
    pub from: crate::raft::NodeId,
    /// Its term.
    pub term: u64,
}

/// Close every link to a peer (the node is stopping).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopPeerLinks;

/// Stop accepting.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopListener;

/// A connection was refused after its handshake (a client sent Raft traffic): count it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CountRefusal(pub crate::wire::RefusalKind);

/// Ask for the refusal counts.
#[derive(Debug, Message)]
#[rtype(result = "crate::wire::RefusedConnections")]
pub struct GetRefusals;
