//! A linearizability checker for key/value histories, for tests that drive a cluster and then
//! ask: could a single copy of the store, applying each operation at one instant between its
//! invocation and its completion, have given every client the answers it got?
//!
//! Clients record into a [`History`] (or tests write a `Vec<Operation>` down); [`check`] splits
//! it by key, since a history is linearizable iff each key's part is (Herlihy & Wing's
//! locality, "P-compositionality" in Porcupine), and searches each key on its own (see
//! `register.rs`). What each outcome tells the checker:
//!
//! | outcome | the operation |
//! | --- | --- |
//! | [`Outcome::Ok`], [`Outcome::Read`] | took effect at one instant between invoke and completion |
//! | [`Outcome::Fail`] | never took effect, so it is dropped |
//! | [`Outcome::Unknown`] | a write or delete took effect at any instant after invoke, or never; a read is dropped |
//!
//! Unknown writes and deletes whose effect no read saw are dropped too: taking effect or not,
//! they change no answer, and each one left in would double the configurations to search. A
//! read of a value no write (that may have happened) had begun to write is reported at once.
//!
//! The search is exhaustive, so a long history that is *not* linearizable costs the most:
//! every order must be ruled out. Hence the limit of [`check_within`]; [`check`] uses
//! [`DEFAULT_MAX_STATES`].
//!
//! ```
//! use dister::check::{check, History, Op, Outcome};
//!
//! let history = History::new();
//! let w = history.invoke(1, "k", Op::Write("a".into()));
//! history.complete(w, Outcome::Ok);
//! let r = history.invoke(2, "k", Op::Read);
//! history.complete(r, Outcome::Read(Some("a".into())));
//! let stats = check(&history.operations()).expect("a write then a read of it is linearizable");
//! assert_eq!(stats.operations, 2);
//! ```

mod history;
mod register;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

pub use history::{ClientId, History, Op, OpId, Operation, Outcome, Time};
use register::KeyFailure;

/// Why a history did not check.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No order of the key's operations explains what the clients saw.
    #[error("key {key:?} is not linearizable: {explanation}")]
    NotLinearizable {
        /// The key whose operations cannot be ordered.
        key: String,
        /// Where the longest order found got stuck, naming operations by [`OpId`].
        explanation: String,
    },
    /// The search explored its limit of configurations without deciding; this happens on long
    /// histories that are not linearizable (with many unknown outcomes), where every order must
    /// be ruled out.
    #[error("gave up on key {key:?} after exploring {states} configurations; so far {explanation}")]
    Inconclusive {
        /// The key being searched.
        key: String,
        /// The limit reached.
        states: usize,
        /// Where the longest order found so far got stuck.
        explanation: String,
    },
    /// An operation is recorded inconsistently, so the history means nothing.
    #[error("op {} is malformed ({reason}): {op}", id.0)]
    Malformed {
        /// The operation.
        id: OpId,
        /// The operation itself, for the message.
        op: Box<Operation>,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// What a successful check covered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckStats {
    /// Keys checked.
    pub keys: usize,
    /// Operations the search had to place (or, for unknown outcomes, could leave out).
    pub operations: usize,
    /// Operations that cannot change the outcome: failed ones, reads without an answer, and
    /// unknown writes or deletes whose effect no read saw.
    pub dropped: usize,
    /// Configurations (linearized set, register value) the search explored.
    pub states: usize,
    /// Time the check took.
    pub elapsed: Duration,
}

impl fmt::Display for CheckStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} operations on {} keys linearizable ({} dropped, {} states explored) in {:?}",
            self.operations, self.keys, self.dropped, self.states, self.elapsed
        )
    }
}

/// How many configurations [`check`] explores per key before giving up. A linearizable 8 × 1,000
/// operation history needs about 100,000; the limit costs about 130 MB and a few seconds in a
/// release build.
pub const DEFAULT_MAX_STATES: usize = 2_000_000;

/// Decides whether `ops` is linearizable, key by key; errors name the first key (in key
/// order) that is not. Operations are named by their index in `ops` (their [`OpId`]).
pub fn check(ops: &[Operation]) -> Result<CheckStats, CheckError> {
    check_within(ops, DEFAULT_MAX_STATES)
}

/// [`check`], giving up with [`CheckError::Inconclusive`] on a key whose search explores
/// `max_states` configurations.
pub fn check_within(ops: &[Operation], max_states: usize) -> Result<CheckStats, CheckError> {
    let start = Instant::now();
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        validate(op).map_err(|reason| CheckError::Malformed { id: OpId(i), op: Box::new(op.clone()), reason })?;
        by_key.entry(op.key.as_str()).or_default().push(i);
    }
    let mut stats = CheckStats { keys: by_key.len(), ..CheckStats::default() };
    for (key, indices) in by_key {
        let key_stats = register::check_key(ops, &indices, max_states).map_err(|failure| match failure {
            KeyFailure::Violation(explanation) => CheckError::NotLinearizable { key: key.to_string(), explanation },
            KeyFailure::GaveUp(explanation) => {
                CheckError::Inconclusive { key: key.to_string(), states: max_states, explanation }
            }
        })?;
        stats.operations += key_stats.checked;
        stats.dropped += key_stats.dropped;
        stats.states += key_stats.states;
    }
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// Rejects an operation whose outcome does not fit its kind or whose times run backwards.
fn validate(op: &Operation) -> Result<(), &'static str> {
    match (&op.op, &op.outcome) {
        (Op::Read, Outcome::Ok) => Err("a read acknowledged without a value"),
        (Op::Write(_) | Op::Delete, Outcome::Read(_)) => Err("a write or delete answered with a read value"),
        (_, Outcome::Ok | Outcome::Read(_)) if op.complete < op.invoke => Err("completed before it was invoked"),
        _ => Ok(()),
    }
}
