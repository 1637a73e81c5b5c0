//! `Node`: starts a node's actors from a `Config`, wires their addresses, and hands back a
//! [`NodeHandle`] through which an application (or a connection, or the HTTP API of a later
//! step) talks to them. No logic about Raft lives here, only wiring and the request paths
//! that chain two actors (a linearizable read: `Election` for the read index, then the state
//! machine).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use actix_rt::{Arbiter, ArbiterHandle};
use bytes::Bytes;
use futures::FutureExt;
use futures::future::LocalBoxFuture;

use crate::actors::data_map::DataMap;
use crate::actors::election::{Election, MemberView};
use crate::actors::key_watch::{KeyWatch, Unwatch, WatchKeys, Watching};
use crate::actors::listener::{CountRefusal, GetRefusals, Listener, StopListener};
use crate::actors::log_store::{LogStore, Snapshots};

use crate::actors::service_registry::{Proposer, ServiceRegistry};
use crate::admission::{Admission, Admitted};
use crate::config::Config;
use crate::error::StorageError;
use crate::error::{ApiError, NodeError};
use crate::messages::apply::{Follow, Query, StateMachineRef, Subscribe};
use crate::messages::client::{
    ChangeMembers, ClientWrite, GetElectionStatus, GetReadIndex, StopPeerLinks, TimeoutNow, TransferLeadership,
};
use crate::messages::kv::{GetKey, KV_NAMESPACE, KvCommand, KvOutput, ListKeys};
use crate::messages::raft::{
    AppendEntries, ForwardToLeader, GetLogState, InstallSnapshot, PeerDisconnected, ReadSnapshotBytes, RequestVote,
    SnapshotNow, WatchLeadership,
};
use crate::messages::registry::{
    Balance, Beat, GetRegistryStats, GetService, InstanceKey, ListServices, REGISTRY_NAMESPACE, RegistryCommand,
    RegistryStats, Service, ServiceNode, Strategy,
};
use crate::metrics::{Metrics, MetricsRef};
use crate::raft::members::{MemberChange, MemberLog, Members};
use crate::raft::{NodeId, Payload};
use crate::snapshot::SnapshotMeta;
use crate::storage::{Recovered, StorageConfig};
use crate::tls::{Tls, TlsTransport};
use crate::transport::{TcpTransport, TransportRef};
use crate::wire::{Consistency, Request, Response, StatusInfo, Write, WriteReply};

/// Most snapshot bytes one `ReadSnapshot` answers.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;

/// The namespaces this node applies, with the actor answering each one's queries (if any).
type QueryRouter = Arc<Mutex<BTreeMap<String, Option<Recipient<Query>>>>>;

/// A running node.
pub struct Node {
    handle: NodeHandle,
    local_addr: SocketAddr,
    listener: Addr<Listener>,
    /// Last, so it is dropped last: the threads end after everything else let go.
    threads: NodeThreads,
}

/// Where a node's actors run.
///
/// `Split` (the default) is what keeps Raft's pace whatever the rest is doing: Raft
/// (`Election`, `Replicator`s, `LogStore`, `PeerLink`s, and the codec actors `Listener` and
/// `Connection`) on a thread of its own; the state machines (`DataMap`, `ServiceRegistry`,
/// `KeyWatch`) on another; the health probes on a third; wire clients' requests are served
/// on the thread that started the node, and the HTTP API on its own worker. `One` puts everything on the
/// starting thread: a simulation (turmoil), which sees no CPU time, collapses the seam.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Threads {
    /// Raft, state machines and client requests on threads of their own.
    #[default]
    Split,
    /// Everything on the thread that starts the node.
    One,
}

/// A thread a node's actors run on: the caller's, or an arbiter of the node's own.
#[derive(Clone)]
enum Place {
    Here,
    On(ArbiterHandle),
}

impl Place {
    /// Runs `make` (which starts actors) on this place's thread; resolves to what it built.
    async fn run<T, F, Fut>(&self, make: F) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        match self {
            Place::Here => Ok(make().await),
            Place::On(arbiter) => {
                let (tx, rx) = futures::channel::oneshot::channel();
                arbiter.spawn_fn(move || {
                    actix_rt::spawn(async move {
                        let _ = tx.send(make().await);
                    });
                });
                rx.await.map_err(|_| NodeError::Threads("a node thread stopped while starting".into()))
            }
        }
    }
}

/// The node's own threads; dropping this stops them and waits for them to end, so nothing
/// of the node (its log above all) outlives it: a node started again from the same directory
/// never shares it with the last one. Never drop it on one of these threads.
struct NodeThreads(Vec<Arbiter>);

impl NodeThreads {
    /// Starts a thread of the node's own, named `name` where the platform allows.
    fn start(&mut self, name: &'static str) -> Result<ArbiterHandle, NodeError> {
        if actix_rt::System::try_current().is_none() {
            return Err(NodeError::Threads(
                "Threads::Split needs an actix System; use Threads::One inside a bare LocalSet".into(),
            ));
        }
        let arbiter = Arbiter::try_new().map_err(|e| NodeError::Threads(format!("cannot start thread {name}: {e}")))?;
        arbiter.spawn_fn(move || {
            // So `top -H` and /proc tell the node's threads apart (Linux; elsewhere a no-op).
            let _ = std::fs::write("/proc/thread-self/comm", name);
            tracing::debug!(thread = name, "node thread started");
        });
        let handle = arbiter.handle();
        self.0.push(arbiter);
        Ok(handle)
    }
}

