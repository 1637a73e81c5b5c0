//! An in-memory log for tests and deterministic simulation: no threads, no files. The handle
//! is shared, so a test can stop a node and start it again on the same log.
//!
//! By default every batch is durable at once. With a sync delay, a batch becomes durable only
//! after that much (tokio) time, in submission order, several batches per "fsync" when they
//! queue up; a node that crashes before then loses them, exactly as an un-fsynced write is
//! lost: [`MemoryStorage::recover`] drops whatever is still pending.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::oneshot;

use super::snapshots::MemorySnapshots;
use super::{LogBackend, Recovered, WriteBatch, replay};
use crate::error::StorageError;

type Reply = oneshot::Sender<Result<(), StorageError>>;

#[derive(Debug, Default)]
struct Inner {
    durable: Recovered,
    pending: VecDeque<(u64, WriteBatch, Reply)>,
    next_seq: u64,
    /// Bumped by every recovery, so a sync scheduled by a crashed incarnation does nothing.
    epoch: u64,
    sync_delay: Duration,
}

impl Inner {
    fn apply(&mut self, batch: WriteBatch) -> Result<(), StorageError> {
        for w in batch.writes {
            replay(&mut self.durable, w).map_err(|reason| StorageError::Corrupt {
                path: "memory".into(),
                offset: 0,
                reason,
            })?;
        }
        if let Some(to) = batch.compact_to {
            self.durable.compact_to(to);
        }
        Ok(())
    }

    fn sync_upto(&mut self, seq: u64) {
        while self.pending.front().is_some_and(|(s, ..)| *s <= seq) {
            if let Some((_, batch, reply)) = self.pending.pop_front() {
                let r = self.apply(batch);
                let _ = reply.send(r);
            }
        }
    }
}

/// A log held in memory, shared by every clone of the handle.
#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    inner: Arc<Mutex<Inner>>,
    snapshots: MemorySnapshots,
}

impl MemoryStorage {
    /// An empty log whose writes are durable at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty log whose writes become durable `delay` after they are submitted (must be
    /// used on a tokio `LocalSet`: the sync runs as a local task).
    pub fn with_sync_delay(delay: Duration) -> Self {
        let s = Self::default();
        s.lock().sync_delay = delay;
        s
    }

    /// The snapshots kept beside this log.
    pub fn snapshots(&self) -> MemorySnapshots {
        self.snapshots.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a node starting on this log would find. Writes not yet durable are lost, as a
    /// crash loses what was not fsynced.
    pub fn recover(&self) -> Recovered {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.pending.clear();
        inner.durable.clone()
    }

    /// Number of batches submitted but not yet durable.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

impl LogBackend for MemoryStorage {
    fn submit(&mut self, batch: WriteBatch) -> oneshot::Receiver<Result<(), StorageError>> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        if inner.sync_delay.is_zero() {
            // Earlier delayed batches cannot exist here: the delay is fixed per storage.
            let r = inner.apply(batch);
            let _ = tx.send(r);
            return rx;
        }
        inner.next_seq += 1;
        let (seq, epoch, delay) = (inner.next_seq, inner.epoch, inner.sync_delay);
        inner.pending.push_back((seq, batch, tx));
        let this = self.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(delay).await;
            let mut inner = this.lock();
            if inner.epoch == epoch {
                inner.sync_upto(seq);
            }
        });
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
        drop(m.submit(WriteBatch::of(vec![e(1, 1), e(1, 2), e(1, 3), LogWrite::HardState(hs)])));
        drop(m.submit(WriteBatch::of(vec![e(2, 2)])));
        let r = m.recover();
        assert_eq!(r.hard_state, hs);
        assert_eq!(r.entries.iter().map(|e| (e.term, e.index)).collect::<Vec<_>>(), vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn a_gap_is_refused() {
        let mut m = MemoryStorage::new();
        let mut rx = m.submit(WriteBatch::of(vec![e(1, 2)]));
        assert!(matches!(rx.try_recv(), Ok(Some(Err(StorageError::Corrupt { .. })))));
    }

    /// Compaction drops what it covers and keeps the rest; a reset drops everything; either
    /// way the log goes on after the new base, and nothing at or below it may be appended
    /// again.
    #[test]
    fn compaction_and_reset_move_the_base() {
        let mut m = MemoryStorage::new();
        let reset = |term, index| LogWrite::Reset(crate::raft::LogId::new(term, index));
        let mut batch = WriteBatch::of(vec![e(1, 1), e(1, 2), e(1, 3)]);
        batch.compact_to = Some(crate::raft::LogId::new(1, 2));
        drop(m.submit(batch));
        let r = m.recover();
        assert_eq!((r.base.index, r.entries.iter().map(|e| e.index).collect::<Vec<_>>()), (2, vec![3]));
        // A snapshot at 10 that the log does not hold: a restored backup, or an install.
        drop(m.submit(WriteBatch::of(vec![reset(3, 10), e(3, 11)])));
        let r = m.recover();
        assert_eq!((r.base, r.last().index, r.entries.len()), (crate::raft::LogId::new(3, 10), 11, 1));
        let mut rx = m.submit(WriteBatch::of(vec![e(3, 10)]));
        assert!(
            matches!(rx.try_recv(), Ok(Some(Err(StorageError::Corrupt { .. })))),
            "an entry the snapshot covers was appended"
        );
    }

    /// With a sync delay, a crash (recovery before the delay ran out) loses the write, and
    /// the writer is never told it was durable.
    #[test]
    fn unsynced_writes_are_lost_by_a_crash() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let mut m = MemoryStorage::with_sync_delay(Duration::from_millis(5));
            let first = m.submit(WriteBatch::of(vec![e(1, 1)]));
            assert_eq!(first.await.unwrap().map_err(|e| e.to_string()), Ok(()));
            let mut second = m.submit(WriteBatch::of(vec![e(1, 2)]));
            assert_eq!(m.pending(), 1);
            let r = m.recover();
            assert_eq!(r.entries.len(), 1, "the unsynced entry survived the crash");
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(second.try_recv().is_err(), "a lost write was acknowledged");
            assert_eq!(m.recover().entries.len(), 1);
        });
    }
}
