//! t40: without a majority there is no leader, and clients are told so clearly and in time.

use crate::common;

use std::time::{Duration, Instant};

use common::Cluster;
use dister::{ApiError, ClientError, Consistency};

/// A node cut off from its majority answers writes and linearizable reads with a clear
/// error within the request timeout, never hangs, and still serves stale reads.
///
/// 1. Start 3 nodes (request timeout 2 s), write a key, stop two nodes.
/// 2. At once, a write to the survivor fails within the timeout (plus slack): whatever the
///    survivor still believes, it must not hang.
/// 3. After an election timeout, the survivor knows it has no leader: a write fails at once
///    with `no leader` and a retry hint; so does a linearizable read.
/// 4. A stale read still answers from the local copy.
/// 5. A client with retries on waits until a peer comes back.
#[actix_rt::test]
async fn no_leader_gives_a_clear_error_within_the_timeout() {
    let mut cluster = Cluster::start_with(3, |c| c.request_timeout_ms = 2_000);
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let survivor = (leader + 1) % 3;
    cluster.client(leader).await.set("k", "v").await.unwrap();
    let c = cluster.client(survivor).await;
    // The survivor has applied the write before its peers go away.
    let deadline = Instant::now() + Duration::from_secs(2);
    while c.get("k", Consistency::Stale).await.unwrap().is_none() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in (0..3).filter(|&i| i != survivor) {
        cluster.stop_node(i);
    }

    let t = Instant::now();
    let r = c.set("k2", "v2").await;
    assert!(r.is_err(), "no majority, yet the write was acknowledged");
    assert!(t.elapsed() < Duration::from_millis(2_500), "write hung for {:?}: {r:?}", t.elapsed());

    tokio::time::sleep(Duration::from_millis(700)).await;
    let t = Instant::now();
    match c.set("k3", "v3").await {
        Err(ClientError::Api(e @ ApiError::NoLeader { retry_after_ms })) => {
            assert!(retry_after_ms > 0);
            assert!(e.to_string().starts_with("no leader"), "{e}");
        }
        other => panic!("expected no leader, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_millis(200), "no-leader answer took {:?}", t.elapsed());
    assert!(matches!(c.get("k", Consistency::Linearizable).await, Err(ClientError::Api(ApiError::NoLeader { .. }))));
    assert_eq!(c.get("k", Consistency::Stale).await.unwrap().as_deref(), Some("v"));

    // 5. A client that retries (as the CLI's does) waits the refusals out: its write, sent
    //    while there is no leader, lands once a peer is back and a leader elected.
    let patient = c.clone().with_retries(Duration::from_secs(20));
    let write = actix_rt::spawn(async move { patient.set("k4", "v4").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!write.is_finished(), "the retrying write gave up while there was no leader");
    let back = (0..3).find(|&i| i != survivor).unwrap();
    cluster.start_node(back);
    write.await.unwrap().expect("the write lands once there is a leader");
    assert_eq!(c.get("k4", Consistency::Linearizable).await.unwrap().as_deref(), Some("v4"));
}