impl Drop for NodeThreads {
    fn drop(&mut self) {
        for t in &self.0 {
            t.stop();
        }
        for t in self.0.drain(..) {
            let _ = t.join();
        }
    }
}

/// Builds a node with a non-default transport, storage, threads or extra state machines.
pub struct NodeBuilder {
    config: Config,
    transport: TransportRef,
    storage: Option<StorageConfig>,
    threads: Threads,
    state_machines: Vec<(String, StateMachineRef, Option<Recipient<Query>>)>,
}

/// What the Raft thread hands back once its actors run.
struct RaftParts {
    handle: NodeHandle,
    local_addr: SocketAddr,
    listener: Addr<Listener>,
}

/// The configurations the recovered log holds, over the one this node starts from when its
/// log holds none: itself and `peers` for a founding node (the first leader logs it, so
/// every node, and any node added later, reads the same one from the log), nothing for a
/// node that waits to be added (`join`, or `bootstrap` off). Once a configuration is in the
/// log, `peers` is never read again.
fn recover_members(config: &Config, recovered: &Recovered, snapshot: Option<&SnapshotMeta>) -> MemberLog {
    // A snapshot's configuration was in effect at its last entry: the log after it changes it.
    let covered = snapshot.map(|s| s.last.index).unwrap_or(0);
    let logged: Vec<(u64, Members)> = recovered
        .entries
        .iter()
        .filter(|e| e.index > covered)
        .filter_map(|e| match &e.payload {
            Payload::Config(m) => Some((e.index, m.clone())),
            _ => None,
        })
        .collect();
    let base = if let Some(s) = snapshot {
        s.members.clone()
    } else if config.bootstrap && config.join.is_none() {
        let mut voters: BTreeMap<NodeId, String> = config.peers.iter().map(|p| (p.id, p.addr.clone())).collect();
        voters.insert(config.id, config.advertised().to_string());
        Members::of_voters(voters)
    } else {
        Members::default()
    };
    MemberLog::new(base, logged)
}

impl NodeBuilder {
    /// Sockets through `transport` instead of `tokio::net` (simulation, fault injection).
    pub fn transport(mut self, transport: TransportRef) -> Self {
        self.transport = transport;
        self
    }

    /// The log in `storage` instead of files under `data_dir`.
    pub fn storage(mut self, storage: StorageConfig) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Where the actors run (see [`Threads`]).
    pub fn threads(mut self, threads: Threads) -> Self {
        self.threads = threads;
        self
    }

    /// Adds a state machine for `namespace`: it receives that namespace's committed entries
    /// in order, hands over views of its state for snapshots, is restored from the newest
    /// snapshot at start (then given the entries after it) and, if `query` is given, answers
    /// queries.
    pub fn state_machine(
        mut self,
        namespace: impl Into<String>,
        machine: StateMachineRef,
        query: Option<Recipient<Query>>,
    ) -> Self {
        self.state_machines.push((namespace.into(), machine, query));
        self
    }

