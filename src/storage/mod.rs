//! Durable storage behind the `LogStore` actor.
//!
//! The log is a stream of records: entries and hard states. Appending an entry with index `i`
//! implicitly drops every entry `>= i` held before (that is how a divergent suffix is cut), so
//! the files are append-only and a crash can never leave a half-done truncation. The last hard
//! state record wins. A reset record says a snapshot now covers the log up to an entry the
//! log does not hold: everything held is dropped, and the log goes on after that entry (a
//! restored backup or an installed snapshot starts this way). Compaction
//! ([`WriteBatch::compact_to`]) drops the entries up to a point a snapshot covers: the file
//! backend deletes whole segments below it once the batch (which carries the current hard
//! state forward) is durable.
//!
//! [`LogBackend::submit`] queues a [`WriteBatch`]; batches become durable in the order they were
//! submitted, and the returned receiver resolves once the batch (and every batch before it) is on
//! disk. The file backend does its writes and fsyncs on a dedicated thread and folds every batch
//! that queued during one fsync into the next one (group commit), so the actor's event loop never
//! blocks on the disk. The memory backend does the same work inline, for tests and simulation.

pub mod file;
pub mod memory;
pub mod snapshots;

use std::sync::Arc;

use futures::channel::oneshot;

use crate::error::StorageError;
use crate::raft::{Entry, HardState, LogId};

pub use file::FileLog;
pub use memory::MemoryStorage;
pub use snapshots::{Receiving, SnapshotStore, StoredSnapshot};

/// One record of the log stream.
#[derive(Clone, Debug)]
pub enum LogWrite {
    /// Append an entry; an entry already held at this index or later is dropped first.
    Entry(Arc<Entry>),
    /// Replace the hard state.
    HardState(HardState),
    /// A snapshot covers the log up to and including this entry, which the log does not
    /// hold (or holds with another term): every entry goes, and the log goes on after it.
    Reset(LogId),
}

/// Records that become durable together. An empty batch is a barrier: its receiver resolves
/// once every earlier batch is durable.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// The records, in order.
    pub writes: Vec<LogWrite>,
    /// Once the batch is durable, the entries up to and including this one (which the log
    /// holds, and a durable snapshot covers) may go. The batch should carry the current hard
    /// state: records before it may be deleted with the entries. A backend may keep more
    /// (the file backend deletes whole segments only).
    pub compact_to: Option<LogId>,
}

impl WriteBatch {
    /// A batch of `writes`.
    pub fn of(writes: Vec<LogWrite>) -> Self {
        WriteBatch { writes, compact_to: None }
    }

    /// True if the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// What start-up found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The last hard state written, or the default for a new log.
    pub hard_state: HardState,
    /// The entry just before the first one held: index 0 unless a snapshot covers a prefix.
    pub base: LogId,
    /// The entries, consecutive, starting right after `base`.
    pub entries: Vec<Arc<Entry>>,
}

impl Recovered {
    /// The last entry held, or the base.
    pub fn last(&self) -> LogId {
        self.entries.last().map(|e| e.log_id()).unwrap_or(self.base)
    }

    /// The term of the entry at `index`, if held (the base's counts).
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.base.index {
            return Some(self.base.term);
        }
        let offset = index.checked_sub(self.base.index + 1)?;
        self.entries.get(usize::try_from(offset).ok()?).map(|e| e.term)
    }

    /// Drops the entries up to and including `to`, if held with its term: `to` becomes the
    /// base. Anything else changes nothing.
    pub fn compact_to(&mut self, to: LogId) {
        if to.index > self.base.index && self.term_at(to.index) == Some(to.term) {
            self.entries.drain(..(to.index - self.base.index) as usize);
            self.base = to;
        }
    }
}

/// Receives durable-write batches; completes them in submission order.
pub trait LogBackend: Send + 'static {
    /// Queues a batch; the receiver resolves when it and every earlier batch are durable,
    /// or with the error that stopped the backend.
    fn submit(&mut self, batch: WriteBatch) -> oneshot::Receiver<Result<(), StorageError>>;
}

/// Where a node keeps its log.
#[derive(Clone, Debug)]
pub enum StorageConfig {
    /// Segment files under this directory (the production default).
    Dir(std::path::PathBuf),
    /// An in-memory log shared with the test or simulation that created it.
    Memory(MemoryStorage),
}

impl StorageConfig {
    /// Opens the storage: recovers what it holds and returns a backend to append to, which
    /// records each fsync's duration in `fsync`.
    pub fn open(
        &self,
        segment_bytes: u64,
        fsync: Option<prometheus_client::metrics::histogram::Histogram>,
    ) -> Result<(Box<dyn LogBackend>, Recovered), StorageError> {
        match self {
            StorageConfig::Dir(dir) => {
                let (log, recovered) = FileLog::open_observed(dir, segment_bytes, fsync)?;
                Ok((Box::new(log), recovered))
            }
            StorageConfig::Memory(mem) => Ok((Box::new(mem.clone()), mem.recover())),
        }
    }

    /// Where this storage keeps snapshots: `snapshots/` beside the log segments.
    pub fn snapshots(&self) -> SnapshotStore {
        match self {
            StorageConfig::Dir(dir) => SnapshotStore::Dir(dir.join("snapshots")),
            StorageConfig::Memory(mem) => SnapshotStore::Memory(mem.snapshots()),
        }
    }
}

/// Replays records into the state they describe; shared by every backend so that recovery
/// has one definition. Returns an error if an entry does not follow the log.
pub fn replay(state: &mut Recovered, write: LogWrite) -> Result<(), String> {
    match write {
        LogWrite::HardState(hs) => state.hard_state = hs,
        LogWrite::Entry(e) => {
            let next = state.last().index + 1;
            if e.index <= state.base.index || e.index > next {
                let (base, last) = (state.base.index, next - 1);
                return Err(format!(
                    "entry index {} does not follow the log (base {base}, last index {last})",
                    e.index
                ));
            }
            state.entries.truncate((e.index - state.base.index - 1) as usize);
            state.entries.push(e);
        }
        LogWrite::Reset(base) => {
            state.entries.clear();
            state.base = base;
        }
    }
    Ok(())
}
