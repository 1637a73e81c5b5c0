//! t82: a registry load in the simulator. Three real nodes in turmoil take 50,000 persistent
//! instances whose TCP probes fail (nothing listens on their loopback addresses) and 50,000
//! ephemeral instances that never beat, so all of them turn unhealthy and the ephemeral ones
//! expire, over simulated minutes. Without faults the cluster keeps its first leader
//! throughout; with the chaos nemesis on, the usual invariants hold. Simulated time does not
//! see CPU time: t50's `registry_load_keeps_the_term` runs a load on the real binary.
//!
//! `DISTER_REGISTRY_SCALE` (default 1.0) scales the load, for quick local runs.

use crate::common;
use crate::common::sim::{Hosts, NODES, Nemesis, Shared, host_nodes, kv_writes_committed, simulation};
use crate::t80_chaos::{KEYS, connect};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dister::check::History;
use dister::messages::registry::{CheckKind, Health, InstanceKey, Service, ServiceNode};
use dister::{Client, Config, Consistency};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// How many instances of each kind, scaled by `DISTER_REGISTRY_SCALE`.
fn load() -> (usize, usize) {
    let scale: f64 = std::env::var("DISTER_REGISTRY_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let n = ((50_000.0 * scale) as usize).max(100);
    (n, n)
}

/// Clients registering at once.
const REGISTRARS: usize = 24;

fn config(i: usize, seed: u64) -> Config {
    // Snapshots at the default pace: this test is about the load, not about snapshots.
    let snapshot_entries = Config::default().snapshot_entries;
    Config {
        request_timeout_ms: 5_000,
        check_interval_ms: 5_000,
        snapshot_entries,
        ..crate::t80_chaos::config(i, seed)
    }
}

/// Instance `k`: persistent (TCP-checked) below `persistent`, ephemeral above; always on
/// 127.0.0.0/8, so no probe could leave a real machine either.
fn instance(k: usize, persistent: usize) -> (String, ServiceNode) {
    let ip = format!("127.{}.{}.{}", 1 + k / 62_500, (k / 250) % 250, k % 250);
    let mut node = ServiceNode::new(ip, 8080);
    if k < persistent {
        node.check = Some(CheckKind::Tcp);
    } else {
        node.ephemeral = true;
    }
    (format!("svc{:03}", k % 100), node)
}

/// What the registrars did.
#[derive(Default)]
struct Registrations {
    acked: Mutex<Vec<InstanceKey>>,
    retries: AtomicUsize,
    finished: AtomicUsize,
}

/// Registers every `REGISTRARS`-th instance from `id` on, one request each, through the
/// nodes in turn; a failed request is retried (registering again is harmless).
async fn registrar(id: usize, total: usize, persistent: usize, seed: u64, out: Arc<Registrations>) {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64) << 20 ^ 0x5E6);
    let mut conns: BTreeMap<usize, Client> = BTreeMap::new();
    // The cluster elects its first leader before the load starts.
    'elected: loop {
        for node in NODES {
            if let Some(c) = connect(node).await
                && c.status().await.is_ok_and(|s| s.leader.is_some())
            {
                break 'elected;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for k in (id..total).step_by(REGISTRARS) {
        let (service, node) = instance(k, persistent);
        let key = node.key(&service);
        loop {
            let at = rng.random_range(0..NODES.len());
            if let std::collections::btree_map::Entry::Vacant(slot) = conns.entry(at) {
                match connect(NODES[at]).await {
                    Some(c) => {
                        slot.insert(c.with_timeout(Duration::from_secs(6)));
                    }
                    None => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
            let Some(c) = conns.get(&at).cloned() else { continue };
            match c.register_instance(&service, "", node.clone()).await {
                Ok(_) => {
                    out.acked.lock().unwrap().push(key);
                    break;
                }
                Err(e) => {
                    tracing::debug!(registrar = id, k, error = %e, "registration failed; retrying");
                    out.retries.fetch_add(1, Ordering::Relaxed);
                    conns.remove(&at);
                    tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
                }
            }
        }
    }
    out.finished.fetch_add(1, Ordering::AcqRel);
}

/// Every node's own copy of the registry, once all agree and it holds what the load must
/// leave: every persistent instance, unhealthy; no ephemeral one.
async fn converged(persistent: usize) -> Result<Vec<Service>, String> {
    let mut seen = Vec::new();
    for _ in 0..240 {
        let mut copies = Vec::new();
        seen.clear();
        for node in NODES {
            let Some(c) = connect(node).await else {
                seen.push(format!("{node}: unreachable"));
                continue;
            };
            match c.with_timeout(Duration::from_secs(10)).list_services(Consistency::Stale).await {
                Ok(mut services) => {
                    for s in &mut services {
                        s.nodes.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
                    }
                    let instances: Vec<&ServiceNode> = services.iter().flat_map(|s| &s.nodes).collect();
                    let ephemeral = instances.iter().filter(|n| n.ephemeral).count();
                    let unhealthy = instances.iter().filter(|n| n.health == Health::Unhealthy).count();
                    seen.push(format!(
                        "{node}: {} instances, {ephemeral} ephemeral, {unhealthy} unhealthy",
                        instances.len()
                    ));
                    if instances.len() == persistent && ephemeral == 0 && unhealthy == persistent {
                        copies.push(services);
                    }
                }
                Err(e) => seen.push(format!("{node}: {e}")),
            }
        }
        if copies.len() == NODES.len() && copies.windows(2).all(|w| w[0] == w[1]) {
            return Ok(copies.swap_remove(0));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(format!("the registry did not converge:\n{}", seen.join("\n")))
}

/// What one run found.
#[derive(Debug)]
struct Outcome {
    terms: usize,
    step_downs: usize,
    acked: usize,
    retries: usize,
    entries: usize,
    faults: Vec<String>,
}

/// Runs the load with `seed`, with the chaos nemesis on during the registrations if
/// `chaos`; checks the invariants and answers what happened.
fn run(seed: u64, chaos: bool) -> Result<Outcome, String> {
    let (persistent, ephemeral) = load();
    let total = persistent + ephemeral;
    let mut sim = simulation(seed, 1_800);
    let records: Shared = Arc::default();
    host_nodes(&mut sim, NODES.len(), &[], move |i| config(i, seed), &records);
    let hosts = Hosts::founders(NODES.len());
    let registrations = Arc::new(Registrations::default());
    for id in 0..REGISTRARS {
        let out = registrations.clone();
        sim.client(format!("registrar{id}"), async move {
            registrar(id, total, persistent, seed, out).await;
            Ok(())
        });
    }
    // With the nemesis, the usual clients read and write keys meanwhile: the history must
    // stay linearizable.
    let history = History::with_clock(crate::t80_chaos::now);
    let kv_acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let chaos_for = Duration::from_secs(20);
    if chaos {
        for id in 0..crate::t80_chaos::CLIENTS as u64 {
            let (history, acked, hosts) = (history.clone(), kv_acked.clone(), hosts.clone());
            sim.client(format!("client{id}"), async move {
                crate::t80_chaos::client(id, seed, chaos_for, hosts, history, acked).await;
                Ok(())
            });
        }
    }
    let result: Arc<Mutex<Option<Result<(), String>>>> = Arc::default();
    {
        let (registrations, result, history) = (registrations.clone(), result.clone(), history.clone());
        sim.client("checker", async move {
            while registrations.finished.load(Ordering::Acquire) < REGISTRARS {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // Long enough for the last ephemeral ones to expire (30 s by default).
            tokio::time::sleep(Duration::from_secs(40)).await;
            let mut r = converged(persistent).await.map(|_| ());
            if r.is_ok() && chaos {
                // Each key read once more, linearizably, as part of the history.
                for key in KEYS {
                    let mut done = false;
                    for node in NODES.iter().cycle().take(30) {
                        let Some(c) = connect(node).await else { continue };
                        let op = history.invoke(99, key, dister::check::Op::Read);
                        match c.get(key, Consistency::Linearizable).await {
                            Ok(v) => {
                                history.complete(op, dister::check::Outcome::Read(v));
                                done = true;
                                break;
                            }
                            Err(_) => history.complete(op, dister::check::Outcome::Unknown),
                        }
                    }
                    if !done {
                        r = Err(format!("no node answered a read of {key} after healing"));
                    }
                }
            }
            *result.lock().unwrap() = Some(r);
            Ok(())
        });
    }
    let mut nemesis = Nemesis::new(seed, chaos_for, hosts);
    nemesis.run(&mut sim, &records, chaos)?;
    let fail = |what: String| Err(format!("{what}\nfaults:\n{}", nemesis.log.join("\n")));
    match result.lock().unwrap().take() {
        Some(Ok(())) => {}
        Some(Err(e)) => return fail(e),
        None => return fail("the checker did not finish".into()),
    }
    let r = records.lock().unwrap();
    if !r.violations.is_empty() {
        return fail(format!("safety violations: {:#?}", r.violations));
    }
    let by_index = match r.one_entry_per_index() {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let acked = registrations.acked.lock().unwrap();
    if let Some(missing) = acked.iter().find(|k| !r.registered.contains(k)) {
        return fail(format!("acknowledged registration of {missing} is not in the commit stream"));
    }
    if chaos {
        if let Err(e) = dister::check::check(&history.operations()) {
            return fail(format!("history is not linearizable: {e}"));
        }
        if let Err(e) = kv_writes_committed(&kv_acked.lock().unwrap(), &by_index) {
            return fail(e);
        }
    }
    Ok(Outcome {
        terms: r.leaders.len(),
        step_downs: r.step_downs,
        acked: acked.len(),
        retries: registrations.retries.load(Ordering::Relaxed),
        entries: by_index.len(),
        faults: nemesis.log.clone(),
    })
}

/// Without faults, a registry load never costs the cluster its leader.
///
/// 1. Three nodes; 24 clients register 50,000 persistent instances (TCP-checked, nothing
///    listening) and 50,000 ephemeral ones (never beating), one request each.
/// 2. The leader probes the persistent ones (every 5 s) and judges the silent ones: all
///    turn unhealthy, the ephemeral ones are removed after 30 s, in batched entries.
/// 3. Check: one leader, one term, no step-down, no request refused; every acknowledged
///    registration is in the commit stream; every node's registry is the same, with every
///    persistent instance unhealthy and no ephemeral one left.
#[test]
fn a_registry_load_keeps_the_first_leader() {
    common::init_tracing();
    let started = std::time::Instant::now();
    let o = run(0x8E61, false).unwrap_or_else(|e| panic!("registry load: {e}"));
    eprintln!("registry load, no faults: {o:?} in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!((o.terms, o.step_downs), (1, 0), "the leader changed: {o:?}");
    assert_eq!(o.retries, 0, "a registration was refused or lost: {o:?}");
    let (persistent, ephemeral) = load();
    assert_eq!(o.acked, persistent + ephemeral);
    assert!(
        o.entries < persistent + ephemeral + 500,
        "check outcomes are batched, not an entry per instance: {} entries for {} registrations",
        o.entries,
        persistent + ephemeral
    );
}

/// The same load with the chaos nemesis on during the registrations: linearizable keys,
/// one leader per term, one entry per index, every acknowledged write and registration
/// committed, and every node ends with the same registry. `DISTER_SEED` picks the seed.
#[test]
fn a_registry_load_under_chaos_keeps_the_invariants() {
    common::init_tracing();
    let seed = std::env::var("DISTER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let started = std::time::Instant::now();
    let o = run(seed, true).unwrap_or_else(|e| {
        panic!("seed {seed} (replay: DISTER_SEED={seed} cargo test --release --test all t82_registry_load::): {e}")
    });
    eprintln!(
        "registry load, chaos seed {seed}: {} terms, {} faults, {} acked, {} retries, {} entries in {:.1} s",
        o.terms,
        o.faults.len(),
        o.acked,
        o.retries,
        o.entries,
        started.elapsed().as_secs_f64()
    );
    assert!(!o.faults.is_empty(), "the nemesis did nothing");
}
