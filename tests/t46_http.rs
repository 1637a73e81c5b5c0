//! t46: every endpoint of the HTTP API, with good and bad input, through the leader and
//! through a follower: dister's paths and `{"result","message","data"}` envelope; bad input is a
//! 400 that says what is wrong, never a 500.

use crate::common;

use std::time::Duration;

use common::Cluster;
use serde_json::{Value, json};

/// One HTTP exchange: status and parsed envelope.
async fn call(method: &str, url: &str, body: Option<&str>) -> (u16, Value) {
    let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let req = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "PUT" => client.put(url),
        "DELETE" => client.delete(url),
        other => panic!("method {other}"),
    };
    let mut resp = match body {
        Some(b) => req.insert_header(("content-type", "application/json")).send_body(b.to_string()).await,
        None => req.send().await,
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let bytes = resp.body().await.unwrap();
    let v: Value =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{method} {url}: not JSON ({e}): {bytes:?}"));
    assert!(v.get("result").is_some() && v.get("message").is_some() && v.get("data").is_some(), "no envelope: {v}");
    (resp.status().as_u16(), v)
}

fn ok(r: &(u16, Value)) -> &Value {
    assert_eq!((r.0, &r.1["result"], &r.1["message"]), (200, &json!(1), &json!("ok")), "{r:?}");
    &r.1["data"]
}

fn refused(r: &(u16, Value), status: u16, says: &str) {
    assert_eq!(r.0, status, "{r:?}");
    assert_eq!(r.1["result"], json!(0), "{r:?}");
    let m = r.1["message"].as_str().unwrap_or_default();
    assert!(m.contains(says), "message {m:?} does not say {says:?}");
}

fn with_http(c: &mut dister::Config) {
    c.http = Some(format!("127.0.0.1:{}", common::free_port()));
}

