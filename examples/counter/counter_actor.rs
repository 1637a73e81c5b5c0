//! A replicated feature added from outside the core: named counters.
//!
//! The actor owns the namespace `counter`. Writes are JSON [`CounterCommand`]s replicated
//! through the log (`NodeHandle::write` / `Client::write`); the actor receives its committed
//! entries in index order as [`ApplyEntries`] and answers [`Query`]s for a counter's value,
//! holding a linearizable query until it has applied the read index it carries. It hands over
//! its state for snapshots (`TakeSnapshot`) and takes it back (`RestoreSnapshot`). Nothing in
//! the core knows about it: the node is told at start-up with `NodeBuilder::state_machine`.

use std::collections::BTreeMap;

use actix::prelude::*;
use bytes::Bytes;
use dister::ApiError;
use dister::messages::apply::{ApplyEntries, Query};
use dister::raft::Payload;
use dister::snapshot::{RestoreSnapshot, SnapshotView, TakeSnapshot, read_record, write_record};
use dister::state_machine::{AppliedGate, read_after};
use serde::{Deserialize, Serialize};

/// The namespace this state machine owns.
pub const NAMESPACE: &str = "counter";

/// A counter command, as stored in the log.
#[derive(Debug, Serialize, Deserialize)]
pub enum CounterCommand {
    /// Add `by` (may be negative) to counter `name`; answers the new value.
    Add {
        /// Counter name.
        name: String,
        /// Amount.
        by: i64,
    },
    /// Set counter `name` back to 0; answers 0.
    Reset {
        /// Counter name.
        name: String,
    },
}

/// Named counters.
#[derive(Default)]
pub struct Counters {
    values: BTreeMap<String, i64>,
    /// Indexes applied, in order: proof for tests that entries arrive once and in order.
    pub applied: Vec<u64>,
    /// The snapshot index it was restored from, if it was.
    pub restored_at: Option<u64>,
    gate: AppliedGate,
}

impl Actor for Counters {
    type Context = Context<Self>;
}

impl Handler<ApplyEntries> for Counters {
    type Result = Vec<Result<Bytes, String>>;

    fn handle(&mut self, msg: ApplyEntries, _: &mut Context<Self>) -> Self::Result {
        let mut out = Vec::with_capacity(msg.entries.len());
        for e in &msg.entries {
            assert!(self.applied.last().is_none_or(|&last| e.index > last), "entries out of order");
            assert!(self.restored_at.is_none_or(|at| e.index > at), "an entry the snapshot holds came again");
            self.applied.push(e.index);
            let Payload::Command { data, .. } = &e.payload else {
                out.push(Ok(Bytes::new()));
                continue;
            };
            let result = serde_json::from_slice::<CounterCommand>(data)
                .map_err(|err| format!("bad counter command: {err}"))
                .map(|cmd| match cmd {
                    CounterCommand::Add { name, by } => {
                        let v = self.values.entry(name).or_default();
                        *v = v.saturating_add(by);
                        *v
                    }
                    CounterCommand::Reset { name } => {
                        self.values.insert(name, 0);
                        0
                    }
                })
                .map(|v| Bytes::from(v.to_string()));
            out.push(result);
        }
        self.gate.advance(msg.applied_to);
        out
    }
}

impl Handler<TakeSnapshot> for Counters {
    type Result = Result<SnapshotView, String>;

    /// A copy of the counters (few and small), written off the actor's thread.
    fn handle(&mut self, msg: TakeSnapshot, _: &mut Context<Self>) -> Self::Result {
        self.gate.check_view(msg.index)?;
        let values = self.values.clone();
        Ok(SnapshotView {
            items: values.len() as u64,
            write: Box::new(move |out| values.iter().try_for_each(|pair| write_record(out, &pair))),
        })
    }
}

impl Handler<RestoreSnapshot> for Counters {
    type Result = Result<(), String>;

    fn handle(&mut self, mut msg: RestoreSnapshot, _: &mut Context<Self>) -> Self::Result {
        let mut values = BTreeMap::new();
        let mut buf = Vec::new();
        while let Some((name, value)) =
            read_record::<(String, i64)>(&mut msg.data, &mut buf).map_err(|e| e.to_string())?
        {
            values.insert(name, value);
        }
        self.values = values;
        self.restored_at = Some(msg.index);
        self.gate.advance(msg.index);
        Ok(())
    }
}

impl Handler<Query> for Counters {
    type Result = ResponseActFuture<Self, Result<Bytes, ApiError>>;

    /// The query is a JSON string, the counter's name; the answer its value (0 if never set).
    fn handle(&mut self, msg: Query, _: &mut Context<Self>) -> Self::Result {
        let name = serde_json::from_slice::<String>(&msg.data);
        read_after(
            self,
            |a| &mut a.gate,
            msg.min_applied,
            move |a| {
                let name =
                    name.map_err(|e| ApiError::BadRequest(format!("counter query must be a JSON string: {e}")))?;
                Ok(Bytes::from(a.values.get(&name).copied().unwrap_or(0).to_string()))
            },
        )
    }
}

/// Encodes a command for `Client::write(NAMESPACE, ..)`.
pub fn add(name: &str, by: i64) -> Bytes {
    Bytes::from(serde_json::to_vec(&CounterCommand::Add { name: name.into(), by }).unwrap_or_default())
}

/// Encodes a query for `Client::query(NAMESPACE, ..)`.
pub fn value_of(name: &str) -> Bytes {
    Bytes::from(serde_json::to_vec(name).unwrap_or_default())
}
