//! t63: `GET /metrics` (and Nacos' `/nacos/actuator/prometheus`) on a running cluster: etcd's
//! names, the values the cluster's state says, events counted as they happen, the process'
//! own metrics.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Cluster;
use dister::Consistency;
use dister::messages::registry::{Service, ServiceNode};

/// Every sample of a scrape, by its name with labels (`name{a="b"}`), and the content type.
async fn scrape(http: &str, path: &str) -> (String, BTreeMap<String, f64>) {
    let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let mut resp = client.get(format!("http://{http}{path}")).send().await.expect("scrape");
    assert_eq!(resp.status().as_u16(), 200);
    let kind = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body = resp.body().limit(8 << 20).await.unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect();
    (kind, samples)
}

fn value(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    *m.get(name).unwrap_or_else(|| panic!("no {name} among {:?}", m.keys().collect::<Vec<_>>()))
}

/// Scrapes `http` until `ok` holds, at most 5 s; answers the last scrape.
async fn until(http: &str, ok: impl Fn(&BTreeMap<String, f64>) -> bool) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, m) = scrape(http, "/metrics").await;
        if ok(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "metrics never got there: {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The metrics of a 3-node cluster follow what it does.
///
/// 1. 50 key writes, 2 Nacos configs, a service of 2 instances, a POST /kv and a 404.
/// 2. The leader says it leads, saw a leader change, committed and applied at least 52
///    entries, fsynced, timed heartbeats to both peers, holds the keys, configs, services
///    and instances written, counted the HTTP requests by route and status, and has its
///    process metrics. The text is OpenMetrics.
/// 3. A follower says a leader exists and it is not it; Nacos' path serves the same names.
/// 4. A write committed and refused by its state machine is no failed proposal.
/// 5. A leadership transfer is exactly one leader change for the third node.
/// 6. Both followers stop: the new leader counts more failed sends to each, and a write that
///    can no longer commit is counted as failed.
#[actix_rt::test]
async fn metrics_follow_the_cluster() {
    let mut cluster = Cluster::start_with(3, |c| {
        c.http = Some(format!("127.0.0.1:{}", common::free_port()));
        c.request_timeout_ms = 3_000;
    });
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let addrs: Vec<String> = cluster.configs.iter().map(|c| c.http.clone().unwrap()).collect();
    let http = |i: usize| addrs[i].clone();
    let c = cluster.client(leader).await;
    for i in 0..50 {
        c.set(&format!("k{i:02}"), "v").await.unwrap();
    }
    let web = awc::Client::default();
    for id in ["a.yaml", "b.yaml"] {
        let url = format!("http://{}/nacos/v1/cs/configs?dataId={id}&group=G&content=x", http(leader));
        assert_eq!(web.post(url).send().await.unwrap().status().as_u16(), 200);
    }
    let nodes = vec![ServiceNode::new("127.0.0.1", 1), ServiceNode::new("127.0.0.1", 2)];
    c.set_services(vec![Service { name: "s".into(), kind: String::new(), nodes, extra: Default::default() }])
        .await
        .unwrap();
    let r = web.post(format!("http://{}/kv", http(leader))).send_body(r#"{"h":"1"}"#).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(web.get(format!("http://{}/nope", http(leader))).send().await.unwrap().status().as_u16(), 404);
    assert_eq!(c.get("h", Consistency::Linearizable).await.unwrap().as_deref(), Some("1"));

    let peers: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader as u64 + 1).collect();
    let m = until(&http(leader), |m| {
        peers.iter().all(|p| {
            m.get(&format!("dister_network_peer_round_trip_time_seconds_count{{To=\"{p}\"}}")).is_some_and(|&n| n > 0.0)
        })
    })
    .await;
    assert_eq!(value(&m, "dister_server_is_leader"), 1.0);
    assert_eq!(value(&m, "dister_server_has_leader"), 1.0);
    assert!(value(&m, "dister_server_leader_changes_seen_total") >= 1.0);
    assert!(value(&m, "dister_server_proposals_committed_total") >= 52.0);
    assert!(value(&m, "dister_server_proposals_applied_total") >= 52.0);
    assert!(value(&m, "dister_disk_wal_fsync_duration_seconds_count") >= 1.0);
    assert!(value(&m, "dister_kv_keys") >= 53.0, "50 keys, h, and the configs' keys");
    assert_eq!(value(&m, "dister_nacos_configs"), 2.0);
    assert_eq!(value(&m, "dister_registry_services"), 1.0);
    assert_eq!(value(&m, "dister_registry_instances{health=\"healthy\"}"), 2.0);
    assert!(value(&m, "dister_http_requests_total{route=\"/kv\",method=\"POST\",code=\"200\"}") >= 1.0);
    assert!(value(&m, "dister_http_requests_total{route=\"unmatched\",method=\"GET\",code=\"404\"}") >= 1.0);
    assert!(value(&m, "dister_http_request_duration_seconds_count{route=\"/kv\"}") >= 1.0);
    assert!(value(&m, "dister_log_entries") >= 52.0);
    assert!(value(&m, "dister_disk_data_bytes") > 0.0);
    assert!(value(&m, "process_resident_memory_bytes") > 1e6);
    assert!(value(&m, "process_open_fds") > 0.0);
    assert!(value(&m, "process_cpu_seconds_total") > 0.0);
    let (kind, _) = scrape(&http(leader), "/metrics").await;
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");

    let follower = (leader + 1) % 3;
    let (_, f) = scrape(&http(follower), "/metrics").await;
    assert_eq!((value(&f, "dister_server_is_leader"), value(&f, "dister_server_has_leader")), (0.0, 1.0));
    let (_, nacos) = scrape(&http(follower), "/nacos/actuator/prometheus").await;
    assert!(nacos.contains_key("dister_server_is_leader") && nacos.contains_key("process_resident_memory_bytes"));

    // A write its state machine refuses committed: it is no failed proposal.
    let refused = c.write("registry", r#"{"Drop":"no-such-service"}"#.into()).await;
    assert!(matches!(refused, Err(dister::ClientError::Api(dister::ApiError::Apply(_)))), "{refused:?}");
    let m = until(&http(leader), |_| true).await;
    assert_eq!(value(&m, "dister_server_proposals_failed_total"), 0.0);

    // A handover is one leader change for a follower that stays one.
    let stays = (0..3).find(|&i| i != leader && i != follower).unwrap();
    let seen = value(&until(&http(stays), |_| true).await, "dister_server_leader_changes_seen_total");
    let to = cluster.client(leader).await.transfer_leadership(Some(follower as u64 + 1)).await.unwrap();
    assert_eq!(to, follower as u64 + 1);
    let m = until(&http(stays), |m| m.get("dister_server_leader_changes_seen_total") != Some(&seen)).await;
    assert_eq!(value(&m, "dister_server_leader_changes_seen_total"), seen + 1.0);
    let leader = cluster.wait_leader(Duration::from_secs(3)).await;
    let peers: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader as u64 + 1).collect();

    let failures = |m: &BTreeMap<String, f64>, p: u64| {
        m.get(&format!("dister_network_peer_sent_failures_total{{To=\"{p}\"}}")).copied().unwrap_or(0.0)
    };
    let before = until(&http(leader), |_| true).await;
    for i in 0..3 {
        if i != leader {
            cluster.stop_node(i);
        }
    }
    let c = cluster.client(leader).await;
    assert!(c.set("lost", "x").await.is_err(), "no majority: the write cannot commit");
    let m = until(&http(leader), |m| peers.iter().all(|&p| failures(m, p) > failures(&before, p))).await;
    assert!(value(&m, "dister_server_proposals_failed_total") >= 1.0);
}

/// A follower asks its leader one read index for many reads: 400 linearizable reads sent at
/// once through a follower all see the write made before them, with far fewer read indexes
/// asked of the leader than reads (`dister_server_read_indexes_forwarded_total`).
#[actix_rt::test]
async fn a_follower_batches_the_read_indexes_it_asks_for() {
    let cluster = Cluster::start_with(3, |c| c.http = Some(format!("127.0.0.1:{}", common::free_port())));
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let follower = (leader + 1) % 3;
    cluster.client(leader).await.set("seen", "yes").await.unwrap();
    let c = cluster.client(follower).await;
    let reads: Vec<_> = (0..400).map(|_| c.get("seen", Consistency::Linearizable)).collect();
    for r in futures::future::join_all(reads).await {
        assert_eq!(r.unwrap().as_deref(), Some("yes"), "a read older than the write before it");
    }
    let http = cluster.configs[follower].http.clone().unwrap();
    let (_, m) = scrape(&http, "/metrics").await;
    let asked = value(&m, "dister_server_read_indexes_forwarded_total");
    assert!((1.0..100.0).contains(&asked), "{asked} read indexes asked for 400 reads");
    let (_, m) = scrape(&cluster.configs[leader].http.clone().unwrap(), "/metrics").await;
    assert_eq!(value(&m, "dister_server_read_indexes_forwarded_total"), 0.0, "the leader asks nobody");
}
