//! t16: the Raft core's membership rules, step by step, on cases a review found (and t15's
//! model, whose stores answer at once, could not reach).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dister::messages::raft::{AppendFromLeaderReply, AppendResult};
use dister::raft::core::{Action as Do, Core, Input, Timing};
use dister::raft::members::{MemberChange, MemberLog, Members};
use dister::raft::{Entry, HardState, LogId, Payload, Role};
use dister::wire::{AppendEntriesRequest, VoteResponse};

const TIMING: Timing = Timing { election_min: Duration::from_millis(300), election_max: Duration::from_millis(600) };

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
            match a {
                Do::SaveHardState { ticket } => {
                    let last = c.last_log();
                    c.step(now, Input::HardStateSaved { ticket, result: Some(Ok(last)) });
                }
                Do::ScheduleFlush => c.step(now, Input::Flush),
                Do::AppendLocal { term, entries, report: true } => {
                    let last = entries.last().map(|e| e.log_id()).unwrap_or_default();
                    c.step(now, Input::LocalAppended { term, result: Some(Ok(last)) });
                }
                _ => {}
            }
        }
    }
}

/// A candidate whose log learns, mid-campaign, that it was removed does not win.
///
/// 1. Node 4 of {1,2,3,4} receives "remove 4" from leader 1; its disk is slow to answer.
/// 2. Leader 1 dies; node 4 times out, wins its pre-vote, stands in term 2.
/// 3. The slow append lands: node 4 is no longer a voter; its campaign ends there, and a
///    grant from one voter of {1,2,3} (with its own, which no longer counts) elects nobody.
#[test]
fn a_candidate_removed_mid_campaign_does_not_win() {
    let t0 = Instant::now();
    let four = voters(&[1, 2, 3, 4]);
    let log = MemberLog::new(four.clone(), [(2, four.clone())]);
    let hard = HardState { term: 1, voted_for: Some(1), commit: 2 };
    let mut c = Core::new(4, log, TIMING, hard, LogId::new(1, 2), 7, t0);
    c.take_actions();
    let removed = four.changed(&MemberChange::Remove { id: 4 }).unwrap();
    let entry = Arc::new(Entry { term: 1, index: 3, payload: Payload::Config(removed) });
    let request =
        AppendEntriesRequest { term: 1, leader: 1, prev: LogId::new(1, 2), entries: vec![entry], leader_commit: 2 };
    c.step(t0, Input::AppendRequest { token: 1, request });
    let store = c.take_actions().into_iter().find_map(|a| match a {
        Do::StoreFromLeader { ticket, .. } => Some(ticket),
        _ => None,
    });
    let t1 = t0 + Duration::from_millis(700);
    c.step(t1, Input::Tick);
    let pre = c.take_actions().into_iter().find_map(|a| match a {
        Do::SendVote { request, .. } => Some(request),
        _ => None,
    });
    let pre = pre.expect("a pre-vote");
    for from in [2, 3] {
        c.step(t1, Input::VoteResponse { from, request: pre, response: VoteResponse { term: 1, granted: true } });
    }
    let save = c.take_actions().into_iter().find_map(|a| match a {
        Do::SaveHardState { ticket } => Some(ticket),
        _ => None,
    });
    assert_eq!(c.role(), Role::Candidate);
    let reply = AppendFromLeaderReply { result: AppendResult::Matched(3), durable: true, last: LogId::new(1, 3) };
    c.step(t1, Input::AppendStored { ticket: store.expect("a store"), result: Some(Ok(reply)) });
    assert!(!c.members().is_voter(4));
    c.take_actions();
    c.step(t1, Input::HardStateSaved { ticket: save.expect("a save"), result: Some(Ok(LogId::new(1, 3))) });
    let asked = c.take_actions().into_iter().any(|a| matches!(a, Do::SendVote { .. }));
    assert!(!asked, "a removed node asked for votes");
    let vote = dister::wire::VoteRequest {
        term: 2,
        candidate: 4,
        last_log: LogId::new(1, 3),
        pre_vote: false,
        transfer: false,
    };
    c.step(t1, Input::VoteResponse { from: 2, request: vote, response: VoteResponse { term: 2, granted: true } });
    assert_ne!(c.role(), Role::Leader, "elected by its own vote and one of three");
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
