//! The commit rule (§5.3, §5.4.2) and the quorum arithmetic used by reads and check-quorum.

use super::quorum;

/// The highest value held by a majority of `values` (one value per voter, the leader
/// included): sort descending and take the quorum-th.
pub fn majority_value(values: &[u64]) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted[quorum(sorted.len()) - 1]
}

/// The leader's new commit index, if it moves. `durable` holds, per voter, the highest index
/// known durable on it; `term_start` is the index of the leader's first entry of its own
/// term. Only entries of the current term are committed by counting replicas (§5.4.2);
/// earlier ones commit with them.
pub fn advance_commit(commit: u64, durable: &[u64], term_start: u64) -> Option<u64> {
    let candidate = majority_value(durable);
    (candidate > commit && candidate >= term_start).then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_of_three_and_five() {
        assert_eq!(majority_value(&[5, 3, 9]), 5);
        assert_eq!(majority_value(&[5, 3, 9, 1, 1]), 3);
        assert_eq!(majority_value(&[7]), 7);
        assert_eq!(majority_value(&[4, 6]), 4);
    }

    /// Reference: §5.4.2 and Figure 8, an entry from an earlier term is not committed by
    /// counting replicas, even on a majority.
    #[test]
    fn old_term_entries_are_not_committed_by_counting() {
        // Leader's own term starts at index 4; index 3 is on a majority but older.
        assert_eq!(advance_commit(2, &[3, 3, 1], 4), None);
        assert_eq!(advance_commit(2, &[4, 4, 1], 4), Some(4));
    }

    #[test]
    fn commit_never_moves_back() {
        assert_eq!(advance_commit(9, &[5, 5, 5], 1), None);
    }
}
