//! t49: backpressure. A node holds only so much client work; past its bounds it refuses at
//! once with a retryable "overloaded" (HTTP 503 with `Retry-After` on both HTTP APIs, an
//! `Overloaded` error on the wire), loses nothing it accepted, and keeps its leader. A wire
//! client that pipelines without reading is disconnected; clients past
//! `max_client_connections` are refused at the handshake.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Cluster;
use dister::wire::{Frame, Hello, Request, handshake, spawn_writer};
use dister::{ApiError, Client, ClientError, Consistency};
use futures::StreamExt;

fn tight(c: &mut dister::Config) {
    c.http = Some(format!("127.0.0.1:{}", common::free_port()));
    c.max_pending_writes = 2;
}

/// One POST; status, `Retry-After`, body.
async fn post(url: String, content_type: &str, body: String) -> (u16, Option<String>, String) {
    let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let mut r = client.post(url).insert_header(("content-type", content_type)).send_body(body).await.expect("post");
    let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = String::from_utf8_lossy(&r.body().await.unwrap_or_default()).into_owned();
    (r.status().as_u16(), retry, text)
}

/// Writes past the bound are refused at once and say when to retry; what was accepted is
/// all there; the leader stays.
///
/// 1. Three nodes that hold at most 2 writes at once each.
/// 2. 64 concurrent writes on dister's `/kv` and 64 on Nacos' config publish, through a
///    follower: some succeed, the others are 503s with `Retry-After` and "overloaded".
/// 3. Every acknowledged write reads back linearizably; the leader and term did not change.
#[actix_rt::test]
async fn writes_past_the_bound_are_refused_with_a_retry_hint() {
    let cluster = Cluster::start_with(3, tight);
    let leader = cluster.wait_leader(Duration::from_secs(3)).await;
    let term = cluster.status(leader).await.expect("status").term;
    let follower = (leader + 1) % 3;
    let http = cluster.configs[follower].http.clone().expect("http");
    let kv = (0..64).map(|i| {
        let url = format!("http://{http}/kv");
        async move { (format!("k{i}"), post(url, "application/json", format!("{{\"k{i}\":\"v{i}\"}}")).await) }
    });
    let cfg = (0..64).map(|i| {
        let url = format!("http://{http}/nacos/v1/cs/configs");
        let form = format!("dataId=d{i}&group=DEFAULT_GROUP&content=c{i}");
        async move { (format!("d{i}"), post(url, "application/x-www-form-urlencoded", form).await) }
    });
    let (kv, cfg) = futures::join!(futures::future::join_all(kv), futures::future::join_all(cfg));
    let mut acked = BTreeMap::new();
    let mut refused = 0;
    for (key, (status, retry, body)) in kv.iter().chain(cfg.iter()) {
        match status {
            200 => {
                acked.insert(key.clone(), ());
            }
            503 => {
                refused += 1;
                assert!(body.contains("overloaded"), "a refusal says why: {body}");
                assert_eq!(retry.as_deref(), Some("1"), "a refusal says when to retry");
            }
            other => panic!("{key}: status {other}: {body}"),
        }
    }
    assert!(refused > 0 && !acked.is_empty(), "{refused} refused, {} acknowledged", acked.len());
    let c = cluster.client(leader).await;
    for key in acked.keys() {
        let got = if let Some(i) = key.strip_prefix('k') {
            c.get(key, Consistency::Linearizable).await.expect("get") == Some(format!("v{i}"))
        } else {
            let i = &key[1..];
            let k = format!("nacos/config/public/DEFAULT_GROUP/{key}");
            c.get(&k, Consistency::Linearizable).await.expect("get").is_some_and(|v| v.contains(&format!("c{i}")))
        };
        assert!(got, "acknowledged write {key} is not there");
    }
    let after = cluster.status(leader).await.expect("status");
    assert_eq!((after.role, after.term), (dister::raft::Role::Leader, term), "the leader stayed");
}

/// On the wire the refusal is an `Overloaded` error a client may retry; a client with more
/// than 1024 requests outstanding on one connection is disconnected; one client too many is
/// refused at the handshake, and counted.
///
/// 1. One node holding 2 writes at once: 200 writes pipelined on one connection give some
///    `Overloaded` (retryable) answers and some successes, nothing else.
/// 2. 1,500 reads of 100 KiB each pipelined on one connection whose answers are not read:
///    the node closes it, saying why, before answering them all.
/// 3. With `max_client_connections` 3, a fourth client is refused, and `status` counts it.
#[actix_rt::test]
async fn the_wire_refuses_overload_pipelining_floods_and_extra_connections() {
    let cluster = Cluster::start_with(1, |c| {
        c.max_pending_writes = 2;
        c.max_client_connections = 3;
    });
    cluster.wait_leader(Duration::from_secs(3)).await;
    let c = cluster.client(0).await;
    let writes = (0..200).map(|i| {
        let c = c.clone();
        async move { c.set(&format!("w{i}"), "x").await }
    });
    let results = futures::future::join_all(writes).await;
    let overloaded = results
        .iter()
        .filter(|r| matches!(r, Err(ClientError::Api(e @ ApiError::Overloaded { .. })) if e.is_retryable()))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(overloaded > 0 && ok > 0 && ok + overloaded == 200, "{ok} ok, {overloaded} overloaded: {results:?}");

    // 100 values of 1 KiB: every `list` answer is 100 KiB, so answers that are not read
    // soon fill the socket, and then the writer's queue.
    let big: Vec<(String, String)> = (0..100).map(|i| (format!("big{i:03}"), "v".repeat(1024))).collect();
    c.set_many(big).await.expect("set");
    let stream = tokio::net::TcpStream::connect(cluster.addr(0)).await.expect("connect");
    let hello = Hello { group: "default".into(), node_id: None, token: None, lease_wait_ms: None };
    let (mut reader, write, _) =
        handshake::connect(stream, hello, Duration::from_secs(5), 1 << 30).await.expect("hello");
    let writer = spawn_writer(write);
    for id in 0..1_500 {
        let list = Request::List { prefix: "big".into(), consistency: Consistency::Stale };
        writer.send(Frame::Request(id, list)).expect("queued");
    }
    // Only now read: the node must have given up on this connection before answering all.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut answers = 0;
    let mut said = None;
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(5), reader.next()).await {
        match frame {
            Ok(Frame::Response(..)) => answers += 1,
            Ok(Frame::Error(m)) => said = Some(m),
            _ => break,
        }
    }
    assert!(answers < 1_500, "all 1,500 answered: the flood was not cut off");
    assert!(said.as_deref().is_some_and(|m| m.contains("outstanding")), "the node says why it closed: {said:?}");
    drop(writer);

    let mut extra = Vec::new();
    let mut refused = None;
    for _ in 0..8 {
        match Client::connect(&cluster.addr(0), "default").await {
            Ok(c) => extra.push(c),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("a client past max_client_connections was let in");
    assert!(e.to_string().contains("max_client_connections"), "{e}");
    drop(extra);
    // Places are given back: a status call gets in again (soon), and counts the refusal.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Ok(c) = Client::connect(&cluster.addr(0), "default").await
            && let Ok(s) = c.status().await
        {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "no client got in again after the others left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.refused.too_many_connections >= 1, "{:?}", status.refused);
}
