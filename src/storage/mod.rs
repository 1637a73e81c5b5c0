//! Durable storage behind the `LogStore` actor.
//!
//! The log is a stream of records: entries and hard states. Appending an entry with index `i`
//! implicitly drops every entry `>= i` held before (that is how a divergent suffix is cut), so
//! the files are append-only and a crash can never leave a half-done truncation. The last hard
//! state record wins. Compaction (a later step) drops whole segments below a snapshot after
//! rewriting the current hard state forward.
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
use crate::raft::{Entry, HardState};

pub use file::FileLog;
pub use memory::MemoryStorage;
pub use snapshots::{SnapshotStore, StoredSnapshot};

/// One record of the log stream.
#[derive(Clone, Debug)]
pub enum LogWrite {
    /// Append an entry; an entry already held at this index or later is dropped first.
    Entry(Arc<Entry>),
    /// Replace the hard state.
    HardState(HardState),
}

/// Records that become durable together. An empty batch is a barrier: its receiver resolves
/// once every earlier batch is durable.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// The records, in order.
    pub writes: Vec<LogWrite>,
}

impl WriteBatch {
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
    /// The entries, consecutive, starting at index 1.
    pub entries: Vec<Arc<Entry>>,
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
    /// Opens the storage: recovers what it holds and returns a backend to append to.
    pub fn open(&self, segment_bytes: u64) -> Result<(Box<dyn LogBackend>, Recovered), StorageError> {
        match self {
            StorageConfig::Dir(dir) => {
                let (log, recovered) = FileLog::open(dir, segment_bytes)?;
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
            let next = state.entries.len() as u64 + 1;
            if e.index == 0 || e.index > next {
                return Err(format!("entry index {} does not follow last index {}", e.index, next - 1));
            }
            state.entries.truncate(e.index as usize - 1);
            state.entries.push(e);
        }
    }
    Ok(())
}
