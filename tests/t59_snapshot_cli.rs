//! t59: backups with the real binary: `dister snapshot save` streams a fresh snapshot from a
//! running cluster, `snapshot status` shows what it holds, a damaged file is refused by both
//! `status` and `restore` (which then writes nothing), and `snapshot restore` builds a data
//! directory from which `dister server` starts a new cluster holding the data.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dister::messages::registry::{Service, ServiceNode};
use dister::{Client, Consistency};
use serde_json::Value;

use crate::common::procs::Procs;
use crate::common::{free_port, retry};

/// Runs the CLI; answers exit code, stdout and stderr.
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dister")).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A server process, ended when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[actix_rt::test]
async fn save_status_and_restore_with_the_binary() {
    let procs = Procs::start(3);
    let leader = procs.leader(Duration::from_secs(10)).await;
    let c = Client::connect(&procs.addrs[leader], "default").await.unwrap().with_timeout(Duration::from_secs(5));
    for i in 0..120 {
        let (key, value) = (format!("key/{i:03}"), format!("value {i}"));
        retry(Duration::from_secs(10), || c.set(&key, &value)).await.unwrap();
    }
    let mut web = Service::new("web", "plain");
    web.nodes.push(ServiceNode::new("127.0.0.1", 9));
    c.set_services(vec![web]).await.unwrap();

    // Saved through a follower: its own state, applied up to at least the writes above.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.snap");
    let follower = (leader + 1) % 3;
    let (code, out, err) = cli(&["--addr", &procs.addrs[follower], "snapshot", "save", path(&file)]);
    assert_eq!(code, 0, "{out}{err}\n{}", procs.logs());
    assert!(out.contains("saved snapshot at index"), "{out}");

    let (code, out, err) = cli(&["snapshot", "status", path(&file), "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((status["keys"].as_u64(), status["services"].as_u64()), (Some(120), Some(1)), "{status}");
    assert!(status["index"].as_u64().unwrap() > 120, "{status}");
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "{status}");
    assert_eq!(status["size"].as_u64(), Some(std::fs::metadata(&file).unwrap().len()));
    let (code, text, _) = cli(&["snapshot", "status", path(&file)]);
    assert_eq!(code, 0);
    assert!(text.contains("keys 120") && text.contains("services 1"), "{text}");

    // Damaged copies are refused, and a restore from one writes nothing.
    let bytes = std::fs::read(&file).unwrap();
    let cut = dir.path().join("cut.snap");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let flipped = dir.path().join("flipped.snap");
    let mut bad = bytes.clone();
    bad[bytes.len() / 3] ^= 1;
    std::fs::write(&flipped, &bad).unwrap();
    for damaged in [&cut, &flipped] {
        let (code, _, err) = cli(&["snapshot", "status", path(damaged)]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("not a valid snapshot"), "{err}");
        let target = dir.path().join("from-damaged");
        let (code, _, err) = cli(&["snapshot", "restore", path(damaged), "--data-dir", path(&target)]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("not a valid snapshot"), "{err}");
        assert!(!target.exists(), "a restore from a damaged file wrote {}", target.display());
    }

    // A new one-node cluster from the backup.
    let data = dir.path().join("restored");
    let addr = format!("127.0.0.1:{}", free_port());
    let (code, out, err) = cli(&["snapshot", "restore", path(&file), "--data-dir", path(&data), "--addr", &addr]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = cli(&["snapshot", "restore", path(&file), "--data-dir", path(&data), "--addr", &addr]);
    assert_eq!(code, 1, "a second restore into the same directory went in");
    assert!(err.contains("not empty"), "{err}");
    let (code, _, err) =
        cli(&["snapshot", "restore", path(&file), "--data-dir", path(&dir.path().join("x")), "--addr", "nowhere"]);
    assert_eq!(code, 2, "a bad address was taken: {err}");

    let log = std::fs::File::create(dir.path().join("restored.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dister"));
    cmd.args(["server", "--id", "1", "--listen", &addr, "--data-dir", path(&data)]);
    let _server = Server(cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        if let Ok(r) = Client::connect(&addr, "default").await {
            break r.with_timeout(Duration::from_secs(5));
        }
        assert!(Instant::now() < deadline, "the restored node never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for i in 0..120 {
        let key = format!("key/{i:03}");
        let got = retry(Duration::from_secs(10), || r.get(&key, Consistency::Linearizable)).await;
        assert_eq!(got.unwrap().as_deref(), Some(format!("value {i}").as_str()), "key/{i:03} after the restore");
    }
    let web = r.get_service("web", Consistency::Linearizable).await.unwrap().expect("web after the restore");
    assert_eq!(web.nodes.len(), 1);
    let s = r.status().await.unwrap();
    let members: Vec<(u64, String)> = s.members.iter().map(|m| (m.id, m.addr.clone())).collect();
    assert_eq!(members, [(1, addr.clone())], "the new cluster's members");
    assert!(s.snapshot_index > 120 && s.first_log_index == s.snapshot_index + 1, "{s:?}");
    // It takes writes as a cluster of its own.
    retry(Duration::from_secs(10), || r.set("after-restore", "yes")).await.unwrap();
}
