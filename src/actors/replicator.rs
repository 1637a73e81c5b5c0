//! `Replicator`: one per peer, started by the leader for its term and stopped when it steps
//! down. Owns that peer's next index and match index, the window of AppendEntries in flight,
//! the heartbeat timer, and back-off after a conflict or a broken link.
//!
//! Receives: `Replicate` (new entries, a new commit index, or a read round to confirm) and
//! `StopReplication`. Sends: `FetchEntries` to `LogStore`, `Call(AppendEntries)` to the peer's
//! `PeerLink`, and `PeerProgress` / `HigherTermSeen` to `Election`. It never decides commit.
//!
//! Pipelining: up to `max_inflight_appends` requests are in flight; `next_index` moves forward
//! optimistically when a batch is sent. A conflict or a link error starts a new epoch: the
//! window is emptied, `next_index` is reset, and answers from the old epoch only report match.
//!
//! Probing: until the follower's log is known to hold `next_index - 1` (at the start of a
//! term, and after every conflict), the replicator sends empty AppendEntries, one at a time,
//! and entries only once one of them matched. A follower far behind, or with a long divergent
//! suffix, then costs a few small round trips instead of a full batch per step back.
//!
//! Snapshots: when the follower needs an entry the log no longer holds (compacted), the
//! replicator sends the newest snapshot instead (InstallSnapshot), in chunks of at most
//! [`crate::wire::SNAPSHOT_CHUNK`] read from `LogStore`, one in flight, resuming from where
//! the follower says its bytes end; heartbeats go on meanwhile (empty appends after index 0,
//! which match any log). Once the follower has installed it, entries flow from after it. A
//! snapshot replaced by a newer one while it is sent is started again with the newer.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

use crate::actors::log_store::LogStore;
use crate::actors::peer_link::{Call, PeerLink};
use crate::config::Config;
use crate::messages::raft::{
    FetchEntries, FetchEntriesError, GetLogState, HigherTermSeen, PeerProgress, ReadSnapshotBytes, Replicate,
    SendLease, StopReplication,
};
use crate::metrics::PeerMetrics;
use crate::raft::{LogId, NodeId};
use crate::wire::{
    AppendEntriesRequest, AppendEntriesResponse, AppendOutcome, InstallOutcome, InstallSnapshotRequest, LeaseWord,
    Request, Response,
};

/// Replicates the leader's log to one peer.
pub struct Replicator {
    peer: NodeId,
    leader: NodeId,
    term: u64,
    config: Arc<Config>,
    link: Addr<PeerLink>,
    metrics: PeerMetrics,
    log_store: Addr<LogStore>,
    progress: Recipient<PeerProgress>,
    higher_term: Recipient<HigherTermSeen>,
    next_index: u64,
    match_index: u64,
    /// Where this replicator started: entries below are an earlier term's (or older than
    /// this peer's membership), committed along with this term's.
    first_index: u64,
    /// The leader's last index and commit index, as last told.
    last_index: u64,
    commit: u64,
    commit_sent: u64,
    /// How far committed entries may be applied and seen, as last told and last sent.
    visible: u64,
    visible_sent: u64,
    /// A word on the peer's read lease to send with the next request.
    lease: Option<LeaseWord>,
    round_wanted: u64,
    round_sent: u64,
    inflight: usize,
    epoch: u64,
    fetching: bool,
    /// Looking for the point where the follower's log matches (see the header).
    probing: bool,
    /// The epoch of the probe in flight, if one is.
    probe_inflight: Option<u64>,
    last_sent: Instant,
    /// After a link error, wait before trying again.
    paused_until: Option<Instant>,
    stopped: bool,
    /// Sending the snapshot: the peer needs entries the log no longer holds.
    snapshot: Option<SnapshotSend>,
    /// A heartbeat sent while the snapshot is is in flight.
    beat_inflight: bool,
}

/// A snapshot on its way to the peer.
#[derive(Debug, Default)]
struct SnapshotSend {
    /// Which (learned from `LogStore` first), and its size.
    last: Option<(LogId, u64)>,
    /// Where the next chunk starts.
    offset: u64,
    /// A read or a chunk is in flight.
    busy: bool,
}

