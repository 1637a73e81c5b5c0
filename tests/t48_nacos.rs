//! t48: the Nacos 1.x Open API under `/nacos/v1`: with the real Python client (the PyPI
//! package, unpatched, in a virtual environment `tests/nacos/setup.sh` makes), and by raw
//! HTTP for what a client library would not show: error statuses and bodies, long polls that
//! wake from another node or time out empty, configs surviving a restart, auth on both APIs
//! and the wire.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{self, Cluster};

/// One exchange: status, body text and headers we look at.
async fn http(method: &str, url: &str, headers: &[(&str, &str)], form: Option<&str>) -> (u16, String) {
    let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
    let mut req = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "PUT" => client.put(url),
        "DELETE" => client.delete(url),
        other => panic!("method {other}"),
    };
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut resp = match form {
        Some(f) => {
            req.insert_header(("content-type", "application/x-www-form-urlencoded")).send_body(f.to_string()).await
        }
        None => req.send().await,
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let body = resp.body().limit(4 << 20).await.unwrap();
    (resp.status().as_u16(), String::from_utf8_lossy(&body).into_owned())
}

fn json_of(r: &(u16, String)) -> Value {
    assert_eq!(r.0, 200, "{r:?}");
    serde_json::from_str(&r.1).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"))
}

fn refused(r: &(u16, String), status: u16, says: &str) {
    assert_eq!(r.0, status, "{r:?}");
    assert!(r.1.starts_with("caused: ") && r.1.contains(says), "body {:?} does not say {says:?}", r.1);
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn nacos_config(c: &mut dister::Config) {
    c.http = Some(format!("127.0.0.1:{}", common::free_port()));
    c.check_interval_ms = 300;
    c.ephemeral_unhealthy_after_ms = 1_000;
    c.ephemeral_remove_after_ms = 2_000;
}

fn base(cluster: &Cluster, i: usize) -> String {
    format!("http://{}/nacos/v1", cluster.configs[i].http.clone().unwrap())
}

/// The real client: `tests/nacos/suite.py` run by nacos-sdk-python 2.0.11 against three
/// nodes with auth on (register, list, get, modify, beat, deregister; an ephemeral instance
/// that stops beating goes; configs published, read, removed; a watcher fires for a change
/// made on another node; login).
#[actix_rt::test]
async fn nacos_python_client_suite() {
    let root = env!("CARGO_MANIFEST_DIR");
    let venv = format!("{root}/target/nacos-venv");
    let setup = Command::new(format!("{root}/tests/nacos/setup.sh")).arg(&venv).status().expect("run setup.sh");
    assert!(setup.success(), "tests/nacos/setup.sh failed: it needs python3 (venv, pip) and PyPI");
    let cluster = Cluster::start_with(3, |c| {
        nacos_config(c);
        c.cluster_token = Some("peers-and-the-test-harness".into());
        c.auth_username = Some("nacos".into());
        c.auth_password = Some("nacos-test-pw".into());
    });
    cluster.wait_leader(Duration::from_secs(3)).await;
    let servers: Vec<String> = cluster.configs.iter().map(|c| c.http.clone().unwrap()).collect();
    let work = tempfile::tempdir().unwrap();
    let child = Command::new(format!("{venv}/bin/python"))
        .arg(format!("{root}/tests/nacos/suite.py"))
        // The client keeps snapshots under its working directory.
        .current_dir(work.path())
        .env("DISTER_NACOS_SERVERS", servers.join(","))
        .env("DISTER_NACOS_USER", "nacos")
        .env("DISTER_NACOS_PASS", "nacos-test-pw")
        .env("DISTER_NACOS_REMOVE_MS", "2000")
        .process_group(0)
        .spawn()
        .expect("start the suite");
    // Ends the suite and whatever it started (the client's multiprocessing manager), however
    // this test ends.
    struct Group(std::process::Child);
    impl Drop for Group {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).status();
            let _ = self.0.wait();
        }
    }
    let mut child = Group(child);
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the Nacos client suite did not finish within 180 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "the Nacos client suite failed ({status}); its output is above");
}

