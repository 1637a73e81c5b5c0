//! [`ClusterHandle`]: the node itself and its cluster: members and their changes, leadership,
//! status, and writes and queries of any state machine by namespace (an extension's).

use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::LocalBoxFuture;

use super::{Core, mailbox, ready};
use crate::actors::election::Election;
use crate::actors::log_store::LogStore;
use crate::config::Config;
use crate::error::ApiError;
use crate::messages::apply::{Query, StateMachineRef, Subscribe};
use crate::messages::client::{ChangeMembers, GetElectionStatus, GetRefusals, TransferLeadership};
use crate::messages::raft::GetLogState;
use crate::metrics::MetricsRef;
use crate::raft::NodeId;
use crate::raft::members::{MemberChange, Members};
use crate::tls::Tls;
use crate::wire::{Consistency, StatusInfo, Write, WriteReply};

/// A node and its cluster.
#[derive(Clone)]
pub struct ClusterHandle {
    pub(crate) core: Arc<Core>,
    /// Who counts refused connections (the `Listener`), for `status`.
    pub(crate) refusals: Recipient<GetRefusals>,
}

impl ClusterHandle {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.core.config.id
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// The `Election` actor.
    pub fn election(&self) -> &Addr<Election> {
        &self.core.election
    }

    /// The `LogStore` actor (subscribe to the commit stream with `Subscribe`).
    pub fn log_store(&self) -> &Addr<LogStore> {
        &self.core.log_store
    }

    /// The node's metrics (see [`crate::metrics`]).
    pub fn metrics(&self) -> &MetricsRef {
        &self.core.metrics
    }

    /// The node's TLS, when it has it: [`Tls::reload`] reads its files again.
    pub fn tls(&self) -> Option<&Arc<Tls>> {
        self.core.tls.as_ref()
    }

    /// How this node reaches other nodes as a client: its group, the cluster token, and TLS
    /// with its own certificate when it has TLS.
    pub fn dial(&self) -> crate::client::Dial {
        crate::client::Dial::new(&self.core.config.group)
            .token(self.core.config.cluster_token.as_deref())
            .tls(self.core.tls.as_ref().map(|t| t.client()))
    }

    /// Client work pending on this node: writes, their bytes, reads.
    pub fn pending(&self) -> (usize, usize, usize) {
        self.core.admission.pending()
    }

    /// The configuration in effect on this node (the newest in its log).
    pub fn members(&self) -> Arc<Members> {
        self.core.members.get()
    }

    /// The newest configuration this node knows committed.
    pub fn committed_members(&self) -> Arc<Members> {
        self.core.members.committed()
    }

    /// Changes the membership (see [`MemberChange`]): on the leader, or passed on to it.
    /// Answers once the change is committed, with the index of its entry.
    pub fn change_members(&self, change: MemberChange) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.change_members_from(change, false)
    }

    pub(crate) fn change_members_from(
        &self,
        change: MemberChange,
        forwarded: bool,
    ) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        let fut = self.core.election.send(ChangeMembers { change, forwarded });
        async move { fut.await.map_err(mailbox)? }.boxed_local()
    }

    /// Hands leadership to `to` (or the most caught-up voter) and answers, once this leader
    /// has stepped down, the node it handed to; writes meanwhile wait. Through any member.
    pub fn transfer_leadership(&self, to: Option<NodeId>) -> LocalBoxFuture<'static, Result<NodeId, ApiError>> {
        self.transfer_leadership_from(to, false)
    }

    pub(crate) fn transfer_leadership_from(
        &self,
        to: Option<NodeId>,
        forwarded: bool,
    ) -> LocalBoxFuture<'static, Result<NodeId, ApiError>> {
        let fut = self.core.election.send(TransferLeadership { to, forwarded });
        async move { fut.await.map_err(mailbox)? }.boxed_local()
    }

    /// Adds a state machine while the node runs; it is brought up to date first (the
    /// snapshot's state for `namespace`, if any, then the entries committed after it).
    pub fn register_state_machine(&self, namespace: &str, machine: StateMachineRef, query: Option<Recipient<Query>>) {
        self.core.router().insert(namespace.to_string(), query);
        self.core.log_store.do_send(Subscribe { namespace: namespace.to_string(), machine });
    }

    /// Replicates a command for the state machine owning `write.namespace`; answers once it
    /// is committed and applied, with the state machine's output.
    pub fn write(&self, write: Write) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.core.write_checked(write, false)
    }

    /// The index a read must wait for: a ReadIndex for a linearizable read, 0 for a stale one.
    pub fn read_index(&self, consistency: Consistency) -> LocalBoxFuture<'static, Result<u64, ApiError>> {
        self.core.read_index(consistency)
    }

    /// Asks the state machine owning `namespace`.
    pub fn query(
        &self,
        namespace: String,
        data: Bytes,
        consistency: Consistency,
    ) -> LocalBoxFuture<'static, Result<Bytes, ApiError>> {
        let Some(target) = self.core.router().get(&namespace).cloned().flatten() else {
            return ready(Err(ApiError::UnknownNamespace(namespace)));
        };
        self.core.read(consistency, move |min_applied| async move {
            target.send(Query { data, min_applied }).await.map_err(mailbox)?
        })
    }

    /// This node's view of itself and the cluster.
    pub fn status(&self) -> LocalBoxFuture<'static, Result<StatusInfo, ApiError>> {
        let e = self.core.election.send(GetElectionStatus);
        let l = self.core.log_store.send(GetLogState);
        let r = self.refusals.send(GetRefusals);
        let group = self.core.config.group.clone();
        async move {
            let e = e.await.map_err(mailbox)?;
            let l = l.await.map_err(mailbox)?;
            let refused = r.await.unwrap_or_default();
            Ok(StatusInfo {
                id: e.id,
                group,
                role: e.role,
                term: e.term,
                leader: e.leader,
                commit_index: e.commit_index.max(l.commit),
                applied_index: l.applied,
                last_log_index: l.last.index,
                last_log_term: l.last.term,
                peers: e.peers,
                members: e.members,
                members_index: e.members_index,
                members_pending: e.members_pending,
                refused,
                first_log_index: l.first_index,
                snapshot_index: l.snapshot.map(|s| s.last.index).unwrap_or(0),
                snapshot_term: l.snapshot.map(|s| s.last.term).unwrap_or(0),
                snapshot_bytes: l.snapshot.map(|s| s.bytes).unwrap_or(0),
                snapshots_installed: l.installed,
            })
        }
        .boxed_local()
    }
}
