//! t50: the real binary as three processes. `kill -9` the leader, a follower, two at once,
//! under concurrent writes, again and again: every acknowledged write survives and the killed
//! nodes catch up. A torn last record is cut at start-up; a flipped byte in the middle of the
//! log stops the node with an error naming the file and offset.

use crate::common;
use crate::common::procs::Procs;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::rc::Rc;
use std::time::Duration;

use dister::{Client, Consistency};

/// Concurrent writers of unique keys, spread over all nodes, moving on when a node fails;
/// they record every write that was acknowledged.
struct Writers {
    acked: Rc<RefCell<BTreeMap<String, String>>>,
    stop: Rc<RefCell<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(addrs: &[String], n: usize) -> Writers {
        let acked: Rc<RefCell<BTreeMap<String, String>>> = Rc::default();
        let stop = Rc::new(RefCell::new(false));
        let tasks = (0..n)
            .map(|w| {
                let (addrs, acked, stop) = (addrs.to_vec(), acked.clone(), stop.clone());
                tokio::task::spawn_local(async move {
                    let mut node = w % addrs.len();
                    let mut client: Option<Client> = None;
                    let mut seq = 0;
                    while !*stop.borrow() {
                        let Some(c) = client.as_ref() else {
                            client = Client::connect(&addrs[node], "default")
                                .await
                                .ok()
                                .map(|c| c.with_timeout(Duration::from_secs(3)));
                            if client.is_none() {
                                node = (node + 1) % addrs.len();
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            continue;
                        };
                        let (k, v) = (format!("w{w}/{seq:06}"), format!("value-{w}-{seq}"));
                        seq += 1;
                        match c.set(&k, &v).await {
                            Ok(_) => {
                                acked.borrow_mut().insert(k, v);
                            }
                            // Outcome unknown: not counted; move on to a fresh key and node.
                            Err(_) => {
                                client = None;
                                node = (node + 1) % addrs.len();
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Writers { acked, stop, tasks }
    }

    fn count(&self) -> usize {
        self.acked.borrow().len()
    }

    async fn stop(self) -> BTreeMap<String, String> {
        *self.stop.borrow_mut() = true;
        for t in self.tasks {
            t.await.unwrap();
        }
        self.acked.borrow().clone()
    }
}

/// `kill -9` of the leader under concurrent writes loses no acknowledged write.
///
/// 1. Start three `dister server` processes; wait for a leader.
/// 2. Eight writers set unique keys through all nodes and record every acknowledged write.
/// 3. After 1 s, SIGKILL the leader. Writes go on for 2 s more (a new leader is elected).
/// 4. Restart the killed process from its data directory, then stop the writers.
/// 5. Every acknowledged key reads back with its value, and every node's copy holds them.
#[actix_rt::test]
async fn kill_9_leader_under_writes_loses_no_acknowledged_write() {
    common::init_tracing();
    let mut procs = Procs::start(3);
    let leader = procs.leader(Duration::from_secs(10)).await;
    let writers = Writers::start(&procs.addrs, 8);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_kill = writers.count();
    procs.kill9(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kill = writers.count();
    procs.spawn(leader);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = writers.stop().await;
    assert!(before_kill > 50, "too few writes before the kill: {before_kill}");
    assert!(after_kill > before_kill, "no write succeeded after the leader was killed");
    procs.check(&acked).await;
    eprintln!("acknowledged {} writes ({before_kill} before the kill, {after_kill} by 2 s after it)", acked.len());
}

/// Repeated crashes: the leader, then a follower, then two nodes at once (no majority until
/// they return), twice over, under concurrent writes; each killed node restarts from its
/// data directory. Nothing acknowledged is lost, and every node ends with every write.
#[actix_rt::test]
async fn repeated_kill_9_of_leaders_followers_and_majorities_loses_nothing() {
    common::init_tracing();
    let mut procs = Procs::start(3);
    procs.leader(Duration::from_secs(10)).await;
    let writers = Writers::start(&procs.addrs, 6);
    for round in 0..2 {
        // The leader.
        let leader = procs.leader(Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        procs.kill9(leader);
        tokio::time::sleep(Duration::from_millis(700)).await;
        procs.spawn(leader);
        // A follower.
        let leader = procs.leader(Duration::from_secs(10)).await;
        let follower = (leader + 1) % 3;
        tokio::time::sleep(Duration::from_millis(300)).await;
        procs.kill9(follower);
        tokio::time::sleep(Duration::from_millis(500)).await;
        procs.spawn(follower);
        // Two at once: the leader and a follower; the survivor alone has no majority.
        let leader = procs.leader(Duration::from_secs(10)).await;
        let other = (leader + 2) % 3;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = writers.count();
        procs.kill9(leader);
        procs.kill9(other);
        tokio::time::sleep(Duration::from_millis(500)).await;
        procs.spawn(leader);
        procs.spawn(other);
        procs.leader(Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(writers.count() > before, "round {round}: no write succeeded after the double crash");
    }
    let acked = writers.stop().await;
    assert!(acked.len() > 200, "too few writes: {}", acked.len());
    procs.check(&acked).await;
    eprintln!("acknowledged {} writes across 6 crashes", acked.len());
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

/// Byte offsets of the records of a segment (`[len u32 LE][crc u32 LE][payload]`).
fn record_offsets(path: &Path) -> Vec<usize> {
    let data = std::fs::read(path).unwrap();
    let (mut off, mut out) = (0, Vec::new());
    while off + 8 <= data.len() {
        out.push(off);
        off += 8 + u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
    }
    out
}

async fn write_some(procs: &Procs, n: usize, acked: &mut BTreeMap<String, String>) {
    let leader = procs.leader(Duration::from_secs(10)).await;
    let c = Client::connect(&procs.addrs[leader], "default").await.unwrap();
    for i in 0..n {
        let (k, v) = (format!("k{:04}", acked.len() + i), format!("v{i}"));
        c.set(&k, &v).await.unwrap();
        acked.insert(k, v);
    }
}

/// A torn last record (the log file cut mid-record, as a crash during a write leaves it) is
/// cut at start-up, logged, and the node rejoins; its lost tail comes back from the leader.
/// A flipped byte in a record before the end stops the node with an error naming the file and
/// the record's offset: committed data is never dropped silently.
#[actix_rt::test]
async fn torn_tail_is_cut_and_corruption_stops_the_node() {
    common::init_tracing();
    let mut procs = Procs::start(3);
    let mut acked = BTreeMap::new();
    write_some(&procs, 50, &mut acked).await;
    // Torn tail on node 1: stop everything, cut its last record in half.
    for i in 0..3 {
        procs.kill9(i);
    }
    let seg = last_segment(&procs.data_dir(0));
    let offsets = record_offsets(&seg);
    let last = *offsets.last().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len() as usize;
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len((last + (len - last) / 2) as u64).unwrap();
    drop(f);
    for i in 0..3 {
        procs.spawn(i);
    }
    write_some(&procs, 10, &mut acked).await;
    procs.check(&acked).await;
    let log = std::fs::read_to_string(procs.log(0)).unwrap();
    assert!(log.contains("cutting a torn write off the log tail"), "no torn-tail warning in node 1's log");

    // Corruption in the middle of node 2's log: it must refuse to start, naming the spot.
    procs.kill9(1);
    let seg = last_segment(&procs.data_dir(1));
    let offsets = record_offsets(&seg);
    let victim = offsets[offsets.len() / 2];
    let mut data = std::fs::read(&seg).unwrap();
    data[victim + 8 + 1] ^= 0x20;
    std::fs::write(&seg, &data).unwrap();
    let out = procs.command(1).env("RUST_LOG", "error").stdout(Stdio::null()).output().unwrap();
    assert!(!out.status.success(), "a node with a corrupt log started");
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("corrupt record in {} at offset {victim}", seg.display());
    assert!(err.contains(&want), "error does not name the file and offset ({want}):\n{err}");
    // The other two still serve everything acknowledged.
    let leader = procs.leader(Duration::from_secs(10)).await;
    let c = Client::connect(&procs.addrs[leader], "default").await.unwrap();
    let all: BTreeMap<String, String> = c.list("", Consistency::Linearizable).await.unwrap().into_iter().collect();
    assert!(acked.iter().all(|(k, v)| all.get(k) == Some(v)));
}
