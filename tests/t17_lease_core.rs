//! t17: lease reads in the Raft core, step by step (`read_mode = "lease"`): when the leader may
//! answer a read index without a round, and each rule the lease's safety rests on: voters
//! that confirmed a round wait out `election_min` (a closed connection and a restart
//! included) and a transfer ends the lease. Then followers' read leases: when one is granted
//! and from when it counts, that nothing is shown or acknowledged before every holder has
//! it as committed, and that a transfer waits for every holder's lease to run out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dister::messages::raft::{AppendFromLeaderReply, AppendResult};
use dister::raft::core::{Action as Do, AppendTicket, Core, HOLDER_SHARE, Input, Timing, lease_for};
use dister::raft::members::{MemberLog, Members};
use dister::raft::{Entry, HardState, LogId, Payload, Role};
use dister::wire::{AppendEntriesRequest, AppendOutcome, LeaseGrant, LeaseWord, VoteRequest, VoteResponse};

const MIN: Duration = Duration::from_millis(300);

/// The read indexes a core answered, by token.
type Answers = Vec<(u64, Result<u64, dister::ApiError>)>;

fn timing(lease: bool) -> Timing {
    Timing { election_min: MIN, election_max: Duration::from_millis(600), lease: lease.then(|| lease_for(MIN)) }
}

