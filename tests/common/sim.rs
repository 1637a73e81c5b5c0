//! What the simulated suites share: turmoil's network behind the transport seam, the
//! simulated hosts (founders and spares), and the nemesis that breaks them.

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

/// The name of simulated host `i`: node id `i + 1` listens on `n{i+1}:7070`.
pub fn host(i: usize) -> String {
    format!("n{}", i + 1)
}

/// What the nemesis, the clients and a membership operator share about the hosts.
#[derive(Debug, Default)]
pub struct Hosts {
    /// How many hosts the simulation has: the founders first, then spares.
    pub count: usize,
    /// Hosts in the cluster's configuration, as last seen.
    pub members: BTreeSet<usize>,
    /// Hosts that were ever members, removed ones included.
    pub ever: BTreeSet<usize>,
    /// Hosts stopped for good: machines that died and are not coming back.
    pub dead: BTreeSet<usize>,
    /// Hosts to stop for good, then hosts to start: asked for by the operator, carried out
    /// by the nemesis between simulation steps.
    pub to_kill: Vec<usize>,
    /// See `to_kill`.
    pub to_start: Vec<usize>,
}

/// Hosts shared by the nemesis, the clients and the operator.
pub type SharedHosts = Arc<Mutex<Hosts>>;

impl Hosts {
    /// `count` hosts, all founding members.
    pub fn founders(count: usize) -> SharedHosts {
        Self::with_spares(count, 0)
    }

    /// `founders` founding members and `spares` hosts that join later, if ever.
    pub fn with_spares(founders: usize, spares: usize) -> SharedHosts {
        let members: BTreeSet<usize> = (0..founders).collect();
        Arc::new(Mutex::new(Hosts { count: founders + spares, ever: members.clone(), members, ..Hosts::default() }))
    }

    /// The members still running: what faults are aimed at.
    pub fn live_members(&self) -> Vec<usize> {
        self.members.difference(&self.dead).copied().collect()
    }

    /// Hosts a client may send requests to: every one that was ever a member and did not
    /// die (a removed node still running answers too, and must not mislead anybody).
    pub fn targets(&self) -> Vec<usize> {
        self.ever.difference(&self.dead).copied().collect()
    }
}

/// Every unordered pair of `count` hosts.
fn pairs(count: usize) -> impl Iterator<Item = (String, String)> {
    (0..count).flat_map(move |a| (a + 1..count).map(move |b| (host(a), host(b))))
}

/// Every host of `count` but `n`.
fn others(n: usize, count: usize) -> impl Iterator<Item = String> {
    (0..count).filter(move |&o| o != n).map(host)
}

/// One fault the nemesis injects, on hosts by index.
#[derive(Debug, Clone)]
pub enum Fault {
    /// One node cut off from all others (for a leader: the isolated-leader case).
    Isolate(usize),
    /// Two nodes cannot talk; both still reach the rest (a bridge).
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
    /// Every running node crashes at once, and they restart together.
    CrashAll(Vec<usize>),
}

/// Injects seeded faults between simulation steps, one at a time, each healed before the
/// next, aimed at the members still running; and stops or starts hosts for the operator.
pub struct Nemesis {
    rng: StdRng,
    hosts: SharedHosts,
    /// The fault in force, if any.
    pub active: Option<Fault>,
    next_at: Duration,
    until: Duration,
    /// What was done when, for the failure message and the run's digest.
    pub log: Vec<String>,
}

impl Nemesis {
    /// A nemesis for `seed` that starts faults until `until` (simulated) on `hosts`.
    pub fn new(seed: u64, until: Duration, hosts: SharedHosts) -> Self {
        Nemesis {
            rng: StdRng::seed_from_u64(seed ^ 0x0E3E_5155),
            hosts,
            active: None,
            next_at: Duration::from_secs(1),
            until,
            log: Vec::new(),
        }
    }

    fn pick(&mut self, sim: &mut turmoil::Sim<'_>, leader: Option<usize>) -> Fault {
        let live = self.hosts.lock().unwrap().live_members();
        let leader = leader.filter(|l| live.contains(l));
        if live.len() < 2 {
            return Fault::Delay(Duration::from_millis(self.rng.random_range(20..120)));
        }
        let i = self.rng.random_range(0..live.len());
        let (a, b) = (live[i], live[(i + self.rng.random_range(1..live.len())) % live.len()]);
        match self.rng.random_range(0..9) {
            0 => Fault::Isolate(leader.unwrap_or(a)),
            1 => Fault::Isolate(a),
            2 => Fault::Bridge(a, b),
            3 => Fault::OneWay(leader.unwrap_or(a), b),
            4 => Fault::Delay(Duration::from_millis(self.rng.random_range(20..120))),
            5 => Fault::Lossy(self.rng.random_range(0.02..0.15)),
            6 => Fault::Pause(leader.unwrap_or(a)),
            7 => Fault::Crash(leader.unwrap_or(a)),
            _ if self.rng.random_bool(0.3) => {
                let count = self.hosts.lock().unwrap().count;
                Fault::CrashAll((0..count).filter(|&h| sim.is_host_running(host(h))).collect())
            }
            _ => Fault::Crash(a),
        }
    }

