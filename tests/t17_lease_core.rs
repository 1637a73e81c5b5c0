//! t17: lease reads in the Raft core, step by step (`read_mode = "lease"`): when the leader may
//! answer a read index without a round, and each rule the lease's safety rests on: voters
//! that confirmed a round wait out `election_min` (a closed connection and a restart
//! included) and a transfer ends the lease.

use std::time::{Duration, Instant};

use dister::raft::core::{Action as Do, Core, Input, Timing, lease_for};
use dister::raft::members::{MemberLog, Members};
use dister::raft::{HardState, LogId, Role};
use dister::wire::{AppendEntriesRequest, VoteRequest, VoteResponse};

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
                Some(Do::AnswerRead { token, result }) => reads.push((token, result)),
                Some(Do::ScheduleReadRound) => round = true,
                Some(_) => {}
            }
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
    c.step(now, Input::PeerProgress { peer: 2, term, acked_round: 0, match_index: Some(last) });
    drive(&mut c, now);
    (c, now)
}

/// A round issued at `now` and confirmed by node 2; answers what it answered.
fn confirmed_round(c: &mut Core, now: Instant) -> Answers {
    c.step(now, Input::ReadRound);
    let mut reads = drive(c, now).0;
    let term = c.term();
    let round = c.read_round();
    c.step(now, Input::PeerProgress { peer: 2, term, acked_round: round, match_index: None });
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
    let request =
        AppendEntriesRequest { term: 1, leader: 1, prev: LogId::default(), entries: vec![], leader_commit: 0 };
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
