//! Inputs for t35's codec properties: a strategy for every kind of frame, the mutations an
//! attacker or a broken peer could make to their bytes, and how those bytes arrive (the sizes
//! of successive reads). Kept apart from the properties so the test file reads as the list of
//! what must hold.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use dister::ApiError;
use dister::raft::members::{MemberChange, MemberRole, Members};
use dister::raft::{Entry, LogId, Payload, Role};
use dister::wire::codec::encode_frame;
use dister::wire::{
    AppendEntriesRequest, AppendEntriesResponse, AppendOutcome, Consistency, Frame, Hello, InstallOutcome,
    InstallSnapshotRequest, InstallSnapshotResponse, LeaseGrant, LeaseWord, MAGIC, MemberStatus, PROTOCOL_VERSION,
    PeerStatus, Request, Response, StatusInfo, VoteRequest, VoteResponse, Welcome, Write, WriteReply,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;

fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..12).prop_map(String::from_iter)
}

fn data() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..48).prop_map(Bytes::from)
}

fn consistency() -> impl Strategy<Value = Consistency> {
    prop_oneof![Just(Consistency::Linearizable), Just(Consistency::Stale)]
}

fn log_id() -> impl Strategy<Value = LogId> {
    (any::<u64>(), any::<u64>()).prop_map(|(term, index)| LogId::new(term, index))
}

fn members() -> impl Strategy<Value = Members> {
    let ids = || vec(any::<u64>(), 0..3);
    (vec((any::<u64>(), text()), 0..4), vec((any::<u64>(), text()), 0..2), ids(), ids()).prop_map(
        |(voters, learners, promoting, removed)| Members {
            voters: voters.into_iter().collect(),
            learners: learners.into_iter().collect(),
            promoting: promoting.into_iter().collect(),
            removed: removed.into_iter().collect(),
        },
    )
}

fn member_change() -> impl Strategy<Value = MemberChange> {
    prop_oneof![
        (any::<u64>(), text(), any::<bool>()).prop_map(|(id, addr, promote)| MemberChange::Add { id, addr, promote }),
        any::<u64>().prop_map(|id| MemberChange::Promote { id }),
        any::<u64>().prop_map(|id| MemberChange::Remove { id }),
    ]
}

fn entry() -> impl Strategy<Value = Arc<Entry>> {
    let payload = prop_oneof![
        Just(Payload::Blank),
        (text(), data()).prop_map(|(namespace, data)| Payload::Command { namespace, data }),
        members().prop_map(Payload::Config),
    ];
    (any::<u64>(), any::<u64>(), payload).prop_map(|(term, index, payload)| Arc::new(Entry { term, index, payload }))
}

fn write() -> impl Strategy<Value = Write> {
    (text(), data()).prop_map(|(namespace, data)| Write { namespace, data })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            (any::<u64>(), any::<u64>(), log_id(), vec(entry(), 0..4), any::<u64>()),
            (any::<u64>(), option::of((any::<u64>(), any::<u64>())))
        )
            .prop_map(|((term, leader, prev, entries, leader_commit), (leader_visible, lease))| {
                let lease = lease.map(|(ask, floor)| match ask % 4 {
                    0 => LeaseWord::Revoke,
                    _ => LeaseWord::Grant(LeaseGrant { ask, floor }),
                });
                Request::AppendEntries(AppendEntriesRequest {
                    term,
                    leader,
                    prev,
                    entries,
                    leader_commit,
                    leader_visible,
                    lease,
                })
            }),
        (any::<u64>(), any::<u64>(), log_id(), any::<bool>(), any::<bool>()).prop_map(
            |(term, candidate, last_log, pre_vote, transfer)| {
                Request::Vote(VoteRequest { term, candidate, last_log, pre_vote, transfer })
            }
        ),
        any::<u64>().prop_map(|term| Request::TimeoutNow { term }),
        option::of(any::<u64>()).prop_map(|to| Request::TransferLeadership { to }),
        Just(Request::ReadIndex),
        write().prop_map(Request::Forward),
        write().prop_map(Request::Write),
        (text(), consistency()).prop_map(|(key, consistency)| Request::Get { key, consistency }),
        (text(), consistency()).prop_map(|(prefix, consistency)| Request::List { prefix, consistency }),
        (text(), data(), consistency()).prop_map(|(namespace, data, consistency)| Request::Query {
            namespace,
            data,
            consistency
        }),
        (text(), text(), any::<u16>(), any::<bool>()).prop_map(|(service, host, port, forwarded)| Request::Beat {
            key: dister::messages::registry::InstanceKey { service, host, port },
            forwarded
        }),
        Just(Request::Status),
        (member_change(), any::<bool>()).prop_map(|(change, forwarded)| Request::ChangeMembers { change, forwarded }),
        Just(Request::TakeSnapshot),
        (any::<u64>(), any::<u64>(), log_id(), any::<u64>(), any::<u64>(), data()).prop_map(
            |(term, leader, last, size, offset, data)| Request::InstallSnapshot(InstallSnapshotRequest {
                term,
                leader,
                last,
                size,
                offset,
                data
            })
        ),
        (log_id(), any::<u64>(), any::<u32>()).prop_map(|(last, offset, max)| Request::ReadSnapshot {
            last,
            offset,
            max
        }),
    ]
}

