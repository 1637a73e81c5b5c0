//! t64: the web console (`/ui/`) in a real browser: Debian's headless Chromium driven by
//! playwright-core (both installed by `tests/ui/setup.sh`) against a 3-node cluster. What the
//! page shows is checked, what it writes is read back with the CLI and the client, and a
//! screenshot is kept in `target/test-artifacts/console.png`.

use crate::common;

use std::process::Command;
use std::sync::Once;
use std::time::Duration;

use common::Cluster;
use dister::Consistency;
use dister::messages::registry::{Service, ServiceNode};
use serde_json::Value;

fn setup() {
    static ONCE: Once = Once::new();
    common::setup_once(&ONCE, "tests/ui/setup.sh", "Debian's chromium (root or sudo) and the npm registry");
}

/// One browser at a time: two Chromiums starting together on a 2-core machine make both slow.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs the browser script in `mode` with `args`; answers what it printed.
async fn drive(mode: &str, args: &[&str]) -> Value {
    setup();
    let _one = BROWSER.lock().await;
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(format!("{root}/tests/ui/console.cjs"))
        .arg(mode)
        .args(args)
        .env("NODE_PATH", format!("{root}/target/ui-node/node_modules"))
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the browser script took over 2 minutes")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "console.cjs {mode} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("console.cjs printed {stdout:?}: {e}"))
}

/// The console shows the cluster and writes through the public APIs.
///
/// 1. A 3-node cluster with HTTP, a service `web` of one instance.
/// 2. The page (served by a follower) shows three members, one of them the leader, each
///    reachable with its lag (the leader's view), and the leader's id; it sets a key,
///    publishes a JSON config, loads it again as stored and publishes an edit, disables an
///    instance and sets its weight; no page error, no request beyond the node.
/// 3. The key reads back with `dister kv get`, the edited config and its type through Nacos'
///    API, the instance disabled with weight 3 through the client. The screenshot exists.
#[actix_rt::test]
async fn the_console_shows_the_cluster_and_writes_through_the_apis() {
    let cluster = Cluster::start_with(3, |c| c.http = Some(format!("127.0.0.1:{}", common::free_port())));
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let follower = (leader + 1) % 3;
    let http = cluster.configs[follower].http.clone().unwrap();
    let c = cluster.client(follower).await;
    let web = Service {
        name: "web".into(),
        kind: String::new(),
        nodes: vec![ServiceNode::new("127.0.0.1", 9001)],
        extra: Default::default(),
    };
    c.set_services(vec![web]).await.unwrap();

    let artifacts = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-artifacts");
    std::fs::create_dir_all(artifacts).unwrap();
    let shot = format!("{artifacts}/console.png");
    let _ = std::fs::remove_file(&shot);
    let shown = drive("tour", &[&format!("http://{http}/ui/"), &shot, "colour", "set in the console"]).await;

    assert_eq!(shown["errors"], serde_json::json!([]), "{shown}");
    let members = shown["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{shown}");
    let leaders: Vec<&Value> = members.iter().filter(|m| m["role"] == "leader").map(|m| &m["id"]).collect();
    assert_eq!(leaders, [&Value::from((leader + 1).to_string())], "{shown}");
    assert_eq!(shown["leader"], Value::from((leader + 1).to_string()), "{shown}");
    // Served by a follower, the page still shows the leader's view: every member reachable,
    // with its lag behind the newest log.
    assert!(members.iter().all(|m| m["reachable"] == "alive" && m["lag"] != "-"), "{shown}");

    let cli = Command::new(env!("CARGO_BIN_EXE_dister"))
        .args(["--addr", &cluster.addr(leader), "kv", "get", "colour"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&cli.stdout), "set in the console\n");
    assert_eq!(shown["loaded"], serde_json::json!({"content": "{\"n\": 1.0}", "type": "json"}), "{shown}");
    let mut answer = awc::Client::default()
        .get(format!("http://{http}/nacos/v1/cs/configs?dataId=ui.json&group=DEFAULT_GROUP"))
        .send()
        .await
        .unwrap();
    let kind = answer.headers().get("Config-Type").and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!((&answer.body().await.unwrap()[..], kind.as_deref()), (&b"{\"n\": 2.0}"[..], Some("json")));
    assert_eq!(shown["saved"], serde_json::json!({"enabled": false, "weight": "3"}), "{shown}");
    let web = c.get_service("web", Consistency::Linearizable).await.unwrap().unwrap();
    assert_eq!((web.nodes[0].enabled, web.nodes[0].weight), (false, 3.0));
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1_000), "no screenshot at {shot}");
}

/// With auth on, the console asks for a login, and once logged in shows the cluster.
#[actix_rt::test]
async fn the_console_logs_in_when_auth_is_on() {
    let cluster = Cluster::start_with(1, |c| {
        c.http = Some(format!("127.0.0.1:{}", common::free_port()));
        c.cluster_token = Some("0123456789abcdef-console".into());
        c.auth_username = Some("ops".into());
        c.auth_password = Some("console-pass".into());
    });
    cluster.wait_leader(Duration::from_secs(2)).await;
    let http = cluster.configs[0].http.clone().unwrap();
    let shown = drive("login", &[&format!("http://{http}/ui/"), "ops", "console-pass"]).await;
    assert_eq!(shown["who"], "ops", "{shown}");
    assert_eq!(shown["errors"], serde_json::json!([]), "{shown}");
}
