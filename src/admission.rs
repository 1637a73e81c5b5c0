//! Admission: how much client work a node takes on at once. Every write (a client's, or one
//! a follower forwards) holds a place from the moment it is accepted until it is answered,
//! and so does every read and beat; past a bound the node refuses at once with a retryable
//! [`ApiError::Overloaded`] instead of queueing without end. This is the one place the
//! node's queues (actor mailboxes, the proposals waiting for commit, the entries waiting to
//! be applied) get their bound, whatever the number of clients: a flood costs the clients
//! a fast refusal, never the cluster its leader.
//!
//! Shared by every thread that serves clients (wire connections, the HTTP workers): the
//! counts are atomics, and a place is given back when its [`Admitted`] is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Config;
use crate::error::ApiError;

/// The node's admission counters and their bounds.
#[derive(Debug)]
pub struct Admission {
    writes: AtomicUsize,
    write_bytes: AtomicUsize,
    reads: AtomicUsize,
    beats: AtomicUsize,
    max_writes: usize,
    max_write_bytes: usize,
    max_reads: usize,
    retry_after_ms: u64,
}

/// What kind of place a request takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Write,
    Read,
    Beat,
}

/// A place held; given back on drop.
#[must_use = "the place is given back when this is dropped"]
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    kind: Kind,
    bytes: usize,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let a = &self.admission;
        match self.kind {
            Kind::Write => {
                a.writes.fetch_sub(1, Ordering::AcqRel);
                a.write_bytes.fetch_sub(self.bytes, Ordering::AcqRel);
            }
            Kind::Read => {
                a.reads.fetch_sub(1, Ordering::AcqRel);
            }
            Kind::Beat => {
                a.beats.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Admission {
    /// The bounds `config` sets.
    pub fn new(config: &Config) -> Arc<Admission> {
        Arc::new(Admission {
            writes: AtomicUsize::new(0),
            write_bytes: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
            beats: AtomicUsize::new(0),
            max_writes: config.max_pending_writes,
            max_write_bytes: config.max_pending_write_bytes,
            max_reads: config.max_pending_reads,
            // About the time a full queue takes to drain at a few thousand writes a second.
            retry_after_ms: 100,
        })
    }

    fn refuse(&self, what: String) -> ApiError {
        ApiError::Overloaded { reason: what, retry_after_ms: self.retry_after_ms }
    }

    /// Takes a place for a write of `bytes`, or refuses if the writes pending (in count or
    /// bytes) are at their bound.
    pub fn admit_write(self: &Arc<Self>, bytes: usize) -> Result<Admitted, ApiError> {
        let n = self.writes.fetch_add(1, Ordering::AcqRel) + 1;
        let b = self.write_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        // Taken first and given back on refusal, so two racing writers cannot both slip in.
        let place = Admitted { admission: self.clone(), kind: Kind::Write, bytes };
        if n > self.max_writes {
            return Err(self.refuse(format!("{} writes pending (max_pending_writes {})", n - 1, self.max_writes)));
        }
        if b > self.max_write_bytes {
            return Err(self.refuse(format!(
                "{} bytes of writes pending (max_pending_write_bytes {})",
                b - bytes,
                self.max_write_bytes
            )));
        }
        Ok(place)
    }

    /// Takes a place for a read, or refuses if the reads pending are at their bound.
    pub fn admit_read(self: &Arc<Self>) -> Result<Admitted, ApiError> {
        let n = self.reads.fetch_add(1, Ordering::AcqRel) + 1;
        let place = Admitted { admission: self.clone(), kind: Kind::Read, bytes: 0 };
        if n > self.max_reads {
            return Err(self.refuse(format!("{} reads pending (max_pending_reads {})", n - 1, self.max_reads)));
        }
        Ok(place)
    }

    /// Takes a place for a beat. Beats have a bound of their own (the same number as
    /// reads): a flood of reads must not starve them, or live instances would expire.
    pub fn admit_beat(self: &Arc<Self>) -> Result<Admitted, ApiError> {
        let n = self.beats.fetch_add(1, Ordering::AcqRel) + 1;
        let place = Admitted { admission: self.clone(), kind: Kind::Beat, bytes: 0 };
        if n > self.max_reads {
            return Err(self.refuse(format!("{} beats pending (max_pending_reads {})", n - 1, self.max_reads)));
        }
        Ok(place)
    }

    /// Writes pending, their bytes, and reads pending.
    pub fn pending(&self) -> (usize, usize, usize) {
        (
            self.writes.load(Ordering::Acquire),
            self.write_bytes.load(Ordering::Acquire),
            self.reads.load(Ordering::Acquire),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(writes: usize, bytes: usize, reads: usize) -> Arc<Admission> {
        let c = Config {
            max_pending_writes: writes,
            max_pending_write_bytes: bytes,
            max_pending_reads: reads,
            ..Config::default()
        };
        Admission::new(&c)
    }

    #[test]
    fn refuses_past_each_bound_and_gives_places_back() {
        let a = admission(2, 100, 1);
        let w1 = a.admit_write(10).unwrap();
        let _w2 = a.admit_write(10).unwrap();
        let e = a.admit_write(10).unwrap_err();
        assert!(e.is_retryable(), "an overload is retryable: {e}");
        assert!(e.to_string().contains("max_pending_writes 2"), "{e}");
        drop(w1);
        assert_eq!(a.pending(), (1, 10, 0), "a refusal takes nothing, a drop gives back");
        let e = a.admit_write(95).unwrap_err();
        assert!(e.to_string().contains("max_pending_write_bytes 100"), "{e}");
        let r = a.admit_read().unwrap();
        assert!(a.admit_read().is_err());
        let b = a.admit_beat().expect("reads do not take the beats' places");
        assert!(a.admit_beat().is_err());
        drop((r, b));
        assert!(a.admit_read().is_ok() && a.admit_beat().is_ok());
    }
}
