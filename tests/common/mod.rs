//! The in-process cluster fixture: N nodes on 127.0.0.1 with free ports, each in its own
//! thread and actix system (so stopping one drops all of its actors and sockets at once, as a
//! crash would), logs under a temporary directory that outlives restarts.

#![allow(dead_code)]

pub mod certs;
pub mod core_io;
pub mod db;
pub mod faults;
pub mod procs;
pub mod sim;

use std::path::PathBuf;
use std::sync::Once;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::sync::Arc;

use dister::wire::StatusInfo;
use dister::{Client, Config, Node, NodeBuilder, PeerConfig};

/// Adds state machines to a node's builder; runs inside the node's own actix system.
pub type Extend = Arc<dyn Fn(NodeBuilder) -> NodeBuilder + Send + Sync>;

/// Initialises tracing once per test process (RUST_LOG respected, default warnings only).
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// Runs the project's setup script `script` (a path under the repository) once per test
/// process, through `once`; the scripts keep what is installed already. `needs` says what the
/// script installs, for the failure message.
pub fn setup_once(once: &'static Once, script: &str, needs: &str) {
    once.call_once(|| {
        let path = format!("{}/{script}", env!("CARGO_MANIFEST_DIR"));
        let ok = std::process::Command::new(&path).status().is_ok_and(|s| s.success());
        assert!(ok, "{script} failed: it needs {needs}");
    });
}

/// A port nothing listens on right now, handed out once per test process. Ports come from
/// below the kernel's ephemeral range (32768 and up here), so an outgoing connection of some
/// other test cannot take one between this check and the node's own bind; a per-process
/// counter keeps one process from being handed the same one twice. Each process starts its
/// counter at a place of its own, `STRIDE` ports from the next pid's: nextest runs every test
/// in a process of its own, with consecutive pids, and starts one port apart made neighbours
/// hand out the same ports (a node then failed to bind).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const LOW: u16 = 10_000;
    const SPAN: u16 = 22_000;
    const STRIDE: u64 = 211;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        LOW + ((u64::from(std::process::id()) * STRIDE) % u64::from(SPAN)) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = LOW + (NEXT.fetch_add(1, Ordering::SeqCst) - LOW) % SPAN;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN)
}

struct Running {
    system: actix_rt::System,
    /// The node's own threads (Raft, state machines), beside the system's.
    threads: Vec<actix_rt::ArbiterHandle>,
    thread: JoinHandle<()>,
}

