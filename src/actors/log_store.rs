//! `LogStore`: owns the log (in memory and on disk through a [`LogBackend`]), the hard state,
//! the commit index as last told, and the commit stream.
//!
//! Receives: `AppendLocal` (leader's entries), `AppendFromLeader` (follower side of
//! AppendEntries), `InstallFromLeader` (follower side of InstallSnapshot), `SaveHardState`,
//! `FetchEntries` (from replicators), `CommitTo`, `Subscribe`, `GetLogState`.
//! Sends: `ApplyEntries` to the state machines, in index order; `EntriesApplied` to `Election`;
//! `TakeSnapshot` and `RestoreSnapshot` to the state machines.
//!
//! Snapshots: once `snapshot_entries` entries have been applied since the last snapshot, every
//! state machine is asked for a view of its state, right after the batch that brought it to
//! that index (its mailbox keeps the order), and the views are written to the snapshot
//! store off this thread while entries keep flowing. At start the newest snapshot is
//! restored into the state machines and only the entries after it are replayed.
//!
//! Compaction: once a snapshot is durable, the log drops what lies more than
//! `snapshot_catchup_entries` behind it, in memory at once and on disk (whole segments) once
//! the hard state is carried past them. A follower that needs a dropped entry gets the
//! snapshot instead (InstallSnapshot): its chunks are written to a temporary file off this
//! thread, and only a whole snapshot that verifies is installed: made the newest, the state
//! machines restored from it, the log reset (or compacted, if it holds the snapshot's last
//! entry) and the commit index moved past it, all durable before the leader hears of it.
//!
//! Every reply that claims durability is sent only after the backend has made the batch (and
//! every earlier one) durable; the backend completes batches in order, so replies go out in
//! the order the requests came in. The disk work never runs on this actor's thread.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::LocalBoxFuture;

use crate::error::{ApiError, StorageError};
use crate::messages::apply::{ApplyEntries, ApplyOutput, EntriesApplied, Follow, StateMachineRef, Subscribe};
use crate::messages::raft::{
    AppendFromLeader, AppendFromLeaderReply, AppendLocal, AppendResult, CommitTo, FetchEntries, FetchEntriesError,
    FetchedEntries, GetLogState, InstallFromLeader, InstallReply, LogState, ReadSnapshotBytes, SaveHardState,
    SnapshotNow, SnapshotStatus,
};
use crate::raft::log::MemLog;
use crate::raft::members::Members;
use crate::raft::{Entry, HardState, LogId, Payload};
use crate::snapshot::{RestoreSnapshot, SnapshotMeta, TakeSnapshot};
use crate::storage::{LogBackend, LogWrite, Receiving, Recovered, SnapshotStore, StoredSnapshot, WriteBatch};

/// Lowers the calling thread's scheduling priority (nice 10) where the OS allows it; on
/// failure the thread just keeps its priority.
fn lower_this_threads_priority() {
    // Elsewhere the call would renice the whole process, Raft's threads too.
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority reads no memory of ours; on Linux, PRIO_PROCESS with id 0
        // names the calling thread only.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "snapshot thread keeps its priority");
        }
    }
}

/// Most entries handed to the state machines in one batch.
const MAX_APPLY_BATCH: u64 = 4_096;

/// The log actor.
pub struct LogStore {
    log: MemLog,
    backend: Box<dyn LogBackend>,
    hard_state: HardState,
    /// The commit index went up since the hard state was last written.
    commit_dirty: bool,
    dispatched: u64,
    applied: u64,
    /// A batch is with the state machines: the next waits for it, so their mailboxes hold
    /// at most one batch from here however far commit runs ahead.
    applying: bool,
    subscribers: BTreeMap<String, StateMachineRef>,
    /// Actors that follow the commit stream without owning a namespace (audit, metrics,
    /// watches): `None` follows every entry, blanks included.
    followers: Vec<(Option<String>, Recipient<ApplyEntries>)>,
    election: Recipient<EntriesApplied>,
    failed: Option<String>,
    snapshots: Snapshots,
    /// A snapshot being received from the leader.
    incoming: Option<Incoming>,
    /// Disk work for `incoming` is under way (its chunks are handled one at a time).
    receiving_busy: bool,
    /// A received snapshot is being installed: no entry goes to the state machines, and no
    /// snapshot is taken, until it is.
    installing: bool,
    /// Snapshots installed since start.
    installed: u64,
}

/// A snapshot being received: which one, and the bytes so far.
struct Incoming {
    last: LogId,
    size: u64,
    /// `None` until the first bytes are written (or while disk work holds it).
    receiving: Option<Receiving>,
    written: u64,
}

type LogFuture<T> = ResponseActFuture<LogStore, Result<T, StorageError>>;