fn outcome() -> impl Strategy<Value = AppendOutcome> {
    prop_oneof![
        any::<u64>().prop_map(|match_index| AppendOutcome::Success { match_index }),
        any::<u64>().prop_map(|next_index| AppendOutcome::Conflict { next_index }),
        Just(AppendOutcome::StaleTerm),
        Just(AppendOutcome::Heartbeat),
    ]
}

fn install_outcome() -> impl Strategy<Value = InstallOutcome> {
    prop_oneof![
        any::<u64>().prop_map(|next_offset| InstallOutcome::Accepted { next_offset }),
        Just(InstallOutcome::Installed),
        Just(InstallOutcome::StaleTerm),
    ]
}

fn api_error() -> impl Strategy<Value = ApiError> {
    prop_oneof![
        any::<u64>().prop_map(|retry_after_ms| ApiError::NoLeader { retry_after_ms }),
        (any::<u64>(), option::of(any::<u64>())).prop_map(|(node, leader)| ApiError::NotLeader { node, leader }),
        any::<u64>().prop_map(|index| ApiError::Dropped { index }),
        any::<u64>().prop_map(|ms| ApiError::Timeout { ms }),
        (any::<u64>(), text()).prop_map(|(leader, reason)| ApiError::Unreachable { leader, reason }),
        text().prop_map(ApiError::UnknownNamespace),
        text().prop_map(ApiError::BadRequest),
        text().prop_map(ApiError::Apply),
        text().prop_map(ApiError::Unavailable),
        text().prop_map(ApiError::NotFound),
        (text(), any::<u64>()).prop_map(|(reason, retry_after_ms)| ApiError::Overloaded { reason, retry_after_ms }),
        text().prop_map(ApiError::ChangeInProgress),
    ]
}

