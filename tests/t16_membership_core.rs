//! t16: the Raft core's membership rules, step by step, on cases a review found (which t15's
//! generated cases reach rarely, if at all).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dister::messages::raft::{AppendFromLeaderReply, AppendResult};
use dister::raft::core::{Action as Do, AppendTicket, Core, Input, Timing};
use dister::raft::members::{MemberChange, MemberLog, Members};
use dister::raft::{Entry, HardState, LogId, Payload, Role};
use dister::wire::AppendEntriesRequest;

const TIMING: Timing =
    Timing { election_min: Duration::from_millis(300), election_max: Duration::from_millis(600), lease: None };

fn voters(ids: &[u64]) -> Members {
    Members::of_voters(ids.iter().map(|&i| (i, format!("127.0.0.1:{}", 7000 + i))))
}

/// Carries out a lone leader's own IO (hard state, its appends) until nothing is left.
fn drive_alone(c: &mut Core, now: Instant) {
    for _ in 0..20 {
        let actions = c.take_actions();
        if actions.is_empty() {
            return;
        }
        for a in actions {
            crate::common::core_io::own_io(c, now, a);
        }
    }
}

/// A node whose log is learning, as its election timer fires, that it was removed does not
/// stand: a campaign waits for the appends `LogStore` has not answered yet, since who the
/// voters are is known only once they are in.
///
/// 1. Node 4 of {1,2,3,4} receives "remove 4" from leader 1; its disk is slow to answer.
/// 2. Leader 1 dies; node 4 times out: it asks for no (pre-)vote yet.
/// 3. The slow append lands: node 4 is no longer a voter, and never stands.
#[test]
fn a_node_learning_it_was_removed_does_not_stand() {
    let (mut c, store, t1) = timed_out_with_an_append_in_flight(true);
    assert!(!sends_votes(&mut c), "a campaign started with an append unanswered");
    let reply = AppendFromLeaderReply { result: AppendResult::Matched(3), durable: true, last: LogId::new(1, 3) };
    c.step(t1, Input::AppendStored { ticket: store, result: Some(Ok(reply)) });
    assert!(!c.members().is_voter(4));
    assert!(!sends_votes(&mut c), "a removed node asked for votes");
    c.step(t1 + Duration::from_secs(2), Input::Tick);
    assert!(!sends_votes(&mut c), "a removed node asked for votes");
    assert_eq!(c.role(), Role::Follower);
}

/// The same with an append that changes no configuration: the campaign that waited for it
/// starts as soon as it is stored.
#[test]
fn a_campaign_that_waited_for_an_append_starts_once_it_is_stored() {
    let (mut c, store, t1) = timed_out_with_an_append_in_flight(false);
    assert!(!sends_votes(&mut c));
    let reply = AppendFromLeaderReply { result: AppendResult::Matched(3), durable: true, last: LogId::new(1, 3) };
    c.step(t1, Input::AppendStored { ticket: store, result: Some(Ok(reply)) });
    assert!(sends_votes(&mut c), "the campaign that waited never started");
}

/// Node 4 of {1,2,3,4}, following leader 1, with an append of entry 3 (its own removal, or a
/// blank) sent to `LogStore` and unanswered when its election timer fires. Answers the core,
/// the append's ticket and the time.
fn timed_out_with_an_append_in_flight(removal: bool) -> (Core, AppendTicket, Instant) {
    let four = voters(&[1, 2, 3, 4]);
    let payload =
        if removal { Payload::Config(four.changed(&MemberChange::Remove { id: 4 }).unwrap()) } else { Payload::Blank };
    let (mut c, store, t0) = node_4_with_an_append_in_flight(four, payload);
    let t1 = t0 + Duration::from_millis(700);
    c.step(t1, Input::Tick);
    (c, store, t1)
}

/// Node 4, in `members` at entry 2 (committed) and following leader 1 in term 1, with an
/// append of entry 3 carrying `payload` sent to `LogStore` and unanswered. Answers the core,
/// the append's ticket and the time.
fn node_4_with_an_append_in_flight(members: Members, payload: Payload) -> (Core, AppendTicket, Instant) {
    let t0 = Instant::now();
    let log = MemberLog::new(members.clone(), [(2, members)]);
    let hard = HardState { term: 1, voted_for: Some(1), commit: 2 };
    let mut c = Core::new(4, log, TIMING, hard, LogId::new(1, 2), 7, t0);
    c.take_actions();
    let entry = Arc::new(Entry { term: 1, index: 3, payload });
    let request = AppendEntriesRequest {
        term: 1,
        leader: 1,
        prev: LogId::new(1, 2),
        entries: vec![entry],
        leader_commit: 2,
        leader_visible: 2,
        lease: None,
    };
    c.step(t0, Input::AppendRequest { token: 1, request });
    let store = stored_ticket(&mut c.take_actions()).expect("a store");
    (c, store, t0)
}