/// Runs blocking disk work on tokio's blocking pool, or in place for a memory store.
fn off_thread<T: Send + 'static>(
    in_place: bool,
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> LocalBoxFuture<'static, Result<T, StorageError>> {
    if in_place {
        return Box::pin(futures::future::ready(work()));
    }
    Box::pin(async move { tokio::task::spawn_blocking(work).await.unwrap_or(Err(StorageError::Closed)) })
}

/// What `LogStore` knows of snapshots.
pub struct Snapshots {
    store: SnapshotStore,
    /// The newest, as loaded at start or last taken.
    latest: Option<StoredSnapshot>,
    /// Entries applied between two snapshots (0: never take one).
    every: u64,
    /// Entries kept in the log behind the newest snapshot.
    catchup: u64,
    /// The configuration in effect at the applied index, as a snapshot records it.
    members: Members,
    /// A snapshot is being taken.
    taking: bool,
    /// The applied index at which the last snapshot failed (0: none did).
    failed_at: u64,
    /// Who waits for a snapshot (`snapshot save`), with the applied index it must cover.
    waiters: Vec<(u64, futures::channel::oneshot::Sender<Result<SnapshotStatus, ApiError>>)>,
}

/// Most `snapshot save` requests waiting at once.
const MAX_SNAPSHOT_WAITERS: usize = 64;

impl Snapshots {
    /// Snapshots in `store`, `latest` being the one recovered (if any), taken every `every`
    /// applied entries; `members` is the configuration in effect at the first entry to be
    /// applied (the latest snapshot's, or the bootstrap one).
    pub fn new(store: SnapshotStore, latest: Option<StoredSnapshot>, every: u64, members: Members) -> Self {
        let catchup = 0;
        Snapshots { store, latest, every, catchup, members, taking: false, failed_at: 0, waiters: Vec::new() }
    }

    /// Keeps `entries` in the log behind each snapshot for followers that lag.
    pub fn keeping(mut self, entries: u64) -> Self {
        self.catchup = entries;
        self
    }

    fn in_place(&self) -> bool {
        matches!(self.store, SnapshotStore::Memory(_))
    }

    /// The last entry the newest snapshot covers (index 0 if there is none).
    pub fn last(&self) -> LogId {
        self.latest.as_ref().map(|s| s.info.meta.last).unwrap_or_default()
    }

    fn status(&self) -> Option<SnapshotStatus> {
        self.latest.as_ref().map(|s| SnapshotStatus { last: s.info.meta.last, bytes: s.info.size })
    }

    /// Answers everyone waiting for a snapshot.
    fn answer_all(&mut self, result: Result<SnapshotStatus, ApiError>) {
        for (_, w) in self.waiters.drain(..) {
            let _ = w.send(result.clone());
        }
    }

    /// Answers those the newest snapshot covers; the others wait for the next.
    fn answer_covered(&mut self) {
        let Some(status) = self.status() else { return };
        let (covered, later) =
            std::mem::take(&mut self.waiters).into_iter().partition(|(min, _)| *min <= status.last.index);
        self.waiters = later;
        for (_, w) in covered {
            let _ = w.send(Ok(status));
        }
    }
}

impl LogStore {
    /// A log store over what recovery found. `subscribers` are the state machines known at
    /// start; entries committed before the crash are replayed to them when the actor starts.
    pub fn new(
        backend: Box<dyn LogBackend>,
        recovered: Recovered,
        subscribers: BTreeMap<String, StateMachineRef>,
        election: Recipient<EntriesApplied>,
        snapshots: Snapshots,
    ) -> Self {
        let mut hard_state = recovered.hard_state;
        let log = MemLog::new(recovered.base, recovered.entries);
        // A leader may have recorded a commit index above its own durable log (a majority of
        // others had the entries); replay only what this node holds.
        hard_state.commit = hard_state.commit.min(log.last().index);
        // Start-up made the log hold the snapshot's last entry and the commit index cover
        // it (`Node::start`).
        let restored = snapshots.last().index;
        LogStore {
            log,
            backend,
            hard_state,
            commit_dirty: false,
            dispatched: restored,
            applied: restored,
            applying: false,
            subscribers,
            followers: Vec::new(),
            election,
            failed: None,
            snapshots,
            incoming: None,
            receiving_busy: false,
            installing: false,
            installed: 0,
        }
    }

    /// The last entry held.
    pub fn last(&self) -> LogId {
        self.log.last()
    }