/// Every endpoint, through the leader and a follower.
///
/// 1. For each of the two nodes: set pairs, get one, get all, delete; bad bodies are 400s.
/// 2. Register services, get one and all, balance, remove; bad bodies and names are 400/404.
/// 3. `GET /node` lists three nodes; bad `POST`/`DELETE /node` bodies are 400s that change
///    nothing (t46's membership test adds and removes for real).
/// 4. `GET /health` is 200 with a leader; `GET /status` carries the status fields.
#[actix_rt::test]
async fn every_endpoint_through_leader_and_follower() {
    let cluster = Cluster::start_with(3, with_http);
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    for (round, node) in [leader, (leader + 1) % 3].into_iter().enumerate() {
        let base = format!("http://{}", cluster.configs[node].http.clone().unwrap());
        let k = |s: &str| format!("r{round}-{s}");
        // kv
        let set =
            ok(&call("POST", &format!("{base}/kv"), Some(&format!(r#"{{"{}":"1","{}":"2"}}"#, k("a"), k("b")))).await)
                .clone();
        assert!(set["index"].as_u64().unwrap() > 0);
        assert_eq!(ok(&call("GET", &format!("{base}/kv?k={}", k("a")), None).await), &json!("1"));
        assert_eq!(ok(&call("GET", &format!("{base}/kv?k={}", k("zz")), None).await), &Value::Null);
        let all = ok(&call("GET", &format!("{base}/kv"), None).await).clone();
        assert_eq!(all[k("b")], json!("2"));
        let stale = ok(&call("GET", &format!("{base}/kv?stale=1&prefix={}", k("")), None).await).clone();
        assert!(stale.as_object().unwrap().len() <= 2);
        assert_eq!(
            ok(&call("DELETE", &format!("{base}/kv"), Some(&format!(r#"["{}","nope"]"#, k("a")))).await),
            &json!({"deleted": 1})
        );
        refused(&call("POST", &format!("{base}/kv"), Some("{not json")).await, 400, "JSON object");
        refused(&call("POST", &format!("{base}/kv"), Some(r#"{"x":1}"#)).await, 400, "must be a string");
        refused(&call("POST", &format!("{base}/kv"), Some("{}")).await, 400, "no key");
        refused(&call("POST", &format!("{base}/kv"), Some(r#"{"":"v"}"#)).await, 400, "must not be empty");
        refused(&call("POST", &format!("{base}/kv"), None).await, 400, "body must be");
        refused(&call("DELETE", &format!("{base}/kv"), Some(r#"{"a":1}"#)).await, 400, "JSON array of keys");
        refused(&call("GET", &format!("{base}/kv?k="), None).await, 400, "must not be empty");

        // services
        let svc = format!(
            r#"[{{"name":"{}","type":"http","node":[{{"host":"127.0.0.1","port":9001,"priority":2}},{{"host":"127.0.0.2","port":9002,"enabled":false}}]}}]"#,
            k("web")
        );
        ok(&call("POST", &format!("{base}/service"), Some(&svc)).await);
        let one = ok(&call("GET", &format!("{base}/service?name={}", k("web")), None).await).clone();
        assert_eq!((one["type"].clone(), one["node"][0]["weight"].clone()), (json!("http"), json!(2)));
        let list = ok(&call("GET", &format!("{base}/service"), None).await).clone();
        assert!(list.as_array().unwrap().iter().any(|s| s["name"] == json!(k("web"))));
        let picked = ok(&call("GET", &format!("{base}/balance?name={}", k("web")), None).await).clone();
        assert_eq!(picked["port"], json!(9001), "the disabled instance was picked: {picked}");
        ok(&call("GET", &format!("{base}/balance?name={}&strategy=round_robin", k("web")), None).await);
        refused(
            &call("GET", &format!("{base}/balance?name={}&strategy=fastest", k("web")), None).await,
            400,
            "unknown strategy",
        );
        refused(&call("GET", &format!("{base}/balance"), None).await, 400, "name is required");
        refused(&call("GET", &format!("{base}/balance?name=nope"), None).await, 404, "not registered");
        refused(&call("GET", &format!("{base}/service?name=nope"), None).await, 404, "not registered");
        refused(&call("POST", &format!("{base}/service"), Some(r#"[{"type":"x"}]"#)).await, 400, "bad service");
        refused(
            &call("POST", &format!("{base}/service"), Some(r#"[{"name":"","node":[]}]"#)).await,
            400,
            "must not be empty",
        );
        refused(
            &call(
                "POST",
                &format!("{base}/service"),
                Some(r#"[{"name":"s","node":[{"host":"127.0.0.8","port":99999}]}]"#),
            )
            .await,
            400,
            "bad service",
        );
        refused(&call("POST", &format!("{base}/service"), Some("42")).await, 400, "array of services");
        refused(
            &call(
                "POST",
                &format!("{base}/service"),
                Some(r#"[{"name":"d","node":[{"host":"127.0.0.8","port":1},{"host":"127.0.0.8","port":1}]}]"#),
            )
            .await,
            400,
            "twice",
        );
        refused(
            &call(
                "POST",
                &format!("{base}/service"),
                Some(r#"[{"name":"t","node":[{"host":"127.0.0.8","port":1,"ttl_ms":0}]}]"#),
            )
            .await,
            400,
            "above 0",
        );
        refused(
            &call(
                "POST",
                &format!("{base}/service"),
                Some(r#"[{"name":"u","node":[{"host":"127.0.0.8","port":1,"check":"http","url":"https://127.0.0.8/"}]}]"#),
            )
            .await,
            400,
            "http://",
        );
        refused(&call("PUT", &format!("{base}/kv"), Some("{}")).await, 405, "method not allowed");
        refused(&call("DELETE", &format!("{base}/service"), Some("[]")).await, 400, "no service name");
        ok(&call("DELETE", &format!("{base}/service"), Some(&format!(r#"["{}"]"#, k("web")))).await);
        refused(&call("GET", &format!("{base}/service?name={}", k("web")), None).await, 404, "not registered");

        // nodes, health, status
        let nodes = ok(&call("GET", &format!("{base}/node"), None).await).clone();
        let nodes = nodes.as_array().unwrap();
        assert_eq!(nodes.len(), 3);
        for field in ["id", "name", "address", "role", "raft_role", "status", "last_log_index"] {
            assert!(nodes.iter().all(|n| n.get(field).is_some()), "node entries lack {field}: {nodes:?}");
        }
        assert_eq!(nodes.iter().filter(|n| n["raft_role"] == json!("leader")).count(), 1, "{nodes:?}");
        let node = format!("{base}/node");
        refused(&call("POST", &node, Some(r#"["127.0.0.1:1"]"#)).await, 400, "cannot learn the id");
        refused(&call("POST", &node, Some(r#"[{"id":1,"addr":"127.0.0.1:9"}]"#)).await, 400, "already a member");
        let taken = json!([{ "id": 9, "addr": nodes[0]["address"] }]).to_string();
        refused(&call("POST", &node, Some(&taken)).await, 400, "is already member");
        refused(&call("POST", &node, Some(r#"[{"id":9,"addr":"nowhere"}]"#)).await, 400, "HOST:PORT");
        refused(&call("DELETE", &node, Some("[99]")).await, 400, "not a member");
        refused(&call("DELETE", &node, Some(r#"["127.0.0.1:9"]"#)).await, 400, "no member is at");
        refused(&call("DELETE", &node, Some("{}")).await, 400, "array");
        assert_eq!(ok(&call("GET", &node, None).await).as_array().unwrap().len(), 3, "a refused change changed");
        let health = ok(&call("GET", &format!("{base}/health"), None).await).clone();
        assert_eq!(health["leader"], json!(leader as u64 + 1));
        let status = ok(&call("GET", &format!("{base}/status"), None).await).clone();
        for field in ["id", "role", "term", "leader", "commit_index", "applied_index", "last_log_index", "peers"] {
            assert!(status.get(field).is_some(), "status lacks {field}: {status}");
        }
        refused(&call("GET", &format!("{base}/nope"), None).await, 404, "no such path");
    }
}

/// `GET /health` says when a node knows no leader (503), and beats go through HTTP too.
#[actix_rt::test]
async fn health_without_a_leader_and_beats_over_http() {
    let mut cluster = Cluster::start_with(3, |c| {
        with_http(c);
        c.check_interval_ms = 100;
    });
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let follower = (leader + 1) % 3;
    let base = format!("http://{}", cluster.configs[follower].http.clone().unwrap());
    let svc = r#"[{"name":"api","node":[{"host":"127.0.0.1","port":7001,"ephemeral":true}]}]"#;
    ok(&call("POST", &format!("{base}/service"), Some(svc)).await);
    ok(&call("POST", &format!("{base}/beat?service=api&addr=127.0.0.1:7001"), None).await);
    refused(&call("POST", &format!("{base}/beat?service=api&addr=127.0.0.1:1"), None).await, 404, "not registered");
    refused(&call("POST", &format!("{base}/beat?service=api&addr=nope"), None).await, 400, "HOST:PORT");
    refused(&call("POST", &format!("{base}/beat"), None).await, 400, "required");
    for i in (0..3).filter(|&i| i != follower) {
        cluster.stop_node(i);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let r = call("GET", &format!("{base}/health"), None).await;
        if r.0 == 503 {
            refused(&r, 503, "knows no leader");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "health still {r:?} without a majority");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    refused(&call("POST", &format!("{base}/kv"), Some(r#"{"k":"v"}"#)).await, 503, "no leader");
}

/// Bodies up to `max_request_bytes` are taken; beyond, a 413 in the envelope.
#[actix_rt::test]
async fn large_bodies_up_to_the_request_limit() {
    let cluster = Cluster::start_with(1, with_http);
    cluster.wait_leader(Duration::from_secs(1)).await;
    let base = format!("http://{}", cluster.configs[0].http.clone().unwrap());
    let big = format!(r#"{{"big":"{}"}}"#, "x".repeat(1_000_000));
    ok(&call("POST", &format!("{base}/kv"), Some(&big)).await);
    let huge = format!(r#"{{"huge":"{}"}}"#, "x".repeat(1_700_000));
    refused(&call("POST", &format!("{base}/kv"), Some(&huge)).await, 413, "max_request_bytes");
}

/// With a cluster token, HTTP callers must present it.
#[actix_rt::test]
async fn http_requires_the_cluster_token_when_there_is_one() {
    let cluster = Cluster::start_with(1, |c| {
        with_http(c);
        c.cluster_token = Some("http-token-of-some-length".into());
    });
    cluster.wait_leader(Duration::from_secs(1)).await;
    let base = format!("http://{}", cluster.configs[0].http.clone().unwrap());
    refused(&call("GET", &format!("{base}/kv"), None).await, 403, "requires its token");
    ok(&call("GET", &format!("{base}/kv?token=http-token-of-some-length"), None).await);
}

/// A server whose HTTP address is taken fails to start, saying which address, and leaves
/// nothing running; once the port is free it starts from the same data directory.
#[test]
fn a_server_that_cannot_bind_its_http_port_exits() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", common::free_port());
    let server = |http: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dister"));
        cmd.args(["server", "--listen", &listen, "--http", http]).arg("--data-dir").arg(dir.path());
        cmd
    };
    let taken_addr = taken.local_addr().unwrap().to_string();
    let out = server(&taken_addr).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {taken_addr}")), "{err}");
    drop(taken);
    let http = format!("127.0.0.1:{}", common::free_port());
    let mut child = server(&http).stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&http).is_err() {
        assert!(std::time::Instant::now() < deadline, "the node did not start from the same directory");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Membership through dister's HTTP API, as dister takes it: `POST /node` with an address
/// (the id is the one the node's handshake names), `DELETE /node` by address; Nacos' server
/// list follows.
///
/// 1. Three nodes with HTTP; node 4 starts empty (`--no-bootstrap`), node 5 in another group.
/// 2. `POST /node ["ADDR4"]` adds node 4; it is promoted; `GET /node` and
///    `/nacos/v1/ns/operator/servers` list four servers.
/// 3. `POST /node ["ADDR5"]` is refused: another group.
/// 4. `DELETE /node ["ADDR4"]` removes it; three again.
#[actix_rt::test]
async fn nodes_are_added_and_removed_through_http() {
    let mut cluster = Cluster::start_with(3, with_http);
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let base = format!("http://{}", cluster.configs[(leader + 1) % 3].http.clone().unwrap());
    let node4 = cluster.add_node(|c| c.http = None);
    let node5 = cluster.add_node(|c| {
        c.http = None;
        c.group = "other".into();
    });
    let add = format!(r#"["{}"]"#, cluster.addr(node4));
    let added = ok(&call("POST", &format!("{base}/node"), Some(&add)).await).clone();
    assert_eq!(added[0]["id"], json!(4), "{added}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = ok(&call("GET", &format!("{base}/node"), None).await).clone();
        let servers = nodes.as_array().unwrap().iter().filter(|n| n["role"] == json!("server")).count();
        if servers == 4 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "node 4 never became a voter: {nodes}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let mut resp = client.get(format!("{base}/nacos/v1/ns/operator/servers")).send().await.unwrap();
    let nacos: Value = serde_json::from_slice(&resp.body().await.unwrap()).unwrap();
    assert_eq!(nacos["servers"].as_array().map(Vec::len), Some(4), "{nacos}");
    let other = format!(r#"["{}"]"#, cluster.addr(node5));
    refused(&call("POST", &format!("{base}/node"), Some(&other)).await, 400, "wrong group");
    ok(&call("DELETE", &format!("{base}/node"), Some(&add)).await);
    let nodes = ok(&call("GET", &format!("{base}/node"), None).await).clone();
    assert_eq!(nodes.as_array().unwrap().len(), 3, "{nodes}");
}
