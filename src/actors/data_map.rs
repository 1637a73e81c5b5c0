//! `DataMap`: the key/value state machine. Owns the pairs and its applied index.
//!
//! Receives: `ApplyEntries` (committed `kv` commands, in index order, from `LogStore`),
//! `GetKey`, `ListKeys`, `CountKeys` and generic `Query`s (each held until the read index it carries is
//! applied), `TakeSnapshot` and `RestoreSnapshot`. Sends nothing: it answers.
//!
//! The pairs are a persistent map: a snapshot's view is a clone that costs nothing, and
//! writes applied while it is being written copy only the paths they touch. The same clone is
//! published when a reader waits for one ([`DataMap::reader`], `PublishView`): the handles
//! read from it on their own thread.

use std::ops::Bound;
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;

use crate::error::ApiError;
use crate::messages::apply::{ApplyEntries, Query};
use crate::messages::kv::{CountKeys, GetKey, KvCommand, KvOutput, ListKeys};
use crate::raft::Payload;
use crate::snapshot::{RestoreSnapshot, SnapshotView, TakeSnapshot, read_record, write_record_with};
use crate::state_machine::{AppliedGate, PublishView, Publisher, Reader, read_after, views};

/// The pairs, by key. A value is shared (`Arc`), so views, snapshots and readers that hold it
/// copy nothing, and a reader may tell by its address whether it changed.
pub type Pairs = imbl::OrdMap<String, Arc<str>>;

/// The key/value state machine.
pub struct DataMap {
    pairs: Pairs,
    gate: AppliedGate,
    views: Publisher<Pairs>,
}

impl Default for DataMap {
    fn default() -> Self {
        DataMap { pairs: Pairs::new(), gate: AppliedGate::default(), views: views(Pairs::new()).0 }
    }
}

impl DataMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// A reader of the pairs as applied (give it this actor's address with
    /// [`Reader::poking`] once started).
    pub fn reader(&self) -> Reader<Pairs> {
        self.views.reader(None)
    }

    fn publish(&self) {
        self.views.publish(self.gate.applied(), self.pairs.clone());
    }

    fn apply(&mut self, data: &[u8]) -> Result<Bytes, String> {
        let cmd: KvCommand = serde_json::from_slice(data).map_err(|e| format!("bad kv command: {e}"))?;
        let count = match cmd {
            KvCommand::Set(pairs) => {
                let n = pairs.len();
                for (k, v) in pairs {
                    self.pairs.insert(k, v.into());
                }
                n
            }
            KvCommand::Delete(keys) => keys.iter().filter(|k| self.pairs.remove(*k).is_some()).count(),
        };
        serde_json::to_vec(&KvOutput { count }).map(Bytes::from).map_err(|e| e.to_string())
    }

    fn list(&self, prefix: &str) -> Vec<(String, String)> {
        list(&self.pairs, prefix)
    }
}

/// The pairs whose key starts with `prefix`, in key order.
pub fn list(pairs: &Pairs, prefix: &str) -> Vec<(String, String)> {
    pairs
        .range::<_, str>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect()
}

impl Actor for DataMap {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
    }
}

impl Handler<ApplyEntries> for DataMap {
    type Result = Vec<Result<Bytes, String>>;

    fn handle(&mut self, msg: ApplyEntries, _: &mut Context<Self>) -> Self::Result {
        let out = msg
            .entries
            .iter()
            .map(|e| match &e.payload {
                Payload::Command { data, .. } => self.apply(data),
                Payload::Blank | Payload::Config(_) => Ok(Bytes::new()),
            })
            .collect();
        self.gate.advance(msg.applied_to);
        if self.views.applied(msg.applied_to) {
            self.publish();
        }
        out
    }
}

impl Handler<PublishView> for DataMap {
    type Result = ();

    fn handle(&mut self, _: PublishView, _: &mut Context<Self>) {
        self.publish();
    }
}

impl Handler<TakeSnapshot> for DataMap {
    type Result = Result<SnapshotView, String>;

    fn handle(&mut self, msg: TakeSnapshot, _: &mut Context<Self>) -> Self::Result {
        self.gate.check_view(msg.index)?;
        let pairs = self.pairs.clone();
        Ok(SnapshotView {
            items: pairs.len() as u64,
            write: Box::new(move |out| {
                let mut buf = Vec::with_capacity(256);
                for pair in pairs.iter() {
                    write_record_with(out, &pair, &mut buf)?;
                }
                Ok(())
            }),
        })
    }
}

impl Handler<RestoreSnapshot> for DataMap {
    type Result = Result<(), String>;