    fn apply(&mut self, sim: &mut turmoil::Sim<'_>, fault: &Fault) {
        let count = self.hosts.lock().unwrap().count;
        match fault {
            Fault::Isolate(n) => others(*n, count).for_each(|o| sim.partition(host(*n), o)),
            Fault::Bridge(a, b) => sim.partition(host(*a), host(*b)),
            Fault::OneWay(a, b) => sim.partition_oneway(host(*a), host(*b)),
            Fault::Delay(d) => pairs(count).for_each(|(a, b)| sim.set_link_latency(a, b, *d)),
            Fault::Lossy(p) => pairs(count).for_each(|(a, b)| sim.set_link_fail_rate(a, b, *p)),
            Fault::Pause(n) => others(*n, count).for_each(|o| sim.hold(host(*n), o)),
            Fault::Crash(n) => sim.crash(host(*n)),
            Fault::CrashAll(all) => all.iter().for_each(|n| sim.crash(host(*n))),
        }
    }

    /// Ends `fault`: links repaired, crashed nodes restarted (unless stopped for good since).
    pub fn heal(&mut self, sim: &mut turmoil::Sim<'_>, fault: &Fault) {
        let (count, dead) = {
            let h = self.hosts.lock().unwrap();
            (h.count, h.dead.clone())
        };
        for (a, b) in pairs(count) {
            for (x, y) in [(&a, &b), (&b, &a)] {
                sim.repair(x.as_str(), y.as_str());
                sim.release(x.as_str(), y.as_str());
            }
            sim.set_link_latency(a.as_str(), b.as_str(), Duration::from_millis(1));
            sim.set_link_fail_rate(a, b, 0.0);
        }
        let crashed: &[usize] = match fault {
            Fault::Crash(n) => std::slice::from_ref(n),
            Fault::CrashAll(all) => all,
            _ => &[],
        };
        crashed.iter().filter(|n| !dead.contains(n)).for_each(|n| sim.bounce(host(*n)));
    }

    /// Runs `sim` to its end. Between steps: carries out what the operator asked of the
    /// hosts, and, when `active`, starts and ends faults (aimed at the latest leader
    /// `records` know of).
    pub fn run(&mut self, sim: &mut turmoil::Sim<'_>, records: &Shared, active: bool) -> Result<(), String> {
        loop {
            self.serve_operator(sim);
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

    /// Stops for good, or starts, the hosts the operator asked for.
    fn serve_operator(&mut self, sim: &mut turmoil::Sim<'_>) {
        let (kill, start) = {
            let mut h = self.hosts.lock().unwrap();
            let kill = std::mem::take(&mut h.to_kill);
            h.dead.extend(&kill);
            (kill, std::mem::take(&mut h.to_start))
        };
        let now = sim.elapsed().as_millis();
        for n in kill {
            sim.crash(host(n));
            self.log.push(format!("{now:>6} ms stop {} for good", host(n)));
        }
        for n in start {
            sim.bounce(host(n));
            self.log.push(format!("{now:>6} ms start {}", host(n)));
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
            let f = self.pick(sim, leader);
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
    /// Every node's metrics, one per start (a restarted node's earlier counts stay).
    pub metrics: Vec<dister::metrics::MetricsRef>,
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

/// Hosts `count` nodes in `sim`, host `i` with `config(i)` (asked at every boot, so it may
/// follow the run), each log in memory reaching "disk" 1 ms after it is submitted (a crash
/// loses the rest), each followed by a [`Recorder`] writing to `records`. Hosts listed in
/// `held` are not started until the nemesis is asked to.
pub fn host_nodes<C>(sim: &mut turmoil::Sim<'_>, count: usize, held: &[usize], config: C, records: &Shared)
where
    C: Fn(usize) -> Config + Clone + 'static,
{
    for i in 0..count {
        let storage = MemoryStorage::with_sync_delay(Duration::from_millis(1));
        let (records, config) = (records.clone(), config.clone());
        sim.host(host(i), move || {
            let (storage, records, config) = (storage.clone(), records.clone(), config(i));
            async move {
                let node = Node::builder(config)
                    .transport(Arc::new(SimTransport))
                    .threads(Threads::One)
                    .storage(StorageConfig::Memory(storage))
                    .start()
                    .await?;
                let handle = node.handle();
                records.lock().unwrap().metrics.push(handle.cluster().metrics().clone());
                let recorder = Recorder { node: i as u64 + 1, records }.start();
                handle
                    .cluster()
                    .log_store()
                    .do_send(Follow { namespace: None, recipient: recorder.clone().recipient() });
                handle.cluster().election().do_send(WatchLeadership(recorder.recipient()));
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    held.iter().for_each(|&i| sim.crash(host(i)));
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