fn voters(ids: &[u64]) -> Members {
    Members::of_voters(ids.iter().map(|&i| (i, format!("127.0.0.1:{}", 7000 + i))))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Carries out node 1's own IO, node 2 granting every vote it asks for, until nothing is left;
/// answers the read indexes the core gave, by token, and whether a read round was asked for.
fn drive(c: &mut Core, now: Instant) -> (Answers, bool) {
    let (mut reads, mut round) = (Vec::new(), false);
    for a in others(c, now) {
        match a {
            Do::AnswerRead { token, result } => reads.push((token, result)),
            Do::ScheduleReadRound => round = true,
            _ => {}
        }
    }
    (reads, round)
}

/// Node 1 of {1,2,3}, elected with node 2's vote, its no-op committed by node 2. Answers the
/// core and the time.
fn leader(lease: bool) -> (Core, Instant) {
    let t0 = Instant::now();
    let log = MemberLog::new(voters(&[1, 2, 3]), []);
    let mut c = Core::new(1, log, timing(lease), HardState::default(), LogId::default(), 7, t0);
    let now = t0 + ms(700);
    c.step(now, Input::Tick);
    drive(&mut c, now);
    assert_eq!(c.role(), Role::Leader);
    let (term, last) = (c.term(), c.last_log().index);
    c.step(
        now,
        Input::PeerProgress {
            peer: 2,
            term,
            acked_round: 0,
            match_index: Some(last),
            commit: None,
            lease_ask: None,
            lease_dropped: false,
        },
    );
    drive(&mut c, now);
    (c, now)
}

/// A round issued at `now` and confirmed by node 2; answers what it answered.
fn confirmed_round(c: &mut Core, now: Instant) -> Answers {
    c.step(now, Input::ReadRound);
    let mut reads = drive(c, now).0;
    let term = c.term();
    let round = c.read_round();
    c.step(
        now,
        Input::PeerProgress {
            peer: 2,
            term,
            acked_round: round,
            match_index: None,
            commit: None,
            lease_ask: None,
            lease_dropped: false,
        },
    );
    reads.extend(drive(c, now).0);
    reads
}

fn read(c: &mut Core, now: Instant, token: u64) -> (Answers, bool) {
    c.step(now, Input::ReadIndex { token });
    drive(c, now)
}

/// Under a lease a read index is answered at once, with the commit index; without one (or
/// once the lease ran out) it waits for a round a majority confirms.
#[test]
fn a_lease_answers_read_indexes_without_a_round_until_it_runs_out() {
    let (mut c, t) = leader(true);
    let commit = c.commit();
    // No round confirmed yet in this term: no lease.
    let (answered, round) = read(&mut c, t, 1);
    assert!(answered.is_empty() && round, "a read was answered before any round: {answered:?}");
    let answered = confirmed_round(&mut c, t);
    assert!(matches!(answered[..], [(1, Ok(i))] if i == commit), "{answered:?}");
    // The lease holds: answered in the same step, no round asked.
    let (answered, round) = read(&mut c, t + ms(10), 2);
    assert!(matches!(answered[..], [(2, Ok(i))] if i == commit) && !round, "{answered:?}");
    // Past half of it, answered and renewed.
    let (answered, round) = read(&mut c, t + lease_for(MIN) / 2 + ms(10), 3);
    assert!(answered.len() == 1 && round, "no renewal asked: {answered:?} {round}");
    // Past its end (the renewal never confirmed): a round again.
    let (answered, _) = read(&mut c, t + lease_for(MIN) + ms(1), 4);
    assert!(answered.is_empty(), "a read was answered from a lease that ran out: {answered:?}");

    let (mut c, t) = leader(false);
    confirmed_round(&mut c, t);
    let (answered, round) = read(&mut c, t + ms(10), 1);
    assert!(answered.is_empty() && round, "read_mode index answered without a round: {answered:?}");
}

/// The lease lasts less than the voters' wait: a voter that confirmed a round refuses to
/// vote until `election_min` has passed since, so no other leader exists while it holds.
#[test]
fn the_lease_ends_before_a_voter_that_confirmed_it_would_vote() {
    assert!(lease_for(MIN) < MIN.mul_f64(0.95 / 1.05), "the lease leaves no room for 5% clock drift");
    let (mut f, t) = follower(true);
    let ask = |f: &mut Core, at: Instant| {
        let request =
            VoteRequest { term: 2, candidate: 3, last_log: LogId::new(1, 1), pre_vote: true, transfer: false };
        f.step(at, Input::VoteRequest { token: 9, request });
        f.take_actions().into_iter().find_map(|a| match a {
            Do::AnswerVote { token: 9, response } => Some(response.granted),
            _ => None,
        })
    };
    assert_eq!(ask(&mut f, t + MIN - ms(1)), Some(false), "a voter heard from the leader voted within election_min");
    assert_eq!(ask(&mut f, t + MIN + ms(1)), Some(true));
}

/// Node 2 of {1,2,3}, following leader 1 in term 1, heard from it at the time answered.
fn follower(lease: bool) -> (Core, Instant) {
    let t0 = Instant::now();
    let log = MemberLog::new(voters(&[1, 2, 3]), []);
    let hard = HardState { term: 1, voted_for: Some(1), commit: 0 };
    let mut c = Core::new(2, log, timing(lease), hard, LogId::default(), 7, t0);
    let t = t0 + ms(400);
    let request = AppendEntriesRequest {
        term: 1,
        leader: 1,
        prev: LogId::default(),
        entries: vec![],
        leader_commit: 0,
        leader_visible: 0,
        lease: None,
    };
    c.step(t, Input::AppendRequest { token: 1, request });
    c.take_actions();
    (c, t)
}

/// A closed connection to the leader moves a follower's election close, but under leases not
/// before `election_min` since it last heard from the leader; a restarted node votes for no one
/// until `election_min` has passed (it may have confirmed a round before it went down).
#[test]
fn neither_a_closed_connection_nor_a_restart_shortens_the_wait() {
    let (mut f, t) = follower(true);
    f.step(t + ms(1), Input::PeerDisconnected { peer: 1 });
    f.take_actions();
    assert!(f.next_wakeup() >= t + MIN, "the election was moved inside the leader's lease");
    let request = VoteRequest { term: 2, candidate: 3, last_log: LogId::new(1, 1), pre_vote: true, transfer: false };
    f.step(t + ms(2), Input::VoteRequest { token: 9, request });
    let granted =
        f.take_actions().into_iter().any(|a| matches!(a, Do::AnswerVote { response, .. } if response.granted));
    assert!(!granted, "a closed connection let a voter vote inside the leader's lease");

    // Without leases the shortcut stays: the survivors elect soon.
    let (mut f, t) = follower(false);
    f.step(t + ms(1), Input::PeerDisconnected { peer: 1 });
    f.take_actions();
    f.step(t + ms(2), Input::VoteRequest { token: 9, request });
    let granted =
        f.take_actions().into_iter().any(|a| matches!(a, Do::AnswerVote { response, .. } if response.granted));
    assert!(granted, "read_mode index lost the closed-connection shortcut");

    let t0 = Instant::now();
    let log = MemberLog::new(voters(&[1, 2, 3]), []);
    let hard = HardState { term: 1, voted_for: Some(1), commit: 0 };
    let mut restarted = Core::new(2, log, timing(true), hard, LogId::default(), 7, t0);
    restarted.take_actions();
    restarted.step(t0 + ms(10), Input::VoteRequest { token: 9, request });
    let granted =
        restarted.take_actions().into_iter().any(|a| matches!(a, Do::AnswerVote { response, .. } if response.granted));
    assert!(!granted, "a restarted node voted inside a lease it may have confirmed");
}

/// A leadership transfer ends the lease for the rest of the term: the target's election does
/// not wait for the voters' silence, so reads take rounds again.
#[test]
fn a_transfer_ends_the_lease() {
    let (mut c, t) = leader(true);
    confirmed_round(&mut c, t);
    assert_eq!(read(&mut c, t + ms(1), 1).0.len(), 1, "no lease to begin with");
    c.transfer_leadership(t + ms(2), Some(2)).unwrap();
    drive(&mut c, t + ms(2));
    assert!(read(&mut c, t + ms(3), 2).0.is_empty(), "a read was answered from a lease after a transfer began");
    // Nor does a round confirmed later in the term give one back.
    confirmed_round(&mut c, t + ms(4));
    assert!(read(&mut c, t + ms(5), 3).0.is_empty(), "the lease came back in the term of a transfer");
}

/// A voter that took a newer term without voting (from a refusal of an old pre-vote of its
/// own) still refuses a vote in that term while it hears from the leader: the rule that keeps
/// a lease holds for a request of the voter's own term too (found by review).
#[test]
fn a_term_taken_from_a_refusal_does_not_open_a_vote_inside_the_lease() {
    let (mut f, t) = follower(true);
    let old = VoteRequest { term: 2, candidate: 2, last_log: LogId::default(), pre_vote: true, transfer: false };
    let refusal = VoteResponse { term: 2, granted: false };
    f.step(t + ms(1), Input::VoteResponse { from: 3, request: old, response: refusal });
    f.take_actions();
    assert_eq!(f.term(), 2, "the refusal's term was not taken (the case this covers no longer arises)");
    let request = VoteRequest { term: 2, candidate: 3, last_log: LogId::new(1, 1), pre_vote: false, transfer: false };
    f.step(t + ms(2), Input::VoteRequest { token: 9, request });
    let actions = f.take_actions();
    let granted = actions.iter().any(|a| matches!(a, Do::AnswerVote { response, .. } if response.granted))
        || actions.iter().any(|a| matches!(a, Do::SaveHardState { .. }));
    assert!(!granted, "a vote in the voter's own term was granted inside the leader's lease: {actions:?}");
}

// ---- followers' read leases -------------------------------------------------------------------

/// Carries out node 1's own IO (node 2 granting its votes) until nothing is left; answers
/// every other action.
fn others(c: &mut Core, now: Instant) -> Vec<Do> {
    let mut out = Vec::new();
    for _ in 0..50 {
        let actions = c.take_actions();
        if actions.is_empty() {
            break;
        }
        for a in actions {
            match crate::common::core_io::own_io(c, now, a) {
                None => {}
                Some(Do::SendVote { to: 2, request }) => {
                    let response = VoteResponse { term: request.term, granted: true };
                    c.step(now, Input::VoteResponse { from: 2, request, response });
                }
                Some(other) => out.push(other),
            }
        }
    }
    out
}

/// A replicator's report from `peer`: the round it confirmed, its durable index, its commit
/// index and its lease ask.
fn report(
    c: &mut Core,
    now: Instant,
    peer: u64,
    round: u64,
    matched: Option<u64>,
    commit: u64,
    ask: Option<u64>,
) -> Vec<Do> {
    let term = c.term();
    let input = Input::PeerProgress {
        peer,
        term,
        acked_round: round,
        match_index: matched,
        commit: Some(commit),
        lease_ask: ask,
        lease_dropped: false,
    };
    c.step(now, input);
    others(c, now)
}

/// A round issued now and confirmed by node 2 alone; answers what followed.
fn round_by_2(c: &mut Core, now: Instant) -> Vec<Do> {
    c.step(now, Input::ReadRound);
    let mut out = others(c, now);
    let (round, commit) = (c.read_round(), c.commit());
    out.extend(report(c, now, 2, round, None, commit, None));
    out
}

fn grants(actions: &[Do]) -> Vec<(u64, LeaseGrant)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Do::SendLease { peer, word: LeaseWord::Grant(grant) } => Some((*peer, *grant)),
            _ => None,
        })
        .collect()
}

