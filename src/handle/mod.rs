//! The way into a running node, by concern: [`KvHandle`] (keys and their watches),
//! [`RegistryHandle`] (services, instances, beats), [`ClusterHandle`] (members, leadership,
//! status, raw writes and queries of any state machine). Each holds the actors' addresses it
//! needs and nothing else; all three share one [`Core`]: the write path (validation, the bound
//! on pending work, `Election`) and the read index. [`crate::NodeHandle`] bundles the three for
//! an application; the wire's [`WireRouter`] holds them for its
//! connections.
//!
//! Cheap to clone and `Send`: a handle may be used from other threads (the HTTP workers); the
//! futures its calls return run on the caller's thread.

mod cluster;
mod kv;
mod registry;
mod router;

pub use cluster::ClusterHandle;
pub use kv::KvHandle;
pub use registry::RegistryHandle;
pub use router::WireRouter;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use actix::prelude::*;
use bytes::Bytes;
use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::LocalBoxFuture;

use crate::actors::election::{Election, LeaseShare, MemberView};
use crate::actors::log_store::LogStore;
use crate::admission::{Admission, Admitted};
use crate::config::Config;
use crate::error::ApiError;
use crate::messages::apply::Query;
use crate::messages::client::{ClientWrite, GetReadIndex};
use crate::messages::kv::{KV_NAMESPACE, KvCommand};
use crate::messages::registry::{REGISTRY_NAMESPACE, RegistryCommand};
use crate::metrics::MetricsRef;
use crate::tls::Tls;
use crate::wire::{Consistency, Write, WriteReply};

/// The namespaces this node applies, with the actor answering each one's queries (if any).
pub(crate) type QueryRouter = Arc<Mutex<BTreeMap<String, Option<Recipient<Query>>>>>;

/// What every handle shares: the node's settings, `Election` (every write and read index
/// goes through it), `LogStore`, the bounds on pending client work, the configuration view,
/// metrics and TLS.
pub(crate) struct Core {
    pub(crate) config: Arc<Config>,
    pub(crate) election: Addr<Election>,
    pub(crate) log_store: Addr<LogStore>,
    pub(crate) queries: QueryRouter,
    /// The bounds on client work pending (see [`Admission`]).
    pub(crate) admission: Arc<Admission>,
    /// The configuration in effect, kept current by `Election`.
    pub(crate) members: Arc<MemberView>,
    pub(crate) metrics: MetricsRef,
    pub(crate) tls: Option<Arc<Tls>>,
    /// What the leader's lease lets a read take without asking `Election`.
    pub(crate) lease: Arc<LeaseShare>,
    /// The reads waiting for a read index from `Election`, asked for together.
    pub(crate) read_indexes: Arc<Mutex<ReadIndexes>>,
}

/// Linearizable reads waiting for a read index: one `GetReadIndex` serves every read that
/// arrived on this thread before the task sending it ran, so the reads of a busy HTTP worker
/// cost `Election` one message per turn of its event loop, not one each. The next is sent
/// whatever is still under way, so no read takes an index asked for before it arrived, and
/// none waits for more than one.
#[derive(Debug, Default)]
pub(crate) struct ReadIndexes {
    /// A task sending the next `GetReadIndex` is spawned and has not run yet.
    due: bool,
    waiting: Vec<oneshot::Sender<Result<u64, ApiError>>>,
}

pub(crate) fn mailbox(e: MailboxError) -> ApiError {
    ApiError::Unavailable(format!("actor stopped: {e}"))
}

/// An answer ready at once, as the futures the handles return.
pub(crate) fn ready<T: 'static>(r: Result<T, ApiError>) -> LocalBoxFuture<'static, Result<T, ApiError>> {
    async move { r }.boxed_local()
}

impl Core {
    pub(crate) fn router(&self) -> MutexGuard<'_, BTreeMap<String, Option<Recipient<Query>>>> {
        self.queries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a state machine applies `namespace` on this node.
    pub(crate) fn knows(&self, namespace: &str) -> bool {
        self.router().contains_key(namespace)
    }

