//! The in-memory view of the log and the follower's append rule (§5.3): consistency check,
//! conflict truncation, and the hint that lets a leader back off a whole term at a time.
//!
//! Indexes are absolute and never renumbered. `base` is the entry just before the first one
//! held (index 0 for a fresh log, the snapshot's last entry once compaction exists), so
//! dropping a prefix only moves `base`.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{Entry, LogId};

/// The entries a node holds, in memory, with absolute indexes.
#[derive(Debug, Default)]
pub struct MemLog {
    base: LogId,
    entries: VecDeque<Arc<Entry>>,
}

/// Why an append from a leader does not fit this log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendConflict {
    /// Where the leader should retry from: the first index of the conflicting term, or one
    /// past our last entry when the log is too short.
    pub next_index: u64,
}

/// What a successful append changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AppendPlan {
    /// Drop every entry from this index on before appending (a divergent suffix).
    pub truncate_from: Option<u64>,
    /// Entries to append, already stripped of those the log holds identically.
    pub append: Vec<Arc<Entry>>,
    /// Index up to which the log now matches the leader's (prev index + entries sent).
    pub match_index: u64,
}

impl MemLog {
    /// A log holding `entries`, which follow `base` without gaps.
    pub fn new(base: LogId, entries: Vec<Arc<Entry>>) -> Self {
        Self { base, entries: entries.into() }
    }

    /// The entry just before the first one held.
    pub fn base(&self) -> LogId {
        self.base
    }

    /// Index of the first entry held (base + 1, even when empty).
    pub fn first_index(&self) -> u64 {
        self.base.index + 1
    }

    /// The last entry, or the base when empty.
    pub fn last(&self) -> LogId {
        self.entries.back().map(|e| e.log_id()).unwrap_or(self.base)
    }

