//! t80: the deterministic chaos suite. The real actors of three nodes run inside turmoil with
//! an in-memory log that loses what was not yet synced when a node crashes; clients read and
//! write a few keys while a nemesis partitions (majority/minority, isolated leader, bridge,
//! one-way), delays and drops messages, pauses nodes and crashes and restarts them. Every run
//! is fully determined by its seed, printed on failure; replaying a seed replays the run.
//!
//! Each run ends by healing and checking: the clients' history is linearizable (per key);
//! every acknowledged write was committed; all nodes converge to the same state; at most one
//! leader per term (Election Safety); no two nodes ever applied different entries at the same
//! index (State Machine Safety), checked from the nodes' own commit streams.
//!
//! CI runs `DISTER_SEEDS` seeds (default 200 in release builds, 10 in debug ones, which
//! simulate 14 times slower) of `DISTER_SIM_SECS` simulated seconds (default 10);
//! `DISTER_SEED=N` replays one seed. Pinned regressions live in `pinned_seeds`.

use crate::common;
use crate::common::sim::{NODES, Nemesis, Shared, host_nodes, kv_writes_committed, simulation};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dister::check::{History, Op, Outcome};
use dister::{ApiError, Client, ClientError, Config, Consistency, PeerConfig};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

pub(crate) const KEYS: [&str; 3] = ["a", "b", "c"];
pub(crate) const CLIENTS: usize = 3;
const TOKEN: &str = "chaos-suite-token-0123";

// ---- the nodes -------------------------------------------------------------------------------

pub(crate) fn config(i: usize, seed: u64) -> Config {
    Config {
        id: i as u64 + 1,
        listen: "0.0.0.0:7070".into(),
        advertise: Some(format!("{}:7070", NODES[i])),
        peers: (0..NODES.len())
            .filter(|&j| j != i)
            .map(|j| PeerConfig { id: j as u64 + 1, addr: format!("{}:7070", NODES[j]) })
            .collect(),
        seed: Some(seed.wrapping_mul(31).wrapping_add(i as u64)),
        cluster_token: Some(TOKEN.into()),
        request_timeout_ms: 1_000,
        handshake_timeout_ms: 1_000,
        ..Config::default()
    }
}

// ---- clients ---------------------------------------------------------------------------------

pub(crate) fn now() -> u64 {
    turmoil::sim_elapsed().map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Whether a failed write definitely did not happen: refused before it was proposed, or its
/// entry was replaced. Anything else (timeouts, lost connections, an unreachable leader that
/// may have received it) is unknown.
pub(crate) fn definitely_failed(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Api(
            ApiError::NoLeader { .. }
                | ApiError::NotLeader { .. }
                | ApiError::Dropped { .. }
                | ApiError::BadRequest(_)
                | ApiError::Overloaded { .. }
                | ApiError::UnknownNamespace(_)
        )
    )
}

pub(crate) async fn connect(node: &str) -> Option<Client> {
    let stream = tokio::time::timeout(
        Duration::from_millis(500),
        turmoil::net::TcpStream::connect(format!("{node}:7070").as_str()),
    )
    .await
    .ok()?
    .ok()?;
    let c = Client::handshake(stream, "default", Some(TOKEN)).await.ok()?;
    Some(c.with_timeout(Duration::from_secs(2)))
}