fn released(actions: &[Do]) -> Option<u64> {
    actions.iter().filter_map(|a| if let Do::CommitTo(i) = a { Some(*i) } else { None }).max()
}

/// Node 3 holds a read lease from leader 1, asked for at `t`; answers the leader and `t`.
fn leader_with_holder_3() -> (Core, Instant) {
    let (mut c, t) = leader(true);
    let commit = c.commit();
    report(&mut c, t, 3, 0, Some(commit), commit, Some(77));
    let granted = round_by_2(&mut c, t);
    assert_eq!(grants(&granted), [(3, LeaseGrant { ask: 77, floor: commit })]);
    (c, t)
}

/// A write stamped, flushed and durable on the leader; answers its index.
fn write(c: &mut Core, now: Instant) -> u64 {
    let index = c.propose(Payload::Command { namespace: "kv".into(), data: Bytes::from_static(b"{}") }).unwrap();
    others(c, now);
    index
}

/// A follower's lease is granted only once a round issued after its ask arrived is
/// confirmed by a majority (a round issued before proves nothing about the time after the
/// ask), and only to a follower that has caught up with the commit index of then.
#[test]
fn a_follower_lease_waits_for_a_round_issued_after_its_ask() {
    let (mut c, t) = leader(true);
    let commit = c.commit();
    c.step(t, Input::ReadRound);
    others(&mut c, t);
    let before = c.read_round();
    // Node 3 asks: a round is asked for.
    let asked = report(&mut c, t + ms(1), 3, 0, None, commit, Some(77));
    assert!(asked.iter().any(|a| matches!(a, Do::ScheduleReadRound)), "an ask started no round: {asked:?}");
    // The round issued before the ask, confirmed: no lease.
    let term = c.term();
    let input = Input::PeerProgress {
        peer: 2,
        term,
        acked_round: before,
        match_index: None,
        commit: None,
        lease_ask: None,
        lease_dropped: false,
    };
    c.step(t + ms(2), input);
    assert!(grants(&others(&mut c, t + ms(2))).is_empty(), "a round issued before the ask granted it");
    // A round issued after, confirmed: granted, floored at the commit index.
    let granted = round_by_2(&mut c, t + ms(3));
    assert_eq!(grants(&granted), [(3, LeaseGrant { ask: 77, floor: commit })]);
    assert!(grants(&round_by_2(&mut c, t + ms(4))).is_empty(), "granted twice");
    // Answers sent before the grant arrived still carry the ask: no round, no second grant.
    let again = report(&mut c, t + ms(5), 3, 0, None, commit, Some(77));
    assert!(!again.iter().any(|a| matches!(a, Do::ScheduleReadRound)), "a granted ask started a round");
    assert!(grants(&round_by_2(&mut c, t + ms(6))).is_empty(), "a granted ask was granted again");

    // A follower behind the commit index its ask arrived at waits until it catches up.
    let (mut c, t) = leader(true);
    let commit = c.commit();
    report(&mut c, t, 3, 0, None, commit - 1, Some(77));
    assert!(grants(&round_by_2(&mut c, t + ms(1))).is_empty(), "a follower behind the commit index got a lease");
    let granted = report(&mut c, t + ms(2), 3, 0, None, commit, Some(77));
    assert_eq!(grants(&granted), [(3, LeaseGrant { ask: 77, floor: commit })]);

    // Without leases an ask is ignored.
    let (mut c, t) = leader(false);
    let commit = c.commit();
    report(&mut c, t, 3, 0, None, commit, Some(77));
    assert!(grants(&round_by_2(&mut c, t + ms(1))).is_empty(), "read_mode index granted a lease");
}

