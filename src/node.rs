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

use crate::actors::data_map::DataMap;
use crate::actors::election::{Election, MemberView};
use crate::actors::key_watch::KeyWatch;
use crate::actors::listener::Listener;
use crate::actors::log_store::{LogStore, Snapshots};
use crate::actors::service_registry::{Proposer, ServiceRegistry};
use crate::admission::Admission;
use crate::config::Config;
use crate::error::{NodeError, StorageError};
use crate::handle::{ClusterHandle, Core, KvHandle, RegistryHandle, WireRouter};
use crate::messages::apply::{Follow, Query, StateMachineRef};
use crate::messages::client::{StopListener, StopPeerLinks};
use crate::messages::kv::KV_NAMESPACE;
use crate::messages::raft::WatchLeadership;
use crate::messages::registry::REGISTRY_NAMESPACE;
use crate::metrics::{Metrics, MetricsRef};
use crate::raft::members::{MemberChange, MemberLog, Members};
use crate::raft::{NodeId, Payload};
use crate::snapshot::SnapshotMeta;
use crate::storage::{Recovered, StorageConfig};
use crate::tls::{Tls, TlsTransport};
use crate::transport::{TcpTransport, TransportRef};

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
        let (data_map, registry, key_watch, pairs, services) = {
            let (config, proposer, probes) = (config.clone(), proposer.clone(), probes.clone());
            state
                .run(move || async move {
                    let mut registry = ServiceRegistry::new(config, proposer, probes);
                    if let Some(p) = prober {
                        registry = registry.with_prober(p);
                    }
                    let (data_map, services) = (DataMap::new(), registry.reader());
                    let pairs = data_map.reader();
                    let (data_map, registry) = (data_map.start(), registry.start());
                    let pairs = pairs.poking(data_map.clone().recipient());
                    let services = services.poking(registry.clone().recipient());
                    (data_map, registry, KeyWatch::new().start(), pairs, services)
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
                let election = Election::new(
                    config.clone(),
                    transport.clone(),
                    view.clone(),
                    start,
                    log_store.clone(),
                    metrics.clone(),
                );
                let lease = election.lease();
                let election = election_ctx.run(election);
                let _ = proposer.set(election.clone().recipient());
                election.do_send(WatchLeadership(registry.clone().recipient()));
                log_store
                    .do_send(Follow { namespace: Some(KV_NAMESPACE.into()), recipient: key_watch.clone().recipient() });
                let listener_ctx = Context::<Listener>::new();
                let core = Arc::new(Core {
                    config: config.clone(),
                    election,
                    log_store,
                    queries,
                    admission: Admission::new(&config),
                    members: view,
                    metrics,
                    tls,
                    lease,
                    read_indexes: Arc::default(),
                });
                let kv = KvHandle { core: core.clone(), data_map, key_watch, pairs };
                let registry = RegistryHandle { core: core.clone(), registry, services };
                let cluster = ClusterHandle { core, refusals: listener_ctx.address().recipient() };
                let router = WireRouter {
                    kv: kv.clone(),
                    registry: registry.clone(),
                    cluster: cluster.clone(),
                    clients,
                    refusals: listener_ctx.address().recipient(),
                };
                let handle = NodeHandle { kv, registry, cluster };
                let listener_addr = listener_ctx.run(Listener::new(listener, router));
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
            // TCP and, with TLS, its handshake: a member that accepts and never answers must
            // not hold the join forever.
            let stream = tokio::time::timeout(config.handshake_timeout(), transport.connect(&member))
                .await
                .map_err(|_| "no connection within the handshake timeout".to_string())?
                .map_err(|e| e.to_string())?;
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
        self.handle.cluster.election().do_send(StopPeerLinks);
    }
}

impl Drop for Node {
    /// Stops serving (listener, HTTP API, peer links); then its threads end and are waited
    /// for (see `NodeThreads`). Do not drop a `Node` on one of its own threads.
    fn drop(&mut self) {
        self.stop();
    }
}

/// The way into a running node, by concern: [`NodeHandle::kv`], [`NodeHandle::registry`],
/// [`NodeHandle::cluster`] (see [`crate::handle`]). Cheap to clone and `Send`.
#[derive(Clone)]
pub struct NodeHandle {
    kv: KvHandle,
    registry: RegistryHandle,
    cluster: ClusterHandle,
}

impl NodeHandle {
    /// Keys and their watches.
    pub fn kv(&self) -> &KvHandle {
        &self.kv
    }

    /// Services, instances, beats and balancing.
    pub fn registry(&self) -> &RegistryHandle {
        &self.registry
    }

    /// Members, leadership, status, and any state machine by namespace.
    pub fn cluster(&self) -> &ClusterHandle {
        &self.cluster
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        self.cluster.config()
    }
}
