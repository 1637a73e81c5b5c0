//! [`WireRouter`]: what the wire's codec actors (`Listener`, `Connection`) need of the node,
//! and no more: the three handles to serve requests with, where clients' requests run, and
//! the `Listener`'s and `Election`'s recipients for what a connection reports.

use std::sync::Arc;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use futures::FutureExt;
use futures::future::LocalBoxFuture;

use super::{ClusterHandle, KvHandle, RegistryHandle, mailbox, ready};
use crate::config::Config;
use crate::error::ApiError;
use crate::messages::client::{CountRefusal, GetReadIndex, TimeoutNow};
use crate::messages::raft::{
    AppendEntries, InstallSnapshot, PeerDisconnected, ReadSnapshotBytes, RequestVote, SnapshotNow,
};
use crate::raft::NodeId;
use crate::raft::members::Members;
use crate::tls::Tls;
use crate::wire::{RefusalKind, Request, Response, SNAPSHOT_CHUNK};

/// Serves wire requests; cheap to clone, one per connection.
#[derive(Clone)]
pub struct WireRouter {
    pub(crate) kv: KvHandle,
    pub(crate) registry: RegistryHandle,
    pub(crate) cluster: ClusterHandle,
    /// Where wire clients' requests are served (`None`: on the connection's own thread).
    pub(crate) clients: Option<ArbiterHandle>,
    pub(crate) refusals: Recipient<CountRefusal>,
}

impl WireRouter {
    /// The node's configuration.
    pub fn config(&self) -> &Config {
        self.cluster.config()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cluster.id()
    }

    /// The node's TLS, when it has it.
    pub fn tls(&self) -> Option<&Arc<Tls>> {
        self.cluster.tls()
    }

    /// The newest configuration this node knows committed (who was removed).
    pub fn committed_members(&self) -> Arc<Members> {
        self.cluster.committed_members()
    }

    /// Where wire clients' requests are served, when not on their connection's thread.
    pub fn clients(&self) -> Option<&ArbiterHandle> {
        self.clients.as_ref()
    }

    /// Counts a connection refused after its handshake.
    pub fn count_refusal(&self, kind: RefusalKind) {
        self.refusals.do_send(CountRefusal(kind));
    }

    /// Tells `Election` that `peer`'s connection to this node closed.
    pub fn peer_disconnected(&self, peer: NodeId) {
        self.cluster.core.election.do_send(PeerDisconnected { peer });
    }

    /// Serves one wire request. `peer` is the configured peer the connection authenticated
    /// as, if any; the caller has already refused peer-only requests from clients.
    pub fn dispatch(&self, request: Request, peer: Option<NodeId>) -> LocalBoxFuture<'static, Response> {
        fn answer<T>(r: Result<T, ApiError>, ok: impl FnOnce(T) -> Response) -> Response {
            r.map(ok).unwrap_or_else(Response::Error)
        }
        let core = &self.cluster.core;
        match request {
            Request::AppendEntries(r) => {
                let fut = core.election.send(AppendEntries(r));
                async move { answer(fut.await.map_err(mailbox), Response::AppendEntries) }.boxed_local()
            }
            Request::InstallSnapshot(r) => {
                let fut = core.election.send(InstallSnapshot(r));
                async move { answer(fut.await.map_err(mailbox), Response::InstallSnapshot) }.boxed_local()
            }
            Request::Vote(r) => {
                let fut = core.election.send(RequestVote(r));
                async move { answer(fut.await.map_err(mailbox), Response::Vote) }.boxed_local()
            }
            Request::ReadIndex => {
                let fut = core.election.send(GetReadIndex { forwarded: peer.is_some() });
                async move { answer(fut.await.map_err(mailbox).and_then(|r| r), Response::ReadIndex) }.boxed_local()
            }
            Request::Forward(w) => {
                // The follower that forwarded it (a member) validated it.
                let fut = if core.knows(&w.namespace) {
                    core.write_inner(w, true, true)
                } else {
                    ready(Err(ApiError::UnknownNamespace(w.namespace)))
                };
                async move { answer(fut.await, Response::Written) }.boxed_local()
            }
            Request::Write(w) => {
                let fut = self.cluster.write(w);
                async move { answer(fut.await, Response::Written) }.boxed_local()
            }
            Request::Get { key, consistency } => {
                let fut = self.kv.get(key, consistency);
                async move { answer(fut.await, Response::Value) }.boxed_local()
            }
            Request::List { prefix, consistency } => {
                let fut = self.kv.list(prefix, consistency);
                async move { answer(fut.await, Response::Pairs) }.boxed_local()
            }
            Request::Query { namespace, data, consistency } => {
                let fut = self.cluster.query(namespace, data, consistency);
                async move { answer(fut.await, Response::QueryReply) }.boxed_local()
            }
            Request::Beat { key, forwarded } => {
                let fut = self.registry.beat(key, forwarded);
                async move { answer(fut.await, |()| Response::Done) }.boxed_local()
            }
            Request::Status => {
                let fut = self.cluster.status();
                async move { answer(fut.await, |s| Response::Status(Box::new(s))) }.boxed_local()
            }
            Request::TimeoutNow { term } => {
                // Peer-only (the connection checked): `peer` is the leader handing over.
                if let Some(from) = peer {
                    core.election.do_send(TimeoutNow { from, term });
                }
                async { Response::Done }.boxed_local()
            }
            Request::TransferLeadership { to } => {
                let fut = self.cluster.transfer_leadership_from(to, peer.is_some());
                async move { answer(fut.await, Response::HandedTo) }.boxed_local()
            }
            Request::ChangeMembers { change, forwarded } => {
                // Only a peer may say it passed the change on already.
                let fut = self.cluster.change_members_from(change, forwarded && peer.is_some());
                async move { answer(fut.await, Response::Written) }.boxed_local()
            }
            Request::TakeSnapshot => {
                let fut = core.log_store.send(SnapshotNow);
                async move {
                    let r = fut.await.map_err(mailbox).and_then(|r| r);
                    answer(r, |s| Response::Snapshot { last: s.last, bytes: s.bytes })
                }
                .boxed_local()
            }
            Request::ReadSnapshot { last, offset, max } => {
                // A chunk at a time, so neither side holds more than one in memory.
                let max = (max as usize).min(SNAPSHOT_CHUNK);
                let fut = core.log_store.send(ReadSnapshotBytes { last, offset, max });
                async move { answer(fut.await.map_err(mailbox).and_then(|r| r), Response::SnapshotBytes) }.boxed_local()
            }
        }
    }
}
