//! What the simulated suites share: turmoil's network behind the transport seam, the names
//! of the three simulated hosts, and the nemesis that breaks them.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use dister::messages::apply::{ApplyEntries, Follow};
use dister::messages::raft::{LeadershipChanged, WatchLeadership};
use dister::messages::registry::{InstanceKey, REGISTRY_NAMESPACE, RegistryCommand};
use dister::node::Threads;
use dister::raft::Payload;
use dister::storage::{MemoryStorage, StorageConfig};
use dister::transport::{BoxStream, Listener, Transport};
use dister::{Config, Node};
use futures::future::LocalBoxFuture;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The simulated hosts, node ids 1..=3 in this order.
pub const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// Sockets through turmoil's simulated network.
pub struct SimTransport;
struct SimListener(turmoil::net::TcpListener);

impl Listener for SimListener {
    fn accept(&mut self) -> LocalBoxFuture<'_, std::io::Result<(BoxStream, std::net::SocketAddr)>> {
        Box::pin(async move {
            let (s, a) = self.0.accept().await?;
            Ok((Box::new(s) as BoxStream, a))
        })
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.local_addr()
    }
}

impl Transport for SimTransport {
    fn bind(&self, addr: &str) -> LocalBoxFuture<'static, std::io::Result<Box<dyn Listener>>> {
        let addr = addr.to_string();
        Box::pin(async move {
            Ok(Box::new(SimListener(turmoil::net::TcpListener::bind(addr.as_str()).await?)) as Box<dyn Listener>)
        })
    }

    fn connect(&self, addr: &str) -> LocalBoxFuture<'static, std::io::Result<BoxStream>> {
        let addr = addr.to_string();
        // Simulated hosts are reached by name. An address is an instance a health check
        // probes, where nothing listens: refused after a network tick. (turmoil itself
        // would keep the socket of every refused connect, and run out of ports.)
        if addr.parse::<std::net::SocketAddr>().is_ok() {
            return Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, addr))
            });
        }
        Box::pin(async move { Ok(Box::new(turmoil::net::TcpStream::connect(addr.as_str()).await?) as BoxStream) })
    }
}

/// Every unordered pair of nodes.
fn pairs() -> impl Iterator<Item = (&'static str, &'static str)> {
    NODES.iter().enumerate().flat_map(|(i, a)| NODES[i + 1..].iter().map(move |b| (*a, *b)))
}

/// Every node but `n`.
fn others(n: usize) -> impl Iterator<Item = &'static str> {
    NODES.iter().enumerate().filter(move |(i, _)| *i != n).map(|(_, o)| *o)
}

/// One fault the nemesis injects.
#[derive(Debug, Clone)]
pub enum Fault {
    /// One node cut off from the other two (for a leader: the isolated-leader case).
    Isolate(usize),
    /// Two nodes cannot talk; both still reach the third (a bridge).
    Bridge(usize, usize),
    /// Messages from one node to another are lost, the reverse still flows.
    OneWay(usize, usize),
    /// Every link slow.
    Delay(Duration),
    /// Links randomly break and repair.
    Lossy(f64),
    /// One node's links are held (its messages wait), then released all at once.
    Pause(usize),
    /// One node crashes, losing un-synced writes, and restarts later.
    Crash(usize),
    /// The whole cluster crashes at once and restarts.
    CrashAll,
}

/// Injects seeded faults between simulation steps, one at a time, each healed before the next.
pub struct Nemesis {
    rng: StdRng,
    /// The fault in force, if any.
    pub active: Option<Fault>,
    next_at: Duration,
    until: Duration,
    /// What was done when, for the failure message and the run's digest.
    pub log: Vec<String>,
}

impl Nemesis {
    /// A nemesis for `seed` that starts faults until `until` (simulated).
    pub fn new(seed: u64, until: Duration) -> Self {
        Nemesis {
            rng: StdRng::seed_from_u64(seed ^ 0x0E3E_5155),
            active: None,
            next_at: Duration::from_secs(1),
            until,
            log: Vec::new(),
        }
    }

    fn pick(&mut self, leader: Option<usize>) -> Fault {
        let a = self.rng.random_range(0..NODES.len());
        let b = (a + self.rng.random_range(1..NODES.len())) % NODES.len();
        match self.rng.random_range(0..9) {
            0 => Fault::Isolate(leader.unwrap_or(a)),
            1 => Fault::Isolate(a),
            2 => Fault::Bridge(a, b),
            3 => Fault::OneWay(leader.unwrap_or(a), b),
            4 => Fault::Delay(Duration::from_millis(self.rng.random_range(20..120))),
            5 => Fault::Lossy(self.rng.random_range(0.02..0.15)),
            6 => Fault::Pause(leader.unwrap_or(a)),
            7 => Fault::Crash(leader.unwrap_or(a)),
            _ if self.rng.random_bool(0.3) => Fault::CrashAll,
            _ => Fault::Crash(a),
        }
    }

