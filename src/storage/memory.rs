//! An in-memory log for tests and deterministic simulation: no threads, no files. The handle
//! is shared, so a test can stop a node and start it again on the same log. Every batch is
//! durable at once; a later fault layer can hold batches back to model lost un-fsynced writes.

use std::sync::{Arc, Mutex};

use futures::channel::oneshot;

use super::{LogBackend, Recovered, WriteBatch, replay};
use crate::error::StorageError;

/// A log held in memory, shared by every clone of the handle.
#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    inner: Arc<Mutex<Recovered>>,
}

impl MemoryStorage {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// What a node starting on this log would find.
    pub fn recover(&self) -> Recovered {
        self.inner.lock().map(|g| g.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }
}

impl LogBackend for MemoryStorage {
    fn submit(&mut self, batch: WriteBatch) -> oneshot::Receiver<Result<(), StorageError>> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut result = Ok(());
        for w in batch.writes {
            if let Err(reason) = replay(&mut state, w) {
                result = Err(StorageError::Corrupt { path: "memory".into(), offset: 0, reason });
                break;
            }
        }
        let _ = tx.send(result);
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, HardState, Payload};
    use crate::storage::LogWrite;

    fn e(term: u64, index: u64) -> LogWrite {
        LogWrite::Entry(Arc::new(Entry { term, index, payload: Payload::Blank }))
    }

    #[test]
    fn appending_at_an_earlier_index_cuts_the_suffix() {
        let mut m = MemoryStorage::new();
        let hs = HardState { term: 2, voted_for: Some(1), commit: 1 };
        drop(m.submit(WriteBatch { writes: vec![e(1, 1), e(1, 2), e(1, 3), LogWrite::HardState(hs)] }));
        drop(m.submit(WriteBatch { writes: vec![e(2, 2)] }));
        let r = m.recover();
        assert_eq!(r.hard_state, hs);
        assert_eq!(r.entries.iter().map(|e| (e.term, e.index)).collect::<Vec<_>>(), vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn a_gap_is_refused() {
        let mut m = MemoryStorage::new();
        let mut rx = m.submit(WriteBatch { writes: vec![e(1, 2)] });
        assert!(matches!(rx.try_recv(), Ok(Some(Err(StorageError::Corrupt { .. })))));
    }
}