    /// The hard state as recovered or last written.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Queues `writes` (plus the hard state if the commit index moved) and returns a future
    /// resolving once they are durable.
    fn submit(&mut self, mut writes: Vec<LogWrite>) -> impl Future<Output = Result<(), StorageError>> + 'static {
        if self.commit_dirty && !writes.is_empty() {
            writes.push(LogWrite::HardState(self.hard_state));
            self.commit_dirty = false;
        }
        self.submit_batch(WriteBatch::of(writes))
    }

    /// Queues `batch` as it is; the future resolves once it is durable.
    fn submit_batch(&mut self, batch: WriteBatch) -> impl Future<Output = Result<(), StorageError>> + 'static {
        self.backend.submit(batch).map(|r| r.unwrap_or(Err(StorageError::Closed)))
    }

    fn check_failed(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(_) => Err(StorageError::Closed),
            None => Ok(()),
        }
    }

    /// Wraps a durability future so that a storage error marks the store failed: a node whose
    /// disk failed must not acknowledge or vote again.
    fn durable<T: 'static>(
        &mut self,
        fut: impl Future<Output = Result<(), StorageError>> + 'static,
        value: T,
    ) -> ResponseActFuture<Self, Result<T, StorageError>> {
        Box::pin(fut.into_actor(self).map(move |r, act, _| match r {
            Ok(()) => Ok(value),
            Err(e) => {
                tracing::error!(error = %e, "log storage failed; this node stops acknowledging writes");
                act.failed.get_or_insert_with(|| e.to_string());
                Err(e)
            }
        }))
    }

    fn refuse_truncating_committed(&self, from: u64) -> Result<(), StorageError> {
        if from <= self.hard_state.commit {
            // Raft guarantees this never happens (Leader Completeness); if it does, stopping
            // is the only answer that does not lose committed data.
            let reason = format!("refusing to overwrite committed index {from} (commit {})", self.hard_state.commit);
            tracing::error!(%reason, "raft safety violation");
            return Err(StorageError::Corrupt { path: "log".into(), offset: from, reason });
        }
        Ok(())
    }

    /// Entries `from..=to` held in the log, of `namespace` only if given.
    fn committed_entries(&self, from: u64, to: u64, namespace: Option<&str>) -> Vec<Arc<Entry>> {
        (from.max(self.log.first_index())..=to)
            .filter_map(|i| self.log.get(i))
            .filter(|e| match (namespace, &e.payload) {
                (None, _) => true,
                (Some(ns), Payload::Command { namespace, .. }) => namespace == ns,
                (Some(_), Payload::Blank | Payload::Config(_)) => false,
            })
            .cloned()
            .collect()
    }

    /// Sends newly committed entries to their state machines and followers, and reports the
    /// state machines' outputs.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        if self.applying || self.installing || self.failed.is_some() || self.hard_state.commit <= self.dispatched {
            return;
        }
        // Bounded, so one batch never holds a state machine's thread for long.
        let commit = self.hard_state.commit.min(self.dispatched + MAX_APPLY_BATCH);
        self.applying = true;
        let mut per_namespace: BTreeMap<&str, Vec<Arc<Entry>>> = BTreeMap::new();
        let mut outputs = Vec::new();
        for index in self.dispatched + 1..=commit {
            let Some(entry) = self.log.get(index) else { break };
            // Every index gets an output, so a writer waiting on an index whose entry was
            // replaced by another term's learns it at once.
            match &entry.payload {
                Payload::Config(m) => {
                    self.snapshots.members = m.clone();
                    outputs.push(ApplyOutput { index, term: entry.term, result: Ok(Default::default()) })
                }
                Payload::Command { namespace, .. } if self.subscribers.contains_key(namespace.as_str()) => {
                    per_namespace.entry(namespace.as_str()).or_default().push(entry.clone());
                }
                Payload::Command { namespace, .. } => outputs.push(ApplyOutput {
                    index,
                    term: entry.term,
                    result: Err(format!("no state machine for namespace {namespace:?} on this node")),
                }),
                Payload::Blank => outputs.push(ApplyOutput { index, term: entry.term, result: Ok(Default::default()) }),
            }
        }
        for (filter, follower) in &self.followers {
            let entries = self.committed_entries(self.dispatched + 1, commit, filter.as_deref());
            follower.do_send(ApplyEntries { entries, applied_to: commit });
        }
        self.dispatched = commit;
        let mut sends = Vec::new();
        for (ns, machine) in &self.subscribers {
            let entries = per_namespace.remove(ns.as_str()).unwrap_or_default();
            let ids: Vec<(u64, u64)> = entries.iter().map(|e| (e.index, e.term)).collect();
            let fut = machine.apply.send(ApplyEntries { entries, applied_to: commit });
            let ns = ns.clone();
            sends.push(async move {
                match fut.await {
                    Ok(results) => {
                        let mut results = results.into_iter();
                        ids.into_iter()
                            .map(|(index, term)| ApplyOutput {
                                index,
                                term,
                                result: results.next().unwrap_or_else(|| Err(format!("{ns} gave no output"))),
                            })
                            .collect::<Vec<_>>()
                    }
                    Err(e) => {
                        tracing::error!(namespace = %ns, error = %e, "state machine unreachable");
                        ids.into_iter()
                            .map(|(index, term)| ApplyOutput {
                                index,
                                term,
                                result: Err(format!("state machine {ns} unreachable")),
                            })
                            .collect()
                    }
                }
            });
        }
        let election = self.election.clone();
        ctx.spawn(futures::future::join_all(sends).into_actor(self).map(move |all, act, ctx| {
            act.applied = act.applied.max(commit);
            act.applying = false;
            outputs.extend(all.into_iter().flatten());
            outputs.sort_by_key(|o| o.index);
            election.do_send(EntriesApplied { outputs, applied_to: commit });
            // Before the next batch: each state machine's view is then of `commit` exactly.
            act.maybe_snapshot(ctx);
            act.dispatch(ctx);
        }));
    }

    /// Takes a snapshot of every state machine as of the applied index, if `every` entries
    /// were applied since the last one (or since the last failure) or one is asked for, and
    /// none is being taken. The views are asked for now, and no further batch goes to the
    /// state machines until every view is back, so each is of exactly that index; they are
    /// written on a thread of their own (in place for the memory store, which has no disk).
    fn maybe_snapshot(&mut self, ctx: &mut Context<Self>) {
        let s = &self.snapshots;
        let since = s.last().index.max(s.failed_at);
        let due = s.every > 0 && self.applied >= since.saturating_add(s.every);
        let asked = !s.waiters.is_empty();
        if let Some(reason) = &self.failed {
            let e = ApiError::Unavailable(format!("storage failed: {reason}"));
            self.snapshots.answer_all(Err(e));
            return;
        }
        if s.taking || self.applying || self.installing || !(due || asked) {
            return;
        }
        if self.applied <= self.snapshots.last().index {
            // Nothing applied since the newest: it is the one asked for.
            let result = self.snapshots.status().ok_or_else(|| ApiError::Unavailable("nothing applied yet".into()));
            self.snapshots.answer_all(result);
            return;
        }
        let index = self.applied;
        let Some(term) = self.log.term_at(index) else {
            let e = ApiError::Unavailable(format!("entry {index} is not in the log"));
            self.snapshots.answer_all(Err(e));
            return;
        };
        let meta = SnapshotMeta { last: LogId::new(term, index), members: self.snapshots.members.clone() };
        self.snapshots.taking = true;
        self.applying = true;
        let views: Vec<_> = self
            .subscribers
            .iter()
            .map(|(ns, m)| {
                let (ns, fut) = (ns.clone(), m.take.send(TakeSnapshot { index }));
                async move {
                    match fut.await {
                        Ok(Ok(view)) => Ok((ns, view)),
                        Ok(Err(e)) => Err(format!("state machine {ns} gave no snapshot: {e}")),
                        Err(e) => Err(format!("state machine {ns} unreachable: {e}")),
                    }
                }
            })
            .collect();
        let views = futures::future::join_all(views).into_actor(self).map(move |views, act, ctx| {
            // Every view is in: the state machines may move on.
            act.applying = false;
            act.dispatch(ctx);
            views.into_iter().collect::<Result<Vec<_>, String>>()
        });
        let store = self.snapshots.store.clone();
        let in_place = self.snapshots.in_place();
        let taken = views.then(move |views, act, _| {
            let written = async move {
                let views = views?;
                let save = move || store.save(&meta, views).map_err(|e| e.to_string());
                if in_place {
                    return save();
                }
                // A thread of its own, below the node's in priority: serializing the state
                // takes CPU that Raft's heartbeats and fsyncs must get first.
                let (tx, rx) = futures::channel::oneshot::channel();
                std::thread::Builder::new()
                    .name("dister-snapshot".into())
                    .spawn(move || {
                        lower_this_threads_priority();
                        let _ = tx.send(save());
                    })
                    .map_err(|e| format!("cannot start the snapshot thread: {e}"))?;
                rx.await.map_err(|_| "the snapshot thread ended without an answer".to_string())?
            };
            written.into_actor(act)
        });
        ctx.spawn(taken.map(move |r, act, ctx| {
            act.snapshots.taking = false;
            match r {
                Ok(stored) => {
                    let info = &stored.info;
                    tracing::info!(
                        index = info.meta.last.index,
                        term = info.meta.last.term,
                        bytes = info.size,
                        "snapshot taken"
                    );
                    if stored.info.meta.last.index > act.snapshots.last().index {
                        act.snapshots.latest = Some(stored);
                    }
                    act.snapshots.answer_covered();
                    act.compact(ctx);
                }
                Err(error) => {
                    // Not again before another `every` entries: a full disk must not be
                    // filled faster.
                    act.snapshots.failed_at = index;
                    tracing::error!(index, %error, "snapshot failed; the log keeps everything");
                    act.snapshots.answer_all(Err(ApiError::Unavailable(format!("snapshot failed: {error}"))));
                }
            }
            // Asked for since this one began: a newer one.
            act.maybe_snapshot(ctx);
        }));
    }

    /// Restores `machine` from the snapshot, if that has `namespace`'s section: answers
    /// the index it restored to, once the state machine has, or why it could not.
    /// With `replace`, a state machine the snapshot has no section for is restored empty
    /// (an installed snapshot replaces whatever state it had).
    fn restore(
        &self,
        namespace: &str,
        machine: &StateMachineRef,
        replace: bool,
    ) -> LocalBoxFuture<'static, Result<Option<u64>, String>> {
        let ready = |r| Box::pin(futures::future::ready(r)) as LocalBoxFuture<'static, Result<Option<u64>, String>>;
        let Some(stored) = &self.snapshots.latest else { return ready(Ok(None)) };
        let index = stored.info.meta.last.index;
        let data = match stored.section(namespace) {
            Ok(Some(data)) => data,
            Ok(None) if replace => Box::new(std::io::empty()),
            Ok(None) => return ready(Ok(None)),
            Err(e) => return ready(Err(format!("cannot read the snapshot: {e}"))),
        };
        let fut = machine.restore.send(RestoreSnapshot { index, data });
        let namespace = namespace.to_string();
        Box::pin(async move {
            match fut.await {
                Ok(Ok(())) => Ok(Some(index)),
                Ok(Err(e)) => Err(format!("state machine {namespace} could not restore the snapshot at {index}: {e}")),
                Err(e) => Err(format!("state machine {namespace} unreachable for its snapshot: {e}")),
            }
        })
    }

    /// Drops the log up to `catchup` entries behind the newest snapshot: in memory at once,
    /// on disk once the hard state is carried past the segments that go.
    fn compact(&mut self, ctx: &mut Context<Self>) {
        let to = self.snapshots.last().index.saturating_sub(self.snapshots.catchup);
        if self.failed.is_some() || to <= self.log.base().index || to > self.applied {
            return;
        }
        let base = self.log.compact_to(to);
        self.commit_dirty = false;
        let mut batch = WriteBatch::of(vec![LogWrite::HardState(self.hard_state)]);
        batch.compact_to = Some(base);
        tracing::debug!(to = base.index, "compacting the log");
        let fut = self.submit_batch(batch);
        ctx.spawn(self.durable(fut, ()).map(|_, _, _| ()));
    }

    /// Installs a received snapshot that verified: it is the newest now; the log is reset
    /// to it (or compacted, if it holds its last entry), the commit index moved past it and
    /// both made durable; every state machine is restored from it. Answers once all that
    /// is done.
    fn install(&mut self, stored: StoredSnapshot) -> LogFuture<InstallReply> {
        let last = stored.info.meta.last;
        let members = stored.info.meta.members.clone();
        tracing::info!(
            index = last.index,
            term = last.term,
            bytes = stored.info.size,
            "installing a snapshot from the leader"
        );
        self.snapshots.latest = Some(stored);
        self.snapshots.members = members.clone();
        let kept = self.log.term_at(last.index) == Some(last.term);
        let mut writes = Vec::new();
        let base = if kept {
            self.log.compact_to(last.index.saturating_sub(self.snapshots.catchup).max(self.log.base().index))
        } else {
            // What the log held is older than the snapshot or diverges from it.
            self.log.reset(last);
            writes.push(LogWrite::Reset(last));
            last
        };
        self.hard_state.commit = self.hard_state.commit.max(last.index);
        self.commit_dirty = false;
        writes.push(LogWrite::HardState(self.hard_state));
        let mut batch = WriteBatch::of(writes);
        batch.compact_to = Some(base);
        let durable = self.submit_batch(batch);
        (self.dispatched, self.applied) = (last.index, last.index);
        if !self.followers.is_empty() {
            tracing::warn!(index = last.index, "followers of the commit stream miss the entries the snapshot covers");
        }
        let restores: Vec<_> = self.subscribers.iter().map(|(ns, m)| self.restore(ns, m, true)).collect();
        let reply = InstallReply::Installed { snapshot: last, members: Some(members), kept, last: self.log.last() };
        let done = async move {
            let (durable, restored) = futures::join!(durable, futures::future::join_all(restores));
            (durable, restored.into_iter().find_map(|r| r.err()))
        };
        Box::pin(done.into_actor(self).map(move |(durable, restore_error), act, ctx| {
            if let Some(e) = restore_error {
                act.restore_failed(e.clone());
                return Err(StorageError::Corrupt { path: "snapshot".into(), offset: last.index, reason: e });
            }
            if let Err(e) = durable {
                tracing::error!(error = %e, "log storage failed; this node stops acknowledging writes");
                act.failed.get_or_insert_with(|| e.to_string());
                return Err(e);
            }
            act.installing = false;
            act.installed += 1;
            act.snapshots.answer_covered();
            act.dispatch(ctx);
            act.maybe_snapshot(ctx);
            Ok(reply)
        }))
    }

    /// Takes one chunk of a snapshot the leader sends: written after the bytes already
    /// held (a chunk sent again, or from elsewhere than where the bytes end, is answered
    /// with where they end), and once the last is in, the whole is verified and installed.
    fn take_chunk(&mut self, chunk: crate::wire::InstallSnapshotRequest) -> LogFuture<InstallReply> {
        let ready = |r: InstallReply| Box::pin(actix::fut::ready(Ok(r))) as LogFuture<InstallReply>;
        let (last, offset) = (chunk.last, chunk.offset);
        let same = self.incoming.as_ref().is_some_and(|i| i.last == last && i.size == chunk.size);
        if self.receiving_busy || self.installing {
            // One piece of disk work at a time: the leader sends this again shortly.
            return ready(InstallReply::Accepted(if same { offset } else { 0 }));
        }
        if last.index <= self.applied {
            // This node has applied past it already: its own state is newer.
            self.incoming = None;
            return ready(InstallReply::Installed { snapshot: last, members: None, kept: true, last: self.log.last() });
        }
        if !same {
            if offset != 0 {
                return ready(InstallReply::Accepted(0));
            }
            self.incoming = Some(Incoming { last, size: chunk.size, receiving: None, written: 0 });
        }
        let Some(incoming) = self.incoming.as_mut() else { return ready(InstallReply::Accepted(0)) };
        if offset > incoming.written {
            return ready(InstallReply::Accepted(incoming.written));
        }
        let skip = ((incoming.written - offset) as usize).min(chunk.data.len());
        let fresh = chunk.data.slice(skip..);
        if incoming.written + fresh.len() as u64 > incoming.size {
            tracing::warn!(index = last.index, "a snapshot chunk runs past the announced size; starting again");
            self.incoming = None;
            return ready(InstallReply::Accepted(0));
        }
        if fresh.is_empty() && incoming.receiving.is_some() {
            return self.after_chunk(offset);
        }
        let receiving = incoming.receiving.take();
        let store = self.snapshots.store.clone();
        self.receiving_busy = true;
        let work = off_thread(self.snapshots.in_place(), move || {
            let mut receiving = match receiving {
                Some(r) => r,
                None => store.receive()?,
            };
            receiving.append(&fresh)?;
            Ok(receiving)
        });
        Box::pin(work.into_actor(self).then(move |written, act, _| {
            act.receiving_busy = false;
            match (written, act.incoming.as_mut()) {
                (Ok(receiving), Some(incoming)) => {
                    incoming.written = receiving.written();
                    incoming.receiving = Some(receiving);
                    act.after_chunk(offset)
                }
                (written, _) => {
                    if let Err(error) = written {
                        tracing::warn!(index = last.index, %error, "cannot write a snapshot chunk; starting again");
                    }
                    act.incoming = None;
                    ready(InstallReply::Accepted(0))
                }
            }
        }))
    }

    /// A chunk from `offset` is written: ask for the next, or finish once all are in (if
    /// no batch or snapshot is with the state machines; else the leader sends it again).
    fn after_chunk(&mut self, offset: u64) -> LogFuture<InstallReply> {
        let ready = |r: InstallReply| Box::pin(actix::fut::ready(Ok(r))) as LogFuture<InstallReply>;
        let Some(incoming) = &self.incoming else { return ready(InstallReply::Accepted(0)) };
        if incoming.written < incoming.size {
            return ready(InstallReply::Accepted(incoming.written));
        }
        if self.applying || self.snapshots.taking {
            return ready(InstallReply::Accepted(offset));
        }
        let Some(Incoming { last, receiving: Some(receiving), .. }) = self.incoming.take() else {
            return ready(InstallReply::Accepted(0));
        };
        self.installing = true;
        self.receiving_busy = true;
        let work = off_thread(self.snapshots.in_place(), move || receiving.finish(last));
        Box::pin(work.into_actor(self).then(move |finished, act, ctx| {
            act.receiving_busy = false;
            match finished {
                Ok(stored) => act.install(stored),
                Err(error) => {
                    tracing::warn!(index = last.index, %error, "a received snapshot does not verify; starting again");
                    act.installing = false;
                    act.dispatch(ctx);
                    ready(InstallReply::Accepted(0))
                }
            }
        }))
    }

    /// A state machine that could not be restored would serve (and later snapshot) a state
    /// that is not the log's: this node stops applying and acknowledging.
    fn restore_failed(&mut self, error: String) {
        tracing::error!(%error, "restoring from the snapshot failed; this node stops applying and acknowledging");
        self.failed.get_or_insert(error);
    }
}