    /// Validates the config, recovers the log, binds the listener and starts the actors. The
    /// HTTP port is not the node's: start it with [`crate::api::serve`] (the binary does, at
    /// `config.http`).
    /// Must be called inside an actix system (or, with [`Threads::One`], a tokio `LocalSet`).
    pub async fn start(self) -> Result<Node, NodeError> {
        let config = self.config;
        config.validate()?;
        let storage = self.storage.unwrap_or_else(|| StorageConfig::Dir(config.data_dir.clone()));
        let metrics: MetricsRef = Arc::new(Metrics::new());
        let (mut backend, mut recovered) = storage.open(config.segment_bytes, Some(metrics.wal_fsync.clone()))?;
        let snapshot_store = storage.snapshots();
        let snapshot = snapshot_store.latest()?;
        let covered = snapshot.as_ref().map(|s| s.info.meta.last).unwrap_or_default();
        if recovered.base.index > covered.index {
            // The log starts after what any snapshot holds: entries are missing.
            let reason = format!(
                "the log starts after entry {} but the newest whole snapshot covers only {}",
                recovered.base.index, covered.index
            );
            return Err(StorageError::Corrupt { path: config.data_dir.clone(), offset: 0, reason }.into());
        }
        if covered.index > 0 && recovered.term_at(covered.index) != Some(covered.term) {
            // Entries were applied before this node's own copy of them was durable (a
            // heartbeat moved its commit index), so the log ends before the snapshot or still
            // holds an older term's entries there: it goes on from the snapshot.
            let reset = crate::storage::LogWrite::Reset(covered);
            let batch = crate::storage::WriteBatch::of(vec![reset.clone()]);
            backend.submit(batch).await.map_err(|_| StorageError::Closed)??;
            crate::storage::replay(&mut recovered, reset).map_err(|reason| StorageError::Corrupt {
                path: config.data_dir.clone(),
                offset: 0,
                reason,
            })?;
        }
        // Applied, so committed, whenever the commit index was last written.
        recovered.hard_state.commit = recovered.hard_state.commit.max(covered.index);
        // Only the log's tail is held in memory: what the snapshot covers, bar the entries
        // kept for followers that lag, goes (the segments holding it go at the next
        // compaction).
        let keep_from = covered.index.saturating_sub(config.snapshot_catchup_entries);
        if let Some(term) = recovered.term_at(keep_from) {
            recovered.compact_to(crate::raft::LogId::new(term, keep_from));
        }
        let snapshot_meta = snapshot.as_ref().map(|s| s.info.meta.clone());
        if config.force_new_cluster {
            force_new_cluster(&config, backend.as_mut(), &mut recovered, snapshot_meta.as_ref()).await?;
        }
        // A node that has anything in its log (or a snapshot) joined or founded its cluster.
        let fresh = recovered.entries.is_empty() && snapshot.is_none();
        let join = config.join.clone().filter(|_| fresh);
        let members = recover_members(&config, &recovered, snapshot_meta.as_ref());
        let tls = config.tls_files().map(Tls::load).transpose()?;
        let config = Arc::new(config);
        // Health probes go out as plain TCP through the transport given; peers' connections
        // run TLS over it when the node has TLS.
        let probes = self.transport;
        let transport: TransportRef = match &tls {
            Some(tls) => Arc::new(TlsTransport::new(probes.clone(), tls.clone())),
            None => probes.clone(),
        };

        // Owned from the start: if starting fails half way, dropping this ends whatever
        // began on them (a running Raft thread above all) before the error is returned.
        let mut threads = NodeThreads(Vec::new());
        let (raft, state, prober, clients) = match self.threads {
            Threads::One => (Place::Here, Place::Here, None, None),
            Threads::Split => {
                let raft = threads.start("dister-raft")?;
                let state = threads.start("dister-state")?;
                let checks = threads.start("dister-checks")?;
                (Place::On(raft), Place::On(state), Some(checks), Some(Arbiter::current()))
            }
        };

        // The state machines first: Raft's commit stream needs their addresses. The registry
        // learns `Election`'s address (to propose check outcomes) once it exists.
        let proposer = Proposer::default();
        let (data_map, registry, key_watch) = {
            let (config, proposer, probes) = (config.clone(), proposer.clone(), probes.clone());
            state
                .run(move || async move {
                    let mut registry = ServiceRegistry::new(config, proposer, probes);
                    if let Some(p) = prober {
                        registry = registry.with_prober(p);
                    }
                    let registry = registry.start();
                    (DataMap::new().start(), registry, KeyWatch::new().start())
                })
                .await?
        };
        let mut subscribers = BTreeMap::new();
        subscribers.insert(KV_NAMESPACE.to_string(), StateMachineRef::of(&data_map));
        subscribers.insert(REGISTRY_NAMESPACE.to_string(), StateMachineRef::of(&registry));
        let mut queries = BTreeMap::new();
        queries.insert(KV_NAMESPACE.to_string(), Some(data_map.clone().recipient()));
        queries.insert(REGISTRY_NAMESPACE.to_string(), Some(registry.clone().recipient()));
        for (ns, machine, query) in self.state_machines {
            subscribers.insert(ns.clone(), machine);
            queries.insert(ns, query);
        }
        let queries = Arc::new(Mutex::new(queries));

        let parts = {
            let (config, transport, metrics, tls) = (config.clone(), transport.clone(), metrics.clone(), tls.clone());
            raft.run(move || async move {
                let listener = transport
                    .bind(&config.listen)
                    .await
                    .map_err(|source| NodeError::Bind { addr: config.listen.clone(), source })?;
                let local_addr =
                    listener.local_addr().map_err(|source| NodeError::Bind { addr: config.listen.clone(), source })?;
                let hard_state = recovered.hard_state;
                let last_log = recovered.last();
                tracing::info!(
                    id = config.id,
                    %local_addr,
                    term = hard_state.term,
                    last_index = last_log.index,
                    commit = hard_state.commit,
                    "starting node"
                );
                // Election and LogStore address each other: create Election's context first.
                let election_ctx = Context::<Election>::new();
                let snapshots =
                    Snapshots::new(snapshot_store, snapshot, config.snapshot_entries, members.at(0).as_ref().clone())
                        .keeping(config.snapshot_catchup_entries);
                let log_store =
                    LogStore::new(backend, recovered, subscribers, election_ctx.address().recipient(), snapshots)
                        .start();
                // The view as of the recovered commit index, before Election starts.
                let mut committed = members.clone();
                committed.commit_to(hard_state.commit.min(last_log.index));
                let view = Arc::new(MemberView::new(committed.latest().clone(), committed.committed().clone()));
                let start = (hard_state, last_log, members);
                let election = election_ctx.run(Election::new(
                    config.clone(),
                    transport.clone(),
                    view.clone(),
                    start,
                    log_store.clone(),
                    metrics.clone(),
                ));
                let _ = proposer.set(election.clone().recipient());
                election.do_send(WatchLeadership(registry.clone().recipient()));
                log_store
                    .do_send(Follow { namespace: Some(KV_NAMESPACE.into()), recipient: key_watch.clone().recipient() });
                let listener_ctx = Context::<Listener>::new();
                let handle = NodeHandle {
                    config: config.clone(),
                    election,
                    log_store,
                    data_map,
                    registry,
                    key_watch,
                    listener: listener_ctx.address(),
                    queries,
                    clients,
                    admission: Admission::new(&config),
                    members: view,
                    metrics,
                    tls,
                };
                let listener_addr = listener_ctx.run(Listener::new(listener, handle.clone()));
                Ok::<_, NodeError>(RaftParts { handle, local_addr, listener: listener_addr })
            })
            .await??
        };
        let RaftParts { handle, local_addr, listener } = parts;
        if let Some(member) = join {
            // Peers reach this node where it listens (the port resolved if 0 was asked).
            let addr = match &config.advertise {
                Some(a) => a.clone(),
                None if config.listen.ends_with(":0") => local_addr.to_string(),
                None => config.listen.clone(),
            };
            actix_rt::spawn(join_cluster(config.clone(), transport.clone(), member, addr));
        }
        Ok(Node { handle, local_addr, listener, threads })
    }
}

