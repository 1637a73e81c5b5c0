//! t50: the real binary as three processes; `kill -9` the leader under concurrent writes;
//! every acknowledged write survives, and the killed node catches up after a restart.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use dister::raft::Role;
use dister::{Client, Consistency};

/// Processes killed when the test ends, however it ends.
struct Procs {
    children: Vec<Option<Child>>,
    addrs: Vec<String>,
    dir: tempfile::TempDir,
}

impl Procs {
    fn start(n: usize) -> Procs {
        let dir = tempfile::tempdir().unwrap();
        let addrs: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", common::free_port())).collect();
        let mut p = Procs { children: (0..n).map(|_| None).collect(), addrs, dir };
        for i in 0..n {
            p.spawn(i);
        }
        p
    }

    fn spawn(&mut self, i: usize) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dister"));
        cmd.arg("server")
            .args(["--id", &(i + 1).to_string()])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("n{}", i + 1)))
            .args(["--listen", &self.addrs[i]]);
        for (j, a) in self.addrs.iter().enumerate() {
            if j != i {
                cmd.args(["--peer", &format!("{}={a}", j + 1)]);
            }
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log(i)).unwrap();
        cmd.stdout(Stdio::null()).stderr(log).env("RUST_LOG", "info");
        self.children[i] = Some(cmd.spawn().expect("spawn dister"));
    }

    fn log(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("n{}.log", i + 1))
    }

    /// SIGKILL: no shutdown code runs, nothing not yet fsynced survives.
    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    async fn leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            for (i, a) in self.addrs.iter().enumerate() {
                if self.children[i].is_none() {
                    continue;
                }
                if let Ok(c) = Client::connect(a, "default").await
                    && let Ok(s) = c.with_timeout(Duration::from_secs(1)).status().await
                    && s.role == Role::Leader
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader within {within:?}; logs in {}", dump(self.dir.path()));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn dump(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("\n== {:?}\n{}", e.path(), tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
        }
    }
    out
}

impl Drop for Procs {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill9(i);
        }
    }
}

/// `kill -9` of the leader under concurrent writes loses no acknowledged write.
///
/// 1. Start three `dister server` processes; wait for a leader.
/// 2. Eight writers set unique keys through all nodes, each moving to another node when
///    its node fails, and record every write that was acknowledged.
/// 3. After 1 s, SIGKILL the leader. Writes go on for 2 s more (a new leader is elected).
/// 4. Restart the killed process from its data directory, then stop the writers.
/// 5. Every acknowledged key reads back with its value through a linearizable list, and the
///    restarted node's own copy holds every one of them too.
#[actix_rt::test]
async fn kill_9_leader_under_writes_loses_no_acknowledged_write() {
    common::init_tracing();
    let mut procs = Procs::start(3);
    let leader = procs.leader(Duration::from_secs(10)).await;
    let acked: Rc<RefCell<BTreeMap<String, String>>> = Rc::default();
    let stop = Rc::new(RefCell::new(false));
    let mut writers = Vec::new();
    for w in 0..8usize {
        let addrs = procs.addrs.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        writers.push(tokio::task::spawn_local(async move {
            let mut node = w % addrs.len();
            let mut client: Option<Client> = None;
            let mut seq = 0;
            while !*stop.borrow() {
                if client.is_none() {
                    client = Client::connect(&addrs[node], "default")
                        .await
                        .ok()
                        .map(|c| c.with_timeout(Duration::from_secs(3)));
                    if client.is_none() {
                        node = (node + 1) % addrs.len();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
                let Some(c) = client.as_ref() else { continue };
                let (k, v) = (format!("w{w}/{seq:06}"), format!("value-{w}-{seq}"));
                match c.set(&k, &v).await {
                    Ok(_) => {
                        acked.borrow_mut().insert(k, v);
                        seq += 1;
                    }
                    Err(_) => {
                        // Outcome unknown: this key is not counted; move on to a fresh key.
                        seq += 1;
                        client = None;
                        node = (node + 1) % addrs.len();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_kill = acked.borrow().len();
    procs.kill9(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kill = acked.borrow().len();
    procs.spawn(leader);
    tokio::time::sleep(Duration::from_millis(500)).await;
    *stop.borrow_mut() = true;
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.borrow().clone();
    assert!(before_kill > 50, "too few writes before the kill: {before_kill}");
    assert!(after_kill > before_kill, "no write succeeded after the leader was killed");

    let new_leader = procs.leader(Duration::from_secs(10)).await;
    let c = Client::connect(&procs.addrs[new_leader], "default").await.unwrap();
    let all: BTreeMap<String, String> = c.list("", Consistency::Linearizable).await.unwrap().into_iter().collect();
    let missing: Vec<_> = acked.iter().filter(|(k, v)| all.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );

    // The restarted node caught up from its own log plus the new leader's.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let local: Option<BTreeMap<String, String>> = match Client::connect(&procs.addrs[leader], "default").await {
            Ok(c) => c.list("", Consistency::Stale).await.ok().map(|l| l.into_iter().collect()),
            Err(_) => None,
        };
        if local.as_ref().is_some_and(|l| acked.iter().all(|(k, v)| l.get(k) == Some(v))) {
            break;
        }
        assert!(Instant::now() < deadline, "restarted node did not catch up; logs: {}", dump(procs.dir.path()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("acknowledged {} writes ({} before the kill, {} by 2 s after it)", acked.len(), before_kill, after_kill);
}
