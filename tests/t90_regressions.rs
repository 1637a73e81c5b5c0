//! t90: regressions, each pinned by the scenario that found it.

use crate::common;

use std::time::Duration;

use common::Cluster;
use dister::raft::Role;

/// Found in review: a peer address that answers as another node (stale DNS, a reused port, a
/// typo) was accepted, so one voter could be counted several times.
///
/// 1. Five members; node 1 is misconfigured so that peers 3, 4 and 5 all point at node 2.
/// 2. Only nodes 1 and 2 run: 2 of 5 is no majority.
/// 3. For 2 s, neither becomes leader (node 1 would, if node 2's answers counted four times).
#[actix_rt::test]
async fn a_peer_answering_as_another_node_is_not_counted() {
    let mut cluster = Cluster::start_with(5, |_| {});
    for i in 2..5 {
        cluster.stop_node(i);
    }
    cluster.stop_node(0);
    let node2 = cluster.addr(1);
    for p in cluster.configs[0].peers.iter_mut().filter(|p| p.id >= 3) {
        p.addr = node2.clone();
    }
    // Node 2 may have been leader of the five; restart it so no leadership lingers.
    cluster.restart_node(1);
    cluster.start_node(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        for i in 0..2 {
            if let Some(s) = cluster.status(i).await {
                assert_ne!(s.role, Role::Leader, "node {} became leader without a majority: {s:?}", i + 1);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