impl Actor for LogStore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Replication traffic arrives in bursts; the default capacity of 16 would stall senders.
        ctx.set_mailbox_capacity(65_536);
        // Rebuild the state machines: the snapshot, then what is known committed after it.
        if let Some(stored) = &self.snapshots.latest {
            let last = stored.info.meta.last;
            tracing::info!(index = last.index, term = last.term, bytes = stored.info.size, "restoring from a snapshot");
        }
        // No entry goes to a state machine before every restore is done.
        self.applying = true;
        let restores: Vec<_> = self.subscribers.iter().map(|(ns, m)| self.restore(ns, m, false)).collect();
        ctx.spawn(futures::future::join_all(restores).into_actor(self).map(|results, act, ctx| {
            if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
                act.restore_failed(e);
                return;
            }
            act.applying = false;
            act.dispatch(ctx);
            // A snapshot asked for meanwhile need not wait for the next write.
            act.maybe_snapshot(ctx);
        }));
    }
}

impl Handler<AppendLocal> for LogStore {
    type Result = ResponseActFuture<Self, Result<LogId, StorageError>>;

    fn handle(&mut self, msg: AppendLocal, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.check_failed() {
            return Box::pin(actix::fut::ready(Err(e)));
        }
        let mut writes = Vec::with_capacity(msg.entries.len());
        for e in msg.entries {
            if e.term > self.hard_state.term {
                // A leader's term is durable from its candidacy on; anything else is a bug.
                let reason = format!(
                    "entry {} of term {} is ahead of the durable term {}",
                    e.index, e.term, self.hard_state.term
                );
                return Box::pin(actix::fut::ready(Err(StorageError::Corrupt {
                    path: "log".into(),
                    offset: e.index,
                    reason,
                })));
            }
            if e.index <= self.log.last().index {
                // A new leader drops the uncommitted suffix it did not report in its candidacy.
                if let Err(err) = self.refuse_truncating_committed(e.index) {
                    return Box::pin(actix::fut::ready(Err(err)));
                }
                self.log.truncate_from(e.index);
            }
            if e.index != self.log.last().index + 1 {
                let reason = format!("entry {} does not follow last index {}", e.index, self.log.last().index);
                return Box::pin(actix::fut::ready(Err(StorageError::Corrupt {
                    path: "log".into(),
                    offset: e.index,
                    reason,
                })));
            }
            self.log.push(e.clone());
            writes.push(LogWrite::Entry(e));
        }
        let last = self.log.last();
        let fut = self.submit(writes);
        self.durable(fut, last)
    }
}