/// While node 3 holds a lease, a write is neither applied (so neither shown nor
/// acknowledged) anywhere nor may any node show it, before node 3 has it as committed; once
/// its lease has run out (as the leader counts it, with margin) the write goes on without
/// it. The leader's own lease reads answer what may be seen, not the commit index.
#[test]
fn nothing_is_shown_before_every_lease_holder_has_it_as_committed() {
    let (mut c, t) = leader_with_holder_3();
    let shown = c.commit();
    let i = write(&mut c, t + ms(1));
    let acked = report(&mut c, t + ms(2), 2, 0, Some(i), shown, None);
    assert_eq!(c.commit(), i, "node 2's copy should commit the write");
    assert_eq!(released(&acked), None, "applied before the lease holder had it as committed");
    let replicate = acked
        .iter()
        .find_map(|a| if let Do::Replicate { commit, visible, .. } = a { Some((*commit, *visible)) } else { None });
    assert_eq!(replicate, Some((i, shown)), "followers were told to show what a holder lacks");
    // The leader's lease read answers what may be seen.
    let answered = read(&mut c, t + ms(3), 1).0;
    assert!(matches!(answered[..], [(1, Ok(x))] if x == shown), "{answered:?}");
    // Node 3 has it as committed: applied, and followers told.
    let moved = report(&mut c, t + ms(4), 3, 0, Some(i), i, None);
    assert_eq!(released(&moved), Some(i));
    assert!(moved.iter().any(|a| matches!(a, Do::Replicate { visible, .. } if *visible == i)), "{moved:?}");

    // A second write node 3 never answers for: held until its lease has run out.
    let j = write(&mut c, t + ms(5));
    assert_eq!(released(&report(&mut c, t + ms(6), 2, 0, Some(j), i, None)), None);
    let out = t + lease_for(MIN).mul_f64(HOLDER_SHARE);
    assert!(c.next_wakeup() <= out, "no wakeup when the holder's lease runs out");
    c.step(out - ms(1), Input::Tick);
    assert_eq!(released(&others(&mut c, out - ms(1))), None, "shown while the holder's lease may still run");
    c.step(out, Input::Tick);
    assert_eq!(released(&others(&mut c, out)), Some(j), "a holder's lease that ran out still held writes back");
}

