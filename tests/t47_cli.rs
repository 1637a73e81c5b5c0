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