impl Handler<AppendFromLeader> for LogStore {
    type Result = ResponseActFuture<Self, Result<AppendFromLeaderReply, StorageError>>;

    fn handle(&mut self, msg: AppendFromLeader, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.check_failed() {
            return Box::pin(actix::fut::ready(Err(e)));
        }
        let reply = |result, durable, last| AppendFromLeaderReply { result, durable, last };
        if msg.term < self.hard_state.term {
            let r = reply(AppendResult::StaleTerm(self.hard_state.term), false, self.log.last());
            return Box::pin(actix::fut::ready(Ok(r)));
        }
        let mut writes = Vec::new();
        if msg.term > self.hard_state.term {
            // The term is durable no later than the entries this request brings.
            self.hard_state.term = msg.term;
            self.hard_state.voted_for = None;
            self.commit_dirty = false;
            writes.push(LogWrite::HardState(self.hard_state));
        }
        let result = match self.log.plan_append(msg.prev, &msg.entries) {
            Err(conflict) => AppendResult::Conflict(conflict),
            Ok(plan) => {
                if let Some(from) = plan.truncate_from
                    && let Err(e) = self.refuse_truncating_committed(from)
                {
                    return Box::pin(actix::fut::ready(Err(e)));
                }
                self.log.apply(&plan);
                writes.extend(plan.append.iter().cloned().map(LogWrite::Entry));
                AppendResult::Matched(plan.match_index)
            }
        };
        let last = self.log.last();
        if msg.entries.is_empty() && writes.is_empty() {
            // A heartbeat that changes nothing need not wait for the disk: its answer claims
            // only that the log matches, which the leader uses for commit propagation and
            // leadership, never as a durable replica. (Entries already held still wait: an
            // earlier request may not have made them durable yet.)
            return Box::pin(actix::fut::ready(Ok(reply(result, false, last))));
        }
        // A success must never overtake the durability of entries it vouches for: the
        // backend completes batches in order.
        let fut = self.submit(writes);
        self.durable(fut, reply(result, true, last))
    }
}