fn status() -> impl Strategy<Value = StatusInfo> {
    let role = prop_oneof![Just(Role::Follower), Just(Role::Candidate), Just(Role::Leader)];
    let peer = (any::<u64>(), text(), option::of(any::<u64>()), option::of(any::<bool>()))
        .prop_map(|(id, addr, match_index, alive)| PeerStatus { id, addr, match_index, alive });
    let member_role = prop_oneof![Just(MemberRole::Voter), Just(MemberRole::Learner)];
    let member =
        (any::<u64>(), text(), member_role, any::<bool>(), option::of(any::<u64>()), option::of(any::<bool>()))
            .prop_map(|(id, addr, role, promoting, match_index, reachable)| MemberStatus {
                id,
                addr,
                role,
                promoting,
                match_index,
                reachable,
            });
    (
        (any::<u64>(), text(), role, any::<u64>(), option::of(any::<u64>())),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), vec(peer, 0..3)),
        (vec(member, 0..3), any::<u64>(), any::<bool>()),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |(
                (id, group, role, term, leader),
                (commit_index, applied_index, last_log_index, last_log_term, peers),
                (members, members_index, members_pending),
                (first_log_index, snapshot_index, snapshot_term, snapshot_bytes, snapshots_installed),
            )| {
                StatusInfo {
                    id,
                    group,
                    role,
                    term,
                    leader,
                    commit_index,
                    applied_index,
                    last_log_index,
                    last_log_term,
                    peers,
                    members,
                    members_index,
                    members_pending,
                    refused: Default::default(),
                    first_log_index,
                    snapshot_index,
                    snapshot_term,
                    snapshot_bytes,
                    snapshots_installed,
                }
            },
        )
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (any::<u64>(), outcome(), any::<u64>(), option::of(any::<u64>())).prop_map(
            |(term, outcome, commit, lease_ask)| {
                Response::AppendEntries(AppendEntriesResponse { term, outcome, commit, lease_ask })
            }
        ),
        (any::<u64>(), any::<bool>()).prop_map(|(term, granted)| Response::Vote(VoteResponse { term, granted })),
        any::<u64>().prop_map(Response::ReadIndex),
        (any::<u64>(), data()).prop_map(|(index, output)| Response::Written(WriteReply { index, output })),
        option::of(text()).prop_map(Response::Value),
        vec((text(), text()), 0..4).prop_map(Response::Pairs),
        data().prop_map(Response::QueryReply),
        status().prop_map(|s| Response::Status(Box::new(s))),
        api_error().prop_map(Response::Error),
        Just(Response::Done),
        any::<u64>().prop_map(Response::HandedTo),
        (log_id(), any::<u64>()).prop_map(|(last, bytes)| Response::Snapshot { last, bytes }),
        data().prop_map(Response::SnapshotBytes),
        (any::<u64>(), install_outcome())
            .prop_map(|(term, outcome)| Response::InstallSnapshot(InstallSnapshotResponse { term, outcome })),
    ]
}

/// A `Hello` as a client or a peer sends it, for the group t35's acceptor admits or another.
pub fn hello() -> impl Strategy<Value = Hello> {
    let group = prop_oneof![3 => Just("default".to_string()), 1 => text()];
    (group, option::of(any::<u64>()), option::of(text()), option::of(any::<u64>()))
        .prop_map(|(group, node_id, token, lease_wait_ms)| Hello { group, node_id, token, lease_wait_ms })
}

/// Any frame, of every kind the protocol has (see [`variant`], which the compiler keeps
/// complete, and t35's test that this strategy reaches every name it returns).
pub fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        hello().prop_map(Frame::Hello),
        (text(), any::<u64>()).prop_map(|(group, node_id)| Frame::Welcome(Welcome { group, node_id })),
        (any::<u64>(), request()).prop_map(|(id, r)| Frame::Request(id, r)),
        (any::<u64>(), response()).prop_map(|(id, r)| Frame::Response(id, r)),
        text().prop_map(Frame::Error),
    ]
}

