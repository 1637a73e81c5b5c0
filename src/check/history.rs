//! What clients did: the operations of a key/value history and the recorder that collects them.
//!
//! A history is a plain `Vec<Operation>` so tests can write one down directly; [`History`] is the
//! shared handle clients record into while they run, from one async task or from many threads.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// A point in time, in nanoseconds since the history started. Real or simulated: the checker
/// only compares times, so any clock that never runs backwards will do.
pub type Time = u64;

/// Who issued an operation. Operations of one client are expected not to overlap, but the
/// checker does not rely on it.
pub type ClientId = u64;

/// The position of an operation in its history; error messages name operations by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpId(pub usize);

/// What a client asked of one key (a register that is either absent or holds a string).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// Set the key to the value.
    Write(String),
    /// Read the key; the value seen comes back in [`Outcome::Read`].
    Read,
    /// Remove the key, making it absent.
    Delete,
}

/// How an operation ended, as far as its client knows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// A write or delete was acknowledged: it took effect between invoke and completion.
    Ok,
    /// A read answered, with `None` for an absent key.
    Read(Option<String>),
    /// The operation definitely did not take effect (e.g. rejected before being proposed).
    Fail,
    /// The client gave up waiting (timeout, lost connection, history ended): the operation may
    /// take effect at any time after its invocation, even after the history ends, or never.
    Unknown,
}

/// One operation of a history: what was asked, of which key, when, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Operation {
    /// The client that issued it.
    pub client: ClientId,
    /// The key it touched.
    pub key: String,
    /// What it asked.
    pub op: Op,
    /// When the client sent it.
    pub invoke: Time,
    /// When the client saw it end; ignored for [`Outcome::Unknown`], [`Time::MAX`] if never.
    pub complete: Time,
    /// How it ended.
    pub outcome: Outcome,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        match &self.op {
            Op::Write(value) => write!(f, "write {:?} := {value:?}", self.key)?,
            Op::Read => write!(f, "read {:?}", self.key)?,
            Op::Delete => write!(f, "delete {:?}", self.key)?,
        }
        match &self.outcome {
            Outcome::Ok => write!(f, " ok")?,
            Outcome::Read(seen) => write!(f, " -> {seen:?}")?,
            Outcome::Fail => write!(f, " failed")?,
            Outcome::Unknown => write!(f, " unknown")?,
        }
        if self.complete == Time::MAX {
            write!(f, " [{}, ..)", self.invoke)
        } else {
            write!(f, " [{}, {}]", self.invoke, self.complete)
        }
    }
}

/// A shared recorder of operations: clone it into every client, call [`History::invoke`] just
/// before sending a request and [`History::complete`] just after its answer (or its timeout).
///
/// Operations never completed count as [`Outcome::Unknown`], which is what they are: a client
/// that stopped waiting cannot know whether its request took effect.
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Box<dyn Fn() -> Time + Send + Sync>,
    ops: Mutex<Vec<Operation>>,
}

impl History {
    /// A recorder timed by the wall clock, from now.
    pub fn new() -> Self {
        let start = Instant::now();
        Self::with_clock(move || u64::try_from(start.elapsed().as_nanos()).unwrap_or(Time::MAX))
    }

    /// A recorder timed by `clock`, e.g. a simulator's elapsed time.
    pub fn with_clock(clock: impl Fn() -> Time + Send + Sync + 'static) -> Self {
        Self { inner: Arc::new(Inner { clock: Box::new(clock), ops: Mutex::new(Vec::new()) }) }
    }

    /// Records that `client` is about to send `op` on `key`; returns the id to complete it with.
    pub fn invoke(&self, client: ClientId, key: impl Into<String>, op: Op) -> OpId {
        let mut ops = self.lock();
        // Read the clock under the lock so the recorded order of events matches their times.
        let invoke = (self.inner.clock)();
        ops.push(Operation { client, key: key.into(), op, invoke, complete: Time::MAX, outcome: Outcome::Unknown });
        OpId(ops.len() - 1)
    }

    /// Records how operation `id` ended. An id this history did not hand out is ignored.
    pub fn complete(&self, id: OpId, outcome: Outcome) {
        let mut ops = self.lock();
        let complete = (self.inner.clock)();
        debug_assert!(id.0 < ops.len(), "completed {id:?}, which this history never invoked");
        if let Some(op) = ops.get_mut(id.0) {
            op.complete = complete;
            op.outcome = outcome;
        }
    }

    /// A copy of the operations recorded so far, indexed by [`OpId`].
    pub fn operations(&self) -> Vec<Operation> {
        self.lock().clone()
    }

    /// Checks the operations recorded so far; see [`super::check`].
    pub fn check(&self) -> Result<super::CheckStats, super::CheckError> {
        super::check(&self.operations())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Operation>> {
        // A client that panicked mid-record leaves a whole Vec behind; its operations stay valid.
        self.inner.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History").field("ops", &self.lock().len()).finish_non_exhaustive()
    }
}