/// A cluster of in-process nodes.
pub struct Cluster {
    /// The nodes' configs (index i is node id i + 1).
    pub configs: Vec<Config>,
    running: Vec<Option<Running>>,
    extend: Option<Extend>,
    /// The fault layer, when the cluster was started with one.
    pub faults: Option<Arc<faults::Faults>>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes with default timing.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |_| {})
    }

    /// Starts `n` nodes, letting `tweak` adjust each config.
    pub fn start_with(n: usize, tweak: impl Fn(&mut Config)) -> Cluster {
        Cluster::start_extended(n, tweak, None)
    }

    /// Starts `n` nodes, each built through `extend` (to add state machines).
    pub fn start_extended(n: usize, tweak: impl Fn(&mut Config), extend: Option<Extend>) -> Cluster {
        Cluster::build(n, tweak, extend, None)
    }

    /// Starts `n` nodes whose sockets go through the fault layer (no faults until asked).
    pub fn start_faulty(n: usize, tweak: impl Fn(&mut Config)) -> Cluster {
        Cluster::build(n, tweak, None, Some(faults::Faults::new(0x5eed)))
    }

    fn build(
        n: usize,
        tweak: impl Fn(&mut Config),
        extend: Option<Extend>,
        faults: Option<Arc<faults::Faults>>,
    ) -> Cluster {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let addrs: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let configs: Vec<Config> = (0..n)
            .map(|i| {
                let mut c = Config {
                    id: i as u64 + 1,
                    listen: addrs[i].clone(),
                    data_dir: dir.path().join(format!("node{}", i + 1)),
                    peers: (0..n)
                        .filter(|&j| j != i)
                        .map(|j| PeerConfig { id: j as u64 + 1, addr: addrs[j].clone() })
                        .collect(),
                    ..Config::default()
                };
                tweak(&mut c);
                c
            })
            .collect();
        let mut cluster = Cluster { running: (0..n).map(|_| None).collect(), configs, extend, faults, _dir: dir };
        for i in 0..n {
            cluster.start_node(i);
        }
        cluster
    }

    /// Starts one more node, `id` the next one, on an empty data directory, with no peers
    /// and no bootstrap: it waits to be added (`tweak` may set `join` instead). Returns its
    /// index.
    pub fn add_node(&mut self, tweak: impl Fn(&mut Config)) -> usize {
        let i = self.configs.len();
        let mut c = Config {
            id: i as u64 + 1,
            listen: format!("127.0.0.1:{}", free_port()),
            data_dir: self._dir.path().join(format!("node{}", i + 1)),
            bootstrap: false,
            ..self.configs[0].clone()
        };
        c.peers.clear();
        tweak(&mut c);
        self.configs.push(c);
        self.running.push(None);
        self.start_node(i);
        i
    }

    /// The fault layer (the cluster must have been started with `start_faulty`).
    pub fn faults(&self) -> &faults::Faults {
        self.faults.as_deref().expect("cluster started without the fault layer")
    }

    /// Node ids, 1-based.
    pub fn ids(&self) -> Vec<u64> {
        self.configs.iter().map(|c| c.id).collect()
    }

    /// Freezes node `i`'s whole actor system (all its threads) for `d`, as SIGSTOP would;
    /// its storage thread and sockets stay, and it resumes where it was.
    pub fn pause(&self, i: usize, d: Duration) {
        if let Some(r) = &self.running[i] {
            r.system.arbiter().spawn_fn(move || std::thread::sleep(d));
            for t in &r.threads {
                t.spawn_fn(move || std::thread::sleep(d));
            }
        }
    }

    /// The client address of node `i` (0-based).
    pub fn addr(&self, i: usize) -> String {
        self.configs[i].listen.clone()
    }

    /// The data directory of node `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.configs[i].data_dir.clone()
    }

    /// Starts node `i` from its data directory in its own thread and actix system.
    pub fn start_node(&mut self, i: usize) {
        assert!(self.running[i].is_none(), "node {} already running", i + 1);
        let config = self.configs[i].clone();
        let extend = self.extend.clone();
        let faults = self.faults.clone();
        let nodes: std::collections::BTreeMap<String, u64> =
            self.configs.iter().map(|c| (c.listen.clone(), c.id)).collect();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("node{}", config.id))
            .spawn(move || {
                let sys = actix_rt::System::new();
                let started = sys.block_on(async move {
                    let me = config.id;
                    let http = config.http.clone();
                    let mut builder = Node::builder(config);
                    if let Some(faults) = faults {
                        builder = builder.transport(std::sync::Arc::new(faults::FaultyTransport { me, nodes, faults }));
                    }
                    if let Some(extend) = extend {
                        builder = extend(builder);
                    }
                    let node = builder.start().await.map_err(|e| e.to_string())?;
                    // The HTTP port, as the binary serves it.
                    let api = match http {
                        Some(addr) => Some(dister::api::serve(node.handle(), &addr).map_err(|e| e.to_string())?),
                        None => None,
                    };
                    Ok::<_, String>((node, api, actix_rt::System::current()))
                });
                match started {
                    Ok((node, api, system)) => {
                        let _ = tx.send(Ok((system, node.threads())));
                        let _ = sys.run();
                        drop(api);
                        drop(node);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
            .expect("spawn node thread");
        let (system, threads) =
            rx.recv().expect("node thread answered").unwrap_or_else(|e| panic!("node {} failed to start: {e}", i + 1));
        self.running[i] = Some(Running { system, threads, thread });
    }

    /// Stops node `i`: its whole actor system, sockets included, as a crash would end them.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(r) = self.running[i].take() {
            r.system.stop();
            let _ = r.thread.join();
        }
    }

    /// Stops and starts node `i` again from its data directory.
    pub fn restart_node(&mut self, i: usize) {
        self.stop_node(i);
        self.start_node(i);
    }

    /// Whether node `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.running[i].is_some()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.configs.len()
    }

    /// Connects to node `i` as a client, with the cluster's group and token.
    pub async fn connect(&self, i: usize) -> Result<Client, dister::ClientError> {
        let c = &self.configs[i];
        Client::connect_with_token(&c.listen, &c.group, c.cluster_token.as_deref()).await
    }

    /// A client of node `i`.
    pub async fn client(&self, i: usize) -> Client {
        self.connect(i).await.expect("connect").with_timeout(Duration::from_secs(10))
    }

    /// The status of node `i`, if it answers.
    pub async fn status(&self, i: usize) -> Option<StatusInfo> {
        let c = self.connect(i).await.ok()?.with_timeout(Duration::from_secs(2));
        c.status().await.ok()
    }

    /// Waits until exactly one running node is leader in the highest term seen and every
    /// running node agrees on it; returns its index.
    pub async fn wait_leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let mut statuses = Vec::new();
            for i in 0..self.len() {
                if self.is_running(i)
                    && let Some(s) = self.status(i).await
                {
                    statuses.push((i, s));
                }
            }
            let leaders: Vec<_> = statuses.iter().filter(|(_, s)| s.role == dister::raft::Role::Leader).collect();
            if let Some((li, ls)) = leaders.iter().max_by_key(|(_, s)| s.term) {
                let agreed = statuses.iter().all(|(_, s)| s.leader == Some(ls.id) && s.term == ls.term);
                if agreed {
                    return *li;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader within {within:?}: {statuses:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running node's local (stale) copy of the map equals `expected`.
    pub async fn wait_converged(&self, expected: &[(String, String)], within: Duration) {
        let deadline = Instant::now() + within;
        for i in 0..self.len() {
            if !self.is_running(i) {
                continue;
            }
            loop {
                let got = match self.connect(i).await {
                    Ok(c) => c.list("", dister::Consistency::Stale).await.ok(),
                    Err(_) => None,
                };
                if got.as_deref() == Some(expected) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} did not converge within {within:?}: has {} pairs, want {}",
                    i + 1,
                    got.map(|g| g.len()).unwrap_or(0),
                    expected.len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.running.len() {
            self.stop_node(i);
        }
    }
}

/// Retries `op` while it fails with a retryable error (no leader yet, leader changing), up to
/// `within`.
pub async fn retry<T, F, Fut>(within: Duration, mut op: F) -> Result<T, dister::ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, dister::ClientError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match op().await {
            Err(dister::ClientError::Api(e)) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}
