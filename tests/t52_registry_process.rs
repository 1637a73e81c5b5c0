//! t52: issue 9's reproduction on the real binary. Three processes take a flood of Nacos
//! instance registrations from many connections at once (persistent instances at loopback
//! addresses nothing listens on, as `loadcmp.py` registers them), so the leader's checks find
//! every one unhealthy and write it. Before the fix this left the cluster without a leader
//! for good, even after a restart: a new leader probed every instance at once on the thread
//! its heartbeats needed. Now the term stays put while the health is written, and a cluster
//! restarted from those data directories elects once and keeps that leader.

use crate::common::procs::Procs;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dister::messages::registry::Health;
use dister::wire::StatusInfo;
use dister::{Client, Consistency};

/// Instances registered, over all connections.
const INSTANCES: usize = 40_000;
/// Connections registering at once (a third per node).
const CONNECTIONS: usize = 48;

async fn status(addr: &str) -> Option<StatusInfo> {
    let c = Client::connect(addr, "default").await.ok()?;
    c.with_timeout(Duration::from_secs(2)).status().await.ok()
}

/// The term every node agrees on with one leader, or why not.
async fn agreed_term(p: &Procs) -> Result<(u64, u64), String> {
    let mut seen = Vec::new();
    for a in &p.addrs {
        match status(a).await {
            Some(s) => seen.push((s.term, s.leader)),
            None => return Err(format!("{a} does not answer")),
        }
    }
    match seen.first() {
        Some(&(term, Some(leader))) if seen.iter().all(|s| *s == (term, Some(leader))) => Ok((term, leader)),
        _ => Err(format!("no agreed leader: {seen:?}")),
    }
}

/// Waits for an agreed leader, at most `within`.
async fn elected(p: &Procs, within: Duration) -> (u64, u64) {
    let deadline = Instant::now() + within;
    loop {
        match agreed_term(p).await {
            Ok(t) => return t,
            Err(e) => assert!(Instant::now() < deadline, "{e} after {within:?}; logs: {}", p.logs()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For `d`, every node keeps answering with the same term and leader.
async fn term_stays(p: &Procs, want: (u64, u64), d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        match agreed_term(p).await {
            Ok(t) => assert_eq!(t, want, "the term or leader changed; logs: {}", p.logs()),
            Err(e) => panic!("{e}; logs: {}", p.logs()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Registers instances `k` of `from..INSTANCES` stepping by `CONNECTIONS` on `http`, one
/// request each, over one keep-alive connection; answers how many were refused.
async fn register(http: String, from: usize) -> usize {
    let client = awc::Client::builder().timeout(Duration::from_secs(20)).finish();
    let mut refused = 0;
    for k in (from..INSTANCES).step_by(CONNECTIONS) {
        let ip = format!("127.{}.{}.{}", 1 + k / 62_500, (k / 250) % 250, k % 250);
        let url = format!(
            "http://{http}/nacos/v1/ns/instance?serviceName=svc{:03}&ip={ip}&port=8080&ephemeral=false",
            k % 100
        );
        match client.post(url).send().await {
            Ok(r) if r.status().is_success() => {}
            _ => refused += 1,
        }
    }
    refused
}

/// How many instances each node holds, and how many of them are unhealthy.
async fn health(p: &Procs) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for a in &p.addrs {
        let c = Client::connect(a, "default").await.expect("connect").with_timeout(Duration::from_secs(20));
        let services = c.list_services(Consistency::Stale).await.expect("list");
        let nodes: Vec<_> = services.iter().flat_map(|s| &s.nodes).collect();
        out.push((nodes.len(), nodes.iter().filter(|n| n.health == Health::Unhealthy).count()));
    }
    out
}

/// A registry load keeps the term; so does a restart of every node from its data.
///
/// 1. Start three nodes with their HTTP API.
/// 2. 48 connections, 16 per node, register 40,000 persistent instances through the Nacos
///    API at 127.x.y.z:8080, where nothing listens: none is refused, and all the while
///    every node names the same leader in the same term.
/// 3. The leader probes them and writes their health: within 30 s every node holds all
///    40,000, unhealthy; the term has not moved.
/// 4. `kill -9` all three and start them again from their data directories: a leader
///    within three seconds, and for ten seconds, while it takes over the checks of every
///    instance, the same leader and term on every node.
#[actix_rt::test]
async fn registry_load_keeps_the_term_and_a_restart_recovers() {
    crate::common::init_tracing();
    let mut p = Procs::start(3);
    let first = elected(&p, Duration::from_secs(10)).await;

    let loads: Vec<_> = (0..CONNECTIONS).map(|c| register(p.http[c % 3].clone(), c)).collect();
    let mut loading = Box::pin(futures::future::join_all(loads));
    let refused: usize = loop {
        tokio::select! {
            r = &mut loading => break r.into_iter().sum(),
            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                let now = agreed_term(&p).await.unwrap_or_else(|e| panic!("{e} during the load; logs: {}", p.logs()));
                assert_eq!(now, first, "the term or leader changed during the load; logs: {}", p.logs());
            }
        }
    };
    assert_eq!(refused, 0, "registrations refused; logs: {}", p.logs());

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = health(&p).await;
        if h.iter().all(|&(n, sick)| n == INSTANCES && sick == INSTANCES) {
            break;
        }
        assert!(Instant::now() < deadline, "health not written everywhere within 30 s: {h:?}");
        assert_eq!(agreed_term(&p).await.ok(), Some(first), "the term moved while health was written");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    term_stays(&p, first, Duration::from_secs(3)).await;

    for i in 0..3 {
        p.kill9(i);
    }
    for i in 0..3 {
        p.spawn(i);
    }
    let restarted = elected(&p, Duration::from_secs(3)).await;
    term_stays(&p, restarted, Duration::from_secs(10)).await;
    let h = health(&p).await;
    assert!(h.iter().all(|&(n, _)| n == INSTANCES), "every registration survived the restart: {h:?}");
    let by_node: BTreeMap<usize, (usize, usize)> = h.into_iter().enumerate().collect();
    tracing::info!(?first, ?restarted, ?by_node, "registry load and restart");
}
