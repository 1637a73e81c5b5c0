//! t70: a replicated feature added from outside the core (the counter of
//! `examples/counter`) runs on a 3-node cluster: its own namespace, its committed entries in
//! order on every node, its own queries, and its state rebuilt from the log after a restart.

use crate::common;

use crate::counter_actor;

use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use common::{Cluster, Extend, retry};
use counter_actor::{Counters, NAMESPACE, add, value_of};
use dister::messages::apply::StateMachineRef;
use dister::{ApiError, ClientError, Consistency};

fn with_counters() -> Extend {
    Arc::new(|b| {
        let c = Counters::default().start();
        b.state_machine(NAMESPACE, StateMachineRef::of(&c), Some(c.recipient()))
    })
}

/// The counter extension replicates and answers on every node.
///
/// 1. Start three nodes, each with a `Counters` actor registered for `counter`.
/// 2. Through a follower, add to two counters 30 times; each write answers the new value,
///    which counts up exactly (entries applied once, in order).
/// 3. Every node answers a linearizable query with the final values.
/// 4. Restart a node: its counters are rebuilt from its log and answer the same.
/// 5. A write to a namespace nobody registered is refused up front.
#[actix_rt::test]
async fn counter_extension_runs_on_a_three_node_cluster() {
    let mut cluster = Cluster::start_extended(3, |_| {}, Some(with_counters()));
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let follower = (leader + 1) % 3;
    let c = cluster.client(follower).await;
    for i in 1..=30i64 {
        let r = retry(Duration::from_secs(5), || c.write(NAMESPACE, add("a", 2))).await.unwrap();
        assert_eq!(r.output, (2 * i).to_string().as_bytes(), "write {i} answered the running total");
        c.write(NAMESPACE, add("b", -1)).await.unwrap();
    }
    for i in 0..3 {
        let ci = cluster.client(i).await;
        assert_eq!(ci.query(NAMESPACE, value_of("a"), Consistency::Linearizable).await.unwrap(), "60".as_bytes());
        assert_eq!(ci.query(NAMESPACE, value_of("b"), Consistency::Linearizable).await.unwrap(), "-30".as_bytes());
        assert_eq!(ci.query(NAMESPACE, value_of("zzz"), Consistency::Linearizable).await.unwrap(), "0".as_bytes());
    }
    cluster.restart_node(follower);
    cluster.wait_leader(Duration::from_secs(3)).await;
    let c = cluster.client(follower).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while c.query(NAMESPACE, value_of("a"), Consistency::Stale).await.unwrap() != "60".as_bytes() {
        assert!(std::time::Instant::now() < deadline, "restarted node did not rebuild its counters");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        c.write("nobody", add("a", 1)).await,
        Err(ClientError::Api(ApiError::UnknownNamespace(ns))) if ns == "nobody"
    ));
    assert!(matches!(c.write(NAMESPACE, "not json".into()).await, Err(ClientError::Api(ApiError::Apply(_)))));
}