impl Handler<InstallFromLeader> for LogStore {
    type Result = LogFuture<InstallReply>;

    fn handle(&mut self, msg: InstallFromLeader, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.check_failed() {
            return Box::pin(actix::fut::ready(Err(e)));
        }
        if msg.term < self.hard_state.term {
            return Box::pin(actix::fut::ready(Ok(InstallReply::StaleTerm(self.hard_state.term))));
        }
        if msg.term > self.hard_state.term {
            // The term is durable before anything is answered in it.
            self.hard_state.term = msg.term;
            self.hard_state.voted_for = None;
            self.commit_dirty = false;
            let fut = self.submit(vec![LogWrite::HardState(self.hard_state)]);
            let chunk = msg.chunk;
            return Box::pin(self.durable(fut, ()).then(move |r, act, _| match r {
                Ok(()) => act.take_chunk(chunk),
                Err(e) => Box::pin(actix::fut::ready(Err(e))),
            }));
        }
        self.take_chunk(msg.chunk)
    }
}

impl Handler<SaveHardState> for LogStore {
    type Result = ResponseActFuture<Self, Result<LogId, StorageError>>;

    fn handle(&mut self, msg: SaveHardState, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.check_failed() {
            return Box::pin(actix::fut::ready(Err(e)));
        }
        self.hard_state.term = msg.term;
        self.hard_state.voted_for = msg.voted_for;
        self.commit_dirty = false;
        let last = self.log.last();
        let fut = self.submit(vec![LogWrite::HardState(self.hard_state)]);
        self.durable(fut, last)
    }
}