    fn apply(&mut self, sim: &mut turmoil::Sim<'_>, fault: &Fault) {
        match *fault {
            Fault::Isolate(n) => others(n).for_each(|o| sim.partition(NODES[n], o)),
            Fault::Bridge(a, b) => sim.partition(NODES[a], NODES[b]),
            Fault::OneWay(a, b) => sim.partition_oneway(NODES[a], NODES[b]),
            Fault::Delay(d) => pairs().for_each(|(a, b)| sim.set_link_latency(a, b, d)),
            Fault::Lossy(p) => pairs().for_each(|(a, b)| sim.set_link_fail_rate(a, b, p)),
            Fault::Pause(n) => others(n).for_each(|o| sim.hold(NODES[n], o)),
            Fault::Crash(n) => sim.crash(NODES[n]),
            Fault::CrashAll => NODES.iter().for_each(|n| sim.crash(*n)),
        }
    }

    /// Ends `fault`: links repaired, crashed nodes restarted.
    pub fn heal(&mut self, sim: &mut turmoil::Sim<'_>, fault: &Fault) {
        for (a, b) in pairs() {
            for (x, y) in [(a, b), (b, a)] {
                sim.repair(x, y);
                sim.release(x, y);
            }
            sim.set_link_latency(a, b, Duration::from_millis(1));
            sim.set_link_fail_rate(a, b, 0.0);
        }
        match *fault {
            Fault::Crash(n) => sim.bounce(NODES[n]),
            Fault::CrashAll => NODES.iter().for_each(|n| sim.bounce(*n)),
            _ => {}
        }
    }

    /// Called between simulation steps: starts or ends a fault when its time comes.
    /// Runs `sim` to its end, starting and ending faults between steps when `active` (aimed
    /// at the latest leader `records` know of).
    pub fn run(&mut self, sim: &mut turmoil::Sim<'_>, records: &Shared, active: bool) -> Result<(), String> {
        loop {
            if active {
                let leader = {
                    let r = records.lock().unwrap();
                    r.leaders.iter().next_back().and_then(|(_, l)| l.iter().next()).map(|&n| n as usize - 1)
                };
                self.tick(sim, leader);
            }
            match sim.step() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(format!("simulation failed: {e}\nfaults:\n{}", self.log.join("\n"))),
            }
        }
    }

    fn tick(&mut self, sim: &mut turmoil::Sim<'_>, leader: Option<usize>) {
        let now = sim.elapsed();
        if now < self.next_at {
            return;
        }
        if let Some(f) = self.active.take() {
            self.heal(sim, &f);
            self.log.push(format!("{:>6} ms heal {f:?}", now.as_millis()));
            self.next_at = now + Duration::from_millis(self.rng.random_range(300..1_500));
        } else if now < self.until {
            let f = self.pick(leader);
            self.apply(sim, &f);
            self.log.push(format!("{:>6} ms {f:?}", now.as_millis()));
            self.active = Some(f);
            self.next_at = now + Duration::from_millis(self.rng.random_range(300..2_000));
        }
    }
}

// ---- what the nodes themselves report --------------------------------------------------------

/// A digest of one entry's payload (`namespace:data`; blanks are `blank`), the same on every
/// run: what the commit streams are compared by.
pub fn digest(namespace: &str, data: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    namespace.hash(&mut h);
    data.hash(&mut h);
    h.finish()
}

/// Records from the nodes' own commit streams and leadership events.
#[derive(Default, Debug)]
pub struct Records {
    /// Every (term, leader) a node announced.
    pub leaders: BTreeMap<u64, BTreeSet<u64>>,
    /// How many times a leader stepped down.
    pub step_downs: usize,
    /// Per node, what it applied at each index: (term, payload digest).
    pub applied: BTreeMap<u64, BTreeMap<u64, (u64, u64)>>,
    /// Every instance a committed `Register` named, on any node.
    pub registered: BTreeSet<InstanceKey>,
    /// Safety violations seen as they happened.
    pub violations: Vec<String>,
}

impl Records {
    /// State Machine Safety across nodes: no two nodes applied different entries at one
    /// index. Answers the entry at each index.
    pub fn one_entry_per_index(&self) -> Result<BTreeMap<u64, (u64, u64)>, String> {
        let mut by_index: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for (node, applied) in &self.applied {
            for (index, entry) in applied {
                if let Some(other) = by_index.insert(*index, *entry)
                    && other != *entry
                {
                    return Err(format!("index {index}: node {node} applied {entry:?}, another node {other:?}"));
                }
            }
        }
        Ok(by_index)
    }
}

