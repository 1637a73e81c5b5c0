//! t47: the command line against a running cluster: output on stdout, errors on stderr, exit
//! codes 0 (done), 1 (not found or failed), 2 (bad arguments).

use crate::common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::Cluster;

fn dister(addr: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dister"));
    cmd.args(["--addr", addr]).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run dister");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn expect(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
}

/// The key/value, status, service, balance and beat commands, their outputs and exit codes.
#[actix_rt::test]
async fn commands_print_results_and_exit_with_the_right_codes() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let addr = cluster.addr((leader + 1) % 3);
    let addr = addr.as_str();

    let o = dister(addr, &["kv", "set", "greeting", "hello world"], None);
    expect(&o, 0);
    assert_eq!(stdout(&o), "OK\n");
    let o = dister(addr, &["kv", "get", "greeting"], None);
    expect(&o, 0);
    assert_eq!(stdout(&o), "hello world\n", "kv get prints the value alone");
    let o = dister(addr, &["kv", "get", "greeting", "--stale"], None);
    assert_eq!(stdout(&o), "hello world\n");
    let o = dister(addr, &["kv", "get", "missing"], None);
    expect(&o, 1);
    assert!(stdout(&o).is_empty() && stderr(&o).contains("not found"), "{}", stderr(&o));
    dister(addr, &["kv", "set", "g2", "x"], None);
    let o = dister(addr, &["kv", "list", "g"], None);
    assert_eq!(stdout(&o), "g2\tx\ngreeting\thello world\n");
    let o = dister(addr, &["kv", "del", "g2", "nope"], None);
    assert_eq!(stdout(&o), "1\n");
    let o = dister(addr, &["status", "--json"], None);
    expect(&o, 0);
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    for field in ["id", "role", "term", "leader", "commit_index", "applied_index", "last_log_index", "peers"] {
        assert!(s.get(field).is_some(), "status --json lacks {field}");
    }

    // Bad arguments: exit 2 with usage.
    for args in
        [&["kv", "get"][..], &["kv", "frob"], &["instance", "beat", "svc", "no-port"], &["bench", "--clients", "0"]]
    {
        let o = dister(addr, args, None);
        expect(&o, 2);
        assert!(!stderr(&o).is_empty());
    }

    // Services from stdin and from a file.
    let svc = r#"[{"name":"web","type":"http","node":[{"host":"127.0.0.1","port":9001,"weight":1},{"host":"127.0.0.2","port":9002,"enabled":false}]}]"#;
    let o = dister(addr, &["service", "set", "-"], Some(svc));
    expect(&o, 0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db.json");
    std::fs::write(&file, r#"{"name":"db","node":[{"host":"127.0.0.1","port":5432,"ephemeral":true}]}"#).unwrap();
    expect(&dister(addr, &["service", "set", file.to_str().unwrap()], None), 0);
    let o = dister(addr, &["service", "get", "web"], None);
    expect(&o, 0);
    let web: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(web["node"].as_array().unwrap().len(), 2);
    let o = dister(addr, &["service", "get"], None);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap().as_array().unwrap().len(), 2);
    expect(&dister(addr, &["service", "get", "nope"], None), 1);
    let o = dister(addr, &["service", "set", "-"], Some("{broken"));
    expect(&o, 1);
    assert!(stderr(&o).contains("not JSON"), "{}", stderr(&o));

    let o = dister(addr, &["balance", "web"], None);
    expect(&o, 0);
    assert_eq!(stdout(&o), "127.0.0.1:9001\n", "balance returned a disabled instance");
    let o = dister(addr, &["balance", "nope"], None);
    expect(&o, 1);
    assert!(stderr(&o).contains("not registered"));

    expect(&dister(addr, &["instance", "beat", "db", "127.0.0.1:5432"], None), 0);
    let o = dister(addr, &["instance", "beat", "db", "127.0.0.1:1"], None);
    expect(&o, 1);
    assert!(stderr(&o).contains("not registered"), "{}", stderr(&o));

    let o = dister(addr, &["service", "del", "web", "db"], None);
    expect(&o, 0);
    expect(&dister(addr, &["service", "get", "web"], None), 1);

    // An unreachable node is a clear failure, exit 1.
    let o = dister(&format!("127.0.0.1:{}", common::free_port()), &["kv", "get", "x"], None);
    expect(&o, 1);
    assert!(stderr(&o).contains("cannot reach"), "{}", stderr(&o));
}