/// The name of a frame's kind down to its request or response variant. No wildcard arm: a
/// new variant does not compile until it is named here, and then t35 fails until
/// [`frame`] generates it.
pub fn variant(f: &Frame) -> &'static str {
    match f {
        Frame::Hello(_) => "hello",
        Frame::Welcome(_) => "welcome",
        Frame::Error(_) => "error",
        Frame::Request(_, r) => match r {
            Request::AppendEntries(_) => "request/append-entries",
            Request::Vote(_) => "request/vote",
            Request::ReadIndex => "request/read-index",
            Request::Forward(_) => "request/forward",
            Request::Write(_) => "request/write",
            Request::Get { .. } => "request/get",
            Request::List { .. } => "request/list",
            Request::Query { .. } => "request/query",
            Request::Beat { .. } => "request/beat",
            Request::Status => "request/status",
            Request::ChangeMembers { .. } => "request/change-members",
            Request::TimeoutNow { .. } => "request/timeout-now",
            Request::TransferLeadership { .. } => "request/transfer-leadership",
            Request::TakeSnapshot => "request/take-snapshot",
            Request::ReadSnapshot { .. } => "request/read-snapshot",
            Request::InstallSnapshot(_) => "request/install-snapshot",
        },
        Frame::Response(_, r) => match r {
            Response::AppendEntries(_) => "response/append-entries",
            Response::Vote(_) => "response/vote",
            Response::ReadIndex(_) => "response/read-index",
            Response::Written(_) => "response/written",
            Response::Value(_) => "response/value",
            Response::Pairs(_) => "response/pairs",
            Response::QueryReply(_) => "response/query-reply",
            Response::Status(_) => "response/status",
            Response::Done => "response/done",
            Response::HandedTo(_) => "response/handed-to",
            Response::Snapshot { .. } => "response/snapshot",
            Response::SnapshotBytes(_) => "response/snapshot-bytes",
            Response::InstallSnapshot(_) => "response/install-snapshot",
            Response::Error(e) => match e {
                ApiError::NoLeader { .. } => "response/error/no-leader",
                ApiError::NotLeader { .. } => "response/error/not-leader",
                ApiError::Dropped { .. } => "response/error/dropped",
                ApiError::Timeout { .. } => "response/error/timeout",
                ApiError::Unreachable { .. } => "response/error/unreachable",
                ApiError::UnknownNamespace(_) => "response/error/unknown-namespace",
                ApiError::BadRequest(_) => "response/error/bad-request",
                ApiError::Apply(_) => "response/error/apply",
                ApiError::Unavailable(_) => "response/error/unavailable",
                ApiError::NotFound(_) => "response/error/not-found",
                ApiError::Overloaded { .. } => "response/error/overloaded",
                ApiError::ChangeInProgress(_) => "response/error/change-in-progress",
            },
        },
    }
}

/// Every name [`variant`] can return.
pub const VARIANTS: usize = 3 + 16 + 13 + 12;

/// Encodes frames back to back, as one connection would carry them.
pub fn encode_all(frames: &[Frame]) -> Vec<u8> {
    frames.iter().flat_map(|f| encode_frame(f.clone()).expect("a generated frame encodes").to_vec()).collect()
}

/// Where each frame of [`encode_all`]'s output starts.
pub fn frame_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        starts.push(at);
        at += 4 + u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
    }
    starts
}

/// Frames whose length, magic and version are right but whose kind and body are arbitrary:
/// bytes that get past the header checks into the body decoder.
pub fn garbage_frames() -> impl Strategy<Value = Vec<u8>> {
    let one = (0u8..8, vec(any::<u8>(), 0..96)).prop_map(|(kind, body)| {
        let mut b = BytesMut::new();
        b.put_u32((4 + body.len()) as u32);
        b.put_u16(MAGIC);
        b.put_u8(PROTOCOL_VERSION);
        b.put_u8(kind);
        b.put_slice(&body);
        b.to_vec()
    });
    vec(one, 1..6).prop_map(|frames| frames.concat())
}

/// What a length field is changed to.
#[derive(Clone, Debug)]
pub enum LengthClaim {
    /// Exactly the decoder's limit.
    Limit,
    /// Just over the limit.
    OverLimit(u32),
    /// Just under the limit (never below the header's length).
    UnderLimit(u32),
    /// A few bytes more than the frame has.
    Longer(u32),
    /// A few bytes fewer than the frame has.
    Shorter(u32),
    /// Anything at all.
    Any(u32),
}

impl LengthClaim {
    fn value(&self, limit: usize, actual: u32) -> u32 {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        match *self {
            LengthClaim::Limit => limit,
            LengthClaim::OverLimit(d) => limit.saturating_add(d),
            LengthClaim::UnderLimit(d) => limit.saturating_sub(d).max(4),
            LengthClaim::Longer(d) => actual.saturating_add(d),
            LengthClaim::Shorter(d) => actual.saturating_sub(d),
            LengthClaim::Any(v) => v,
        }
    }
}

fn length_claim() -> impl Strategy<Value = LengthClaim> {
    prop_oneof![
        Just(LengthClaim::Limit),
        (1u32..8).prop_map(LengthClaim::OverLimit),
        (1u32..8).prop_map(LengthClaim::UnderLimit),
        (1u32..64).prop_map(LengthClaim::Longer),
        (1u32..8).prop_map(LengthClaim::Shorter),
        prop_oneof![Just(u32::MAX), Just(0), any::<u32>()].prop_map(LengthClaim::Any),
    ]
}