    /// `checked`: the command was validated already (built typed here, or validated by the
    /// follower that forwarded it), so its bytes are not decoded again.
    pub(crate) fn write_inner(
        &self,
        write: Write,
        forwarded: bool,
        checked: bool,
    ) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        let write = if checked {
            write
        } else {
            match prepare(write, &self.config) {
                Ok(w) => w,
                Err(e) => return ready(Err(e)),
            }
        };
        let max = self.config.max_request_bytes;
        if write.data.len() + write.namespace.len() > max {
            let len = write.data.len();
            return ready(Err(ApiError::BadRequest(format!("write of {len} bytes is over max_request_bytes ({max})"))));
        }
        // A place is held until the write is answered (`Election` holds it with the write):
        // past the bound, refused at once.
        let place = match self.admission.admit_write(write.data.len() + write.namespace.len()) {
            Ok(p) => p,
            Err(e) => return ready(Err(e)),
        };
        // The send is queued now, not when the future is first polled, so requests on one
        // connection reach `Election` in the order they arrived.
        let fut = self.election.send(ClientWrite { write, forwarded, place: Some(place), term: None });
        let metrics = self.metrics.clone();
        async move {
            let answer = fut.await.map_err(mailbox).and_then(|r| r);
            // As etcd's: a write that did not make it through Raft (no leader, timed out,
            // dropped by a new leader, refused for load), counted once, where the client
            // sent it; not one that committed and its state machine refused.
            if let Err(e) = &answer
                && !forwarded
                && !matches!(e, ApiError::Apply(_) | ApiError::BadRequest(_) | ApiError::UnknownNamespace(_))
            {
                metrics.proposals_failed.inc();
            }
            answer
        }
        .boxed_local()
    }

    /// A write from a client of this node (not forwarded): only namespaces registered here
    /// are accepted, so a typo cannot put an entry no state machine applies into the log.
    pub(crate) fn write_checked(
        &self,
        write: Write,
        checked: bool,
    ) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        if !self.knows(&write.namespace) {
            return ready(Err(ApiError::UnknownNamespace(write.namespace)));
        }
        self.write_inner(write, false, checked)
    }

    /// Validates a built-in command as the typed value it is, encodes it (JSON) and writes
    /// it to `namespace`: decoded once, where it is applied, not again on the way.
    pub(crate) fn write_command<T: Command>(
        &self,
        namespace: &str,
        mut command: T,
    ) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        if let Err(e) = command.prepare(&self.config) {
            return ready(Err(ApiError::BadRequest(format!("{namespace} command: {e}"))));
        }
        match encode(&command) {
            Ok(data) => self.write_checked(Write { namespace: namespace.into(), data }, true),
            Err(e) => ready(Err(e)),
        }
    }

    /// The index a read must wait for: a ReadIndex for a linearizable read, 0 for a stale one.
    pub(crate) fn read_index(&self, consistency: Consistency) -> LocalBoxFuture<'static, Result<u64, ApiError>> {
        match consistency {
            Consistency::Stale => ready(Ok(0)),
            Consistency::Linearizable => {
                // Under a lease (the leader's, or this follower's own): without a message.
                if let Some(read) = self.lease.read_index() {
                    self.metrics.read_indexes_by_lease.inc();
                    if read.follower {
                        self.metrics.read_indexes_by_follower_lease.inc();
                    }
                    return ready(Ok(read.index));
                }
                // Batched where a task can be started on this thread (an actix thread: the HTTP
                // workers, the wire's connections); elsewhere, asked alone.
                if actix_rt::Arbiter::try_current().is_none() {
                    let fut = self.election.send(GetReadIndex { forwarded: false });
                    return async move { fut.await.map_err(mailbox)? }.boxed_local();
                }
                let (tx, rx) = oneshot::channel();
                let ask = {
                    let mut batch = lock(&self.read_indexes);
                    batch.waiting.push(tx);
                    !std::mem::replace(&mut batch.due, true)
                };
                if ask {
                    actix_rt::spawn(ask_read_indexes(self.election.clone(), self.read_indexes.clone()));
                }
                async move { rx.await.unwrap_or_else(|_| Err(ApiError::Unavailable("read index not answered".into()))) }
                    .boxed_local()
            }
        }
    }

    /// A place for a read (or a beat), held by the caller until it is answered.
    pub(crate) fn admit_read(&self) -> Result<Admitted, ApiError> {
        self.admission.admit_read()
    }

    /// Every read's path: a place among the pending reads (refused at once past the bound),
    /// the index to wait for (a ReadIndex, or 0 when stale), then `ask` with that index; the
    /// place is held until the answer.
    pub(crate) fn read<T, Fut>(
        &self,
        consistency: Consistency,
        ask: impl FnOnce(u64) -> Fut + 'static,
    ) -> LocalBoxFuture<'static, Result<T, ApiError>>
    where
        T: 'static,
        Fut: std::future::Future<Output = Result<T, ApiError>> + 'static,
    {
        let place = match self.admit_read() {
            Ok(p) => p,
            Err(e) => return ready(Err(e)),
        };
        let index = self.read_index(consistency);
        async move {
            let _place = place;
            ask(index.await?).await
        }
        .boxed_local()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Asks `Election` for one read index for every read waiting. If it is dropped before it ran
/// (its thread stopped), the reads waiting are refused, retryably, and the next read spawns
/// another; once it took them, a read it drops is answered `Unavailable` by its caller.
fn ask_read_indexes(election: Addr<Election>, reads: Arc<Mutex<ReadIndexes>>) -> impl Future<Output = ()> {
    /// Until it took the reads, refuses them if dropped (another thread's read may have
    /// spawned the next task since, and its reads are that task's).
    struct Due {
        reads: Arc<Mutex<ReadIndexes>>,
        taken: bool,
    }
    impl Drop for Due {
        fn drop(&mut self) {
            if self.taken {
                return;
            }
            let mut r = lock(&self.reads);
            r.due = false;
            for tx in r.waiting.drain(..) {
                let _ = tx.send(Err(ApiError::Unavailable("the read index was not asked for; retry".into())));
            }
        }
    }
    // Held by the future from the start, so dropping it unpolled refuses the reads too.
    let mut due = Due { reads, taken: false };
    async move {
        let batch = {
            let mut r = lock(&due.reads);
            r.due = false;
            std::mem::take(&mut r.waiting)
        };
        due.taken = true;
        drop(due);
        if batch.iter().all(|tx| tx.is_canceled()) {
            return;
        }
        let answer = election.send(GetReadIndex { forwarded: false }).await.map_err(mailbox).and_then(|r| r);
        for tx in batch {
            let _ = tx.send(answer.clone());
        }
    }
}

/// Readies a built-in command received as bytes for the log ([`Command::prepare`]): a
/// malformed one is refused, so a bad request costs an error, not a log entry every node must
/// apply. A registry command that preparing changed (its instances given their checks) is
/// encoded again; any other goes on as its bytes came.
fn prepare(write: Write, config: &Config) -> Result<Write, ApiError> {
    let refused = |e: String| ApiError::BadRequest(format!("{} command: {e}", write.namespace));
    match write.namespace.as_str() {
        KV_NAMESPACE => {
            let mut c: KvCommand = serde_json::from_slice(&write.data).map_err(|e| refused(e.to_string()))?;
            Command::prepare(&mut c, config).map_err(refused)?;
            Ok(write)
        }
        REGISTRY_NAMESPACE => {
            let mut c: RegistryCommand = serde_json::from_slice(&write.data).map_err(|e| refused(e.to_string()))?;
            if Command::prepare(&mut c, config).map_err(refused)? {
                return Ok(Write { data: encode(&c)?, ..write });
            }
            Ok(write)
        }
        _ => Ok(write),
    }
}

/// A built-in command that can ready itself for the log before it is encoded.
pub(crate) trait Command: serde::Serialize {
    /// Completes what the log must hold (defaults that depend on the request, not on the
    /// state), then refuses the command if it is malformed or this node's `config` forbids it.
    /// Answers whether preparing changed it.
    fn prepare(&mut self, config: &Config) -> Result<bool, String>;
}

impl Command for KvCommand {
    fn prepare(&mut self, _: &Config) -> Result<bool, String> {
        self.validate().map(|()| false)
    }
}

impl Command for RegistryCommand {
    fn prepare(&mut self, config: &Config) -> Result<bool, String> {
        RegistryCommand::prepare(self, config.allow_script_checks)
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| ApiError::BadRequest(e.to_string()))
}