/// A transfer's target is elected without the voters' wait, so TimeoutNow waits until
/// every follower holding a lease has answered that it dropped it, or its lease has run out;
/// none is granted meanwhile.
#[test]
fn a_transfer_waits_for_every_follower_lease_to_end() {
    let sent = |actions: &[Do]| actions.iter().any(|a| matches!(a, Do::SendTimeoutNow { to: 2, .. }));
    let revoked =
        |actions: &[Do]| actions.iter().any(|a| matches!(a, Do::SendLease { peer: 3, word: LeaseWord::Revoke }));
    let transfer = || {
        let (mut c, t) = leader_with_holder_3();
        let last = c.last_log().index;
        report(&mut c, t + ms(1), 2, 0, Some(last), last, None);
        c.transfer_leadership(t + ms(2), Some(2)).unwrap();
        let out = others(&mut c, t + ms(2));
        assert!(revoked(&out), "node 3 was not told to drop its lease: {out:?}");
        assert!(!sent(&out), "TimeoutNow left while node 3's lease may run");
        // Node 3 asks again: not granted during the transfer.
        report(&mut c, t + ms(3), 3, 0, None, last, Some(78));
        assert!(grants(&round_by_2(&mut c, t + ms(4))).is_empty(), "a lease granted during a transfer");
        (c, t, last)
    };
    // Node 3 answers that it dropped its lease: TimeoutNow leaves.
    let (mut c, t, last) = transfer();
    let term = c.term();
    let dropped = |lease_dropped| Input::PeerProgress {
        peer: 3,
        term,
        acked_round: 0,
        match_index: None,
        commit: Some(last),
        lease_ask: None,
        lease_dropped,
    };
    c.step(t + ms(5), dropped(false));
    assert!(!sent(&others(&mut c, t + ms(5))), "TimeoutNow left on an answer that did not drop the lease");
    c.step(t + ms(6), dropped(true));
    assert!(sent(&others(&mut c, t + ms(6))), "TimeoutNow did not leave once the only holder dropped its lease");
    // Node 3 never answers: TimeoutNow leaves once its lease has run out, as the leader counts.
    let (mut c, t, _) = transfer();
    let out = t + lease_for(MIN).mul_f64(HOLDER_SHARE);
    c.step(out - ms(1), Input::Tick);
    assert!(!sent(&others(&mut c, out - ms(1))), "TimeoutNow left while node 3's lease may run");
    c.step(out, Input::Tick);
    assert!(sent(&others(&mut c, out)), "TimeoutNow never left once the leases ran out");
}