/// One client: random reads and writes of random keys through random nodes until `until`.
pub(crate) async fn client(
    id: u64,
    seed: u64,
    until: Duration,
    history: History,
    acked: Arc<Mutex<Vec<(String, String)>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (id << 32) ^ 0xC11E);
    let mut conns: BTreeMap<usize, Client> = BTreeMap::new();
    let mut n = 0u64;
    while turmoil::elapsed() < until {
        let node = rng.random_range(0..NODES.len());
        let key = KEYS[rng.random_range(0..KEYS.len())];
        if let std::collections::btree_map::Entry::Vacant(slot) = conns.entry(node) {
            match connect(NODES[node]).await {
                Some(c) => {
                    slot.insert(c);
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(c) = conns.get(&node).cloned() else { continue };
        if rng.random_bool(0.6) {
            n += 1;
            let value = format!("c{id}-{n}");
            let op = history.invoke(id, key, Op::Write(value.clone()));
            let outcome = match c.set(key, &value).await {
                Ok(_) => {
                    acked.lock().unwrap().push((key.to_string(), value));
                    Outcome::Ok
                }
                Err(e) if definitely_failed(&e) => Outcome::Fail,
                Err(_) => {
                    conns.remove(&node);
                    Outcome::Unknown
                }
            };
            history.complete(op, outcome);
        } else {
            let op = history.invoke(id, key, Op::Read);
            match c.get(key, Consistency::Linearizable).await {
                Ok(v) => history.complete(op, Outcome::Read(v)),
                Err(e) => {
                    if !definitely_failed(&e) {
                        conns.remove(&node);
                    }
                    history.complete(op, Outcome::Unknown);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
    }
}

// ---- one run ---------------------------------------------------------------------------------

/// What one seed did.
#[derive(Debug, PartialEq)]
struct Summary {
    ops: usize,
    acked_writes: usize,
    terms: usize,
    faults: usize,
    /// A digest of every operation (with its times and outcome) and of the fault schedule:
    /// equal digests mean the same run.
    digest: u64,
}

fn run_seed(seed: u64, secs: u64) -> Result<Summary, String> {
    let chaos = Duration::from_secs(secs);
    let mut sim = simulation(seed, secs + 60);
    let records: Shared = Arc::default();
    host_nodes(&mut sim, config, seed, &records);
    let history = History::with_clock(now);
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    for id in 0..CLIENTS as u64 {
        let (history, acked) = (history.clone(), acked.clone());
        sim.client(format!("client{id}"), async move {
            client(id, seed, chaos, history, acked).await;
            Ok(())
        });
    }
    // After the chaos: wait for a healed cluster, read every key linearizably (part of the
    // history), and collect each node's own copy until they agree.
    type NodeStates = Vec<Vec<(String, String)>>;
    let finals: Arc<Mutex<Option<NodeStates>>> = Arc::default();
    {
        let (history, finals) = (history.clone(), finals.clone());
        sim.client("checker", async move {
            tokio::time::sleep(chaos + Duration::from_secs(3)).await;
            'keys: for key in KEYS {
                for _ in 0..100 {
                    for node in NODES {
                        if let Some(c) = connect(node).await {
                            let op = history.invoke(99, key, Op::Read);
                            match c.get(key, Consistency::Linearizable).await {
                                Ok(v) => {
                                    history.complete(op, Outcome::Read(v));
                                    continue 'keys;
                                }
                                Err(_) => history.complete(op, Outcome::Unknown),
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                return Err(format!("no node answered a read of {key} after healing").into());
            }
            let mut seen = Vec::new();
            for _ in 0..100 {
                let mut states = Vec::new();
                seen.clear();
                for node in NODES {
                    match connect(node).await {
                        Some(c) => {
                            if let Ok(l) = c.list("", Consistency::Stale).await {
                                states.push(l);
                            }
                            seen.push(format!("{node}: {:?}", c.status().await.map_err(|e| e.to_string())));
                        }
                        None => seen.push(format!("{node}: unreachable")),
                    }
                }
                if states.len() == NODES.len() && states.windows(2).all(|w| w[0] == w[1]) {
                    *finals.lock().unwrap() = Some(states);
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(format!("nodes did not converge after healing:\n{}", seen.join("\n")).into())
        });
    }
    let mut nemesis = Nemesis::new(seed, chaos);
    nemesis.run(&mut sim, &records, true)?;
    if let Some(f) = nemesis.active.take() {
        nemesis.heal(&mut sim, &f);
    }
    let fail = |what: String| Err(format!("{what}\nfaults:\n{}", nemesis.log.join("\n")));

    // Linearizable, per key.
    let ops = history.operations();
    if let Err(e) = dister::check::check(&ops) {
        return fail(format!("history is not linearizable: {e}"));
    }
    let r = records.lock().unwrap();
    if !r.violations.is_empty() {
        return fail(format!("safety violations: {:#?}", r.violations));
    }
    // State Machine Safety across nodes: one entry per index.
    let by_index = match r.one_entry_per_index() {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    // Every acknowledged write was committed (it is in the commit stream).
    if let Err(e) = kv_writes_committed(&acked.lock().unwrap(), &by_index) {
        return fail(e);
    }
    if finals.lock().unwrap().is_none() {
        return fail("nodes did not converge".into());
    }
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        ops.hash(&mut h);
        nemesis.log.hash(&mut h);
        h.finish()
    };
    Ok(Summary {
        ops: ops.len(),
        acked_writes: acked.lock().unwrap().len(),
        terms: r.leaders.len(),
        faults: nemesis.log.len(),
        digest,
    })
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The chaos suite: `DISTER_SEEDS` seeds (default 200) of `DISTER_SIM_SECS` simulated
/// seconds (default 10), or the single seed `DISTER_SEED`. Fails with the seed and the fault
/// schedule of the first run that breaks a check.
#[test]
fn chaos_seeds_stay_linearizable_and_safe() {
    common::init_tracing();
    let secs = env_u64("DISTER_SIM_SECS", 10);
    // A debug build simulates about 14 times slower: CI runs the suite in release with the
    // full 200 seeds; a plain `cargo test` runs a smoke of 10 and says so.
    let default_seeds = if cfg!(debug_assertions) { 10 } else { 200 };
    let seeds: Vec<u64> = match std::env::var("DISTER_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => (1..=env_u64("DISTER_SEEDS", default_seeds)).collect(),
    };
    if cfg!(debug_assertions) && std::env::var("DISTER_SEEDS").is_err() {
        eprintln!("chaos: debug build, {} seeds (CI runs 200 in release: cargo test --release)", seeds.len());
    }
    let started = std::time::Instant::now();
    let (mut ops, mut acked, mut terms, mut faults) = (0, 0, 0, 0);
    for &seed in &seeds {
        match run_seed(seed, secs) {
            Ok(s) => {
                ops += s.ops;
                acked += s.acked_writes;
                terms += s.terms;
                faults += s.faults;
            }
            Err(e) => {
                panic!(
                    "seed {seed} failed (replay: DISTER_SEED={seed} cargo test --release --test all t80_chaos::): {e}"
                )
            }
        }
    }
    eprintln!(
        "chaos: {} seeds x {secs} s simulated in {:.1} s: {ops} client ops, {acked} acknowledged writes, {terms} terms, {faults} fault events",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Seeds that once failed, replayed every run (t90 style). Each entry: the seed and what it
/// found.
#[test]
fn pinned_seeds() {
    common::init_tracing();
    let pinned: &[(u64, &str)] = &[(
        1,
        "a peer link whose connection went silent in a partition kept it forever: one follower \
         never rejoined after healing (fixed: PeerLink drops an unresponsive connection)",
    )];
    for (seed, found) in pinned {
        if let Err(e) = run_seed(*seed, 10) {
            panic!("pinned seed {seed} ({found}) fails again: {e}");
        }
    }
}

/// The same seed gives the same run, operation for operation.
#[test]
fn a_seed_replays_exactly() {
    common::init_tracing();
    let a = run_seed(7, 4).expect("seed 7");
    let b = run_seed(7, 4).expect("seed 7");
    assert_eq!(a, b);
    assert!(a.ops > 50 && a.faults > 0, "the run did too little to prove anything: {a:?}");
    assert_ne!(run_seed(8, 4).expect("seed 8").digest, a.digest, "another seed gave the same run");
}