/// Rewrites the cluster to this node alone: a configuration entry with it the only voter
/// (every other member removed, so none can come back with its old log), in a new term, and
/// the whole log committed: a lone voter's log is the cluster's.
async fn force_new_cluster(
    config: &Config,
    backend: &mut dyn crate::storage::LogBackend,
    recovered: &mut Recovered,
    snapshot: Option<&SnapshotMeta>,
) -> Result<(), NodeError> {
    use crate::raft::{Entry, HardState};
    use crate::storage::{LogWrite, WriteBatch};
    let members = recover_members(config, recovered, snapshot);
    let old = members.latest().clone();
    if old.voters.len() == 1 && old.is_voter(config.id) && old.learners.is_empty() {
        tracing::warn!(id = config.id, "force_new_cluster: this node is the only member already; nothing rewritten");
        return Ok(());
    }
    let mut alone = Members::of_voters([(config.id, config.advertised().to_string())]);
    alone.removed = old.removed.clone();
    alone.removed.extend(old.all().map(|(id, _, _)| id).filter(|&id| id != config.id));
    let last = recovered.last();
    let term = recovered.hard_state.term.max(last.term) + 1;
    let entry = Arc::new(Entry { term, index: last.index + 1, payload: Payload::Config(alone.clone()) });
    let hard_state = HardState { term, voted_for: None, commit: entry.index };
    let batch = WriteBatch::of(vec![LogWrite::Entry(entry.clone()), LogWrite::HardState(hard_state)]);
    backend.submit(batch).await.map_err(|_| NodeError::Threads("the log stopped while rewriting it".into()))??;
    tracing::warn!(
        id = config.id,
        term,
        index = entry.index,
        removed = ?alone.removed,
        "forced a new cluster: this node is its only voter"
    );
    recovered.entries.push(entry);
    recovered.hard_state = hard_state;
    Ok(())
}

/// Asks `member` (any member: a follower passes it on) to add this node as a voter, until it
/// has or says why it will not. The leader adds it as a learner and promotes it once it has
/// caught up; the log it then receives tells this node the members.
async fn join_cluster(config: Arc<Config>, transport: TransportRef, member: String, addr: String) {
    let change = MemberChange::Add { id: config.id, addr: addr.clone(), promote: true };
    let mut wait = std::time::Duration::from_millis(100);
    loop {
        let asked = async {
            let stream = transport.connect(&member).await.map_err(|e| e.to_string())?;
            let client = crate::client::Client::handshake(stream, &config.group, config.cluster_token.as_deref())
                .await
                .map_err(|e| e.to_string())?
                .with_timeout(config.request_timeout());
            match client.change_members(change.clone()).await {
                Ok(reply) => Ok(Ok(reply.index)),
                Err(crate::error::ClientError::Api(e)) if !e.is_retryable() => {
                    // An earlier ask that went unanswered (or a run before a crash) may have
                    // added this node already: then it has joined.
                    let status = client.status().await.map_err(|e| e.to_string())?;
                    match status.members.iter().find(|m| m.id == config.id && m.addr == addr) {
                        Some(_) => Ok(Ok(status.members_index)),
                        None => Ok(Err(e)),
                    }
                }
                Err(e) => Err(e.to_string()),
            }
        };
        match asked.await {
            Ok(Ok(index)) => {
                tracing::info!(id = config.id, %member, %addr, index, "joined the cluster; catching up");
                return;
            }
            Ok(Err(e)) => {
                tracing::error!(id = config.id, %member, error = %e, "the cluster refused to add this node");
                return;
            }
            Err(e) => tracing::warn!(id = config.id, %member, error = %e, "cannot join yet; retrying"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(2));
    }
}

impl Node {
    /// A builder with TCP transport, file storage under `config.data_dir`, split threads.
    pub fn builder(config: Config) -> NodeBuilder {
        NodeBuilder {
            config,
            transport: Arc::new(TcpTransport),
            storage: None,
            threads: Threads::default(),
            state_machines: Vec::new(),
        }
    }

    /// Starts a node with the defaults: TCP, files under `config.data_dir`.
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        Node::builder(config).start().await
    }

    /// The handle to talk to the node.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The address the node listens on (the port resolved if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The node's own threads (Raft, state machines), empty with [`Threads::One`]: a test
    /// can freeze them all to pause the node.
    pub fn threads(&self) -> Vec<ArbiterHandle> {
        self.threads.0.iter().map(Arbiter::handle).collect()
    }

    /// Stops accepting connections and closes links to peers. The actors wind down when the
    /// last handle is dropped; dropping the node ends its threads.
    pub fn stop(&self) {
        self.listener.do_send(StopListener);
        self.handle.election.do_send(StopPeerLinks);
    }
}

