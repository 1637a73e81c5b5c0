//! t61: log compaction and InstallSnapshot on a real cluster: the log is compacted under load
//! on every node (in memory and on disk), and a follower that needs compacted entries (its
//! data directory wiped, or cut off while the log moved on) comes back by a snapshot from the
//! leader and then the log after it, even when it crashes in the middle of the transfer.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Cluster, retry};
use dister::Consistency;
use dister::config::Config;
use dister::wire::StatusInfo;

/// Snapshots every 50 entries, keeping 10 behind each, in segments of 4 KiB: a few hundred
/// writes compact the log several times over.
fn small_log(c: &mut Config) {
    c.snapshot_entries = 50;
    c.snapshot_catchup_entries = 10;
    c.segment_bytes = 4 << 10;
}

async fn status_until(cluster: &Cluster, i: usize, what: &str, ok: impl Fn(&StatusInfo) -> bool) -> StatusInfo {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = cluster.status(i).await
            && ok(&s)
        {
            return s;
        }
        assert!(Instant::now() < deadline, "node {i}: {what}; last status {:?}", cluster.status(i).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sequence numbers of the log segments in a data directory, ascending.
fn segments(dir: &Path) -> Vec<u64> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
        .collect();
    seqs.sort_unstable();
    seqs
}

async fn write_keys(cluster: &Cluster, at: usize, range: std::ops::Range<usize>, value_len: usize) {
    let c = cluster.client(at).await;
    let pad = "x".repeat(value_len);
    for i in range {
        let (key, value) = (format!("key/{i:05}"), format!("{i} {pad}"));
        retry(Duration::from_secs(10), || c.set(&key, &value)).await.unwrap();
    }
}

/// Node `i` holds exactly keys `0..n`, each with the value written, by a stale read (its own
/// state machine).
async fn holds_keys(cluster: &Cluster, i: usize, n: usize, value_len: usize) {
    let c = cluster.client(i).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let pad = "x".repeat(value_len);
    let want: Vec<(String, String)> = (0..n).map(|i| (format!("key/{i:05}"), format!("{i} {pad}"))).collect();
    loop {
        let got = c.list("key/", Consistency::Stale).await.unwrap();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "node {i} holds {} of {n} keys", got.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Under a steady load every node compacts its log: the first entry it holds moves up to
/// a few entries behind its snapshot, the oldest segments are deleted from disk, and a
/// restarted node comes back from its snapshot and the compacted log.
///
/// 1. Three nodes (snapshots every 50, 10 kept, 4 KiB segments); 600 writes.
/// 2. Every node: a snapshot past index 500, the log's first entry within 10 + 50 of it
///    (one snapshot interval may pass between compactions), segment 1 gone from disk.
/// 3. A follower restarted holds every key and its log still starts past index 400.
#[actix_rt::test]
async fn the_log_is_compacted_under_load_on_every_node() {
    let mut cluster = Cluster::start_with(3, small_log);
    let leader = cluster.wait_leader(Duration::from_secs(3)).await;
    write_keys(&cluster, leader, 0..600, 16).await;
    for i in 0..3 {
        let s = status_until(&cluster, i, "no snapshot past 500", |s| s.snapshot_index > 500).await;
        let first = s.first_log_index;
        assert!(first > 400, "node {i}: the log still starts at {first} (snapshot {})", s.snapshot_index);
        assert!(first <= s.snapshot_index + 1, "node {i}: the log starts at {first}, after its snapshot");
        let segs = segments(&cluster.data_dir(i));
        assert!(segs[0] > 1, "node {i}: segment 1 was not deleted: {segs:?}");
    }
    let follower = (leader + 1) % 3;
    cluster.restart_node(follower);
    holds_keys(&cluster, follower, 600, 16).await;
    let s = status_until(&cluster, follower, "restarted without its snapshot", |s| s.snapshot_index > 500).await;
    assert!(s.first_log_index > 400, "restarted log starts at {}", s.first_log_index);
}

/// Deletes a stopped node's data directory. Its storage threads (the log's fsync thread, a
/// snapshot being written) may still finish a file after its actor system stopped, so a
/// removal that finds the directory refilled is tried again (seen under the full suite).
fn wipe(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = std::fs::remove_dir_all(dir) {
        assert!(e.kind() == std::io::ErrorKind::DirectoryNotEmpty && Instant::now() < deadline, "{e}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A follower whose data directory was wiped comes back by InstallSnapshot: the leader's
/// log no longer holds its first entries.
///
/// 1. Three nodes; 300 writes; a follower is stopped and its data directory deleted.
/// 2. 300 more writes while it is down (the leader compacts past everything it had).
/// 3. It starts again, empty: it installs the leader's snapshot, then takes the log after
///    it, and holds all 600 keys; writes after that reach it too.
#[actix_rt::test]
async fn a_follower_with_a_wiped_disk_comes_back_by_install_snapshot() {
    let mut cluster = Cluster::start_with(3, small_log);
    let leader = cluster.wait_leader(Duration::from_secs(3)).await;
    write_keys(&cluster, leader, 0..300, 16).await;
    let follower = (leader + 1) % 3;
    cluster.stop_node(follower);
    wipe(&cluster.data_dir(follower));
    write_keys(&cluster, leader, 300..600, 16).await;
    let s = status_until(&cluster, leader, "leader did not compact", |s| s.first_log_index > 1).await;
    assert!(s.first_log_index > 300, "leader log starts at {}", s.first_log_index);
    cluster.start_node(follower);
    holds_keys(&cluster, follower, 600, 16).await;
    let s = cluster.status(follower).await.unwrap();
    assert!(s.snapshots_installed >= 1, "the wiped follower caught up without a snapshot: {s:?}");
    write_keys(&cluster, leader, 600..620, 16).await;
    holds_keys(&cluster, follower, 620, 16).await;
}

/// A follower cut off while the log is compacted past its last entry catches up once the
/// partition heals: by a snapshot, then the log.
#[actix_rt::test]
async fn a_follower_partitioned_past_the_compaction_point_catches_up() {
    let cluster = Cluster::start_faulty(3, small_log);
    let leader = cluster.wait_leader(Duration::from_secs(3)).await;
    write_keys(&cluster, leader, 0..100, 16).await;
    let follower = (leader + 1) % 3;
    let ids = cluster.ids();
    cluster.faults().isolate(ids[follower], ids.clone());
    write_keys(&cluster, leader, 100..500, 16).await;
    let behind = cluster.status(follower).await.unwrap();
    let s = status_until(&cluster, leader, "leader did not compact", |s| s.first_log_index > behind.last_log_index + 1)
        .await;
    assert!(s.first_log_index > behind.last_log_index + 1);
    cluster.faults().heal();
    holds_keys(&cluster, follower, 500, 16).await;
    let s = cluster.status(follower).await.unwrap();
    assert!(s.snapshots_installed >= 1, "caught up without a snapshot: {s:?}");
}

/// A follower that crashes while it receives a snapshot (several chunks, slowed down) starts
/// again cleanly: the partial file is dropped, the transfer starts over, and it ends with
/// every key; no partial snapshot is ever installed.
#[actix_rt::test]
async fn a_crash_during_install_starts_the_transfer_again() {
    // About 4 MiB of state: four chunks or more.
    let value = 2_000;
    let mut cluster = Cluster::start_faulty(3, |c| {
        small_log(c);
        c.segment_bytes = 1 << 20;
        c.snapshot_entries = 500;
    });
    let leader = cluster.wait_leader(Duration::from_secs(3)).await;
    let follower = (leader + 1) % 3;
    let ids = cluster.ids();
    cluster.faults().isolate(ids[follower], ids.clone());
    write_keys(&cluster, leader, 0..2_100, value).await;
    status_until(&cluster, leader, "leader did not compact", |s| s.first_log_index > 1_000).await;
    // Each chunk (and each heartbeat) to the follower now takes 300 ms.
    cluster.faults().heal();
    cluster.faults().delay(ids[leader], ids[follower], Duration::from_millis(300));
    let part = cluster.data_dir(follower).join("snapshots").join("receiving.snap.tmp");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !part.exists() {
        assert!(Instant::now() < deadline, "the transfer never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.stop_node(follower);
    assert!(part.exists());
    cluster.faults().heal();
    cluster.start_node(follower);
    holds_keys(&cluster, follower, 2_100, value).await;
    assert!(!part.exists(), "the partial snapshot outlived the transfer");
    let s = cluster.status(follower).await.unwrap();
    assert!(s.snapshots_installed >= 1, "{s:?}");
}