/// A leader counts itself in the majority that confirms a follower's lease, and that lease
/// outlives its office: deposed (a higher term seen), it votes for no one until
/// `election_min` has passed, as a voter that confirmed a round does (found by review: it
/// voted at once, so {3, 1} could elect a leader inside node 2's lease, confirmed by {1, 2}).
#[test]
fn a_deposed_leader_waits_out_the_leases_it_granted() {
    let (mut c, t) = leader(true);
    let commit = c.commit();
    report(&mut c, t, 2, 0, None, commit, Some(77));
    assert_eq!(grants(&round_by_2(&mut c, t + ms(1))).len(), 1, "no lease granted");
    let term = c.term();
    c.step(t + ms(10), Input::HigherTerm { peer: 3, term: term + 1 });
    others(&mut c, t + ms(10));
    assert_eq!(c.role(), Role::Follower);
    let vote = |c: &mut Core, at: Instant, pre_vote: bool| {
        let request = VoteRequest { term: term + 2, candidate: 3, last_log: c.last_log(), pre_vote, transfer: false };
        c.step(at, Input::VoteRequest { token: 9, request });
        others(c, at).iter().any(|a| matches!(a, Do::AnswerVote { response, .. } if response.granted))
    };
    assert!(!vote(&mut c, t + ms(20), true), "a deposed leader granted a pre-vote inside a lease it granted");
    assert!(!vote(&mut c, t + ms(21), false), "a deposed leader voted inside a lease it granted");
    assert!(vote(&mut c, t + ms(10) + MIN, false), "a deposed leader never votes again");
}

/// Node 2 of {1,2,3} following leader 1 in term 1 with entries 1 and 2; answers the core and
/// the time.
fn follower_with_log() -> (Core, Instant) {
    let (mut f, t) = follower(true);
    let entries = (1..=2).map(|index| Arc::new(Entry { term: 1, index, payload: Payload::Blank })).collect();
    append(&mut f, t, entries, 0, 0, None);
    (f, t)
}

/// An append from leader 1 in term 1 after entry 0 (or entry 2 when `entries` is empty),
/// stored at once: answers its answer's commit index and lease ask, and what was applied.
fn append(
    f: &mut Core,
    now: Instant,
    entries: Vec<Arc<Entry>>,
    commit: u64,
    visible: u64,
    lease: Option<LeaseWord>,
) -> (u64, Option<u64>, Option<u64>) {
    let prev = if entries.is_empty() { LogId::new(1, 2) } else { LogId::default() };
    let end = prev.index + entries.len() as u64;
    let request = AppendEntriesRequest {
        term: 1,
        leader: 1,
        prev,
        entries,
        leader_commit: commit,
        leader_visible: visible,
        lease,
    };
    f.step(now, Input::AppendRequest { token: 1, request });
    let mut actions = f.take_actions();
    let ticket: AppendTicket = actions
        .iter()
        .find_map(|a| if let Do::StoreFromLeader { ticket, .. } = a { Some(*ticket) } else { None })
        .expect("a store");
    let reply =
        AppendFromLeaderReply { result: AppendResult::Matched(end), durable: true, last: LogId::new(1, end.max(2)) };
    f.step(now, Input::AppendStored { ticket, result: Some(Ok(reply)) });
    actions.extend(f.take_actions());
    let answer = actions
        .iter()
        .find_map(|a| if let Do::AnswerAppend { response, .. } = a { Some(response.clone()) } else { None });
    let answer = answer.expect("an answer");
    assert!(matches!(answer.outcome, AppendOutcome::Success { .. }), "{answer:?}");
    (answer.commit, answer.lease_ask, released(&actions))
}

