//! The vote rule (§5.2, §5.4.1) and the pre-vote check (thesis §9.6).

use super::{LogId, NodeId};

/// What a node knows when a vote request reaches it, after it has already adopted a
/// higher term from the request (if the request carried one).
#[derive(Clone, Copy, Debug)]
pub struct VoterState {
    /// The voter's current term.
    pub term: u64,
    /// Whom the voter already voted for in `term`.
    pub voted_for: Option<NodeId>,
    /// The last entry of the voter's log.
    pub last_log: LogId,
}

/// A candidate's request, as the rule needs it.
#[derive(Clone, Copy, Debug)]
pub struct Candidacy {
    /// Term the candidate stands in.
    pub term: u64,
    /// The candidate.
    pub candidate: NodeId,
    /// The last entry of the candidate's log.
    pub last_log: LogId,
}

/// True when the candidate's log is at least as up to date as the voter's (§5.4.1): compare
/// the last terms, then the lengths.
pub fn log_is_up_to_date(candidate_last: LogId, voter_last: LogId) -> bool {
    candidate_last >= voter_last
}

/// Whether to grant a vote. The caller has already stepped up to `req.term` if it was
/// higher, so a request for an older term is refused here. At most one vote per term
/// (Election Safety, §5.2): a repeated request from the same candidate is granted again.
pub fn should_grant_vote(voter: VoterState, req: Candidacy) -> bool {
    if req.term != voter.term {
        return false;
    }
    let free = match voter.voted_for {
        None => true,
        Some(c) => c == req.candidate,
    };
    free && log_is_up_to_date(req.last_log, voter.last_log)
}

/// Whether to grant a pre-vote: the candidate would win a vote from us if it stood in
/// `req.term`. A pre-vote changes no state. A node that still hears from a live leader refuses,
/// so a node that was cut off cannot unseat a healthy leader when it returns.
pub fn should_grant_pre_vote(voter: VoterState, req: Candidacy, leader_is_live: bool) -> bool {
    !leader_is_live && req.term > voter.term && log_is_up_to_date(req.last_log, voter.last_log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voter(term: u64, voted_for: Option<NodeId>, last: (u64, u64)) -> VoterState {
        VoterState { term, voted_for, last_log: LogId::new(last.0, last.1) }
    }

    fn cand(term: u64, candidate: NodeId, last: (u64, u64)) -> Candidacy {
        Candidacy { term, candidate, last_log: LogId::new(last.0, last.1) }
    }

    /// Reference: §5.2, one vote per term, first come first served.
    #[test]
    fn grants_once_per_term() {
        assert!(should_grant_vote(voter(3, None, (2, 5)), cand(3, 2, (2, 5))));
        assert!(should_grant_vote(voter(3, Some(2), (2, 5)), cand(3, 2, (2, 5))));
        assert!(!should_grant_vote(voter(3, Some(3), (2, 5)), cand(3, 2, (2, 5))));
    }

    /// Reference: §5.4.1, the later last term wins even with a shorter log.
    #[test]
    fn refuses_less_up_to_date_logs() {
        assert!(!should_grant_vote(voter(4, None, (3, 5)), cand(4, 2, (2, 9))));
        assert!(should_grant_vote(voter(4, None, (2, 9)), cand(4, 2, (3, 1))));
        assert!(!should_grant_vote(voter(4, None, (3, 5)), cand(4, 2, (3, 4))));
        assert!(should_grant_vote(voter(4, None, (3, 5)), cand(4, 2, (3, 5))));
    }

    #[test]
    fn refuses_other_terms() {
        assert!(!should_grant_vote(voter(5, None, (0, 0)), cand(4, 2, (9, 9))));
    }

    #[test]
    fn pre_vote_needs_no_live_leader_and_a_higher_term() {
        let v = voter(5, Some(1), (5, 10));
        assert!(should_grant_pre_vote(v, cand(6, 2, (5, 10)), false));
        assert!(!should_grant_pre_vote(v, cand(6, 2, (5, 10)), true));
        assert!(!should_grant_pre_vote(v, cand(5, 2, (5, 10)), false));
        assert!(!should_grant_pre_vote(v, cand(6, 2, (5, 9)), false));
    }
}
