//! `KeyWatch`: follows the key/value commit stream and wakes whoever waits for a key to
//! change: the long polls of Nacos config listeners today, watches later. It owns the waiters
//! and the index of the last entry it has seen, and it is built the way any extension is: a
//! follower of the commit stream (`Follow`), with no hook in the core.
//!
//! Receives: `ApplyEntries` (committed `kv` entries), `WatchKeys`, `Unwatch`.

use std::collections::{BTreeMap, BTreeSet};

use actix::prelude::*;
use bytes::Bytes;
use futures::channel::oneshot;

use crate::messages::apply::ApplyEntries;
use crate::messages::kv::KvCommand;
use crate::raft::Payload;

/// Wait for any of `keys` to be set or deleted by an entry after the one `Watching::seen`
/// names.
#[derive(Debug, Message)]
#[rtype(result = "Watching")]
pub struct WatchKeys {
    /// The keys.
    pub keys: Vec<String>,
}

/// A registered watch.
#[derive(Debug, MessageResponse)]
pub struct Watching {
    /// Pass to `Unwatch` when giving up.
    pub id: u64,
    /// Every entry up to this index was seen before the watch began: read the keys at (at
    /// least) this index to know what they were, and no change after it is missed.
    pub seen: u64,
    /// Resolves with the index of the first entry that touched a watched key; the watch is
    /// gone once it fires.
    pub changed: oneshot::Receiver<u64>,
}

/// Drop a watch that has not fired.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Unwatch(pub u64);

struct Waiter {
    keys: Vec<String>,
    fire: oneshot::Sender<u64>,
}

/// The watcher.
#[derive(Default)]
pub struct KeyWatch {
    seen: u64,
    next_id: u64,
    waiters: BTreeMap<u64, Waiter>,
    by_key: BTreeMap<String, BTreeSet<u64>>,
}

impl KeyWatch {
    /// No watch yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn remove(&mut self, id: u64) -> Option<Waiter> {
        let w = self.waiters.remove(&id)?;
        for k in &w.keys {
            if let Some(ids) = self.by_key.get_mut(k) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_key.remove(k);
                }
            }
        }
        Some(w)
    }

    fn touched(&mut self, key: &str, index: u64) {
        let Some(ids) = self.by_key.get(key) else { return };
        for id in ids.clone() {
            if let Some(w) = self.remove(id) {
                let _ = w.fire.send(index);
            }
        }
    }

    fn prune(&mut self) {
        let gone: Vec<u64> = self.waiters.iter().filter(|(_, w)| w.fire.is_canceled()).map(|(id, _)| *id).collect();
        for id in gone {
            self.remove(id);
        }
    }

    /// How many watches wait (for tests and status).
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }
}

impl Actor for KeyWatch {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
    }
}

impl Handler<ApplyEntries> for KeyWatch {
    type Result = Vec<Result<Bytes, String>>;

    fn handle(&mut self, msg: ApplyEntries, _: &mut Context<Self>) -> Self::Result {
        for e in &msg.entries {
            let Payload::Command { data, .. } = &e.payload else { continue };
            // What DataMap refuses changes nothing, so it wakes nobody.
            match serde_json::from_slice::<KvCommand>(data) {
                Ok(KvCommand::Set(pairs)) => pairs.iter().for_each(|(k, _)| self.touched(k, e.index)),
                Ok(KvCommand::Delete(keys)) => keys.iter().for_each(|k| self.touched(k, e.index)),
                Err(_) => {}
            }
        }
        self.seen = self.seen.max(msg.applied_to);
        // A follower's outputs are ignored.
        Vec::new()
    }
}

impl Handler<WatchKeys> for KeyWatch {
    type Result = Watching;

    fn handle(&mut self, msg: WatchKeys, _: &mut Context<Self>) -> Watching {
        let (fire, changed) = oneshot::channel();
        self.next_id += 1;
        let id = self.next_id;
        // Waiters whose receiver is gone (their caller gave up without unwatching) are
        // dropped now and then, so nothing grows without bound.
        if id.is_multiple_of(64) {
            self.prune();
        }
        for k in &msg.keys {
            self.by_key.entry(k.clone()).or_default().insert(id);
        }
        self.waiters.insert(id, Waiter { keys: msg.keys, fire });
        Watching { id, seen: self.seen, changed }
    }
}

impl Handler<Unwatch> for KeyWatch {
    type Result = ();

    fn handle(&mut self, Unwatch(id): Unwatch, _: &mut Context<Self>) {
        self.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::raft::Entry;

    fn set(index: u64, keys: &[&str]) -> Arc<Entry> {
        let cmd = KvCommand::Set(keys.iter().map(|k| (k.to_string(), "v".to_string())).collect());
        Arc::new(Entry {
            term: 1,
            index,
            payload: Payload::Command { namespace: "kv".into(), data: serde_json::to_vec(&cmd).unwrap().into() },
        })
    }

    #[test]
    fn waiters_whose_caller_left_are_pruned() {
        let mut w = KeyWatch::new();
        let mut kept = Vec::new();
        for id in 1..=3 {
            let (fire, rx) = oneshot::channel();
            w.waiters.insert(id, Waiter { keys: vec![format!("k{id}")], fire });
            w.by_key.entry(format!("k{id}")).or_default().insert(id);
            if id != 2 {
                kept.push(rx);
            }
        }
        w.prune();
        assert_eq!((w.waiting(), w.by_key.contains_key("k2")), (2, false));
    }

    #[actix_rt::test]
    async fn fires_once_for_a_watched_key_and_forgets_the_watch() {
        let w = KeyWatch::new().start();
        let a = w.send(WatchKeys { keys: vec!["a".into(), "b".into()] }).await.unwrap();
        let c = w.send(WatchKeys { keys: vec!["c".into()] }).await.unwrap();
        assert_eq!(a.seen, 0);
        w.send(ApplyEntries { entries: vec![set(1, &["x"]), set(2, &["b", "a"])], applied_to: 2 }).await.unwrap();
        assert_eq!(a.changed.await, Ok(2), "the first entry touching a watched key");
        let d = w.send(WatchKeys { keys: vec!["a".into()] }).await.unwrap();
        assert_eq!(d.seen, 2);
        w.send(Unwatch(d.id)).await.unwrap();
        assert!(d.changed.await.is_err(), "an unwatched watch never fires");
        w.send(Unwatch(c.id)).await.unwrap();
        let left = w.send(WatchKeys { keys: vec![] }).await.unwrap();
        w.send(Unwatch(left.id)).await.unwrap();
        drop(c);
    }
}