/// dister's own command names work as in dister, as aliases of today's commands with the
/// same output and exit codes.
///
/// 1. `addkv`, `getkv`, `kvs`, `delkv K1,K2` against a 3-node cluster, through a follower.
/// 2. `addservice` with the example dister file, `services`, `getservice`, `balance`,
///    `delservice N1,N2`.
/// 3. `nodes` lists the members; `addnode ADDR` adds a node started to wait (asking it its
///    id); `delnode ADDR` removes it; an address that is no member is exit 1.
/// 4. Missing arguments are exit 2, a missing key or service exit 1.
#[actix_rt::test]
async fn dister_command_names_work_as_in_dister() {
    let mut cluster = Cluster::start_with(3, |c| c.allow_script_checks = true);
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let addr = cluster.addr((leader + 1) % 3);
    let addr = addr.as_str();

    expect(&dister(addr, &["addkv", "colour", "blue"], None), 0);
    expect(&dister(addr, &["addkv", "size", "xl"], None), 0);
    let o = dister(addr, &["getkv", "colour"], None);
    expect(&o, 0);
    assert_eq!(stdout(&o), stdout(&dister(addr, &["kv", "get", "colour"], None)));
    assert_eq!(stdout(&o), "blue\n");
    expect(&dister(addr, &["getkv", "nope"], None), 1);
    let o = dister(addr, &["kvs"], None);
    assert_eq!(stdout(&o), "colour\tblue\nsize\txl\n");
    let o = dister(addr, &["delkv", "colour,size,nope"], None);
    expect(&o, 0);
    assert_eq!(stdout(&o), "2\n");
    assert_eq!(stdout(&dister(addr, &["kvs"], None)), "");

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/dister_services.json");
    let o = dister(addr, &["addservice", example], None);
    expect(&o, 0);
    assert_eq!(stdout(&o), "5\n");
    let o = dister(addr, &["services"], None);
    expect(&o, 0);
    let all: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 5);
    let o = dister(addr, &["getservice", "db1"], None);
    expect(&o, 0);
    let db1: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (&db1["type"], &db1["node"][0]["port"], &db1["node"][0]["user"]),
        (&serde_json::json!("mysql"), &serde_json::json!(3306), &serde_json::json!("root"))
    );
    assert!(db1["node"][0].get("status").is_some(), "{db1}");
    expect(&dister(addr, &["getservice", "nope"], None), 1);
    // The custom node printing 1 turns healthy (5 s interval, first probe at once).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let o = dister(addr, &["balance", "taskmanager"], None);
        if o.status.code() == Some(0) {
            assert_eq!(stdout(&o), "127.0.0.100:0\n");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "balance: {}", stderr(&o));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = dister(addr, &["delservice", "db1,pg1"], None);
    expect(&o, 0);
    expect(&dister(addr, &["getservice", "db1"], None), 1);
    expect(&dister(addr, &["getservice", "memcache"], None), 0);

    // Id, address and role (match indexes move between two calls).
    let members = |o: &Output| -> Vec<String> {
        stdout(o).lines().map(|l| l.split('\t').take(3).collect::<Vec<_>>().join("\t")).collect()
    };
    let o = dister(addr, &["nodes"], None);
    expect(&o, 0);
    assert_eq!(members(&o), members(&dister(addr, &["member", "list"], None)));
    assert_eq!(members(&o).len(), 3);
    let fresh = cluster.add_node(|_| {});
    let fresh_addr = cluster.addr(fresh);
    let o = dister(addr, &["addnode", &fresh_addr], None);
    expect(&o, 0);
    assert!(stdout(&o).starts_with(&format!("added {} ({fresh_addr})", fresh + 1)), "{}", stdout(&o));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !stdout(&dister(addr, &["nodes"], None)).contains(&format!("{fresh_addr}\tvoter")) {
        assert!(std::time::Instant::now() < deadline, "{} not promoted", fresh_addr);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = dister(addr, &["delnode", &fresh_addr], None);
    expect(&o, 0);
    assert!(!stdout(&dister(addr, &["nodes"], None)).contains(&fresh_addr));
    let o = dister(addr, &["delnode", "127.0.0.1:1"], None);
    expect(&o, 1);
    assert!(stderr(&o).contains("no member at 127.0.0.1:1"), "{}", stderr(&o));

    for args in [&["getkv"][..], &["addkv", "k"], &["delkv"], &["addnode"], &["delnode", "a:b:c"]] {
        expect(&dister(addr, args, None), 2);
    }
}

/// `dister bench` runs each read workload without an error: `kv-get` over the wire,
/// `nacos-get` and `nacos-list` over HTTP (each sets up what it reads first). Only that they
/// work is checked here; their speed is the bench's to report.
#[actix_rt::test]
async fn the_read_benches_run_without_errors() {
    let cluster = Cluster::start_with(3, |c| c.http = Some(format!("127.0.0.1:{}", common::free_port())));
    cluster.wait_leader(Duration::from_secs(2)).await;
    let wire: Vec<String> = (0..3).map(|i| cluster.addr(i)).collect();
    let http: Vec<String> = cluster.configs.iter().map(|c| c.http.clone().unwrap()).collect();
    for (workload, nodes) in [("kv-get", &wire), ("nacos-get", &http), ("nacos-list", &http)] {
        let nodes = nodes.join(",");
        let args = ["bench", "--workload", workload, "--nodes", &nodes, "--clients", "6", "--secs", "1"];
        let o = dister(&wire[0], &args, None);
        expect(&o, 0);
        let out = stdout(&o);
        assert!(out.contains("errors=0") && !out.contains("ops=0 "), "{workload}: {out}");
    }
}