    /// Term of the entry at `index`, if known (the base's term counts).
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.base.index {
            return Some(self.base.term);
        }
        self.get(index).map(|e| e.term)
    }

    /// The entry at `index`, if held.
    pub fn get(&self, index: u64) -> Option<&Arc<Entry>> {
        let offset = index.checked_sub(self.first_index())?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// Entries from `from` on, at most `max_count` of them and at most `max_bytes` of
    /// payload (but one if any is there and `max_count` is not 0, so an oversized entry still
    /// moves).
    pub fn slice(&self, from: u64, max_count: usize, max_bytes: usize) -> Vec<Arc<Entry>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let Some(offset) = from.checked_sub(self.first_index()) else {
            return out;
        };
        if max_count == 0 {
            return out;
        }
        for e in self.entries.iter().skip(offset as usize) {
            if !out.is_empty() && (out.len() >= max_count || bytes + e.size_hint() > max_bytes) {
                break;
            }
            bytes += e.size_hint();
            out.push(e.clone());
        }
        out
    }

    /// Appends entries that follow the last one; the caller guarantees continuity.
    pub fn push(&mut self, entry: Arc<Entry>) {
        debug_assert_eq!(entry.index, self.last().index + 1);
        self.entries.push_back(entry);
    }

    /// Drops the entries up to and including `index` (which must be held, or be the base):
    /// it becomes the base. Answers the new base.
    pub fn compact_to(&mut self, index: u64) -> LogId {
        if let Some(term) = self.term_at(index)
            && index > self.base.index
        {
            self.entries.drain(..(index - self.base.index) as usize);
            self.base = LogId::new(term, index);
        }
        self.base
    }

    /// Drops every entry: the log goes on after `base` (an installed snapshot's last entry).
    pub fn reset(&mut self, base: LogId) {
        self.entries.clear();
        self.base = base;
    }

    /// Drops every entry from `index` on.
    pub fn truncate_from(&mut self, index: u64) {
        let keep = index.saturating_sub(self.first_index()) as usize;
        self.entries.truncate(keep);
    }

    /// The follower's side of AppendEntries (§5.3, Figure 2 "receiver implementation" 2–4):
    /// refuse unless the log holds `prev`; then skip entries already held with the same
    /// term, truncate at the first conflict, and append the rest. Nothing is changed here:
    /// the caller applies the plan with [`MemLog::apply`] once it has decided to.
    pub fn plan_append(&self, prev: LogId, entries: &[Arc<Entry>]) -> Result<AppendPlan, AppendConflict> {
        let last = self.last();
        if prev.index > last.index {
            return Err(AppendConflict { next_index: last.index + 1 });
        }
        if prev.index < self.base.index {
            // The leader is behind our compacted prefix, which is committed: everything up
            // to base matches. Skip what the snapshot covers.
            let skip = (self.base.index - prev.index) as usize;
            let rest: Vec<_> = entries.iter().skip(skip).cloned().collect();
            let prev = self.base;
            return self.plan_append(prev, &rest).map(|mut p| {
                p.match_index = p.match_index.max(prev.index);
                p
            });
        }
        match self.term_at(prev.index) {
            Some(t) if t == prev.term => {}
            Some(t) => {
                // Back off over the whole conflicting term at once (§5.3, "optimization"),
                // and over every entry of a term above the leader's at `prev`: terms only
                // grow along a log, so the leader holds none of them there. A follower left
                // with many short terms of its own then finds the match in a few round trips.
                let mut first = prev.index;
                while first > self.first_index() && self.term_at(first - 1).is_some_and(|u| u == t || u > prev.term) {
                    first -= 1;
                }
                return Err(AppendConflict { next_index: first.max(self.first_index()) });
            }
            None => return Err(AppendConflict { next_index: last.index + 1 }),
        }
        let mut plan = AppendPlan { match_index: prev.index + entries.len() as u64, ..Default::default() };
        for (i, e) in entries.iter().enumerate() {
            match self.term_at(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    plan.truncate_from = Some(e.index);
                    plan.append = entries[i..].to_vec();
                    break;
                }
                None => {
                    plan.append = entries[i..].to_vec();
                    break;
                }
            }
        }
        Ok(plan)
    }

    /// Applies a plan made by [`MemLog::plan_append`].
    pub fn apply(&mut self, plan: &AppendPlan) {
        if let Some(from) = plan.truncate_from {
            self.truncate_from(from);
        }
        for e in &plan.append {
            self.push(e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Payload;

    fn e(term: u64, index: u64) -> Arc<Entry> {
        Arc::new(Entry { term, index, payload: Payload::Blank })
    }

    fn log(terms: &[u64]) -> MemLog {
        MemLog::new(LogId::default(), terms.iter().enumerate().map(|(i, t)| e(*t, i as u64 + 1)).collect())
    }

    #[test]
    fn appends_after_matching_prev() {
        let l = log(&[1, 1]);
        let plan = l.plan_append(LogId::new(1, 2), &[e(2, 3)]).unwrap();
        assert_eq!(plan.truncate_from, None);
        assert_eq!(plan.append.len(), 1);
        assert_eq!(plan.match_index, 3);
    }

    /// Reference: §5.3, the consistency check refuses when prev is missing.
    #[test]
    fn refuses_when_prev_is_missing() {
        let l = log(&[1, 1]);
        assert_eq!(l.plan_append(LogId::new(1, 5), &[]), Err(AppendConflict { next_index: 3 }));
    }

    /// Reference: §5.3, back off over a whole conflicting term.
    #[test]
    fn conflict_hint_skips_the_whole_term() {
        let l = log(&[1, 2, 2, 2]);
        assert_eq!(l.plan_append(LogId::new(3, 4), &[]), Err(AppendConflict { next_index: 2 }));
    }

    /// Reference: §5.3: entries of terms above the leader's at prev cannot match; they are
    /// skipped in one answer, however many terms they span.
    #[test]
    fn conflict_hint_skips_every_term_above_the_leaders() {
        let l = log(&[1, 2, 2, 5, 6, 7, 8, 9]);
        // The leader has term 3 at index 8: everything after index 3 (terms 5..9) goes.
        assert_eq!(l.plan_append(LogId::new(3, 8), &[]), Err(AppendConflict { next_index: 4 }));
        // Below the conflicting term the rule stops at the first term not above the leader's.
        assert_eq!(l.plan_append(LogId::new(4, 5), &[]), Err(AppendConflict { next_index: 4 }));
    }

    /// Reference: Figure 2, receiver step 3: a conflicting entry and all that follow go.
    #[test]
    fn truncates_divergent_suffix() {
        let mut l = log(&[1, 1, 2, 2]);
        let plan = l.plan_append(LogId::new(1, 2), &[e(3, 3)]).unwrap();
        assert_eq!(plan.truncate_from, Some(3));
        l.apply(&plan);
        assert_eq!(l.last(), LogId::new(3, 3));
    }

    /// A stale or duplicated append must not cut entries that already match.
    #[test]
    fn duplicate_append_truncates_nothing() {
        let l = log(&[1, 1, 1, 1]);
        let plan = l.plan_append(LogId::new(1, 1), &[e(1, 2)]).unwrap();
        assert_eq!(plan, AppendPlan { truncate_from: None, append: vec![], match_index: 2 });
    }

    #[test]
    fn slice_respects_count_and_bytes_but_moves_one() {
        let l = log(&[1, 1, 1, 1]);
        assert_eq!(l.slice(2, 2, usize::MAX).len(), 2);
        assert_eq!(l.slice(2, 10, 1).len(), 1);
        assert_eq!(l.slice(5, 10, 10).len(), 0);
        assert_eq!(l.slice(2, 0, usize::MAX).len(), 0);
    }

    #[test]
    fn compaction_moves_the_base_and_keeps_indexes() {
        let mut l = log(&[1, 1, 2, 2, 3]);
        assert_eq!(l.compact_to(3), LogId::new(2, 3));
        assert_eq!((l.first_index(), l.last(), l.get(4).map(|e| e.index)), (4, LogId::new(3, 5), Some(4)));
        assert_eq!(l.compact_to(2), LogId::new(2, 3), "compaction never goes back");
        assert_eq!(l.compact_to(9), LogId::new(2, 3), "nor past what is held");
        l.reset(LogId::new(4, 10));
        assert_eq!((l.first_index(), l.last(), l.term_at(10)), (11, LogId::new(4, 10), Some(4)));
    }

    #[test]
    fn compacted_prefix_counts_as_matching() {
        let l = MemLog::new(LogId::new(2, 10), vec![e(2, 11), e(3, 12)]);
        let plan = l.plan_append(LogId::new(1, 8), &[e(2, 9), e(2, 10), e(2, 11), e(3, 12), e(3, 13)]).unwrap();
        assert_eq!(plan.append.len(), 1);
        assert_eq!(plan.match_index, 13);
        assert_eq!(l.term_at(10), Some(2));
        assert_eq!(l.get(10), None);
    }
}