/// Bad input gets Nacos' statuses and a `caused: ...;` reason; nothing panics, nothing is
/// written.
#[actix_rt::test]
async fn errors_are_answered_as_nacos_does() {
    let cluster = Cluster::start_with(3, nacos_config);
    let leader = cluster.wait_leader(Duration::from_secs(3)).await;
    let b = base(&cluster, (leader + 1) % 3);
    let inst = format!("{b}/ns/instance");
    refused(&http("POST", &format!("{inst}?ip=127.0.0.4&port=80"), &[], None).await, 400, "serviceName");
    refused(&http("POST", &format!("{inst}?serviceName=s&port=80"), &[], None).await, 400, "'ip'");
    refused(&http("POST", &format!("{inst}?serviceName=s&ip=127.0.0.8&port=99999"), &[], None).await, 400, "port");
    refused(
        &http("POST", &format!("{inst}?serviceName=s&ip=127.0.0.8&port=1&weight=x"), &[], None).await,
        400,
        "weight",
    );
    refused(
        &http("POST", &format!("{inst}?serviceName=s&ip=127.0.0.8&port=1&weight=-1"), &[], None).await,
        400,
        "weight",
    );
    refused(
        &http("POST", &format!("{inst}?serviceName=s&ip=127.0.0.8&port=1&enable=maybe"), &[], None).await,
        400,
        "enable",
    );
    let bad_meta = format!("{inst}?serviceName=s&ip=127.0.0.8&port=1&metadata={}", enc("{\"a\":{\"b\":1}}"));
    refused(&http("POST", &bad_meta, &[], None).await, 400, "metadata");
    refused(
        &http("POST", &format!("{inst}?serviceName=s&ip=127.0.0.8&port=1&groupName=a/b"), &[], None).await,
        400,
        "groupName",
    );
    refused(&http("GET", &format!("{inst}?serviceName=s&ip=127.0.0.8&port=1"), &[], None).await, 404, "no matched ip");
    let light =
        json_of(&http("PUT", &format!("{b}/ns/instance/beat?serviceName=s&ip=127.0.0.4&port=5"), &[], None).await);
    assert_eq!(light["code"], json!(20404), "a light beat for an unknown instance: register again");
    let heavy =
        format!("{b}/ns/instance/beat?serviceName=s&beat={}", enc(r#"{"ip":"127.0.0.4","port":5,"weight":1e308}"#));
    refused(&http("PUT", &heavy, &[], None).await, 400, "weight");
    let huge = r#"[{"name":"w","node":[{"host":"127.0.0.10","port":1,"weight":1e308},{"host":"127.0.0.11","port":1,"weight":1e308}]}]"#;
    let root = b.trim_end_matches("/nacos/v1");
    let r = awc::Client::new()
        .post(format!("{root}/service"))
        .insert_header(("content-type", "application/json"))
        .send_body(huge)
        .await
        .unwrap()
        .status();
    assert_eq!(r.as_u16(), 400, "weights are bounded, so a weighted pick never sums to infinity");
    let list = json_of(&http("GET", &format!("{b}/ns/instance/list?serviceName=nobody"), &[], None).await);
    assert_eq!((list["hosts"].clone(), list["name"].clone()), (json!([]), json!("DEFAULT_GROUP@@nobody")));

    // Services: create once, not twice; no delete while instances remain; 404 when absent.
    let svc = format!("{b}/ns/service?serviceName=pay&groupName=G&protectThreshold=0.5&metadata={}", enc("k=v"));
    assert_eq!(http("POST", &svc, &[], None).await, (200, "ok".into()));
    refused(&http("POST", &svc, &[], None).await, 400, "already exists");
    refused(&http("PUT", &format!("{b}/ns/service?serviceName=nope"), &[], None).await, 400, "does not exist");
    refused(&http("POST", &format!("{svc}&protectThreshold=2"), &[], None).await, 400, "protectThreshold");
    assert_eq!(http("POST", &format!("{inst}?serviceName=G%40%40pay&ip=127.0.0.9&port=80"), &[], None).await.1, "ok");
    refused(&http("DELETE", &format!("{b}/ns/service?serviceName=pay&groupName=G"), &[], None).await, 400, "instance");
    let got = json_of(&http("GET", &format!("{b}/ns/service?serviceName=pay&groupName=G"), &[], None).await);
    assert_eq!((got["protectThreshold"].clone(), got["metadata"].clone()), (json!(0.5), json!({"k": "v"})));
    assert_eq!(got["clusters"][0]["name"], json!("DEFAULT"));
    refused(&http("GET", &format!("{b}/ns/service?serviceName=ghost"), &[], None).await, 404, "not found");

    // Configs.
    let cs = format!("{b}/cs/configs");
    refused(&http("GET", &format!("{cs}?dataId=absent&group=G"), &[], None).await, 404, "not exist");
    refused(&http("POST", &cs, &[], Some("dataId=a&group=G")).await, 400, "'content'");
    refused(&http("POST", &cs, &[], Some("dataId=a%2Fb&group=G&content=x")).await, 400, "dataId");
    refused(
        &http("POST", &format!("{cs}/listener"), &[], Some("Listening-Configs=junk")).await,
        400,
        "Listening-Configs",
    );
    refused(
        &http("POST", &format!("{cs}/listener"), &[("Long-Pulling-Timeout", "soon")], Some("Listening-Configs=a"))
            .await,
        400,
        "Long-Pulling-Timeout",
    );
    refused(&http("GET", &format!("{b}/no/such/path"), &[], None).await, 404, "no such path");
    let login = http("POST", &format!("{b}/auth/login?username=a&password=b"), &[], None).await;
    refused(&login, 501, "auth is not enabled");
}

/// Service pages, namespaces and groups apart, the operator endpoints.
#[actix_rt::test]
async fn services_namespaces_and_operator_endpoints() {
    let cluster = Cluster::start_with(3, nacos_config);
    let leader = cluster.wait_leader(Duration::from_secs(3)).await;
    let b = base(&cluster, 0);
    for (ns, group, name) in [
        ("public", "DEFAULT_GROUP", "a"),
        ("public", "DEFAULT_GROUP", "b"),
        ("dev", "DEFAULT_GROUP", "a"),
        ("public", "G", "c"),
    ] {
        let url = format!("{b}/ns/instance?namespaceId={ns}&groupName={group}&serviceName={name}&ip=127.0.0.9&port=1");
        assert_eq!(http("POST", &url, &[], None).await.1, "ok");
    }
    let page = |q: &str| format!("{b}/ns/service/list?{q}");
    let all = json_of(&http("GET", &page("pageNo=1&pageSize=10"), &[], None).await);
    assert_eq!((all["count"].clone(), all["doms"].clone()), (json!(2), json!(["a", "b"])));
    let second = json_of(&http("GET", &page("pageNo=2&pageSize=1"), &[], None).await);
    assert_eq!(second["doms"], json!(["b"]));
    let dev = json_of(&http("GET", &page("namespaceId=dev"), &[], None).await);
    assert_eq!(dev["doms"], json!(["a"]));
    let g = json_of(&http("GET", &page("groupName=G"), &[], None).await);
    assert_eq!(g["doms"], json!(["c"]));
    let dev_hosts =
        json_of(&http("GET", &format!("{b}/ns/instance/list?serviceName=a&namespaceId=dev"), &[], None).await);
    assert_eq!(dev_hosts["hosts"].as_array().unwrap().len(), 1);
    // The public default-group service is dister's own service of that name.
    let svc = cluster.client(1).await.get_service("a", dister::Consistency::Linearizable).await.unwrap();
    assert_eq!(svc.map(|s| s.nodes.len()), Some(1));

    let m = json_of(&http("GET", &format!("{b}/ns/operator/metrics"), &[], None).await);
    assert_eq!(
        (m["status"].clone(), m["serviceCount"].clone(), m["instanceCount"].clone()),
        (json!("UP"), json!(4), json!(4))
    );
    let s = json_of(&http("GET", &format!("{}/ns/operator/servers", base(&cluster, leader)), &[], None).await);
    let servers = s["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3);
    let addrs: Vec<&str> = servers.iter().map(|x| x["address"].as_str().unwrap()).collect();
    for c in &cluster.configs {
        assert!(addrs.contains(&c.listen.as_str()), "{addrs:?} lacks {}", c.listen);
    }
    assert!(servers.iter().all(|x| x["state"] == json!("UP")), "{s}");
    // A follower describes the cluster as the leader does, on both APIs: every member up,
    // the same leader.
    let follower = (leader + 1) % 3;
    let s = json_of(&http("GET", &format!("{}/ns/operator/servers", base(&cluster, follower)), &[], None).await);
    let servers = s["servers"].as_array().unwrap();
    assert!(servers.iter().all(|x| x["state"] == json!("UP")), "the leader's view: {s}");
    let leads = |x: &&Value| x["extendInfo"]["raftRole"] == json!("leader");
    let nacos_leader: Vec<&Value> = servers.iter().filter(leads).map(|x| &x["extendInfo"]["nodeId"]).collect();
    let http_base = format!("http://{}", cluster.configs[follower].http.clone().unwrap());
    let nodes = json_of(&http("GET", &format!("{http_base}/node"), &[], None).await);
    let nodes = nodes["data"].as_array().unwrap();
    assert!(nodes.iter().all(|n| n["status"] == json!("alive")), "{nodes:?}");
    let dister_leader: Vec<&Value> =
        nodes.iter().filter(|n| n["raft_role"] == json!("leader")).map(|n| &n["id"]).collect();
    assert_eq!(nacos_leader, dister_leader);
    assert_eq!(dister_leader, vec![&json!(cluster.configs[leader].id)]);
}

/// A listener answers at once when its MD5 is stale, wakes within moments when a config it
/// watches changes on another node, stays asleep for unrelated changes, and answers empty
/// at its timeout; configs survive a restart of the whole cluster.
#[actix_rt::test]
async fn long_polls_wake_across_nodes_and_configs_survive_restarts() {
    let mut cluster = Cluster::start_with(3, nacos_config);
    cluster.wait_leader(Duration::from_secs(3)).await;
    let (b0, b1) = (base(&cluster, 0), base(&cluster, 1));
    let publish = |b: &str, id: &str, content: &str, tenant: &str| {
        let url = format!("{b}/cs/configs");
        let form = format!("dataId={id}&group=G&tenant={tenant}&type=yaml&content={}", enc(content));
        async move { http("POST", &url, &[], Some(&form)).await }
    };
    assert_eq!(publish(&b0, "app", "v: 1", "").await, (200, "true".into()));
    let md5 = |s: &str| {
        use md5::Digest;
        dister::auth::hex(&md5::Md5::digest(s.as_bytes()))
    };
    let line = |id: &str, m: &str, tenant: &str| {
        let t = if tenant.is_empty() { String::new() } else { format!("\u{2}{tenant}") };
        format!("Listening-Configs={}", enc(&format!("{id}\u{2}G\u{2}{m}{t}\u{1}")))
    };
    let listen = |b: String, form: String, ms: &'static str| async move {
        let started = Instant::now();
        let r = http("POST", &format!("{b}/cs/configs/listener"), &[("Long-Pulling-Timeout", ms)], Some(&form)).await;
        (r, started.elapsed())
    };

    // Stale MD5: at once.
    let ((status, body), took) = listen(b1.clone(), line("app", "stale", ""), "30000").await;
    assert_eq!((status, body.as_str()), (200, "app%02G%01"));
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Current MD5, nothing changes: empty at the timeout.
    let ((status, body), took) = listen(b1.clone(), line("app", &md5("v: 1"), ""), "500").await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(took >= Duration::from_millis(450), "{took:?}");
    // A change on node 0 wakes a listener on node 1; another config's change does not.
    let waiting = actix_rt::spawn(listen(b1.clone(), line("app", &md5("v: 1"), "dev"), "20000"));
    let waiting_public = actix_rt::spawn(listen(b1.clone(), line("app", &md5("v: 1"), ""), "20000"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(publish(&b0, "other", "x", "").await.1, "true");
    assert_eq!(publish(&b0, "app", "v: 1", "").await.1, "true", "same content: no change to report");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting_public.is_finished(), "woken by nothing that changed its config");
    let changed_at = Instant::now();
    assert_eq!(publish(&b0, "app", "v: 2", "").await.1, "true");
    let ((status, body), _) = waiting_public.await.unwrap();
    let woke_after = changed_at.elapsed();
    assert_eq!((status, body.as_str()), (200, "app%02G%01"));
    assert!(woke_after < Duration::from_secs(3), "{woke_after:?}");
    // The dev namespace's listener (its config absent, so its MD5 was stale): answered at once.
    let ((_, body), _) = waiting.await.unwrap();
    assert_eq!(body, "app%02G%02dev%01");

    // Readable with dister's kv commands; survives a restart of every node.
    let c = cluster.client(2).await;
    assert_eq!(
        c.get("nacos/config/public/G/app", dister::Consistency::Linearizable).await.unwrap(),
        Some("v: 2".into())
    );
    drop(c);
    for i in 0..3 {
        cluster.stop_node(i);
    }
    for i in 0..3 {
        cluster.start_node(i);
    }
    cluster.wait_leader(Duration::from_secs(5)).await;
    let r = http("GET", &format!("{}/cs/configs?dataId=app&group=G", base(&cluster, 2)), &[], None).await;
    assert_eq!(r, (200, "v: 2".into()));
    let r = http("DELETE", &format!("{}/cs/configs?dataId=app&group=G", base(&cluster, 2)), &[], None).await;
    assert_eq!(r, (200, "true".into()));
    let r = http("GET", &format!("{}/cs/configs?dataId=app&group=G", base(&cluster, 0)), &[], None).await;
    assert_eq!(r.0, 404);
}

/// With credentials configured, both HTTP APIs and wire clients need a token; a token from
/// one node works on the others; Nacos' login flow works.
#[actix_rt::test]
async fn auth_guards_both_apis_and_the_wire() {
    let cluster = Cluster::start_with(3, |c| {
        nacos_config(c);
        c.cluster_token = Some("peers-and-the-test-harness".into());
        c.auth_username = Some("admin".into());
        c.auth_password = Some("correct-horse".into());
    });
    cluster.wait_leader(Duration::from_secs(3)).await;
    let http_of = |i: usize| format!("http://{}", cluster.configs[i].http.clone().unwrap());
    let nacos_login = format!("{}/nacos/v1/auth/login", http_of(0));
    refused(&http("POST", &format!("{nacos_login}?username=admin&password=wrong-one"), &[], None).await, 403, "wrong");
    let login = json_of(&http("POST", &nacos_login, &[], Some("username=admin&password=correct-horse")).await);
    let token = login["accessToken"].as_str().unwrap().to_string();
    assert_eq!(login["tokenTtl"], json!(18_000));

    let cs = |i: usize| format!("{}/nacos/v1/cs/configs?dataId=d&group=G", http_of(i));
    refused(&http("POST", &cs(1), &[], Some("content=x")).await, 403, "token");
    refused(&http("POST", &format!("{}&accessToken=forged.0", cs(1)), &[], Some("content=x")).await, 403, "token");
    assert_eq!(http("POST", &format!("{}&accessToken={token}", cs(1)), &[], Some("content=x")).await.1, "true");
    assert_eq!(http("GET", &format!("{}&accessToken={token}", cs(2)), &[], None).await, (200, "x".into()));

    // dister's API: its own login, and the Nacos token works too.
    let kv = format!("{}/kv?k=nacos/config/public/G/d", http_of(2));
    assert_eq!(http("GET", &kv, &[], None).await.0, 403);
    let bearer = format!("Bearer {token}");
    let r = http("GET", &kv, &[("Authorization", bearer.as_str())], None).await;
    assert_eq!(json_of(&r)["data"], json!("x"));
    let own = http("POST", &format!("{}/auth/login", http_of(1)), &[("content-type", "application/json")], None).await;
    assert_eq!(own.0, 400, "no credentials: {own:?}");
    let dister_login = awc::Client::new()
        .post(format!("{}/auth/login", http_of(1)))
        .send_json(&json!({"username": "admin", "password": "correct-horse"}))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let own_token = dister_login["data"]["accessToken"].as_str().unwrap().to_string();
    assert_eq!(http("GET", &format!("{kv}&accessToken={own_token}"), &[], None).await.0, 200);
    assert_eq!(http("GET", &format!("{}/health", http_of(0)), &[], None).await.0, 200, "health stays open");
    // One reading of the credentials for both APIs: every way one takes, the other takes.
    let cs2 = cs(2);
    for (url, cluster_param) in [
        (kv.as_str(), format!("{kv}&token=peers-and-the-test-harness")),
        (cs2.as_str(), format!("{cs2}&token=peers-and-the-test-harness")),
    ] {
        for headers in [
            vec![("Authorization", bearer.as_str())],
            vec![("accessToken", token.as_str())],
            vec![("X-Dister-Token", "peers-and-the-test-harness")],
        ] {
            assert_eq!(http("GET", url, &headers, None).await.0, 200, "{url} with {headers:?}");
        }
        assert_eq!(http("GET", &format!("{url}&accessToken={own_token}"), &[], None).await.0, 200, "{url}");
        assert_eq!(http("GET", &cluster_param, &[], None).await.0, 200, "{cluster_param}");
        let junk_bearer = [("Authorization", "Bearer from-a-gateway")];
        assert_eq!(http("GET", &format!("{url}&accessToken={token}"), &junk_bearer, None).await.0, 200, "{url}");
        let r = http("GET", url, &[("accessToken", "forged.0")], None).await;
        assert_eq!(r.0, 403, "{url}: {r:?}");
        assert!(r.1.contains("log in first"), "one refusal for both APIs: {r:?}");
    }

    // The wire: a client needs the login token in its handshake.
    let addr = cluster.addr(0);
    let refused_wire = dister::Client::connect(&addr, "default").await;
    assert!(refused_wire.is_err(), "a wire client without a token got in");
    let c = dister::Client::connect_with_token(&addr, "default", Some(&token)).await.unwrap();
    assert_eq!(c.get("nacos/config/public/G/d", dister::Consistency::Linearizable).await.unwrap(), Some("x".into()));
}

/// With only a cluster token (no credentials), the Nacos API asks for it as the dister API
/// does: no door is left open.
#[actix_rt::test]
async fn the_cluster_token_guards_the_nacos_api_too() {
    let cluster = Cluster::start_with(1, |c| {
        nacos_config(c);
        c.cluster_token = Some("only-a-cluster-token".into());
    });
    cluster.wait_leader(Duration::from_secs(3)).await;
    let b = base(&cluster, 0);
    let publish = format!("{b}/cs/configs");
    refused(&http("POST", &publish, &[], Some("dataId=a&group=G&content=x")).await, 403, "token");
    let reg = format!("{b}/ns/instance?serviceName=web&ip=127.0.0.9&port=80");
    refused(&http("POST", &reg, &[], None).await, 403, "token");
    let with = [("X-Dister-Token", "only-a-cluster-token")];
    assert_eq!(http("POST", &publish, &with, Some("dataId=a&group=G&content=x")).await, (200, "true".into()));
    let as_param = format!("{b}/cs/configs?dataId=a&group=G&accessToken=only-a-cluster-token");
    assert_eq!(http("GET", &as_param, &[], None).await, (200, "x".into()));
}

/// Nacos' protect threshold: when the healthy share of a service's instances falls to its
/// `protectThreshold`, listing offers every instance as healthy.
///
/// 1. A service with threshold 0.6 and two persistent instances: one on a listening port,
///    one on a closed port (both on 127.0.0.1).
/// 2. Once the checks found one healthy and one not (1/2 = 0.5 ≤ 0.6): the list says
///    `reachProtectionThreshold`, and even `healthyOnly` gives both, as healthy.
/// 3. Threshold 0.4: not reached; `healthyOnly` gives the healthy one only, and the other is
///    listed unhealthy.
#[actix_rt::test]
async fn the_protect_threshold_lists_every_instance_when_too_few_are_healthy() {
    let cluster = Cluster::start_with(3, nacos_config);
    let leader = cluster.wait_leader(Duration::from_secs(3)).await;
    let b = base(&cluster, (leader + 1) % 3);
    let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_port = up.local_addr().unwrap().port();
    let down_port = common::free_port();
    let r = http("POST", &format!("{b}/ns/service?serviceName=guarded&protectThreshold=0.6"), &[], None).await;
    assert_eq!(r.0, 200, "{r:?}");
    for port in [up_port, down_port] {
        let url = format!("{b}/ns/instance?serviceName=guarded&ip=127.0.0.1&port={port}&ephemeral=false");
        assert_eq!(http("POST", &url, &[], None).await.0, 200);
    }
    let list = |healthy_only: bool| {
        let url = format!("{b}/ns/instance/list?serviceName=guarded&healthyOnly={healthy_only}");
        async move { json_of(&http("GET", &url, &[], None).await) }
    };
    // The checks' own view (the wire API shows health as it is).
    let c = cluster.client(leader).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.get_service("guarded", dister::Consistency::Linearizable).await.unwrap().unwrap();
        let health = |port| s.nodes.iter().find(|n| n.port == port).map(|n| n.health);
        use dister::messages::registry::Health;
        if (health(up_port), health(down_port)) == (Some(Health::Healthy), Some(Health::Unhealthy)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "checks did not find one up, one down: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let l = list(true).await;
    assert_eq!(l["reachProtectionThreshold"], json!(true), "{l}");
    let hosts = l["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{l}");
    assert!(hosts.iter().all(|h| h["healthy"] == json!(true)), "{l}");
    let r = http("PUT", &format!("{b}/ns/service?serviceName=guarded&protectThreshold=0.4"), &[], None).await;
    assert_eq!(r.0, 200, "{r:?}");
    let l = list(true).await;
    assert_eq!(l["reachProtectionThreshold"], json!(false), "{l}");
    let ports: Vec<u64> = l["hosts"].as_array().unwrap().iter().filter_map(|h| h["port"].as_u64()).collect();
    assert_eq!(ports, [u64::from(up_port)], "{l}");
    let all = list(false).await;
    let down = all["hosts"].as_array().unwrap().iter().find(|h| h["port"] == json!(down_port)).cloned();
    assert_eq!(down.map(|h| h["healthy"].clone()), Some(json!(false)), "{all}");
    drop(up);
}

/// Answers rendered once per change follow every change, on every node, whatever wrote it:
/// a config's body, `Content-MD5` and `Config-Type` after a publish on another node, a type
/// change alone and a write through the key/value API; an instance list's hosts and
/// `checksum` after an instance comes and goes, per query shape, with `lastRefTime` the time
/// of each answer. The cluster reads by lease (`read_mode = "lease"`), so both read modes
/// serve the Nacos API in the suite.
#[actix_rt::test]
async fn renderings_follow_every_change_on_every_node() {
    let cluster = Cluster::start_with(3, |c| {
        nacos_config(c);
        c.read_mode = dister::config::ReadMode::Lease;
    });
    cluster.wait_leader(Duration::from_secs(3)).await;
    let get = |i: usize| {
        let url = format!("{}/cs/configs?dataId=app.yaml&group=G", base(&cluster, i));
        async move {
            let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
            let mut resp = client.get(&url).send().await.unwrap();
            let header = |h: &str| resp.headers().get(h).map(|v| v.to_str().unwrap().to_string());
            let (md5, kind) = (header("Content-MD5"), header("Config-Type"));
            let body = resp.body().await.unwrap();
            (resp.status().as_u16(), String::from_utf8_lossy(&body).into_owned(), md5, kind)
        }
    };
    let md5 = |s: &str| dister::api::nacos::config::md5_of(Some(s));
    let publish = |i: usize, content: &str, kind: &str| {
        let url = format!("{}/cs/configs", base(&cluster, i));
        let form = format!("dataId=app.yaml&group=G&content={}&type={kind}", enc(content));
        async move { assert_eq!(http("POST", &url, &[], Some(&form)).await.1, "true") }
    };
    assert_eq!(get(0).await.0, 404);
    publish(0, "one", "yaml").await;
    for i in 0..3 {
        assert_eq!(get(i).await, (200, "one".into(), Some(md5("one")), Some("yaml".into())), "node {i}");
    }
    publish(1, "two", "yaml").await;
    for i in 0..3 {
        assert_eq!(get(i).await, (200, "two".into(), Some(md5("two")), Some("yaml".into())), "node {i}");
    }
    publish(2, "two", "properties").await;
    assert_eq!(get(0).await.3.as_deref(), Some("properties"), "a change of type alone");
    let kv = format!("http://{}/kv", cluster.configs[1].http.clone().unwrap());
    let set = awc::Client::new().post(&kv).send_body(r#"{"nacos/config/public/G/app.yaml":"three"}"#).await.unwrap();
    assert_eq!(set.status().as_u16(), 200);
    for i in 0..3 {
        assert_eq!(get(i).await.2, Some(md5("three")), "a write by the kv API, on node {i}");
    }
    assert_eq!(
        http("DELETE", &format!("{}/cs/configs?dataId=app.yaml&group=G", base(&cluster, 2)), &[], None).await.1,
        "true"
    );
    assert_eq!(get(0).await.0, 404);

    let b = |i: usize| base(&cluster, i);
    let list = |i: usize, q: &'static str| {
        let url = format!("{}/ns/instance/list?serviceName=svc{q}", b(i));
        async move { json_of(&http("GET", &url, &[], None).await) }
    };
    let register = |ip: &'static str, cluster_name: &'static str| {
        let url =
            format!("{}/ns/instance?serviceName=svc&ip={ip}&port=9&ephemeral=false&clusterName={cluster_name}", b(0));
        async move { assert_eq!(http("POST", &url, &[], None).await.1, "ok") }
    };
    register("127.0.0.21", "A").await;
    let first = list(1, "").await;
    assert_eq!(first["hosts"].as_array().unwrap().len(), 1);
    let again = list(1, "").await;
    assert_eq!(again["checksum"], first["checksum"], "nothing changed, the same rendering");
    assert!(again["lastRefTime"].as_u64() >= first["lastRefTime"].as_u64());
    register("127.0.0.22", "B").await;
    for i in 0..3 {
        let two = list(i, "").await;
        assert_eq!(two["hosts"].as_array().unwrap().len(), 2, "node {i}: {two}");
        assert_ne!(two["checksum"], first["checksum"], "node {i}: the checksum did not follow the change");
        let only_b = list(i, "&clusters=B").await;
        assert_eq!(only_b["hosts"].as_array().unwrap().len(), 1, "node {i}: {only_b}");
        assert_eq!(only_b["hosts"][0]["ip"], json!("127.0.0.22"));
        assert_eq!(only_b["clusters"], json!("B"));
    }
    let url = format!("{}/ns/instance?serviceName=svc&ip=127.0.0.22&port=9&ephemeral=false&clusterName=B", b(2));
    assert_eq!(http("DELETE", &url, &[], None).await.1, "ok");
    for i in 0..3 {
        let one = list(i, "").await;
        assert_eq!(one["hosts"].as_array().unwrap().len(), 1, "node {i}: {one}");
        assert_eq!(list(i, "&clusters=B").await["hosts"], json!([]), "node {i}");
    }
    let unknown = json_of(&http("GET", &format!("{}/ns/instance/list?serviceName=nothing", b(0)), &[], None).await);
    assert_eq!((unknown["hosts"].clone(), unknown["name"].clone()), (json!([]), json!("DEFAULT_GROUP@@nothing")));
    assert!(unknown["lastRefTime"].as_u64().is_some());
}