/// One change to a stream of bytes.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Cut the stream short.
    Truncate(Index),
    /// Insert arbitrary bytes.
    Insert(Index, Vec<u8>),
    /// Remove up to this many bytes.
    Delete(Index, usize),
    /// Copy a slice of the stream elsewhere in it (a frame boundary landing mid-frame).
    Splice { from: Index, len: usize, to: Index },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), vec(any::<u8>(), 1..8)).prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete(at, len)),
        2 => (any::<Index>(), 1usize..64, any::<Index>()).prop_map(|(from, len, to)| Mutation::Splice { from, len, to }),
    ]
}

/// Valid frames, then lengths changed, then bytes changed.
#[derive(Clone, Debug)]
pub struct Mutated {
    /// The frames before any change.
    pub frames: Vec<Frame>,
    /// Length fields to rewrite: which frame, to what.
    pub lengths: Vec<(Index, LengthClaim)>,
    /// Byte-level changes, in order.
    pub mutations: Vec<Mutation>,
}

impl Mutated {
    /// The bytes after every change, for a decoder whose limit is `limit`.
    pub fn bytes(&self, limit: usize) -> Vec<u8> {
        let mut bytes = encode_all(&self.frames);
        let starts = frame_starts(&bytes);
        for (which, claim) in &self.lengths {
            let at = starts[which.index(starts.len())];
            let actual = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            bytes[at..at + 4].copy_from_slice(&claim.value(limit, actual).to_be_bytes());
        }
        for m in &self.mutations {
            apply(&mut bytes, m);
        }
        bytes
    }
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match m {
        Mutation::Flip(at, mask) if n > 0 => bytes[at.index(n)] ^= mask,
        Mutation::Truncate(at) => bytes.truncate(at.index(n + 1)),
        Mutation::Insert(at, extra) => {
            let at = at.index(n + 1);
            bytes.splice(at..at, extra.iter().copied());
        }
        Mutation::Delete(at, len) if n > 0 => {
            let at = at.index(n);
            bytes.drain(at..(at + len).min(n));
        }
        Mutation::Splice { from, len, to } if n > 0 => {
            let from = from.index(n);
            let piece = bytes[from..(from + len).min(n)].to_vec();
            let to = to.index(n + 1);
            bytes.splice(to..to, piece);
        }
        _ => {}
    }
}

/// Valid frames with their lengths and bytes changed.
pub fn mutated() -> impl Strategy<Value = Mutated> {
    (vec(frame(), 1..5), vec((any::<Index>(), length_claim()), 0..3), vec(mutation(), 0..4))
        .prop_map(|(frames, lengths, mutations)| Mutated { frames, lengths, mutations })
}

/// How bytes reach a decoder: the sizes of successive socket reads (each also limited by
/// the buffer's spare room, as `FramedRead` reads; the rest one room-full at a time), and the
/// buffer's capacity at the start (`FramedRead` starts at 8 KiB).
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Successive read sizes.
    pub reads: Vec<usize>,
    /// Capacity of the read buffer when the connection opens.
    pub initial_capacity: usize,
}

impl Delivery {
    /// Everything in one read, into a buffer already big enough.
    pub fn whole(len: usize) -> Self {
        Self { reads: vec![len.max(1)], initial_capacity: len }
    }
}

/// Arbitrary splits: mostly small reads, so frame boundaries land everywhere.
pub fn delivery() -> impl Strategy<Value = Delivery> {
    let read = prop_oneof![4 => 1usize..12, 1 => 12usize..4096];
    let capacity = prop_oneof![Just(0usize), Just(8 * 1024), 1usize..64];
    (vec(read, 0..32), capacity).prop_map(|(reads, initial_capacity)| Delivery { reads, initial_capacity })
}

/// Frame limits: the handshake's 64 KiB, and small ones that generated frames often exceed.
pub fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![2 => Just(64 * 1024), 1 => 0usize..256]
}
