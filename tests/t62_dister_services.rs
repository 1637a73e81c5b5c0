//! t62: dister's own users move over unchanged. Its service files are taken as they are
//! (`config/dister_services.json`, numbers as strings, extra fields kept); a service's type
//! checks each of its nodes (`tcp`, `web`, `custom`, and `mysql` and `pgsql` against real
//! MariaDB and PostgreSQL servers); every node carries dister's `status`; bad input is refused
//! naming the service and node, and changes nothing.

use crate::common;

use std::time::{Duration, Instant};

use common::Cluster;
use common::db::{DATABASE, DbServer, PASSWORD};
use common::procs::Procs;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The example service file, as the README shows it.
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/dister_services.json");

/// One HTTP exchange: status and parsed body.
async fn call(method: &str, url: &str, body: Option<String>) -> (u16, Value) {
    let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let req = if method == "POST" { client.post(url) } else { client.get(url) };
    let mut resp = match body {
        Some(b) => req.send_body(b).await,
        None => req.send().await,
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let bytes = resp.body().await.unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{method} {url}: not JSON ({e}): {bytes:?}"));
    (resp.status().as_u16(), v)
}

/// `(health, status)` of each node of `service`, in order, as `http` lists them.
async fn states(http: &str, service: &str) -> Vec<(String, u64)> {
    let (code, v) = call("GET", &format!("http://{http}/service?name={service}"), None).await;
    if code != 200 {
        return Vec::new();
    }
    let nodes = v["data"]["node"].as_array().cloned().unwrap_or_default();
    nodes
        .iter()
        .map(|n| (n["health"].as_str().unwrap_or_default().to_string(), n["status"].as_u64().unwrap_or(9)))
        .collect()
}

/// Waits until `service`'s nodes are `want` (health names; status must agree), at most
/// `within`; answers how long it took.
async fn wait_states(http: &str, service: &str, want: &[&str], within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let now = states(http, service).await;
        let agree = now.iter().all(|(h, s)| *s == u64::from(h == "healthy"));
        if agree && now.iter().map(|(h, _)| h.as_str()).eq(want.iter().copied()) {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{service}: {now:?} after {within:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn refused(r: &(u16, Value), says: &[&str]) {
    assert_eq!(r.0, 400, "{r:?}");
    let m = r.1["message"].as_str().unwrap_or_default();
    assert!(says.iter().all(|s| m.contains(s)), "message {m:?} does not say {says:?}");
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    common::free_port()
}

/// An HTTP server: `/health.php` answers 200, anything else 201 (not healthy for dister's
/// web checks, which want a 200).
async fn web_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    actix_rt::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            actix_rt::spawn(async move {
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let status = if buf[..n].starts_with(b"GET /health.php") { "200 OK" } else { "201 Created" };
                let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 1\r\nConnection: close\r\n\r\n1");
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// The example file, unchanged, is taken; then, pointed at live servers, its types check
/// every node and `balance` hands out only nodes whose status is 1.
///
/// 1. POST `config/dister_services.json` as it is, through a follower: every service is
///    there, its numbers read as numbers, its extra fields kept, each node with a `status`.
/// 2. Point its `tcp`, `web` and `custom` services at a live listener and a closed port, a
///    200 and a 201 page, and scripts printing `1` and `0` (intervals of 200 ms), set again.
/// 3. Each node's status follows: 1 for the live listener, the 200 page and the script
///    printing `1`, 0 for the others; `balance` returns only status-1 nodes.
/// 4. A node's own `check` wins over its service's type.
/// 5. The listener stops: its node turns 0 and `balance` has nothing to give.
#[actix_rt::test]
async fn dister_files_are_taken_as_they_are_and_their_types_check_every_node() {
    let cluster = Cluster::start_with(3, |c| {
        c.http = Some(format!("127.0.0.1:{}", common::free_port()));
        c.allow_script_checks = true;
    });
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let follower = (leader + 1) % 3;
    let http = cluster.configs[follower].http.clone().unwrap();
    let example = std::fs::read_to_string(EXAMPLE).unwrap();

    let r = call("POST", &format!("http://{http}/service"), Some(example.clone())).await;
    assert_eq!(r.0, 200, "{r:?}");
    let (_, all) = call("GET", &format!("http://{http}/service"), None).await;
    let names: Vec<&str> = all["data"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["db1", "memcache", "pg1", "sites", "taskmanager"]);
    let (_, db1) = call("GET", &format!("http://{http}/service?name=db1"), None).await;
    let node = &db1["data"]["node"][0];
    assert_eq!((&node["port"], &node["weight"], &node["interval_ms"]), (&json!(3306), &json!(100), &json!(2000)));
    assert_eq!((&node["user"], &node["pass"], &node["database"]), (&json!("root"), &json!("123456"), &json!("test")));
    assert!(node["status"] == 0 || node["status"] == 1, "{node}");
    assert_eq!(node["check"], "mysql", "the type's check is written into the node");
    let (_, sites) = call("GET", &format!("http://{http}/service?name=sites"), None).await;
    assert_eq!(
        (&sites["data"]["node"][1]["host"], &sites["data"]["node"][1]["port"]),
        (&json!("127.0.0.1"), &json!(8088))
    );

    // Pointed at live servers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live = listener.local_addr().unwrap().port();
    let accepting = actix_rt::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    let (web, web2) = (web_server().await, web_server().await);
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("up");
    std::fs::write(&flag, "").unwrap();
    let mut file: Value = serde_json::from_str(&example).unwrap();
    let services = file.as_array_mut().unwrap();
    services.retain(|s| ["memcache", "sites", "taskmanager"].contains(&s["name"].as_str().unwrap()));
    for s in services.iter_mut() {
        for n in s["node"].as_array_mut().unwrap() {
            // Quick checks, with time to answer on a loaded machine.
            n["interval"] = json!("200");
            n["timeout_ms"] = json!("2000");
        }
    }
    services[0]["node"][0]["port"] = json!(live.to_string());
    services[0]["node"][1]["port"] = json!(closed_port().to_string());
    services[1]["node"][0]["url"] = json!(format!("http://127.0.0.1:{web}/health.php"));
    services[1]["node"][1]["url"] = json!(format!("http://127.0.0.1:{web2}/created"));
    services[2]["node"][1]["script"] = json!(format!("test -e {} && echo ' 1 ' || echo 0", flag.display()));
    services.push(json!({"name": "mixed", "type": "tcp", "node": [
        {"host": "127.0.0.1", "port": closed_port().to_string(), "check": "http",
         "url": format!("http://127.0.0.1:{web}/health.php"), "interval": "200", "timeout_ms": "2000"}]}));
    let r = call("POST", &format!("http://{http}/service"), Some(file.to_string())).await;
    assert_eq!(r.0, 200, "{r:?}");

    let within = Duration::from_secs(5);
    wait_states(&http, "memcache", &["healthy", "unhealthy"], within).await;
    wait_states(&http, "sites", &["healthy", "unhealthy"], within).await;
    wait_states(&http, "taskmanager", &["healthy", "healthy"], within).await;
    wait_states(&http, "mixed", &["healthy"], within).await;
    std::fs::remove_file(&flag).unwrap();
    wait_states(&http, "taskmanager", &["healthy", "unhealthy"], within).await;
    for _ in 0..20 {
        let (code, b) = call("GET", &format!("http://{http}/balance?name=memcache"), None).await;
        assert_eq!((code, &b["data"]["port"], &b["data"]["status"]), (200, &json!(live), &json!(1)), "{b}");
        let (_, b) = call("GET", &format!("http://{http}/balance?name=sites"), None).await;
        assert_eq!(b["data"]["url"], json!(format!("http://127.0.0.1:{web}/health.php")), "{b}");
    }

    accepting.abort();
    let _ = accepting.await;
    wait_states(&http, "memcache", &["unhealthy", "unhealthy"], within).await;
    let (code, b) = call("GET", &format!("http://{http}/balance?name=memcache"), None).await;
    assert_eq!(code, 404, "no node has status 1: {b}");
}

/// Bad input is a 400 naming the service and node, and nothing of the request is written.
///
/// 1. On a cluster that allows scripts: a `mysql` node without `user`, a `web` node without
///    `url`, a port that is not a number, each in a file beside a good service.
/// 2. On a node that does not allow scripts: a `custom` node.
/// 3. After each, the good service of that file does not exist either.
#[actix_rt::test]
async fn bad_dister_files_are_refused_naming_the_service_and_node() {
    let cluster = Cluster::start_with(1, |c| c.http = Some(format!("127.0.0.1:{}", common::free_port())));
    cluster.wait_leader(Duration::from_secs(2)).await;
    let http = cluster.configs[0].http.clone().unwrap();
    let good = json!({"name": "good", "type": "tcp", "node": [{"host": "127.0.0.1", "port": "1"}]});
    let cases = [
        (
            json!({"name": "db1", "type": "mysql", "node": [{"host": "127.0.0.1", "port": "3306"}]}),
            vec!["service \"db1\", node 127.0.0.1:3306", "needs a user"],
        ),
        (
            json!({"name": "sites", "type": "web", "node": [{"host": "127.0.0.1", "port": "80"}]}),
            vec!["service \"sites\", node 127.0.0.1:80", "needs a url"],
        ),
        (
            json!({"name": "memcache", "type": "tcp", "node": [{"host": "127.0.0.1", "port": "11211"}, {"host": "127.0.0.1", "port": "eleven"}]}),
            vec!["service \"memcache\", node 2", "port \"eleven\" is not a whole number"],
        ),
        (
            json!({"name": "taskmanager", "type": "custom", "node": [{"host": "127.0.0.100", "script": "echo 1"}]}),
            vec!["service \"taskmanager\", node 127.0.0.100", "allow_script_checks is off"],
        ),
    ];
    for (bad, says) in cases {
        let name = bad["name"].as_str().unwrap().to_string();
        let r = call("POST", &format!("http://{http}/service"), Some(json!([good, bad]).to_string())).await;
        refused(&r, &says);
        for s in ["good", name.as_str()] {
            let (code, _) = call("GET", &format!("http://{http}/service?name={s}"), None).await;
            assert_eq!(code, 404, "{s} was written by a refused request");
        }
    }
}

/// `mysql` and `pgsql` services check their nodes against real servers, on real processes.
///
/// 1. Start MariaDB and PostgreSQL on free loopback ports, and a 3-node cluster logging at
///    debug.
/// 2. Set four services from a dister file: each database with the right password and with a
///    wrong one (interval 1.5 s).
/// 3. The right passwords are status 1, the wrong ones 0 (judged unhealthy, not just unknown).
/// 4. Kill MariaDB (SIGKILL): its node turns 0 within two intervals. The same for PostgreSQL.
/// 5. No node's log holds either password, though they logged the failed checks.
#[actix_rt::test]
async fn database_checks_follow_real_mariadb_and_postgresql() {
    let mut mariadb = DbServer::mariadb();
    let mut postgres = DbServer::postgres();
    let p = Procs::start_logging(3, "info,dister=debug");
    p.leader(Duration::from_secs(10)).await;
    let http = p.http[1].clone();
    let interval = Duration::from_millis(1_500);
    let wrong = "not-the-Pa55word";
    let node = |port: u16, pass: &str| {
        json!({"host": "127.0.0.1", "port": port.to_string(), "user": "dister", "pass": pass,
               "database": DATABASE, "priority": "100", "interval": interval.as_millis().to_string()})
    };
    let file = json!([
        {"name": "db", "type": "mysql", "node": [node(mariadb.port, PASSWORD)]},
        {"name": "db-wrong", "type": "mysql", "node": [node(mariadb.port, wrong)]},
        {"name": "pg", "type": "pgsql", "node": [node(postgres.port, PASSWORD)]},
        {"name": "pg-wrong", "type": "pgsql", "node": [node(postgres.port, wrong)]},
    ]);
    let r = call("POST", &format!("http://{http}/service"), Some(file.to_string())).await;
    assert_eq!(r.0, 200, "{r:?}; logs: {}", p.logs());
    let within = Duration::from_secs(10);
    for (service, want) in [("db", "healthy"), ("db-wrong", "unhealthy"), ("pg", "healthy"), ("pg-wrong", "unhealthy")]
    {
        wait_states(&http, service, &[want], within).await;
    }

    let killed = Instant::now();
    mariadb.kill();
    wait_states(&http, "db", &["unhealthy"], within).await;
    let took = killed.elapsed();
    assert!(took <= 2 * interval, "a stopped MariaDB took {took:?} to turn 0 (interval {interval:?})");
    wait_states(&http, "pg", &["healthy"], within).await;
    let killed = Instant::now();
    postgres.kill();
    wait_states(&http, "pg", &["unhealthy"], within).await;
    let took = killed.elapsed();
    assert!(took <= 2 * interval, "a stopped PostgreSQL took {took:?} to turn 0 (interval {interval:?})");

    let logs = p.whole_logs();
    assert!(logs.contains("database check failed"), "the failures were not logged: {}", p.logs());
    assert!(!logs.contains(PASSWORD) && !logs.contains(wrong), "a password is in the logs");
}

/// `PUT /service/instance` replaces one instance and leaves its service's others alone.
///
/// 1. A service of two instances, the second with a field of its own.
/// 2. The first is put again disabled with weight 3: the second is as it was.
/// 3. A missing service name and a port that is not a number are 400s that change nothing.
#[actix_rt::test]
async fn one_instance_is_put_without_touching_the_others() {
    let cluster = Cluster::start_with(1, |c| c.http = Some(format!("127.0.0.1:{}", common::free_port())));
    cluster.wait_leader(Duration::from_secs(2)).await;
    let http = cluster.configs[0].http.clone().unwrap();
    let file = json!([{"name": "web", "node": [
        {"host": "127.0.0.1", "port": "9001"},
        {"host": "127.0.0.2", "port": "9002", "priority": "5", "owner": "team-b"}]}]);
    assert_eq!(call("POST", &format!("http://{http}/service"), Some(file.to_string())).await.0, 200);
    let put = |q: &str, body: Value| {
        let url = format!("http://{http}/service/instance{q}");
        async move {
            let client = awc::Client::default();
            let mut r = client.put(url).send_body(body.to_string()).await.unwrap();
            let v: Value = serde_json::from_slice(&r.body().await.unwrap()).unwrap();
            (r.status().as_u16(), v)
        }
    };
    let r = put("?service=web", json!({"host": "127.0.0.1", "port": 9001, "weight": "3", "enabled": false})).await;
    assert_eq!(r.0, 200, "{r:?}");
    let (_, web) = call("GET", &format!("http://{http}/service?name=web"), None).await;
    let nodes = web["data"]["node"].as_array().unwrap();
    let first = nodes.iter().find(|n| n["port"] == 9001).unwrap();
    let second = nodes.iter().find(|n| n["port"] == 9002).unwrap();
    assert_eq!((&first["weight"], &first["enabled"]), (&json!(3), &json!(false)));
    assert_eq!((&second["weight"], &second["owner"], &second["enabled"]), (&json!(5), &json!("team-b"), &json!(true)));
    refused(&put("", json!({"host": "127.0.0.1", "port": 1})).await, &["service is required"]);
    refused(
        &put("?service=web", json!({"host": "127.0.0.1", "port": "x"})).await,
        &["port \"x\" is not a whole number"],
    );
    let (_, after) = call("GET", &format!("http://{http}/service?name=web"), None).await;
    assert_eq!(after["data"]["node"].as_array().unwrap().len(), 2);
}
