//! Helpers for state machines (the built-in `DataMap` and `ServiceRegistry`, and any actor a
//! user adds): the applied-index gate that holds a read until the state machine has caught up
//! with the read index it was given, and the published [`View`] that lets reads skip the
//! actor altogether.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use actix::{Actor, ActorFutureExt, Message, Recipient, ResponseActFuture, WrapFuture};
use futures::channel::oneshot;
use tokio::sync::watch;

use crate::error::ApiError;

/// A state machine's state as of an applied index: immutable, shared by every reader that
/// holds it. The state machine stays the only writer; it publishes a new view when a reader
/// waits for one (after the batch that reaches the reader's index, or when poked with
/// [`PublishView`] if it had got there already). A persistent map makes publishing copy
/// nothing; publishing only on demand keeps writes between reads from copying what a view
/// still holds.
#[derive(Debug)]
pub struct View<T> {
    /// Everything up to this index is applied in `state`, nothing after it.
    pub applied: u64,
    /// The state.
    pub state: T,
}

/// Asks a state machine to publish a view of what it has applied now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PublishView;

/// What a state machine and its readers share besides the views: whether a reader waits for a
/// newer one, and how far the state machine has applied.
#[derive(Debug, Default)]
struct Demand {
    wanted: AtomicBool,
    /// A `PublishView` is on its way (one at a time, however many readers wait).
    poked: AtomicBool,
    applied: AtomicU64,
}

/// The state machine's end of its published views.
#[derive(Debug)]
pub struct Publisher<T> {
    tx: watch::Sender<Arc<View<T>>>,
    demand: Arc<Demand>,
}

/// A reader's end: the newest view, or the first at or past an index. Cheap to clone, usable
/// from any thread.
#[derive(Debug, Clone)]
pub struct Reader<T> {
    rx: watch::Receiver<Arc<View<T>>>,
    demand: Arc<Demand>,
    /// The state machine, to poke when it applied what a reader waits for without publishing.
    poke: Option<Recipient<PublishView>>,
}

/// A publisher and a reader of views of `T`, starting from `initial` at index 0.
pub fn views<T>(initial: T) -> (Publisher<T>, Reader<T>) {
    let (tx, rx) = watch::channel(Arc::new(View { applied: 0, state: initial }));
    let demand = Arc::new(Demand::default());
    (Publisher { tx, demand: demand.clone() }, Reader { rx, demand, poke: None })
}

impl<T> Publisher<T> {
    /// Makes `state`, applied up to `applied`, the view readers get.
    pub fn publish(&self, applied: u64, state: T) {
        self.demand.wanted.store(false, Ordering::SeqCst);
        self.demand.poked.store(false, Ordering::SeqCst);
        self.demand.applied.store(applied, Ordering::SeqCst);
        self.tx.send_replace(Arc::new(View { applied, state }));
    }

    /// Records that everything up to `applied` is applied; answers whether a reader waits for
    /// a newer view (then publish one).
    pub fn applied(&self, applied: u64) -> bool {
        self.demand.applied.store(applied, Ordering::SeqCst);
        self.demand.wanted.swap(false, Ordering::SeqCst)
    }

    /// A reader of these views, poking `poke` (the state machine) when it must publish.
    pub fn reader(&self, poke: Option<Recipient<PublishView>>) -> Reader<T> {
        Reader { rx: self.tx.subscribe(), demand: self.demand.clone(), poke }
    }
}

impl<T> Reader<T> {
    /// The same reader, poking `poke` (the state machine, once started) when it must publish.
    pub fn poking(self, poke: Recipient<PublishView>) -> Reader<T> {
        Reader { poke: Some(poke), ..self }
    }

    /// The newest view.
    pub fn latest(&self) -> Arc<View<T>> {
        self.rx.borrow().clone()
    }

    /// The first view with `index` applied, and everything the state machine had applied when
    /// asked (so a stale read, at 0, gets this node's copy as it is): at once if the newest
    /// view has it, else once the state machine gets there and publishes (the read half of
    /// ReadIndex, §6.4, with a message to the actor only when it applied the index without
    /// publishing it).
    pub async fn at(&self, index: u64) -> Result<Arc<View<T>>, ApiError> {
        let index = index.max(self.demand.applied.load(Ordering::SeqCst));
        let newest = self.latest();
        if newest.applied >= index {
            return Ok(newest);
        }
        let mut rx = self.rx.clone();
        loop {
            let v = rx.borrow_and_update().clone();
            if v.applied >= index {
                return Ok(v);
            }
            // Wanted first, then the applied index: either the state machine sees the wish
            // after its next batch, or this sees that batch's index and pokes it.
            self.demand.wanted.store(true, Ordering::SeqCst);
            if self.demand.applied.load(Ordering::SeqCst) >= index
                && let Some(poke) = &self.poke
                && !self.demand.poked.swap(true, Ordering::SeqCst)
            {
                poke.do_send(PublishView);
            }
            if rx.changed().await.is_err() {
                return Err(ApiError::Unavailable("the state machine stopped".into()));
            }
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
        assert!(!publisher.applied(1), "no reader waits: nothing to publish");
        let later = reader.clone();
        let waiting = tokio::spawn(async move { later.at(2).await.map(|v| (v.applied, v.state)) });
        tokio::task::yield_now().await;
        assert!(publisher.applied(1), "a reader waits: a view is wanted");
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
