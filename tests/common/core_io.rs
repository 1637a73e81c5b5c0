//! Stepping a Raft core by hand: carrying out its own IO (hard state, its appends, flushes)
//! as a disk that always succeeds would.

use std::time::Instant;

use dister::raft::core::{Action as Do, Core, Input};

/// Carries out `action` if it is the core's own IO, feeding the result back; answers any
/// other action for the caller.
pub fn own_io(c: &mut Core, now: Instant, action: Do) -> Option<Do> {
    match action {
        Do::SaveHardState { ticket } => {
            let last = c.last_log();
            c.step(now, Input::HardStateSaved { ticket, result: Some(Ok(last)) });
        }
        Do::ScheduleFlush => c.step(now, Input::Flush),
        Do::AppendLocal { term, entries, report: true } => {
            let last = entries.last().map(|e| e.log_id()).unwrap_or_default();
            c.step(now, Input::LocalAppended { term, result: Some(Ok(last)) });
        }
        other => return Some(other),
    }
    None
}