/// The ticket of the first append the actions send to `LogStore`.
fn stored_ticket(actions: &mut Vec<Do>) -> Option<AppendTicket> {
    actions.drain(..).find_map(|a| match a {
        Do::StoreFromLeader { ticket, .. } => Some(ticket),
        _ => None,
    })
}

/// A handover the leader asked for while an append was unanswered waits for it, and is
/// dropped if another leader has taken over meanwhile: it must not unseat the new one.
///
/// 1. Node 4 follows leader 1 in term 1, an append unanswered; 1 sends TimeoutNow: node 4
///    waits for its disk before it stands.
/// 2. Node 2 wins term 2 and sends node 4 an append; both appends are then stored.
/// 3. Node 4 asks for no vote: the handover of term 1 is over.
#[test]
fn a_handover_asked_by_a_deposed_leader_is_dropped() {
    let (mut c, first, t0) = node_4_with_an_append_in_flight(voters(&[1, 2, 3, 4]), Payload::Blank);
    c.step(t0, Input::TimeoutNow { from: 1, term: 1 });
    assert!(!sends_votes(&mut c), "stood before its log was in");
    let entry = Arc::new(Entry { term: 2, index: 4, payload: Payload::Blank });
    let request = AppendEntriesRequest {
        term: 2,
        leader: 2,
        prev: LogId::new(1, 3),
        entries: vec![entry],
        leader_commit: 2,
        leader_visible: 2,
        lease: None,
    };
    c.step(t0, Input::AppendRequest { token: 2, request });
    let second = stored_ticket(&mut c.take_actions()).expect("a second store");
    let reply = |index| AppendFromLeaderReply {
        result: AppendResult::Matched(index),
        durable: true,
        last: LogId::new(if index == 3 { 1 } else { 2 }, index),
    };
    c.step(t0, Input::AppendStored { ticket: first, result: Some(Ok(reply(3))) });
    assert_eq!(c.role(), Role::Follower, "a stale handover started with an append still unanswered");
    c.step(t0, Input::AppendStored { ticket: second, result: Some(Ok(reply(4))) });
    assert!(!sends_votes(&mut c));
    let view = (c.role(), c.term(), c.leader());
    assert_eq!(view, (Role::Follower, 2, Some(2)), "a handover asked by the deposed leader 1 unseated leader 2");
}

/// A learner told to stand (TimeoutNow) while the append that promotes it is unanswered
/// waits for it, then stands: its lagging view of the members does not drop the handover.
#[test]
fn a_handover_to_a_node_being_promoted_waits_for_its_log() {
    let add = MemberChange::Add { id: 4, addr: "127.0.0.1:7004".into(), promote: true };
    let with_learner = voters(&[1, 2, 3]).changed(&add).unwrap();
    let promoted = with_learner.changed(&MemberChange::Promote { id: 4 }).unwrap();
    let (mut c, store, t0) = node_4_with_an_append_in_flight(with_learner, Payload::Config(promoted));
    c.step(t0, Input::TimeoutNow { from: 1, term: 1 });
    assert!(!sends_votes(&mut c), "stood before its log was in");
    let reply = AppendFromLeaderReply { result: AppendResult::Matched(3), durable: true, last: LogId::new(1, 3) };
    c.step(t0, Input::AppendStored { ticket: store, result: Some(Ok(reply)) });
    // It stands in term 2: its vote for itself is made durable before it asks for any.
    let saved = c.take_actions().into_iter().find_map(|a| match a {
        Do::SaveHardState { ticket } => Some(ticket),
        _ => None,
    });
    let saved = saved.expect("the handover to the promoted node was dropped");
    c.step(t0, Input::HardStateSaved { ticket: saved, result: Some(Ok(LogId::new(1, 3))) });
    let votes = c.take_actions().into_iter().filter(|a| matches!(a, Do::SendVote { .. })).count();
    assert_eq!((c.term(), votes), (2, 3), "node 4 did not stand for term 2 asking the 3 others");
}

