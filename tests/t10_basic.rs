//! t10: a healthy cluster elects a leader, replicates writes made through any node, and reads
//! them back linearizably from every node.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, retry};
use dister::Consistency;
use dister::raft::Role;

/// A 3-node cluster elects one leader within 2 s of start.
///
/// 1. Start three nodes with default timing (election timeout 300–600 ms).
/// 2. Poll every node's status until all agree on one leader: at most 2 s.
#[actix_rt::test]
async fn elects_a_leader_within_two_seconds() {
    let started = Instant::now();
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    let s = cluster.status(leader).await.unwrap();
    assert_eq!(s.role, Role::Leader);
    assert!(s.term >= 1);
}

/// A single-node cluster elects itself at once and serves writes and reads.
#[actix_rt::test]
async fn single_node_elects_itself() {
    let cluster = Cluster::start(1);
    cluster.wait_leader(Duration::from_millis(500)).await;
    let c = cluster.client(0).await;
    c.set("k", "v").await.unwrap();
    assert_eq!(c.get("k", Consistency::Linearizable).await.unwrap().as_deref(), Some("v"));
}

/// Writes sent to a follower are forwarded to the leader and become visible on every node.
///
/// 1. Wait for a leader; pick a follower.
/// 2. Set 50 keys, one map of 5 keys in one entry, delete 10, all through the follower.
/// 3. Linearizable get of each key through every node answers the written value at once.
/// 4. Every node's local copy converges to the same map; list with a prefix filters.
#[actix_rt::test]
async fn writes_through_a_follower_are_visible_on_all_nodes() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let follower = (leader + 1) % 3;
    let c = cluster.client(follower).await;
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..50 {
        let (k, v) = (format!("key/{i:03}"), format!("value-{i}"));
        let reply = retry(Duration::from_secs(5), || c.set(&k, &v)).await.unwrap();
        assert!(reply.index > 0);
        expected.insert(k, v);
    }
    let many: Vec<(String, String)> = (0..5).map(|i| (format!("map/{i}"), format!("m{i}"))).collect();
    c.set_many(many.clone()).await.unwrap();
    expected.extend(many);
    let gone: Vec<String> = (0..10).map(|i| format!("key/{i:03}")).collect();
    assert_eq!(c.delete(gone.clone()).await.unwrap(), 10);
    assert_eq!(c.delete(gone.clone()).await.unwrap(), 0, "deleting absent keys is not an error");
    for k in &gone {
        expected.remove(k);
    }
    for i in 0..3 {
        let ci = cluster.client(i).await;
        for (k, v) in expected.iter().step_by(7) {
            assert_eq!(
                ci.get(k, Consistency::Linearizable).await.unwrap().as_deref(),
                Some(v.as_str()),
                "node {}",
                i + 1
            );
        }
        assert_eq!(ci.get("key/000", Consistency::Linearizable).await.unwrap(), None);
        let maps = ci.list("map/", Consistency::Linearizable).await.unwrap();
        assert_eq!(maps.len(), 5);
    }
    let expected: Vec<(String, String)> = expected.into_iter().collect();
    cluster.wait_converged(&expected, Duration::from_secs(5)).await;
}

/// `status` reports the fields operators and the CLI rely on, consistently across nodes.
#[actix_rt::test]
async fn status_reports_roles_indexes_and_peers() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    cluster.client(leader).await.set("a", "1").await.unwrap();
    let s = cluster.status(leader).await.unwrap();
    assert_eq!(s.peers.len(), 2);
    assert!(s.commit_index >= 2, "no-op and the write are committed: {s:?}");
    assert!(s.last_log_index >= s.commit_index);
    assert!(s.peers.iter().all(|p| p.match_index.is_some()), "leader knows match indexes");
    for i in 0..3 {
        let si = cluster.status(i).await.unwrap();
        assert_eq!(si.leader, Some(s.id));
        assert_eq!(si.term, s.term);
    }
}