impl Handler<FetchEntries> for LogStore {
    type Result = Result<FetchedEntries, FetchEntriesError>;

    fn handle(&mut self, msg: FetchEntries, _: &mut Context<Self>) -> Self::Result {
        let prev_index = msg.from.saturating_sub(1);
        let last = self.log.last().index;
        if prev_index > last {
            return Err(FetchEntriesError::PastEnd { from: msg.from, last });
        }
        let prev_term = self.log.term_at(prev_index).ok_or(FetchEntriesError::Compacted(prev_index))?;
        Ok(FetchedEntries {
            prev: LogId::new(prev_term, prev_index),
            entries: self.log.slice(msg.from, msg.max_count, msg.max_bytes),
        })
    }
}

impl Handler<CommitTo> for LogStore {
    type Result = ();

    fn handle(&mut self, msg: CommitTo, ctx: &mut Context<Self>) {
        let commit = msg.0.min(self.log.last().index);
        if commit > self.hard_state.commit {
            self.hard_state.commit = commit;
            self.commit_dirty = true;
            self.dispatch(ctx);
        }
    }
}

impl Handler<Subscribe> for LogStore {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        // The snapshot's state (if it has this namespace), then what was committed after it,
        // then the stream.
        let restore = self.restore(&msg.namespace, &msg.machine, false);
        ctx.spawn(restore.into_actor(self).map(move |restored, act, _| {
            let restored = match restored {
                Ok(restored) => restored,
                Err(e) => return act.restore_failed(e),
            };
            // After the snapshot it was restored from, which a newer one may have replaced.
            let from = restored.map_or(1, |index| index + 1);
            let entries = act.committed_entries(from, act.dispatched, Some(&msg.namespace));
            msg.machine.apply.do_send(ApplyEntries { entries, applied_to: act.dispatched });
            act.subscribers.insert(msg.namespace, msg.machine);
        }));
    }
}