    fn handle(&mut self, mut msg: RestoreSnapshot, _: &mut Context<Self>) -> Self::Result {
        let mut pairs = Pairs::new();
        let mut buf = Vec::new();
        while let Some((k, v)) = read_record::<(String, String)>(&mut msg.data, &mut buf).map_err(|e| e.to_string())? {
            pairs.insert(k, v.into());
        }
        tracing::info!(index = msg.index, keys = pairs.len(), "kv restored from a snapshot");
        self.pairs = pairs;
        self.gate.advance(msg.index);
        self.publish();
        Ok(())
    }
}

impl Handler<GetKey> for DataMap {
    type Result = ResponseActFuture<Self, Option<String>>;

    fn handle(&mut self, msg: GetKey, _: &mut Context<Self>) -> Self::Result {
        read_after(self, |a| &mut a.gate, msg.min_applied, move |a| a.pairs.get(&msg.key).map(|v| v.to_string()))
    }
}

impl Handler<ListKeys> for DataMap {
    type Result = ResponseActFuture<Self, Vec<(String, String)>>;

    fn handle(&mut self, msg: ListKeys, _: &mut Context<Self>) -> Self::Result {
        read_after(self, |a| &mut a.gate, msg.min_applied, move |a| a.list(&msg.prefix))
    }
}

impl Handler<CountKeys> for DataMap {
    type Result = MessageResult<CountKeys>;

    /// Every key costs nothing to count; those under `prefix` cost one step each.
    fn handle(&mut self, msg: CountKeys, _: &mut Context<Self>) -> Self::Result {
        let under = self
            .pairs
            .range::<_, str>((Bound::Included(msg.prefix.as_str()), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&msg.prefix));
        MessageResult((self.pairs.len(), under.count()))
    }
}

impl Handler<Query> for DataMap {
    type Result = ResponseActFuture<Self, Result<Bytes, ApiError>>;

    /// A generic query: the JSON string of a key answers its value (or null).
    fn handle(&mut self, msg: Query, _: &mut Context<Self>) -> Self::Result {
        let key: Result<String, _> = serde_json::from_slice(&msg.data);
        read_after(
            self,
            |a| &mut a.gate,
            msg.min_applied,
            move |a| {
                let key = key.map_err(|e| ApiError::BadRequest(format!("kv query must be a JSON string key: {e}")))?;
                serde_json::to_vec(&a.pairs.get(&key)).map(Bytes::from).map_err(|e| ApiError::BadRequest(e.to_string()))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Entry;

    fn set(index: u64, key: &str, value: &str) -> ApplyEntries {
        let data = serde_json::to_vec(&KvCommand::Set(vec![(key.into(), value.into())])).unwrap();
        let payload = Payload::Command { namespace: "kv".into(), data: data.into() };
        ApplyEntries { entries: vec![Arc::new(Entry { term: 1, index, payload })], applied_to: index }
    }

    /// A view is of the index asked for only: asked at another, it is refused; writes
    /// applied after it is taken do not show in it; and it restores into a fresh map.
    #[actix_rt::test]
    async fn a_view_holds_its_index_and_restores() {
        let m = DataMap::new().start();
        m.send(set(5, "a", "1")).await.unwrap();
        assert!(m.send(TakeSnapshot { index: 4 }).await.unwrap().is_err(), "a view at the wrong index");
        let view = m.send(TakeSnapshot { index: 5 }).await.unwrap().unwrap();
        m.send(set(6, "b", "2")).await.unwrap();
        m.send(set(7, "a", "3")).await.unwrap();
        assert_eq!(view.items, 1);
        let mut bytes = Vec::new();
        (view.write)(&mut bytes).unwrap();
        let restored = DataMap::new().start();
        let data = Box::new(std::io::Cursor::new(bytes));
        restored.send(RestoreSnapshot { index: 5, data }).await.unwrap().unwrap();
        let get = |key: &str| restored.send(GetKey { key: key.into(), min_applied: 5 });
        assert_eq!(get("a").await.unwrap().as_deref(), Some("1"));
        assert_eq!(get("b").await.unwrap(), None);
        let bad = Box::new(std::io::Cursor::new(vec![9, 0, 0, 0, 1]));
        assert!(restored.send(RestoreSnapshot { index: 5, data: bad }).await.unwrap().is_err());
    }

    #[test]
    fn set_delete_and_prefix_list() {
        let mut m = DataMap::new();
        let set = serde_json::to_vec(&KvCommand::Set(vec![
            ("a/1".into(), "x".into()),
            ("a/2".into(), "y".into()),
            ("b".into(), "z".into()),
        ]))
        .unwrap();
        assert_eq!(m.apply(&set).unwrap(), Bytes::from(r#"{"count":3}"#));
        assert_eq!(m.list("a/").len(), 2);
        assert_eq!(m.list("").len(), 3);
        let del = serde_json::to_vec(&KvCommand::Delete(vec!["a/1".into(), "nope".into()])).unwrap();
        assert_eq!(m.apply(&del).unwrap(), Bytes::from(r#"{"count":1}"#));
        assert!(m.apply(b"not json").is_err());
    }
}
