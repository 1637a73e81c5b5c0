//! t10: a healthy cluster elects a leader, replicates writes made through any node, and reads
//! them back linearizably from every node.

use crate::common;

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

/// Bad input gets a clear error and changes nothing: an empty key, an empty command, a
/// malformed command for a built-in namespace, and an unknown namespace never reach the log.
#[actix_rt::test]
async fn bad_writes_are_refused_before_the_log() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let c = cluster.client((leader + 1) % 3).await;
    c.set("ok", "1").await.unwrap();
    let before = cluster.status(leader).await.unwrap().last_log_index;
    let bad = |r: Result<dister::wire::WriteReply, dister::ClientError>, what: &str| match r {
        Err(dister::ClientError::Api(dister::ApiError::BadRequest(m))) => assert!(m.contains(what), "{m}"),
        other => panic!("expected a bad request mentioning {what:?}, got {other:?}"),
    };
    bad(c.set("", "v").await, "must not be empty");
    bad(c.set_many(vec![]).await, "no key");
    bad(c.write("kv", "{not json".into()).await, "kv command");
    bad(c.write("registry", r#"{"Set":[{"name":"","node":[]}]}"#.into()).await, "service name");
    assert!(matches!(c.delete(vec![]).await, Err(dister::ClientError::Api(dister::ApiError::BadRequest(_)))));
    assert!(matches!(
        c.write("nope", "{}".into()).await,
        Err(dister::ClientError::Api(dister::ApiError::UnknownNamespace(_)))
    ));
    assert_eq!(cluster.status(leader).await.unwrap().last_log_index, before, "a refused write reached the log");
    assert_eq!(c.get("ok", Consistency::Linearizable).await.unwrap().as_deref(), Some("1"));
}

/// The service registry applies replicated service set/remove on every node.
///
/// 1. Through a follower, register two services (dister's shape: name, type, nodes with
///    their fields; dister's `priority` is the weight; unknown fields are kept).
/// 2. Every node answers a linearizable get and list with them; removing one removes it
///    everywhere.
#[actix_rt::test]
async fn service_registry_replicates() {
    use dister::messages::registry::{RegistryQuery, Service};
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let c = cluster.client((leader + 1) % 3).await;
    let set = r#"{"Set":[
        {"name":"db","type":"mysql","node":[{"host":"127.0.0.1","port":3306,"priority":2,"user":"app","owner":"team-a"}]},
        {"name":"web","type":"http","node":[{"host":"127.0.0.2","port":80},{"host":"127.0.0.3","port":80,"enabled":false}]}
    ]}"#;
    retry(Duration::from_secs(5), || c.write("registry", set.into())).await.unwrap();
    for i in 0..3 {
        let ci = cluster.client(i).await;
        let q = serde_json::to_vec(&RegistryQuery::Get("db".into())).unwrap();
        let db: Option<Service> =
            serde_json::from_slice(&ci.query("registry", q.into(), Consistency::Linearizable).await.unwrap()).unwrap();
        let db = db.expect("db registered");
        assert_eq!((db.kind.as_str(), db.nodes[0].port, db.nodes[0].weight), ("mysql", 3306, 2.0));
        assert_eq!(db.nodes[0].extra.get("owner"), Some(&serde_json::json!("team-a")), "unknown fields are kept");
        let q = serde_json::to_vec(&RegistryQuery::List).unwrap();
        let all: Vec<Service> =
            serde_json::from_slice(&ci.query("registry", q.into(), Consistency::Linearizable).await.unwrap()).unwrap();
        assert_eq!(all.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["db", "web"]);
        assert!(!all[1].nodes[1].enabled);
    }
    c.write("registry", r#"{"Remove":["db"]}"#.into()).await.unwrap();
    for i in 0..3 {
        let q = serde_json::to_vec(&RegistryQuery::Get("db".into())).unwrap();
        let got = cluster.client(i).await.query("registry", q.into(), Consistency::Linearizable).await.unwrap();
        assert_eq!(&got[..], b"null");
    }
}

/// A write that names the term it was decided in (the registry's check outcomes) is taken
/// only by the leader of that term: a node that led before and leads again never writes,
/// in its new term, what it decided in the old one.
///
/// 1. A single node, embedded; it leads term T.
/// 2. A write naming T is applied; one naming T + 1 or T - 1 is refused as "not leader".
#[actix_rt::test]
async fn a_write_bound_to_a_term_is_refused_in_another() {
    use dister::messages::client::{ClientWrite, GetElectionStatus};
    use dister::wire::Write;
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let config = dister::Config {
        listen: format!("127.0.0.1:{}", common::free_port()),
        data_dir: dir.path().into(),
        ..dister::Config::default()
    };
    let node = dister::Node::start(config).await.expect("start");
    let h = node.handle();
    let deadline = Instant::now() + Duration::from_secs(2);
    let term = loop {
        let s = h.cluster().election().send(GetElectionStatus).await.unwrap();
        if s.role == Role::Leader {
            break s.term;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let write = |t: u64| ClientWrite {
        write: Write { namespace: "kv".into(), data: br#"{"Set":[["k","v"]]}"#.to_vec().into() },
        forwarded: true,
        place: None,
        term: Some(t),
    };
    assert!(h.cluster().election().send(write(term)).await.unwrap().is_ok(), "the leader's own term");
    for other in [term + 1, term - 1] {
        let r = h.cluster().election().send(write(other)).await.unwrap();
        assert!(matches!(r, Err(dister::ApiError::NotLeader { .. })), "term {other}: {r:?}");
    }
    drop(node);
}
