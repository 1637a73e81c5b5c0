//! Helpers for state machines (the built-in `DataMap` and `ServiceRegistry`, and any actor a
//! user adds): the applied-index gate that holds a read until the state machine has caught up
//! with the read index it was given.

use std::collections::BTreeMap;

use actix::{Actor, ActorFutureExt, ResponseActFuture, WrapFuture};
use futures::channel::oneshot;

/// Tracks the applied index and the reads waiting for it.
#[derive(Debug, Default)]
pub struct AppliedGate {
    applied: u64,
    waiting: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
}

impl AppliedGate {
    /// The highest index applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Records that everything up to `index` is applied and releases the reads waiting for it.
    pub fn advance(&mut self, index: u64) {
        if index <= self.applied {
            return;
        }
        self.applied = index;
        let later = self.waiting.split_off(&(index + 1));
        for (_, senders) in std::mem::replace(&mut self.waiting, later) {
            for s in senders {
                let _ = s.send(());
            }
        }
    }

    /// Whether a snapshot view may be taken as of `index` (`TakeSnapshot`): only at the
    /// index applied, neither before nor after it.
    pub fn check_view(&self, index: u64) -> Result<(), String> {
        if self.applied != index {
            return Err(format!("asked for a view at {index} with {} applied", self.applied));
        }
        Ok(())
    }

    /// A receiver that resolves once `index` is applied, or `None` if it already is.
    pub fn wait(&mut self, index: u64) -> Option<oneshot::Receiver<()>> {
        if index <= self.applied {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.entry(index).or_default().push(tx);
        Some(rx)
    }
}

/// Answers a read with `read` once the actor's gate (found by `gate`) has applied
/// `min_applied`: at once if it already has. This is the read half of ReadIndex (§6.4): the
/// index comes from the leader, the wait happens here.
pub fn read_after<A, R, G, F>(act: &mut A, gate: G, min_applied: u64, read: F) -> ResponseActFuture<A, R>
where
    A: Actor,
    A::Context: actix::AsyncContext<A>,
    R: 'static,
    G: FnOnce(&mut A) -> &mut AppliedGate,
    F: FnOnce(&mut A) -> R + 'static,
{
    match gate(act).wait(min_applied) {
        None => {
            let out = read(act);
            Box::pin(actix::fut::ready(out))
        }
        Some(rx) => Box::pin(
            async move {
                let _ = rx.await;
            }
            .into_actor(act)
            .map(move |_, act, _| read(act)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_waiters_in_order() {
        let mut g = AppliedGate::default();
        assert!(g.wait(0).is_none());
        let mut a = g.wait(3).unwrap();
        let mut b = g.wait(5).unwrap();
        g.advance(4);
        assert_eq!(a.try_recv(), Ok(Some(())));
        assert_eq!(b.try_recv(), Ok(None));
        g.advance(5);
        assert_eq!(b.try_recv(), Ok(Some(())));
        assert!(g.wait(5).is_none());
    }
}