/// The addresses a replicator talks to.
pub struct ReplicatorLinks {
    /// The peer's link.
    pub link: Addr<PeerLink>,
    /// The log.
    pub log_store: Addr<LogStore>,
    /// Where progress goes (`Election`).
    pub progress: Recipient<PeerProgress>,
    /// Where a higher term goes (`Election`).
    pub higher_term: Recipient<HigherTermSeen>,
    /// What it records about the peer (round trips, failed sends).
    pub metrics: PeerMetrics,
}

impl Replicator {
    /// A replicator for `peer`, working for `leader` in `term`, starting at `next_index`.
    pub fn new(
        peer: NodeId,
        leader: NodeId,
        term: u64,
        next_index: u64,
        config: Arc<Config>,
        links: ReplicatorLinks,
    ) -> Self {
        Replicator {
            peer,
            leader,
            term,
            config,
            link: links.link,
            metrics: links.metrics,
            log_store: links.log_store,
            progress: links.progress,
            higher_term: links.higher_term,
            next_index,
            match_index: 0,
            first_index: next_index,
            last_index: next_index.saturating_sub(1),
            commit: 0,
            commit_sent: 0,
            visible: 0,
            visible_sent: 0,
            lease: None,
            round_wanted: 0,
            round_sent: 0,
            inflight: 0,
            epoch: 0,
            fetching: false,
            probing: true,
            probe_inflight: None,
            last_sent: Instant::now(),
            paused_until: None,
            stopped: false,
            snapshot: None,
            beat_inflight: false,
        }
    }

