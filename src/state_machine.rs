//! Helpers for state machines (the built-in `DataMap` and `ServiceRegistry`, and any actor a
//! user adds): the applied-index gate that holds a read until the state machine has caught up
//! with the read index it was given, and the published [`View`] that lets reads skip the
//! actor altogether.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::{Actor, ActorFutureExt, ResponseActFuture, WrapFuture};
use futures::channel::oneshot;
use tokio::sync::watch;

use crate::error::ApiError;

/// A state machine's state as of an applied index: immutable, shared by every reader that
/// holds it. The state machine stays the only writer; it publishes a new view after each
/// batch it applies (a persistent map, so publishing copies nothing).
#[derive(Debug)]
pub struct View<T> {
    /// Everything up to this index is applied in `state`, nothing after it.
    pub applied: u64,
    /// The state.
    pub state: T,
}

/// The state machine's end of its published views.
#[derive(Debug)]
pub struct Publisher<T>(watch::Sender<Arc<View<T>>>);

/// A reader's end: the newest view, or the first at or past an index. Cheap to clone, usable
/// from any thread.
#[derive(Debug, Clone)]
pub struct Reader<T>(watch::Receiver<Arc<View<T>>>);

/// A publisher and a reader of views of `T`, starting from `initial` at index 0.
pub fn views<T>(initial: T) -> (Publisher<T>, Reader<T>) {
    let (tx, rx) = watch::channel(Arc::new(View { applied: 0, state: initial }));
    (Publisher(tx), Reader(rx))
}

impl<T> Publisher<T> {
    /// Makes `state`, applied up to `applied`, the view readers get.
    pub fn publish(&self, applied: u64, state: T) {
        self.0.send_replace(Arc::new(View { applied, state }));
    }

    /// A reader of these views.
    pub fn reader(&self) -> Reader<T> {
        Reader(self.0.subscribe())
    }
}

impl<T> Reader<T> {
    /// The newest view.
    pub fn latest(&self) -> Arc<View<T>> {
        self.0.borrow().clone()
    }

    /// The first view with `index` applied: at once if the newest has it, else when the state
    /// machine gets there (the read half of ReadIndex, §6.4, without a message to the actor).
    pub async fn at(&self, index: u64) -> Result<Arc<View<T>>, ApiError> {
        let newest = self.latest();
        if newest.applied >= index {
            return Ok(newest);
        }
        let mut rx = self.0.clone();
        match rx.wait_for(|v| v.applied >= index).await {
            Ok(v) => Ok(v.clone()),
            Err(_) => Err(ApiError::Unavailable("the state machine stopped".into())),
        }
    }
}

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

    #[tokio::test]
    async fn a_reader_waits_for_the_view_it_needs() {
        let (publisher, reader) = views(0u32);
        assert_eq!(reader.at(0).await.unwrap().state, 0);
        let later = reader.clone();
        let waiting = tokio::spawn(async move { later.at(2).await.map(|v| (v.applied, v.state)) });
        publisher.publish(1, 10);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "index 1 is not index 2");
        publisher.publish(3, 30);
        assert_eq!(waiting.await.unwrap().unwrap(), (3, 30));
        assert_eq!(reader.latest().state, 30);
        drop(publisher);
        assert!(reader.at(9).await.is_err(), "a stopped state machine is an error, not a hang");
    }
}
