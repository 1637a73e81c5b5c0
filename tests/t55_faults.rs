//! t55: faults on the real transport between named nodes (partitions, one-way partitions,
//! loss, delay) and paused nodes. Safety holds throughout; liveness returns once a majority
//! can talk.

use crate::common;

use std::time::{Duration, Instant};

use common::{Cluster, retry};
use dister::raft::Role;
use dister::{ClientError, Consistency};

async fn term_and_leader(cluster: &Cluster, i: usize) -> (u64, Option<u64>) {
    let s = cluster.status(i).await.expect("status");
    (s.term, s.leader)
}

/// A leader cut off from the majority never answers a read with stale data (the bug Jepsen
/// found in etcd 0.4 and Consul): it can no longer confirm leadership, so reads through it
/// fail, while the majority elects a new leader and takes writes.
///
/// 1. Write k=v1. Isolate the leader (both directions to both peers; clients still reach it).
/// 2. Through a follower, write k=v2 until acknowledged (a new leader is elected).
/// 3. A linearizable read through the old leader fails; it never returns v1.
/// 4. Heal: the old leader follows, and reads k=v2.
#[actix_rt::test]
async fn isolated_leader_never_serves_a_stale_read() {
    let cluster = Cluster::start_faulty(3, |c| c.request_timeout_ms = 1_000);
    let old = cluster.wait_leader(Duration::from_secs(2)).await;
    let to_old = cluster.client(old).await;
    to_old.set("k", "v1").await.unwrap();
    cluster.faults().isolate(old as u64 + 1, cluster.ids());
    let follower = cluster.client((old + 1) % 3).await;
    retry(Duration::from_secs(5), || follower.set("k", "v2")).await.unwrap();
    let t = Instant::now();
    match to_old.get("k", Consistency::Linearizable).await {
        Ok(v) => panic!("isolated old leader answered a linearizable read: {v:?}"),
        Err(ClientError::Api(e)) => assert!(e.is_retryable() || e.to_string().contains("timed out"), "{e}"),
        Err(e) => panic!("unexpected {e}"),
    }
    assert!(t.elapsed() < Duration::from_millis(1_500));
    assert_ne!(cluster.status(old).await.unwrap().role, Role::Leader, "isolated node still claims leadership");
    cluster.faults().heal();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(Some(v)) = to_old.get("k", Consistency::Linearizable).await {
            assert_eq!(v, "v2");
            break;
        }
        assert!(Instant::now() < deadline, "old leader did not rejoin");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A one-way partition (leader → one follower) does not depose a leader a majority still
/// hears: pre-vote fails at the other follower, so the term does not move, and writes keep
/// committing through the leader and the other follower.
#[actix_rt::test]
async fn one_way_partition_does_not_depose_a_healthy_leader() {
    let cluster = Cluster::start_faulty(3, |_| {});
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let (term, _) = term_and_leader(&cluster, leader).await;
    let cut = (leader + 1) % 3;
    cluster.faults().partition_oneway(leader as u64 + 1, cut as u64 + 1);
    let c = cluster.client(leader).await;
    let until = Instant::now() + Duration::from_secs(2);
    let mut n = 0;
    while Instant::now() < until {
        c.set(&format!("k{n}"), "v").await.unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(term_and_leader(&cluster, leader).await, (term, Some(leader as u64 + 1)), "leadership changed");
    assert_eq!(cluster.status((leader + 2) % 3).await.unwrap().term, term);
    cluster.faults().heal();
    let expected: Vec<(String, String)> = {
        let mut v: Vec<_> = (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect();
        v.sort();
        v
    };
    cluster.wait_converged(&expected, Duration::from_secs(5)).await;
}

/// With a tenth of all frames lost in every direction, writes still commit (with retries)
/// and every node converges once the loss stops.
#[actix_rt::test]
async fn lossy_links_still_commit_and_converge() {
    let cluster = Cluster::start_faulty(3, |c| c.request_timeout_ms = 1_000);
    cluster.wait_leader(Duration::from_secs(2)).await;
    for a in cluster.ids() {
        for b in cluster.ids() {
            if a != b {
                cluster.faults().drop_fraction(a, b, 0.1);
            }
        }
    }
    let mut expected = Vec::new();
    for i in 0..20 {
        let (k, v) = (format!("k{i:02}"), format!("v{i}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Through whichever node answers; a lost answer may hide a write that happened,
            // which is fine here: the same value is written again.
            let node = i % 3;
            if let Ok(c) = cluster.connect(node).await
                && c.with_timeout(Duration::from_secs(2)).set(&k, &v).await.is_ok()
            {
                break;
            }
            assert!(Instant::now() < deadline, "write {k} never committed under 10% loss");
        }
        expected.push((k, v));
    }
    cluster.faults().heal();
    cluster.wait_converged(&expected, Duration::from_secs(10)).await;
}

/// 30 ms of delay on every link slows the cluster down but changes no outcome: a stable
/// leader, acknowledged writes, linearizable reads everywhere.
#[actix_rt::test]
async fn delayed_links_keep_working() {
    let cluster = Cluster::start_faulty(3, |_| {});
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let (term, _) = term_and_leader(&cluster, leader).await;
    for a in cluster.ids() {
        for b in cluster.ids() {
            if a != b {
                cluster.faults().delay(a, b, Duration::from_millis(30));
            }
        }
    }
    let c = cluster.client((leader + 1) % 3).await;
    let t = Instant::now();
    for i in 0..10 {
        c.set(&format!("k{i}"), "v").await.unwrap();
    }
    assert!(t.elapsed() >= Duration::from_millis(10 * 60), "the delay did not apply: {:?}", t.elapsed());
    for i in 0..3 {
        let v = cluster.client(i).await.get("k9", Consistency::Linearizable).await.unwrap();
        assert_eq!(v.as_deref(), Some("v"));
    }
    assert_eq!(term_and_leader(&cluster, leader).await.0, term, "delay alone caused an election");
}

/// A paused leader (its whole actor system frozen, as by SIGSTOP) is replaced; when it
/// resumes it learns the new term and steps down; no acknowledged write is lost.
#[actix_rt::test]
async fn paused_leader_is_replaced_and_steps_down() {
    let cluster = Cluster::start_faulty(3, |_| {});
    let old = cluster.wait_leader(Duration::from_secs(2)).await;
    let (term, _) = term_and_leader(&cluster, old).await;
    let survivor = cluster.client((old + 1) % 3).await;
    survivor.set("before", "1").await.unwrap();
    cluster.pause(old, Duration::from_millis(1_500));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A write passed on to the frozen leader fails as soon as the survivors elect another
    // (`Timeout`: it may still commit, so it is not called retryable); setting the same value
    // again is safe, so this client retries that too.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match survivor.set("during", "2").await {
            Ok(_) => break,
            Err(dister::ClientError::Api(e))
                if (e.is_retryable() || matches!(e, dister::ApiError::Timeout { .. })) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the write during the pause failed: {e}"),
        }
    }
    let new_term = cluster.status((old + 1) % 3).await.unwrap().term;
    assert!(new_term > term);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(s) = cluster.status(old).await
            && s.term >= new_term
            && s.role != Role::Leader
        {
            break;
        }
        assert!(Instant::now() < deadline, "old leader did not step down after resuming");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = cluster.client(old).await;
    assert_eq!(c.get("before", Consistency::Linearizable).await.unwrap().as_deref(), Some("1"));
    assert_eq!(c.get("during", Consistency::Linearizable).await.unwrap().as_deref(), Some("2"));
}