    /// Sends what is due: batches of entries while the window has room, and a heartbeat
    /// (no entries, outside the window) when one is due or a read round waits, so a slow
    /// follower disk never silences the leader.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.stopped || self.fetching {
            return;
        }
        let now = Instant::now();
        if let Some(until) = self.paused_until {
            if now < until {
                return;
            }
            self.paused_until = None;
        }
        let heartbeat_due = now.duration_since(self.last_sent) >= self.config.heartbeat_interval();
        // A word on the lease goes at once, as a read round does.
        let round_waits = self.round_wanted > self.round_sent || self.lease.is_some();
        if self.snapshot.is_some() {
            if (heartbeat_due || round_waits) && !self.beat_inflight {
                self.beat_during_snapshot(ctx);
            }
            self.pump_snapshot(ctx);
            return;
        }
        let window_open = self.inflight < self.config.max_inflight_appends;
        let commit_news = self.commit > self.commit_sent || self.visible > self.visible_sent;
        let entries = !self.probing && window_open && self.next_index <= self.last_index;
        let probe_due = self.probing && self.probe_inflight.is_none();
        if !(entries || probe_due || heartbeat_due || round_waits || (window_open && commit_news)) {
            return;
        }
        // Only one fetch at a time, so batches leave in log order.
        self.fetching = true;
        let epoch = self.epoch;
        let fetch = FetchEntries {
            from: self.next_index,
            max_count: if entries { self.config.max_append_entries } else { 0 },
            max_bytes: self.config.max_append_bytes,
        };
        ctx.spawn(self.log_store.send(fetch).into_actor(self).map(move |res, act, ctx| {
            act.fetching = false;
            if act.stopped || epoch != act.epoch {
                act.pump(ctx);
                return;
            }
            match res {
                Ok(Ok(fetched)) => {
                    let sent_last = fetched.prev.index + fetched.entries.len() as u64;
                    let req = AppendEntriesRequest {
                        term: act.term,
                        leader: act.leader,
                        prev: fetched.prev,
                        entries: fetched.entries,
                        leader_commit: act.commit,
                        leader_visible: act.visible,
                        lease: act.lease.take(),
                    };
                    act.send(req, sent_last, ctx);
                    act.pump(ctx);
                }
                Ok(Err(FetchEntriesError::PastEnd { last, .. })) => {
                    act.next_index = last + 1;
                    act.pump(ctx);
                }
                Ok(Err(FetchEntriesError::Compacted(index))) => {
                    tracing::info!(peer = act.peer, index, "peer needs compacted entries; sending the snapshot");
                    act.snapshot = Some(SnapshotSend::default());
                    act.pump(ctx);
                }
                Err(e) => tracing::error!(peer = act.peer, error = %e, "log store unreachable"),
            }
        }));
    }

    fn send(&mut self, req: AppendEntriesRequest, sent_last: u64, ctx: &mut Context<Self>) {
        let epoch = self.epoch;
        let round = self.round_wanted;
        // Heartbeats ride outside the window: they carry no entries to wait for.
        let counted = !req.entries.is_empty();
        // While probing, an empty request is the probe: its answer says whether `prev` matched.
        let probe = self.probing && !counted;
        if probe {
            self.probe_inflight = Some(epoch);
        }
        self.round_sent = round;
        self.commit_sent = req.leader_commit;
        self.visible_sent = req.leader_visible;
        self.next_index = sent_last + 1;
        if counted {
            self.inflight += 1;
        }
        self.last_sent = Instant::now();
        let sent_at = self.last_sent;
        let revoking = req.lease == Some(LeaseWord::Revoke);
        let call = Call { request: Request::AppendEntries(req), timeout: self.append_timeout() };
        ctx.spawn(self.link.send(call).into_actor(self).map(move |res, act, ctx| {
            if act.stopped {
                return;
            }
            match &res {
                // A heartbeat's answer waits on no disk: its round trip is the network's.
                Ok(Ok(_)) if !counted => act.metrics.round_trip(sent_at.elapsed()),
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => {
                    act.metrics.sent_failures.inc();
                }
            }
            if counted && epoch == act.epoch {
                act.inflight = act.inflight.saturating_sub(1);
            }
            if probe && act.probe_inflight == Some(epoch) {
                act.probe_inflight = None;
            }
            match res {
                Ok(Ok(Response::AppendEntries(resp))) => {
                    if act.outranked(resp.term, ctx) {
                        return;
                    }
                    match resp.outcome {
                        AppendOutcome::Success { match_index } => {
                            let moved = match_index > act.match_index;
                            act.match_index = act.match_index.max(match_index);
                            act.report_append(round, moved.then_some(act.match_index), &resp, revoking);
                            act.matched(epoch, sent_last);
                        }
                        // The follower matched but did not wait for its disk: leadership
                        // is confirmed, replication is not.
                        AppendOutcome::Heartbeat => {
                            act.report_append(round, None, &resp, revoking);
                            act.matched(epoch, sent_last);
                            act.resend_unconfirmed(epoch, sent_last);
                        }
                        AppendOutcome::Conflict { next_index } => {
                            // A revocation it carried was taken all the same.
                            act.report_append(round, None, &resp, revoking);
                            if epoch == act.epoch {
                                act.conflict(next_index);
                            }
                        }
                        // The follower could not store the entries (its disk failed): it is not
                        // a vote of confidence, retry later.
                        AppendOutcome::StaleTerm => {
                            if epoch == act.epoch {
                                act.restart(act.match_index + 1, Some(act.config.heartbeat_interval()));
                            }
                        }
                    }
                }
                Ok(Ok(other)) => {
                    tracing::warn!(peer = act.peer, response = ?other, "unexpected answer to AppendEntries");
                    if epoch == act.epoch {
                        act.restart(act.match_index + 1, Some(act.config.heartbeat_interval()));
                    }
                }
                Ok(Err(_)) | Err(_) => {
                    if epoch == act.epoch {
                        // Probe again from where the last batch would have gone: the link
                        // broke, not the log, and the follower may hold more than `match_index`
                        // says (a leader that just started has heard no answer yet).
                        let next = act.next_index;
                        act.restart(next, Some(act.config.heartbeat_interval()));
                        act.probing = true;
                    }
                }
            }
            act.pump(ctx);
        }));
    }

    /// Moves the snapshot transfer on: learns which snapshot to send, reads the next
    /// chunk, sends it.
    fn pump_snapshot(&mut self, ctx: &mut Context<Self>) {
        let Some(send) = self.snapshot.as_mut() else { return };
        if send.busy {
            return;
        }
        send.busy = true;
        let Some((last, size)) = send.last else {
            ctx.spawn(self.log_store.send(GetLogState).into_actor(self).map(|state, act, ctx| {
                let Some(send) = act.snapshot.as_mut() else { return };
                send.busy = false;
                match state.ok().and_then(|s| s.snapshot) {
                    Some(s) => {
                        (send.last, send.offset) = (Some((s.last, s.bytes)), 0);
                        act.pump(ctx);
                    }
                    None => act.pause(),
                }
            }));
            return;
        };
        let offset = send.offset;
        let max = crate::wire::SNAPSHOT_CHUNK.min(self.config.max_append_bytes);
        let read = ReadSnapshotBytes { last, offset, max };
        ctx.spawn(self.log_store.send(read).into_actor(self).map(move |data, act, ctx| {
            if act.stopped {
                return;
            }
            match data {
                Ok(Ok(data)) => act.send_chunk(
                    InstallSnapshotRequest { term: act.term, leader: act.leader, last, size, offset, data },
                    ctx,
                ),
                _ => {
                    // Replaced by a newer snapshot: send that one.
                    act.snapshot = Some(SnapshotSend::default());
                    act.pump(ctx);
                }
            }
        }));
    }

    fn send_chunk(&mut self, req: InstallSnapshotRequest, ctx: &mut Context<Self>) {
        let (last, end, round) = (req.last, req.offset + req.data.len() as u64, self.round_wanted);
        self.round_sent = round;
        self.last_sent = Instant::now();
        // The last chunk waits for the install: verifying, and restoring the state machines.
        let timeout = self.append_timeout().max(Duration::from_secs(10));
        let call = Call { request: Request::InstallSnapshot(req), timeout };
        ctx.spawn(self.link.send(call).into_actor(self).map(move |res, act, ctx| {
            if act.stopped {
                return;
            }
            let Some(send) = act.snapshot.as_mut() else { return };
            send.busy = false;
            match res {
                Ok(Ok(Response::InstallSnapshot(resp))) if act.outranked(resp.term, ctx) => return,
                Ok(Ok(Response::InstallSnapshot(resp))) => match resp.outcome {
                    InstallOutcome::Accepted { next_offset } => {
                        if let Some(send) = act.snapshot.as_mut() {
                            send.offset = next_offset;
                        }
                        act.report(round, None);
                        if next_offset != end {
                            // Busy, or it holds other bytes than we thought: a moment later.
                            act.pause();
                        }
                    }
                    InstallOutcome::Installed => {
                        tracing::info!(peer = act.peer, index = last.index, "peer installed the snapshot");
                        act.snapshot = None;
                        act.match_index = act.match_index.max(last.index);
                        act.report(round, Some(act.match_index));
                        act.restart(last.index + 1, None);
                        act.probing = false;
                    }
                    InstallOutcome::StaleTerm => act.pause(),
                },
                _ => act.pause(),
            }
            act.pump(ctx);
        }));
    }

    /// A heartbeat while the snapshot is sent: an empty append after index 0 matches any
    /// log, so it only keeps the follower from standing and confirms read rounds.
    fn beat_during_snapshot(&mut self, ctx: &mut Context<Self>) {
        let round = self.round_wanted;
        self.round_sent = round;
        self.last_sent = Instant::now();
        self.beat_inflight = true;
        let req = AppendEntriesRequest {
            term: self.term,
            leader: self.leader,
            prev: LogId::default(),
            entries: Vec::new(),
            leader_commit: self.commit,
            leader_visible: self.visible,
            lease: self.lease.take(),
        };
        let revoking = req.lease == Some(LeaseWord::Revoke);
        let call = Call { request: Request::AppendEntries(req), timeout: self.append_timeout() };
        ctx.spawn(self.link.send(call).into_actor(self).map(move |res, act, ctx| {
            act.beat_inflight = false;
            if act.stopped {
                return;
            }
            if let Ok(Ok(Response::AppendEntries(resp))) = res {
                if act.outranked(resp.term, ctx) {
                    return;
                }
                if matches!(resp.outcome, AppendOutcome::Heartbeat | AppendOutcome::Success { .. }) {
                    act.report_append(round, None, &resp, revoking);
                }
            }
        }));
    }

    /// The peer answered with a later term: `Election` hears of it and this replicator stops.
    fn outranked(&mut self, term: u64, ctx: &mut Context<Self>) -> bool {
        if term <= self.term {
            return false;
        }
        self.higher_term.do_send(HigherTermSeen { term, peer: self.peer });
        self.stopped = true;
        ctx.stop();
        true
    }

    fn pause(&mut self) {
        self.paused_until = Some(Instant::now() + self.config.heartbeat_interval());
    }

    /// The follower's log holds everything up to `through` as the leader's does: if that
    /// answers this epoch's probing, entries may flow from there.
    fn matched(&mut self, epoch: u64, through: u64) {
        if self.probing && epoch == self.epoch {
            self.probing = false;
            self.next_index = self.next_index.max(through + 1);
        }
    }

    /// The follower holds everything through `through`, but said only of `match_index` that
    /// it is durable: the answer to a batch was lost with its connection. Once nothing else
    /// is in flight, that batch goes again (from this term's first entry at the earliest,
    /// older ones commit with it), for an answer that counts; an idle leader would otherwise
    /// never commit it.
    fn resend_unconfirmed(&mut self, epoch: u64, through: u64) {
        let from = (self.match_index + 1).max(self.first_index);
        if epoch == self.epoch && !self.probing && self.inflight == 0 && from <= through {
            self.restart(from, None);
        }
    }

    /// Starts a new epoch from `next_index` after a conflict: probe before sending entries.
    fn conflict(&mut self, next_index: u64) {
        self.restart(next_index, None);
        self.probing = true;
    }

    /// Starts a new epoch from `next_index`, optionally after a pause.
    fn restart(&mut self, next_index: u64, pause: Option<Duration>) {
        self.epoch += 1;
        self.inflight = 0;
        self.probe_inflight = None;
        // Never below what the follower is known to hold; never past what this leader has
        // (a match reported for entries appended since the last `Replicate` counts as had).
        let highest = self.last_index.max(self.match_index) + 1;
        self.next_index = next_index.clamp(self.match_index + 1, highest);
        // Resend commit and any read round with the next batch.
        self.commit_sent = 0;
        self.visible_sent = 0;
        self.round_sent = 0;
        self.paused_until = pause.map(|p| Instant::now() + p);
    }

    fn report(&self, round: u64, match_index: Option<u64>) {
        let (peer, term) = (self.peer, self.term);
        self.progress.do_send(PeerProgress {
            peer,
            term,
            acked_round: round,
            match_index,
            commit: None,
            lease_ask: None,
            lease_dropped: false,
        });
    }

    /// A report on an append the follower matched: with its commit index and lease ask, and
    /// whether the request revoked its lease (which it then dropped).
    fn report_append(&self, round: u64, match_index: Option<u64>, resp: &AppendEntriesResponse, revoked: bool) {
        let (peer, term, commit, lease_ask) = (self.peer, self.term, Some(resp.commit), resp.lease_ask);
        let acked_round = round;
        let lease_dropped = revoked;
        self.progress.do_send(PeerProgress { peer, term, acked_round, match_index, commit, lease_ask, lease_dropped });
    }

    /// A follower answers after an fsync, and a large batch takes longer than a heartbeat; but
    /// a request lost on the way must not hold a window slot for long.
    fn append_timeout(&self) -> Duration {
        Duration::from_millis((self.config.election_timeout_max_ms * 2).max(500))
    }
}

impl Actor for Replicator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        ctx.run_interval(self.config.heartbeat_interval() / 2, |act, ctx| act.pump(ctx));
        self.pump(ctx);
    }
}

impl Handler<Replicate> for Replicator {
    type Result = ();

    fn handle(&mut self, msg: Replicate, ctx: &mut Context<Self>) {
        self.last_index = self.last_index.max(msg.last_index);
        self.commit = self.commit.max(msg.commit);
        self.visible = self.visible.max(msg.visible);
        self.round_wanted = self.round_wanted.max(msg.round);
        self.pump(ctx);
    }
}

impl Handler<SendLease> for Replicator {
    type Result = ();

    fn handle(&mut self, msg: SendLease, ctx: &mut Context<Self>) {
        // A revocation is never overwritten by a grant: the leader grants none after it.
        if self.lease != Some(LeaseWord::Revoke) {
            self.lease = Some(msg.0);
        }
        self.pump(ctx);
    }
}

impl Handler<StopReplication> for Replicator {
    type Result = ();

    fn handle(&mut self, _: StopReplication, ctx: &mut Context<Self>) {
        self.stopped = true;
        ctx.stop();
    }
}
