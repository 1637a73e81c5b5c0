//! t58: snapshots of every state machine (keys, services, and the counter extension), taken
//! by policy on every node while writes go on, and a restart that restores the newest one
//! and replays only the log after it.

use crate::common;
use crate::counter_actor;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Addr};
use common::{Cluster, Extend, retry};
use counter_actor::{Counters, NAMESPACE, add, value_of};
use dister::Consistency;
use dister::messages::apply::StateMachineRef;
use dister::messages::registry::{Service, ServiceNode};
use dister::wire::StatusInfo;

/// Asks a counter actor what it went through: the snapshot it was restored from, and the
/// indexes it applied.
#[derive(actix::Message)]
#[rtype(result = "(Option<u64>, Vec<u64>)")]
struct Inspect;

impl actix::Handler<Inspect> for Counters {
    type Result = actix::MessageResult<Inspect>;

    fn handle(&mut self, _: Inspect, _: &mut actix::Context<Self>) -> Self::Result {
        actix::MessageResult((self.restored_at, self.applied.clone()))
    }
}

/// Snapshot every this many applied entries.
const EVERY: u64 = 40;

/// The counter extension on every node, each actor kept (in start order) so the test can
/// look inside.
fn counters(started: Arc<Mutex<Vec<Addr<Counters>>>>) -> Extend {
    Arc::new(move |b| {
        let c = Counters::default().start();
        started.lock().unwrap().push(c.clone());
        b.state_machine(NAMESPACE, StateMachineRef::of(&c), Some(c.recipient()))
    })
}

async fn status_until(cluster: &Cluster, i: usize, what: &str, ok: impl Fn(&StatusInfo) -> bool) -> StatusInfo {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = cluster.status(i).await
            && ok(&s)
        {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "node {i}: {what}; last status {:?}", cluster.status(i).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every node snapshots under load, and a restarted node comes back from its snapshot.
///
/// 1. Three nodes snapshot every 40 entries. Through the leader: 150 keys, 2 services (one
///    with an instance), and 100 counter adds.
/// 2. Every node reports a snapshot covering at least 200 entries, of a term it has.
/// 3. A follower is restarted: right away its status shows the snapshot; its counter actor
///    was restored from it and applied only entries after it; every key, both services and
///    the counter's value read back as before.
#[actix_rt::test]
async fn every_node_snapshots_and_a_restart_replays_only_the_tail() {
    let started = Arc::new(Mutex::new(Vec::new()));
    let mut cluster = Cluster::start_extended(3, |c| c.snapshot_entries = EVERY, Some(counters(started.clone())));
    let leader = cluster.wait_leader(Duration::from_secs(3)).await;
    let c = cluster.client(leader).await;
    for i in 0..150 {
        let (key, value) = (format!("key/{i:03}"), format!("value {i}"));
        retry(Duration::from_secs(5), || c.set(&key, &value)).await.unwrap();
    }
    let mut web = Service::new("web", "tcp");
    web.nodes.push(ServiceNode::new("127.0.0.1", 9));
    c.set_services(vec![web.clone(), Service::new("db", "plain")]).await.unwrap();
    for _ in 0..100 {
        c.write(NAMESPACE, add("visits", 3)).await.unwrap();
    }
    let last = c.status().await.unwrap().commit_index;
    for i in 0..3 {
        let s = status_until(&cluster, i, "no snapshot of 200 entries", |s| s.snapshot_index >= 200).await;
        assert!(s.snapshot_term >= 1 && s.snapshot_term <= s.term, "node {i}: snapshot term {}", s.snapshot_term);
        assert!(s.snapshot_bytes > 0);
        assert!(s.snapshot_index <= s.applied_index);
    }

    let follower = (leader + 1) % 3;
    cluster.restart_node(follower);
    let s = status_until(&cluster, follower, "restarted without its snapshot", |s| s.snapshot_index > 0).await;
    let snapshot = s.snapshot_index;
    let f = cluster.client(follower).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while f.query(NAMESPACE, value_of("visits"), Consistency::Stale).await.unwrap() != "300".as_bytes() {
        assert!(std::time::Instant::now() < deadline, "restarted node did not rebuild its counter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restarted = started.lock().unwrap().last().cloned().unwrap();
    let (restored_at, applied) = restarted.send(Inspect).await.unwrap();
    assert_eq!(restored_at, Some(snapshot), "the counter was not restored from the node's snapshot");
    assert!(applied.iter().all(|&i| i > snapshot), "entries the snapshot holds were replayed: {applied:?}");
    assert!(last > snapshot);

    // A linearizable read goes through the leader: the restarted node may have rebuilt its
    // state from its own disk before it heard from one (it answers NoLeader, retryably).
    status_until(&cluster, follower, "restarted node heard from no leader", |s| s.leader.is_some()).await;
    for i in 0..150 {
        let v = f.get(&format!("key/{i:03}"), Consistency::Linearizable).await.unwrap();
        assert_eq!(v.as_deref(), Some(format!("value {i}").as_str()), "key/{i:03} after the restart");
    }
    let got = f.get_service("web", Consistency::Linearizable).await.unwrap().expect("web after the restart");
    assert_eq!(got.nodes.len(), 1);
    assert!(f.get_service("db", Consistency::Linearizable).await.unwrap().is_some());
    let v = f.query(NAMESPACE, value_of("visits"), Consistency::Linearizable).await.unwrap();
    assert_eq!(v, "300".as_bytes());
}
