//! [`KvHandle`]: keys, read linearizably or from this node's copy, and watches on them.

use std::sync::Arc;

use actix::prelude::*;
use futures::FutureExt;
use futures::future::LocalBoxFuture;

use super::{Core, mailbox};
use crate::actors::data_map::{self, DataMap, Pairs};
use crate::actors::key_watch::{KeyWatch, Unwatch, WatchKeys, Watching};
use crate::error::ApiError;
use crate::messages::kv::{KV_NAMESPACE, KvCommand, KvOutput};
use crate::state_machine::{Reader, View};
use crate::wire::{Consistency, WriteReply};

/// The key/value store of a node.
#[derive(Clone)]
pub struct KvHandle {
    pub(crate) core: Arc<Core>,
    pub(crate) data_map: Addr<DataMap>,
    pub(crate) key_watch: Addr<KeyWatch>,
    /// The pairs as `DataMap` applied them: reads are answered from here, on the caller's
    /// thread.
    pub(crate) pairs: Reader<Pairs>,
}

impl KvHandle {
    /// The `DataMap` actor.
    pub fn data_map(&self) -> &Addr<DataMap> {
        &self.data_map
    }

    /// Sets every pair in one entry.
    pub fn set(&self, pairs: Vec<(String, String)>) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.core.write_command(KV_NAMESPACE, KvCommand::Set(pairs))
    }

    /// Deletes every key in one entry; answers how many existed.
    pub fn delete(&self, keys: Vec<String>) -> LocalBoxFuture<'static, Result<usize, ApiError>> {
        let fut = self.core.write_command(KV_NAMESPACE, KvCommand::Delete(keys));
        async move {
            let reply = fut.await?;
            let out: KvOutput = serde_json::from_slice(&reply.output).map_err(|e| ApiError::Apply(e.to_string()))?;
            Ok(out.count)
        }
        .boxed_local()
    }

    /// Reads one key.
    pub fn get(
        &self,
        key: String,
        consistency: Consistency,
    ) -> LocalBoxFuture<'static, Result<Option<String>, ApiError>> {
        let fut = self.view(consistency);
        async move { Ok(fut.await?.state.get(&key).map(|v| v.to_string())) }.boxed_local()
    }

    /// The pairs as of a read index (linearizable) or as this node has them (stale): shared,
    /// nothing copied; hold it no longer than the read.
    pub fn view(&self, consistency: Consistency) -> LocalBoxFuture<'static, Result<Arc<View<Pairs>>, ApiError>> {
        let pairs = self.pairs.clone();
        self.core.read(consistency, move |min_applied| async move { pairs.at(min_applied).await })
    }

    /// The pairs once this node has applied `min_applied` (no read index: the caller names
    /// the index, as a watch does).
    pub fn view_at(&self, min_applied: u64) -> LocalBoxFuture<'static, Result<Arc<View<Pairs>>, ApiError>> {
        let pairs = self.pairs.clone();
        async move { pairs.at(min_applied).await }.boxed_local()
    }

    /// Reads `keys` from this node's copy once it has applied `min_applied` (see
    /// [`KvHandle::view_at`]).
    pub fn get_keys_at(
        &self,
        keys: Vec<String>,
        min_applied: u64,
    ) -> LocalBoxFuture<'static, Result<Vec<Option<String>>, ApiError>> {
        let view = self.view_at(min_applied);
        async move {
            let view = view.await?;
            Ok(keys.iter().map(|k| view.state.get(k).map(|v| v.to_string())).collect())
        }
        .boxed_local()
    }

    /// Starts waiting for any of `keys` to change (see [`Watching`]); `unwatch` it when
    /// giving up before it fires.
    pub fn watch_keys(&self, keys: Vec<String>) -> LocalBoxFuture<'static, Result<Watching, ApiError>> {
        let fut = self.key_watch.send(WatchKeys { keys });
        async move { fut.await.map_err(mailbox) }.boxed_local()
    }

    /// Drops a watch.
    pub fn unwatch(&self, id: u64) {
        self.key_watch.do_send(Unwatch(id));
    }

    /// Lists pairs whose key starts with `prefix`, in key order.
    pub fn list(
        &self,
        prefix: String,
        consistency: Consistency,
    ) -> LocalBoxFuture<'static, Result<Vec<(String, String)>, ApiError>> {
        let fut = self.view(consistency);
        async move { Ok(data_map::list(&fut.await?.state, &prefix)) }.boxed_local()
    }
}