/// A node that learnt, as a follower, that more may be seen than it has committed, and then
/// leads: what its commit index reaches is applied at once (found when a write after an
/// election timed out: the commit index moved below what may be seen, and nothing was
/// applied until it passed it).
#[test]
fn a_leader_applies_what_it_commits_below_what_it_learnt_may_be_seen() {
    let t0 = Instant::now();
    let hard = HardState { term: 1, voted_for: Some(1), commit: 0 };
    let log = MemberLog::new(voters(&[1, 2, 3]), []);
    let mut f = Core::new(2, log, timing(true), hard, LogId::default(), 7, t0);
    f.take_actions();
    let t = t0 + ms(400);
    let entries = (1..=2).map(|index| Arc::new(Entry { term: 1, index, payload: Payload::Blank })).collect();
    append(&mut f, t, entries, 0, 9, None);
    let at = t + ms(700);
    f.step(at, Input::Tick);
    let mut released = None;
    for _ in 0..20 {
        for a in f.take_actions() {
            match crate::common::core_io::own_io(&mut f, at, a) {
                Some(Do::SendVote { to, request }) => {
                    let response = VoteResponse { term: request.term, granted: true };
                    f.step(at, Input::VoteResponse { from: to, request, response });
                }
                Some(Do::CommitTo(i)) => released = released.max(Some(i)),
                _ => {}
            }
        }
    }
    assert_eq!(f.role(), Role::Leader);
    let (term, last) = (f.term(), f.last_log().index);
    let input = Input::PeerProgress {
        peer: 1,
        term,
        acked_round: 0,
        match_index: Some(last),
        commit: None,
        lease_ask: None,
        lease_dropped: false,
    };
    f.step(at, input);
    let applied = released.max(crate::t17_lease_core::released(&others(&mut f, at)));
    assert_eq!(f.commit(), last);
    assert_eq!(applied, Some(last), "committed entries below what may be seen were not applied");
}

/// A follower asks for a lease in its answers; a grant of that ask counts from when the ask
/// was made (before the round that granted it), gives its commit index but never below the
/// floor, and ends with the term. It applies committed entries only as far as the leader
/// says may be seen.
#[test]
fn a_follower_lease_counts_from_its_ask_and_applies_only_what_may_be_seen() {
    let (mut f, t) = follower_with_log();
    assert_eq!(f.lease_grant(), None);
    // Committed through 2, shown through 1: applied through 1, and the answer says 2.
    let (commit, ask, applied) = append(&mut f, t + ms(10), vec![], 2, 1, None);
    assert_eq!((commit, applied), (2, Some(1)));
    let ask = ask.expect("a follower without a lease asked for none");
    // The same ask until it is answered.
    assert_eq!(append(&mut f, t + ms(20), vec![], 2, 2, None), (2, Some(ask), Some(2)));
    // A grant of another ask is not this follower's.
    append(&mut f, t + ms(30), vec![], 2, 2, Some(LeaseWord::Grant(LeaseGrant { ask: ask ^ 1, floor: 0 })));
    assert_eq!(f.lease_grant(), None, "a grant of another ask was taken");
    // Its own: from the ask's time (t, the first answer), at the floor.
    let (_, asked_again, _) =
        append(&mut f, t + ms(40), vec![], 2, 2, Some(LeaseWord::Grant(LeaseGrant { ask, floor: 5 })));
    let lease = lease_for(MIN);
    assert_eq!(f.lease_grant(), Some((t + lease, 5)));
    assert_eq!(asked_again, None, "a follower asked again with most of its lease left");
    // Less than half of it left: it asks anew.
    let later = t + lease / 2 + ms(1);
    let (_, renewing, _) = append(&mut f, later, vec![], 2, 2, None);
    assert!(renewing.is_some_and(|a| a != ask), "no new ask with half the lease gone: {renewing:?}");
    // Revoked: dropped at once.
    append(&mut f, later, vec![], 2, 2, Some(LeaseWord::Revoke));
    assert_eq!(f.lease_grant(), None, "a revoked lease was kept");
    let renewing = renewing.expect("an ask");
    append(&mut f, later, vec![], 2, 2, Some(LeaseWord::Grant(LeaseGrant { ask: renewing, floor: 5 })));
    assert_eq!(f.lease_grant(), None, "a grant of an ask made before the revocation was taken");
    // A newer term ends it.
    let request = AppendEntriesRequest {
        term: 2,
        leader: 3,
        prev: LogId::new(1, 2),
        entries: vec![],
        leader_commit: 2,
        leader_visible: 2,
        lease: None,
    };
    f.step(later, Input::AppendRequest { token: 2, request });
    f.take_actions();
    assert_eq!(f.lease_grant(), None, "a lease outlived its term");
}