impl Drop for Node {
    /// Stops serving (listener, HTTP API, peer links); then its threads end and are waited
    /// for (see `NodeThreads`). Do not drop a `Node` on one of its own threads.
    fn drop(&mut self) {
        self.stop();
    }
}

/// The way into a running node: typed calls that send the right messages to its actors.
/// Cheap to clone and `Send`: a handle may be used from other threads (the HTTP workers); the
/// futures its calls return run on the caller's thread.
#[derive(Clone)]
pub struct NodeHandle {
    config: Arc<Config>,
    election: Addr<Election>,
    log_store: Addr<LogStore>,
    data_map: Addr<DataMap>,
    registry: Addr<ServiceRegistry>,
    key_watch: Addr<KeyWatch>,
    listener: Addr<Listener>,
    queries: QueryRouter,
    /// Where wire clients' requests are served (`None`: on the connection's own thread).
    clients: Option<ArbiterHandle>,
    /// The bounds on client work pending (see [`Admission`]).
    admission: Arc<Admission>,
    /// The configuration in effect, kept current by `Election`.
    members: Arc<MemberView>,
    /// The node's metrics.
    metrics: MetricsRef,
    /// The node's TLS, when it has it.
    tls: Option<Arc<Tls>>,
}

fn mailbox(e: MailboxError) -> ApiError {
    ApiError::Unavailable(format!("actor stopped: {e}"))
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
trait Command: serde::Serialize {
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

impl NodeHandle {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The configuration in effect on this node (the newest in its log).
    pub fn members(&self) -> Arc<Members> {
        self.members.get()
    }

    /// The newest configuration this node knows committed.
    pub fn committed_members(&self) -> Arc<Members> {
        self.members.committed()
    }

    /// Changes the membership (see [`MemberChange`]): on the leader, or passed on to it.
    /// Answers once the change is committed, with the index of its entry.
    pub fn change_members(&self, change: MemberChange) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.change_members_from(change, false)
    }

    fn change_members_from(
        &self,
        change: MemberChange,
        forwarded: bool,
    ) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        let fut = self.election.send(ChangeMembers { change, forwarded });
        async move { fut.await.map_err(mailbox)? }.boxed_local()
    }

    /// Hands leadership to `to` (or the most caught-up voter) and answers, once this leader
    /// has stepped down, the node it handed to; writes meanwhile wait. Through any member.
    pub fn transfer_leadership(&self, to: Option<NodeId>) -> LocalBoxFuture<'static, Result<NodeId, ApiError>> {
        let fut = self.election.send(TransferLeadership { to, forwarded: false });
        async move { fut.await.map_err(mailbox)? }.boxed_local()
    }

    /// Where wire clients' requests are served, when not on their connection's thread.
    pub fn clients(&self) -> Option<&ArbiterHandle> {
        self.clients.as_ref()
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The `Election` actor.
    pub fn election(&self) -> &Addr<Election> {
        &self.election
    }

    /// The `LogStore` actor (subscribe to the commit stream with `Subscribe`).
    pub fn log_store(&self) -> &Addr<LogStore> {
        &self.log_store
    }

    /// The `DataMap` actor.
    pub fn data_map(&self) -> &Addr<DataMap> {
        &self.data_map
    }

    /// The `ServiceRegistry` actor.
    pub fn registry(&self) -> &Addr<ServiceRegistry> {
        &self.registry
    }

    /// Adds a state machine while the node runs; it is brought up to date first (the
    /// snapshot's state for `namespace`, if any, then the entries committed after it).
    pub fn register_state_machine(&self, namespace: &str, machine: StateMachineRef, query: Option<Recipient<Query>>) {
        self.router().insert(namespace.to_string(), query);
        self.log_store.do_send(Subscribe { namespace: namespace.to_string(), machine });
    }

    fn router(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Option<Recipient<Query>>>> {
        self.queries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn knows(&self, namespace: &str) -> bool {
        self.router().contains_key(namespace)
    }

    /// `checked`: the command was validated already (built typed here, or validated by the
    /// follower that forwarded it), so its bytes are not decoded again.
    fn write_inner(
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
                Err(e) => return async move { Err(e) }.boxed_local(),
            }
        };
        let max = self.config.max_request_bytes;
        if write.data.len() + write.namespace.len() > max {
            let len = write.data.len();
            return async move {
                Err(ApiError::BadRequest(format!("write of {len} bytes is over max_request_bytes ({max})")))
            }
            .boxed_local();
        }
        // A place is held until the write is answered (`Election` holds it with the write):
        // past the bound, refused at once.
        let place = match self.admission.admit_write(write.data.len() + write.namespace.len()) {
            Ok(p) => p,
            Err(e) => return async move { Err(e) }.boxed_local(),
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

    /// A place for a read (or a beat), held by the caller until it is answered.
    fn admit_read(&self) -> Result<Admitted, ApiError> {
        self.admission.admit_read()
    }

    /// The node's metrics (see [`crate::metrics`]).
    pub fn metrics(&self) -> &MetricsRef {
        &self.metrics
    }

    /// The node's TLS, when it has it: [`Tls::reload`] reads its files again.
    pub fn tls(&self) -> Option<&Arc<Tls>> {
        self.tls.as_ref()
    }

    /// How this node reaches other nodes as a client: its group, the cluster token, and TLS
    /// with its own certificate when it has TLS.
    pub fn dial(&self) -> crate::client::Dial {
        crate::client::Dial::new(&self.config.group)
            .token(self.config.cluster_token.as_deref())
            .tls(self.tls.as_ref().map(|t| t.client()))
    }

    /// Client work pending on this node: writes, their bytes, reads.
    pub fn pending(&self) -> (usize, usize, usize) {
        self.admission.pending()
    }

    /// Replicates a command for the state machine owning `write.namespace`; answers once it
    /// is committed and applied, with the state machine's output.
    pub fn write(&self, write: Write) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.write_checked(write, false)
    }

    fn write_checked(&self, write: Write, checked: bool) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        // Only namespaces registered on this node are accepted, so a typo cannot put an
        // entry no state machine applies into the log. Extensions register on every node.
        if !self.knows(&write.namespace) {
            let ns = write.namespace;
            return async move { Err(ApiError::UnknownNamespace(ns)) }.boxed_local();
        }
        self.write_inner(write, false, checked)
    }

    /// Validates a built-in command as the typed value it is, encodes it (JSON) and writes
    /// it to `namespace`: decoded once, where it is applied, not again on the way.
    fn write_command<T: Command>(
        &self,
        namespace: &str,
        mut command: T,
    ) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        if let Err(e) = command.prepare(&self.config) {
            let e = ApiError::BadRequest(format!("{namespace} command: {e}"));
            return async move { Err(e) }.boxed_local();
        }
        match encode(&command) {
            Ok(data) => self.write_checked(Write { namespace: namespace.into(), data }, true),
            Err(e) => async move { Err(e) }.boxed_local(),
        }
    }

    /// Sets every pair in one entry.
    pub fn set(&self, pairs: Vec<(String, String)>) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.write_command(KV_NAMESPACE, KvCommand::Set(pairs))
    }

    /// Deletes every key in one entry; answers how many existed.
    pub fn delete(&self, keys: Vec<String>) -> LocalBoxFuture<'static, Result<usize, ApiError>> {
        let fut = self.write_command(KV_NAMESPACE, KvCommand::Delete(keys));
        async move {
            let reply = fut.await?;
            let out: KvOutput = serde_json::from_slice(&reply.output).map_err(|e| ApiError::Apply(e.to_string()))?;
            Ok(out.count)
        }
        .boxed_local()
    }

    /// The index a read must wait for: a ReadIndex for a linearizable read, 0 for a stale one.
    pub fn read_index(&self, consistency: Consistency) -> LocalBoxFuture<'static, Result<u64, ApiError>> {
        match consistency {
            Consistency::Stale => async { Ok(0) }.boxed_local(),
            Consistency::Linearizable => {
                let fut = self.election.send(GetReadIndex { forwarded: false });
                async move { fut.await.map_err(mailbox)? }.boxed_local()
            }
        }
    }

    /// Reads one key.
    pub fn get(
        &self,
        key: String,
        consistency: Consistency,
    ) -> LocalBoxFuture<'static, Result<Option<String>, ApiError>> {
        let place = match self.admit_read() {
            Ok(p) => p,
            Err(e) => return async move { Err(e) }.boxed_local(),
        };
        let index = self.read_index(consistency);
        let data_map = self.data_map.clone();
        async move {
            let _place = place;
            let min_applied = index.await?;
            data_map.send(GetKey { key, min_applied }).await.map_err(mailbox)
        }
        .boxed_local()
    }

    /// Reads `keys` from this node's copy once it has applied `min_applied` (no read index:
    /// the caller names the index, as a watch does).
    pub fn get_keys_at(
        &self,
        keys: Vec<String>,
        min_applied: u64,
    ) -> LocalBoxFuture<'static, Result<Vec<Option<String>>, ApiError>> {
        let reads: Vec<_> = keys.into_iter().map(|key| self.data_map.send(GetKey { key, min_applied })).collect();
        async move {
            let mut out = Vec::with_capacity(reads.len());
            for r in reads {
                out.push(r.await.map_err(mailbox)?);
            }
            Ok(out)
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
        let place = match self.admit_read() {
            Ok(p) => p,
            Err(e) => return async move { Err(e) }.boxed_local(),
        };
        let index = self.read_index(consistency);
        let data_map = self.data_map.clone();
        async move {
            let _place = place;
            let min_applied = index.await?;
            data_map.send(ListKeys { prefix, min_applied }).await.map_err(mailbox)
        }
        .boxed_local()
    }

    /// Asks the state machine owning `namespace`.
    pub fn query(
        &self,
        namespace: String,
        data: Bytes,
        consistency: Consistency,
    ) -> LocalBoxFuture<'static, Result<Bytes, ApiError>> {
        let Some(target) = self.router().get(&namespace).cloned().flatten() else {
            return async move { Err(ApiError::UnknownNamespace(namespace)) }.boxed_local();
        };
        let place = match self.admit_read() {
            Ok(p) => p,
            Err(e) => return async move { Err(e) }.boxed_local(),
        };
        let index = self.read_index(consistency);
        async move {
            let _place = place;
            let min_applied = index.await?;
            target.send(Query { data, min_applied }).await.map_err(mailbox)?
        }
        .boxed_local()
    }

    /// Creates or replaces services.
    pub fn set_services(&self, services: Vec<Service>) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.write_command(REGISTRY_NAMESPACE, RegistryCommand::Set(services))
    }

    /// Removes services by name.
    pub fn remove_services(&self, names: Vec<String>) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.write_command(REGISTRY_NAMESPACE, RegistryCommand::Remove(names))
    }

    /// Creates or updates one instance (and its service, if new).
    pub fn register_instance(
        &self,
        service: String,
        kind: String,
        node: ServiceNode,
    ) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.write_command(REGISTRY_NAMESPACE, RegistryCommand::Register { service, kind, node })
    }

    /// Creates a service (refused if it exists, with `create`) or updates its own fields,
    /// keeping its instances (refused if it does not exist, with `update`).
    pub fn define_service(
        &self,
        service: Service,
        create: bool,
        update: bool,
    ) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.write_command(REGISTRY_NAMESPACE, RegistryCommand::Define { service, create, update })
    }

    /// Removes a service that has no instance (refused otherwise).
    pub fn drop_service(&self, name: String) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.write_command(REGISTRY_NAMESPACE, RegistryCommand::Drop(name))
    }

    /// Removes one instance.
    pub fn deregister_instance(&self, key: InstanceKey) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.write_command(REGISTRY_NAMESPACE, RegistryCommand::Deregister(key))
    }

    /// One available instance of `name`, picked from this node's copy of the registry.
    pub fn balance(&self, name: String, strategy: Strategy) -> LocalBoxFuture<'static, Result<ServiceNode, ApiError>> {
        let fut = self.registry.send(Balance { name, strategy });
        async move { fut.await.map_err(mailbox)? }.boxed_local()
    }

    /// An instance says it is alive: the leader's registry records it (a follower passes it
    /// on, unless it was passed on already).
    pub fn beat(&self, key: InstanceKey, forwarded: bool) -> LocalBoxFuture<'static, Result<(), ApiError>> {
        let place = match self.admission.admit_beat() {
            Ok(p) => p,
            Err(e) => return async move { Err(e) }.boxed_local(),
        };
        let local = self.registry.send(Beat(key.clone()));
        let election = self.election.clone();
        async move {
            let _place = place;
            match local.await.map_err(mailbox)? {
                Err(ApiError::NotLeader { .. }) if !forwarded => {
                    match election
                        .send(ForwardToLeader(Request::Beat { key, forwarded: true }))
                        .await
                        .map_err(mailbox)?
                    {
                        Ok(Response::Done) => Ok(()),
                        Ok(other) => Err(ApiError::Unavailable(format!("unexpected answer to a beat: {other:?}"))),
                        Err(e) => Err(e),
                    }
                }
                other => other,
            }
        }
        .boxed_local()
    }

    /// How many services and instances this node's registry holds, and what its checks are
    /// doing (on the leader): counts only, nothing copied.
    pub fn registry_stats(&self) -> LocalBoxFuture<'static, Result<RegistryStats, ApiError>> {
        let fut = self.registry.send(GetRegistryStats);
        async move { fut.await.map_err(mailbox) }.boxed_local()
    }

    /// One service.
    pub fn get_service(
        &self,
        name: String,
        consistency: Consistency,
    ) -> LocalBoxFuture<'static, Result<Option<Service>, ApiError>> {
        let place = match self.admit_read() {
            Ok(p) => p,
            Err(e) => return async move { Err(e) }.boxed_local(),
        };
        let index = self.read_index(consistency);
        let registry = self.registry.clone();
        async move {
            let _place = place;
            let min_applied = index.await?;
            registry.send(GetService { name, min_applied }).await.map_err(mailbox)
        }
        .boxed_local()
    }

    /// Every service.
    pub fn list_services(&self, consistency: Consistency) -> LocalBoxFuture<'static, Result<Vec<Service>, ApiError>> {
        let place = match self.admit_read() {
            Ok(p) => p,
            Err(e) => return async move { Err(e) }.boxed_local(),
        };
        let index = self.read_index(consistency);
        let registry = self.registry.clone();
        async move {
            let _place = place;
            let min_applied = index.await?;
            registry.send(ListServices { min_applied }).await.map_err(mailbox)
        }
        .boxed_local()
    }

    /// This node's view of itself and the cluster.
    pub fn status(&self) -> LocalBoxFuture<'static, Result<StatusInfo, ApiError>> {
        let e = self.election.send(GetElectionStatus);
        let l = self.log_store.send(GetLogState);
        let r = self.listener.send(GetRefusals);
        let group = self.config.group.clone();
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

    /// Counts a connection refused after its handshake.
    pub fn count_refusal(&self, kind: crate::wire::RefusalKind) {
        self.listener.do_send(CountRefusal(kind));
    }

    /// Tells `Election` that `peer`'s connection to this node closed.
    pub fn peer_disconnected(&self, peer: NodeId) {
        self.election.do_send(PeerDisconnected { peer });
    }

    /// Serves one wire request. `peer` is the configured peer the connection authenticated
    /// as, if any; the caller has already refused peer-only requests from clients.
    pub fn dispatch(&self, request: Request, peer: Option<NodeId>) -> LocalBoxFuture<'static, Response> {
        fn answer<T>(r: Result<T, ApiError>, ok: impl FnOnce(T) -> Response) -> Response {
            r.map(ok).unwrap_or_else(Response::Error)
        }
        match request {
            Request::AppendEntries(r) => {
                let fut = self.election.send(AppendEntries(r));
                async move { answer(fut.await.map_err(mailbox), Response::AppendEntries) }.boxed_local()
            }
            Request::InstallSnapshot(r) => {
                let fut = self.election.send(InstallSnapshot(r));
                async move { answer(fut.await.map_err(mailbox), Response::InstallSnapshot) }.boxed_local()
            }
            Request::Vote(r) => {
                let fut = self.election.send(RequestVote(r));
                async move { answer(fut.await.map_err(mailbox), Response::Vote) }.boxed_local()
            }
            Request::ReadIndex => {
                let fut = self.election.send(GetReadIndex { forwarded: peer.is_some() });
                async move { answer(fut.await.map_err(mailbox).and_then(|r| r), Response::ReadIndex) }.boxed_local()
            }
            Request::Forward(w) => {
                // The follower that forwarded it (a member) validated it.
                let fut = if self.knows(&w.namespace) {
                    self.write_inner(w, true, true)
                } else {
                    let ns = w.namespace;
                    async move { Err(ApiError::UnknownNamespace(ns)) }.boxed_local()
                };
                async move { answer(fut.await, Response::Written) }.boxed_local()
            }
            Request::Write(w) => {
                let fut = self.write(w);
                async move { answer(fut.await, Response::Written) }.boxed_local()
            }
            Request::Get { key, consistency } => {
                let fut = self.get(key, consistency);
                async move { answer(fut.await, Response::Value) }.boxed_local()
            }
            Request::List { prefix, consistency } => {
                let fut = self.list(prefix, consistency);
                async move { answer(fut.await, Response::Pairs) }.boxed_local()
            }
            Request::Query { namespace, data, consistency } => {
                let fut = self.query(namespace, data, consistency);
                async move { answer(fut.await, Response::QueryReply) }.boxed_local()
            }
            Request::Beat { key, forwarded } => {
                let fut = self.beat(key, forwarded);
                async move { answer(fut.await, |()| Response::Done) }.boxed_local()
            }
            Request::Status => {
                let fut = self.status();
                async move { answer(fut.await, |s| Response::Status(Box::new(s))) }.boxed_local()
            }
            Request::TimeoutNow { term } => {
                // Peer-only (the connection checked): `peer` is the leader handing over.
                if let Some(from) = peer {
                    self.election.do_send(TimeoutNow { from, term });
                }
                async { Response::Done }.boxed_local()
            }
            Request::TransferLeadership { to } => {
                let fut = self.election.send(TransferLeadership { to, forwarded: peer.is_some() });
                async move { answer(fut.await.map_err(mailbox).and_then(|r| r), Response::HandedTo) }.boxed_local()
            }
            Request::ChangeMembers { change, forwarded } => {
                // Only a peer may say it passed the change on already.
                let fut = self.change_members_from(change, forwarded && peer.is_some());
                async move { answer(fut.await, Response::Written) }.boxed_local()
            }
            Request::TakeSnapshot => {
                let fut = self.log_store.send(SnapshotNow);
                async move {
                    let r = fut.await.map_err(mailbox).and_then(|r| r);
                    answer(r, |s| Response::Snapshot { last: s.last, bytes: s.bytes })
                }
                .boxed_local()
            }
            Request::ReadSnapshot { last, offset, max } => {
                // A chunk at a time, so neither side holds more than one in memory.
                let max = (max as usize).min(SNAPSHOT_CHUNK);
                let fut = self.log_store.send(ReadSnapshotBytes { last, offset, max });
                async move { answer(fut.await.map_err(mailbox).and_then(|r| r), Response::SnapshotBytes) }.boxed_local()
            }
        }
    }
}