/// Records shared by every node's recorder.
pub type Shared = Arc<Mutex<Records>>;

/// Follows one node's commit stream (every entry) and its leadership events.
pub struct Recorder {
    /// The node's id.
    pub node: u64,
    /// Where to record.
    pub records: Shared,
}

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<ApplyEntries> for Recorder {
    type Result = Vec<Result<Bytes, String>>;

    fn handle(&mut self, msg: ApplyEntries, _: &mut Context<Self>) -> Self::Result {
        let mut r = self.records.lock().unwrap();
        for e in &msg.entries {
            let d = match &e.payload {
                Payload::Blank => digest("blank", &[]),
                Payload::Config(m) => digest("config", format!("{m:?}").as_bytes()),
                Payload::Command { namespace, data } => {
                    if namespace == REGISTRY_NAMESPACE
                        && let Ok(RegistryCommand::Register { service, node, .. }) = serde_json::from_slice(data)
                    {
                        r.registered.insert(node.key(&service));
                    }
                    digest(namespace, data)
                }
            };
            let mine = r.applied.entry(self.node).or_default();
            match mine.get(&e.index) {
                Some(seen) if *seen != (e.term, d) => {
                    let v = format!(
                        "node {} applied {:?} and then {:?} at index {}",
                        self.node,
                        seen,
                        (e.term, d),
                        e.index
                    );
                    r.violations.push(v);
                }
                _ => {
                    mine.insert(e.index, (e.term, d));
                }
            }
        }
        Vec::new()
    }
}

impl Handler<LeadershipChanged> for Recorder {
    type Result = ();

    fn handle(&mut self, msg: LeadershipChanged, _: &mut Context<Self>) {
        let mut r = self.records.lock().unwrap();
        if !msg.is_leader {
            r.step_downs += 1;
            return;
        }
        let leaders = r.leaders.entry(msg.term).or_default();
        leaders.insert(msg.node);
        if leaders.len() > 1 {
            let v = format!("two leaders in term {}: {:?}", msg.term, leaders);
            r.violations.push(v);
        }
    }
}

// ---- the cluster -----------------------------------------------------------------------------

/// A simulation as the suites run it: seeded, 0-2 ms per message, `secs` at most.
pub fn simulation(seed: u64, secs: u64) -> turmoil::Sim<'static> {
    turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(secs))
        .min_message_latency(Duration::from_millis(0))
        .max_message_latency(Duration::from_millis(2))
        .tcp_capacity(4096)
        .build()
}

/// Hosts the three nodes in `sim`, node `i` with `config(i)`, each log in memory reaching
/// "disk" 1 ms after it is submitted (a crash loses the rest), each followed by a
/// [`Recorder`] writing to `records`.
pub fn host_nodes(sim: &mut turmoil::Sim<'_>, config: fn(usize, u64) -> Config, seed: u64, records: &Shared) {
    for (i, name) in NODES.iter().enumerate() {
        let storage = MemoryStorage::with_sync_delay(Duration::from_millis(1));
        let records = records.clone();
        sim.host(*name, move || {
            let (storage, records) = (storage.clone(), records.clone());
            async move {
                let node = Node::builder(config(i, seed))
                    .transport(Arc::new(SimTransport))
                    .threads(Threads::One)
                    .storage(StorageConfig::Memory(storage))
                    .start()
                    .await?;
                let handle = node.handle();
                let recorder = Recorder { node: i as u64 + 1, records }.start();
                handle.log_store().do_send(Follow { namespace: None, recipient: recorder.clone().recipient() });
                handle.election().do_send(WatchLeadership(recorder.recipient()));
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
}

/// Every acknowledged key/value write is in the commit stream (`by_index`, from
/// [`Records::one_entry_per_index`]).
pub fn kv_writes_committed(acked: &[(String, String)], by_index: &BTreeMap<u64, (u64, u64)>) -> Result<(), String> {
    let committed: BTreeSet<u64> = by_index.values().map(|(_, d)| *d).collect();
    for (key, value) in acked {
        let json = serde_json::to_string(&dister::messages::kv::KvCommand::Set(vec![(key.clone(), value.clone())]))
            .map_err(|e| e.to_string())?;
        if !committed.contains(&digest("kv", json.as_bytes())) {
            return Err(format!("acknowledged write {key}={value} is not in any node's commit stream"));
        }
    }
    Ok(())
}
