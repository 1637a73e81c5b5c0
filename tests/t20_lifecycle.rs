//! t20: nodes stop and start; nothing acknowledged is lost and stragglers catch up.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Cluster, retry};
use dister::Consistency;

async fn write_keys(cluster: &Cluster, via: usize, prefix: &str, n: usize, into: &mut BTreeMap<String, String>) {
    let c = cluster.client(via).await;
    for i in 0..n {
        let (k, v) = (format!("{prefix}{i:04}"), format!("v{i}"));
        retry(Duration::from_secs(5), || c.set(&k, &v)).await.unwrap();
        into.insert(k, v);
    }
}

async fn assert_readable(cluster: &Cluster, via: usize, expected: &BTreeMap<String, String>) {
    let c = cluster.client(via).await;
    let got = retry(Duration::from_secs(5), || c.list("", Consistency::Linearizable)).await.unwrap();
    let got: BTreeMap<_, _> = got.into_iter().collect();
    assert_eq!(&got, expected, "linearizable list through node {}", via + 1);
}

/// Stopping the leader elects a new one; every acknowledged write is still readable.
///
/// 1. Write 100 keys.
/// 2. Stop the leader's whole actor system.
/// 3. A new leader is agreed by the two survivors within 2 s, in a higher term.
/// 4. Every key reads back (linearizable) through both survivors; new writes succeed.
/// 5. The old leader restarts, rejoins as follower and converges.
#[actix_rt::test]
async fn leader_stopped_new_leader_keeps_every_acknowledged_write() {
    let mut cluster = Cluster::start(3);
    let old = cluster.wait_leader(Duration::from_secs(2)).await;
    let old_term = cluster.status(old).await.unwrap().term;
    let mut expected = BTreeMap::new();
    write_keys(&cluster, (old + 1) % 3, "a/", 100, &mut expected).await;
    cluster.stop_node(old);
    let new = cluster.wait_leader(Duration::from_secs(2)).await;
    assert_ne!(new, old);
    assert!(cluster.status(new).await.unwrap().term > old_term);
    for i in (0..3).filter(|&i| i != old) {
        assert_readable(&cluster, i, &expected).await;
    }
    write_keys(&cluster, new, "b/", 20, &mut expected).await;
    cluster.start_node(old);
    let expected_vec: Vec<_> = expected.clone().into_iter().collect();
    cluster.wait_converged(&expected_vec, Duration::from_secs(5)).await;
}

/// A follower stopped while writes go on catches up when it returns.
///
/// 1. Write 50 keys; stop a follower.
/// 2. Write 2,000 more keys (more than one replication batch of small entries would need
///    when batches are bounded low; here the batch limit is 64 entries).
/// 3. Restart the follower from its data directory: it converges to the same map and its
///    linearizable reads answer everything.
#[actix_rt::test]
async fn stopped_follower_catches_up_after_restart() {
    let mut cluster = Cluster::start_with(3, |c| c.max_append_entries = 64);
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let follower = (leader + 1) % 3;
    let mut expected = BTreeMap::new();
    write_keys(&cluster, leader, "a/", 50, &mut expected).await;
    cluster.stop_node(follower);
    let c = cluster.client(leader).await;
    let mut batch = Vec::new();
    for i in 0..2_000 {
        batch.push((format!("b/{i:05}"), format!("v{i}")));
    }
    // Concurrent writers, so the catch-up has many entries to ship.
    let mut tasks = Vec::new();
    for chunk in batch.chunks(100) {
        let c = c.clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::task::spawn_local(async move {
            for (k, v) in chunk {
                c.set(&k, &v).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    expected.extend(batch);
    let before = cluster.status(leader).await.unwrap();
    cluster.start_node(follower);
    let expected_vec: Vec<_> = expected.clone().into_iter().collect();
    cluster.wait_converged(&expected_vec, Duration::from_secs(10)).await;
    assert_readable(&cluster, follower, &expected).await;
    let after = cluster.status(follower).await.unwrap();
    assert!(after.last_log_index >= before.last_log_index);
}

/// The whole cluster stopped and started again serves the same data from disk.
///
/// 1. Write 200 keys and delete 20.
/// 2. Stop all three nodes; start all three from their data directories.
/// 3. A leader is elected; the map reads back identical through every node.
#[actix_rt::test]
async fn whole_cluster_restarts_from_disk_with_the_same_data() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let mut expected = BTreeMap::new();
    write_keys(&cluster, leader, "k/", 200, &mut expected).await;
    let c = cluster.client(leader).await;
    let gone: Vec<String> = (0..20).map(|i| format!("k/{i:04}")).collect();
    c.delete(gone.clone()).await.unwrap();
    for k in gone {
        expected.remove(&k);
    }
    for i in 0..3 {
        cluster.stop_node(i);
    }
    for i in 0..3 {
        cluster.start_node(i);
    }
    cluster.wait_leader(Duration::from_secs(3)).await;
    for i in 0..3 {
        assert_readable(&cluster, i, &expected).await;
    }
    let expected_vec: Vec<_> = expected.into_iter().collect();
    cluster.wait_converged(&expected_vec, Duration::from_secs(5)).await;
}

/// A node whose log diverged (uncommitted entries from an old term) is repaired: the
/// divergent suffix is cut and replaced by the new leader's entries (dister's "check and
/// fix", done with the AppendEntries consistency check).
///
/// 1. Write `base/*` keys; stop both followers.
/// 2. Write `lost/*` keys to the lone leader: they are appended to its log but can never
///    commit (the clients time out); its log is now longer than its commit index.
/// 3. Stop it. Start the two others: they elect a leader and commit `new/*` keys.
/// 4. Restart the old leader: it becomes a follower, its `lost/*` entries are replaced, and
///    every node converges to `base/*` + `new/*` with identical last log entries.
#[actix_rt::test]
async fn diverged_follower_is_repaired() {
    let mut cluster = Cluster::start_with(3, |c| c.request_timeout_ms = 500);
    let old = cluster.wait_leader(Duration::from_secs(2)).await;
    let mut expected = BTreeMap::new();
    write_keys(&cluster, old, "base/", 20, &mut expected).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    for &i in &others {
        cluster.stop_node(i);
    }
    let c = cluster.client(old).await;
    let mut lost = 0;
    for i in 0..5 {
        // Check-quorum makes the lone leader step down after an election timeout, so only
        // the first few writes reach its log; each one times out uncommitted.
        let r = c.set(&format!("lost/{i}"), "never").await;
        assert!(r.is_err(), "a write without a majority must not be acknowledged: {r:?}");
        lost += 1;
    }
    let s = cluster.status(old).await.unwrap();
    assert!(s.last_log_index > s.commit_index, "lone leader holds uncommitted entries: {s:?}");
    assert!(lost > 0);
    cluster.stop_node(old);
    for &i in &others {
        cluster.start_node(i);
    }
    let new = cluster.wait_leader(Duration::from_secs(3)).await;
    write_keys(&cluster, new, "new/", 20, &mut expected).await;
    cluster.start_node(old);
    let expected_vec: Vec<_> = expected.clone().into_iter().collect();
    cluster.wait_converged(&expected_vec, Duration::from_secs(10)).await;
    // Same last entry everywhere once the repaired node has caught up.
    let leader_status = cluster.status(new).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = cluster.status(old).await.unwrap();
        if s.last_log_index == leader_status.last_log_index && s.last_log_term == leader_status.last_log_term {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "old leader's log not repaired: {s:?} vs {leader_status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_readable(&cluster, old, &expected).await;
}