impl Handler<Follow> for LogStore {
    type Result = ();

    fn handle(&mut self, msg: Follow, _: &mut Context<Self>) {
        let entries = self.committed_entries(1, self.dispatched, msg.namespace.as_deref());
        msg.recipient.do_send(ApplyEntries { entries, applied_to: self.dispatched });
        self.followers.push((msg.namespace, msg.recipient));
    }
}

impl Handler<SnapshotNow> for LogStore {
    type Result = ResponseFuture<Result<SnapshotStatus, ApiError>>;

    fn handle(&mut self, _: SnapshotNow, ctx: &mut Context<Self>) -> Self::Result {
        if self.snapshots.waiters.len() >= MAX_SNAPSHOT_WAITERS {
            let reason = format!("{MAX_SNAPSHOT_WAITERS} snapshot requests wait already");
            return Box::pin(async move { Err(ApiError::Overloaded { reason, retry_after_ms: 1_000 }) });
        }
        let (tx, rx) = futures::channel::oneshot::channel();
        // It must hold every entry applied so far: taken at once, or when the batch with the
        // state machines is back, or after the one being taken.
        self.snapshots.waiters.push((self.applied, tx));
        self.maybe_snapshot(ctx);
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(ApiError::Unavailable("node stopping".into()))) })
    }
}

impl Handler<ReadSnapshotBytes> for LogStore {
    type Result = ResponseFuture<Result<Bytes, ApiError>>;

    fn handle(&mut self, msg: ReadSnapshotBytes, _: &mut Context<Self>) -> Self::Result {
        let stored = match &self.snapshots.latest {
            Some(s) if s.info.meta.last == msg.last => s.clone(),
            _ => {
                let e =
                    ApiError::Unavailable(format!("snapshot {:?} was replaced by a newer one; start again", msg.last));
                return Box::pin(async move { Err(e) });
            }
        };
        let read = off_thread(self.snapshots.in_place(), move || stored.read_at(msg.offset, msg.max));
        Box::pin(read.map(|r| r.map_err(|e| ApiError::Unavailable(e.to_string()))))
    }
}

impl Handler<GetLogState> for LogStore {
    type Result = MessageResult<GetLogState>;

    fn handle(&mut self, _: GetLogState, _: &mut Context<Self>) -> Self::Result {
        let snapshot = self.snapshots.status();
        MessageResult(LogState {
            last: self.log.last(),
            commit: self.hard_state.commit,
            applied: self.applied,
            first_index: self.log.first_index(),
            snapshot,
            installed: self.installed,
        })
    }
}