/// Appends waiting for a disk that does not answer are bounded: past
/// `MAX_APPENDS_TO_FOLLOW` one is refused as unstored at once, and none goes to `LogStore`.
#[test]
fn appends_waiting_for_a_hung_disk_are_bounded() {
    use dister::raft::core::MAX_APPENDS_TO_FOLLOW;
    use dister::wire::AppendOutcome;
    let (mut c, _, t0) = node_4_with_an_append_in_flight(voters(&[1, 2, 3, 4]), Payload::Blank);
    let heartbeat = || AppendEntriesRequest {
        term: 1,
        leader: 1,
        prev: LogId::new(1, 3),
        entries: vec![],
        leader_commit: 2,
        leader_visible: 2,
        lease: None,
    };
    for token in 2..=MAX_APPENDS_TO_FOLLOW as u64 {
        c.step(t0, Input::AppendRequest { token, request: heartbeat() });
        assert!(stored_ticket(&mut c.take_actions()).is_some(), "append {token} was not sent to LogStore");
    }
    c.step(t0, Input::AppendRequest { token: 0, request: heartbeat() });
    let actions = c.take_actions();
    assert!(!actions.iter().any(|a| matches!(a, Do::StoreFromLeader { .. })), "the backlog grew past its bound");
    let refused = actions.iter().any(|a| {
        matches!(a, Do::AnswerAppend { token: 0, response } if response.outcome == AppendOutcome::StaleTerm && response.term == 1)
    });
    assert!(refused, "the append past the bound was not refused: {actions:?}");
}

/// Whether the core's pending actions ask anybody for a (pre-)vote.
fn sends_votes(c: &mut Core) -> bool {
    c.take_actions().into_iter().any(|a| matches!(a, Do::SendVote { .. }))
}

/// A learner that never acknowledged anything is not promoted by hand: promoting it would
/// make it a voter the cluster cannot commit without.
#[test]
fn a_silent_learner_is_not_promoted() {
    let t0 = Instant::now();
    let mut c = Core::new(1, MemberLog::new(voters(&[1]), []), TIMING, HardState::default(), LogId::default(), 7, t0);
    drive_alone(&mut c, t0);
    assert_eq!(c.role(), Role::Leader);
    c.propose_change(t0, MemberChange::Add { id: 2, addr: "127.0.0.1:9".into(), promote: false }).unwrap();
    drive_alone(&mut c, t0);
    match c.propose_change(t0, MemberChange::Promote { id: 2 }) {
        Err(dister::ApiError::BadRequest(m)) => assert!(m.contains("not acknowledged"), "{m}"),
        other => panic!("a silent learner was promoted: {other:?}"),
    }
    // One change at a time: a second before the first commits is refused, retryably.
    c.propose_change(t0, MemberChange::Add { id: 3, addr: "127.0.0.1:10".into(), promote: false }).unwrap();
    match c.propose_change(t0, MemberChange::Remove { id: 2 }) {
        Err(e @ dister::ApiError::ChangeInProgress(_)) => assert!(e.is_retryable()),
        other => panic!("a second change went in: {other:?}"),
    }
}

/// A learner far behind the leader is not promoted by hand, and is told how far; once it has
/// caught up to within `PROMOTE_MAX_LAG` entries, it is.
///
/// 1. Lone leader 1 adds learner 2, which acknowledges the entry that added it.
/// 2. The leader logs `PROMOTE_MAX_LAG + 100` entries the learner does not acknowledge:
///    promoting it is refused, naming the gap.
/// 3. It acknowledges all but the last 10: promotion goes in.
#[test]
fn a_learner_far_behind_is_not_promoted() {
    use dister::raft::members::PROMOTE_MAX_LAG;
    let t0 = Instant::now();
    let mut c = Core::new(1, MemberLog::new(voters(&[1]), []), TIMING, HardState::default(), LogId::default(), 7, t0);
    drive_alone(&mut c, t0);
    let added = c.propose_change(t0, MemberChange::Add { id: 2, addr: "127.0.0.1:9".into(), promote: false }).unwrap();
    drive_alone(&mut c, t0);
    let ack = |c: &mut Core, m: u64| {
        let term = c.term();
        c.step(
            t0,
            Input::PeerProgress {
                peer: 2,
                term,
                acked_round: 0,
                match_index: Some(m),
                commit: None,
                lease_ask: None,
                lease_dropped: false,
            },
        );
        c.take_actions();
    };
    ack(&mut c, added);
    for k in 0..PROMOTE_MAX_LAG + 100 {
        let data = bytes::Bytes::from(k.to_be_bytes().to_vec());
        c.propose(Payload::Command { namespace: "kv".into(), data }).unwrap();
    }
    drive_alone(&mut c, t0);
    let last = c.last_log().index;
    match c.propose_change(t0, MemberChange::Promote { id: 2 }) {
        Err(dister::ApiError::BadRequest(m)) => {
            assert!(m.contains(&format!("{} entries behind", last - added)), "{m}")
        }
        other => panic!("a learner {} entries behind was promoted: {other:?}", last - added),
    }
    assert!(c.members().learners.contains_key(&2));
    ack(&mut c, last - 10);
    c.propose_change(t0, MemberChange::Promote { id: 2 }).expect("a caught-up learner is promoted");
    assert!(c.members().is_voter(2));
}
