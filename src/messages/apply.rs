//! The commit stream: `LogStore` hands committed entries, in index order, to the state machine
//! that owns their namespace. Any actor that handles [`ApplyEntries`] can subscribe; that is
//! how a new replicated feature is added without touching the core.

use std::sync::Arc;

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message, Recipient};
use bytes::Bytes;

use crate::error::ApiError;
use crate::raft::Entry;
use crate::snapshot::{RestoreSnapshot, TakeSnapshot};

/// Committed entries for one state machine.
#[derive(Debug, Message, Clone)]
#[rtype(result = "Vec<Result<Bytes, String>>")]
pub struct ApplyEntries {
    /// Entries of the subscriber's namespace, in index order, all committed.
    pub entries: Vec<Arc<Entry>>,
    /// Every index up to this one is now applied for the subscriber (entries of other
    /// namespaces included); reads waiting for it may be answered.
    pub applied_to: u64,
}

/// How `LogStore` drives a state machine: committed entries in, snapshots out and back in.
#[derive(Clone, Debug)]
pub struct StateMachineRef {
    /// Receives the namespace's committed entries, in index order.
    pub apply: Recipient<ApplyEntries>,
    /// Hands over a view of the state for a snapshot.
    pub take: Recipient<TakeSnapshot>,
    /// Replaces the state with a snapshot's.
    pub restore: Recipient<RestoreSnapshot>,
}

impl StateMachineRef {
    /// The three recipients of one actor.
    pub fn of<A>(addr: &Addr<A>) -> Self
    where
        A: Actor + Handler<ApplyEntries> + Handler<TakeSnapshot> + Handler<RestoreSnapshot>,
        A::Context: ToEnvelope<A, ApplyEntries> + ToEnvelope<A, TakeSnapshot> + ToEnvelope<A, RestoreSnapshot>,
    {
        StateMachineRef {
            apply: addr.clone().recipient(),
            take: addr.clone().recipient(),
            restore: addr.clone().recipient(),
        }
    }
}

/// Subscribe a state machine to its namespace of the commit stream. It is brought up to
/// date first: from the node's snapshot, if that has its namespace, then the entries
/// committed after it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    /// The namespace.
    pub namespace: String,
    /// The state machine.
    pub machine: StateMachineRef,
}

/// Follow the commit stream without owning a namespace: committed entries (of `namespace`,
/// or every entry, blanks included, when `None`) arrive in index order, starting with a
/// replay of those already committed; the follower's outputs are ignored. For audit,
/// metrics, watches, and the checks of the fault suite.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Follow {
    /// The namespace to follow, or `None` for all.
    pub namespace: Option<String>,
    /// The follower.
    pub recipient: Recipient<ApplyEntries>,
}

/// What applying one entry produced, for the writer waiting on it.
#[derive(Debug, Clone)]
pub struct ApplyOutput {
    /// The entry's index.
    pub index: u64,
    /// The entry's term (a waiter for another term at this index lost its entry).
    pub term: u64,
    /// The state machine's answer.
    pub result: Result<Bytes, String>,
}

/// `LogStore` → `Election`: these entries are applied.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct EntriesApplied {
    /// One output per applied command.
    pub outputs: Vec<ApplyOutput>,
    /// Everything up to here is applied.
    pub applied_to: u64,
}

/// A read-only query for a state machine, answered once it has applied `min_applied`.
#[derive(Debug, Message, Clone)]
#[rtype(result = "Result<Bytes, ApiError>")]
pub struct Query {
    /// The query, in the state machine's encoding.
    pub data: Bytes,
    /// Answer only after applying this index (0 for a stale read).
    pub min_applied: u64,
}
