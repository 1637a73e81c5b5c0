//! t56: membership changes on an in-process cluster while it serves: a node joins under
//! writes and votes, a follower and the leader are removed, a dead node is replaced,
//! learners never count, and a restarted node reads its members from the log.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dister::raft::Role;
use dister::raft::members::{MemberChange, MemberRole};
use dister::wire::StatusInfo;
use dister::{ApiError, ClientError, Consistency};

use crate::common::{Cluster, retry};

const LONG: Duration = Duration::from_secs(20);

/// Waits until node `i` answers a status for which `ok` holds; returns it.
async fn wait_status(cluster: &Cluster, i: usize, what: &str, ok: impl Fn(&StatusInfo) -> bool) -> StatusInfo {
    let deadline = Instant::now() + LONG;
    loop {
        let s = cluster.status(i).await;
        if let Some(s) = s.as_ref().filter(|s| ok(s)) {
            return s.clone();
        }
        assert!(Instant::now() < deadline, "node {} never had {what}: {s:?}", i + 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The voters and learners node `i` knows, by id.
fn roles(s: &StatusInfo) -> (Vec<u64>, Vec<u64>) {
    let of = |r| s.members.iter().filter(|m| m.role == r).map(|m| m.id).collect();
    (of(MemberRole::Voter), of(MemberRole::Learner))
}

/// Changes the membership through node `via`, retrying while the cluster is busy.
async fn change(cluster: &Cluster, via: usize, change: MemberChange) -> Result<u64, ClientError> {
    retry(LONG, || {
        let change = change.clone();
        async move { cluster.client(via).await.change_members(change).await.map(|w| w.index) }
    })
    .await
}

/// Writes `k0`, `k1`, ... through the nodes at `addrs` in turn until `stop` and 30 writes
/// are acknowledged; answers the acknowledged ones. Runs apart from the cluster, which the
/// test changes meanwhile.
fn writer(cluster: &Cluster, stop: Rc<RefCell<bool>>) -> actix_rt::task::JoinHandle<Vec<(String, String)>> {
    let addrs: Vec<String> = (0..cluster.len()).map(|i| cluster.addr(i)).collect();
    let (group, token) = (cluster.configs[0].group.clone(), cluster.configs[0].cluster_token.clone());
    actix_rt::spawn(async move {
        let mut acked = Vec::new();
        let mut k = 0u64;
        while !*stop.borrow() || acked.len() < 30 {
            let addr = &addrs[k as usize % addrs.len()];
            if let Ok(c) = dister::Client::connect_with_token(addr, &group, token.as_deref()).await {
                let (key, value) = (format!("k{k:05}"), format!("v{k}"));
                if c.with_timeout(Duration::from_secs(5)).set(&key, &value).await.is_ok() {
                    acked.push((key, value));
                }
            }
            k += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        acked
    })
}

/// Every acknowledged pair is on node `i`.
async fn holds_all(cluster: &Cluster, i: usize, acked: &[(String, String)]) {
    let deadline = Instant::now() + LONG;
    loop {
        let got = cluster.client(i).await.list("", Consistency::Stale).await.unwrap_or_default();
        let missing = acked.iter().filter(|p| !got.contains(p)).count();
        if missing == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "node {} lacks {missing} of {} acknowledged writes", i + 1, acked.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node started with `join` on an empty directory is added while writes go on, catches
/// up, is promoted, and then counts toward commit.
///
/// 1. Three nodes; a writer runs through all of them.
/// 2. Node 4 starts with `join` naming a follower: the follower passes the request on, the
///    leader adds it as a learner and promotes it once it holds every committed entry.
/// 3. Every node lists four voters; node 4 holds every acknowledged write.
/// 4. With one of the first three stopped, node 4's acknowledgement is needed: a write still
///    commits (4 voters, quorum 3: the leader, the third, node 4).
/// 5. Restarted, node 4 does not join again: its members come from its log.
#[actix_rt::test]
async fn a_node_joins_under_writes_catches_up_and_votes() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader(LONG).await;
    let follower = (leader + 1) % 3;
    let stop = Rc::new(RefCell::new(false));
    let writes = writer(&cluster, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let join_addr = cluster.addr(follower);
    let node4 = cluster.add_node(|c| c.join = Some(join_addr.clone()));
    for i in 0..4 {
        wait_status(&cluster, i, "four voters", |s| roles(s).0 == [1, 2, 3, 4] && !s.members_pending).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    *stop.borrow_mut() = true;
    let acked = writes.await.expect("the writer ran");
    holds_all(&cluster, node4, &acked).await;
    let leader = cluster.wait_leader(LONG).await;
    let other = (0..3).find(|&i| i != leader).unwrap();
    cluster.stop_node(other);
    let c = cluster.client(leader).await;
    c.set("needs-node-4", "yes").await.expect("leader, a third voter and node 4 make a quorum of four");
    cluster.start_node(other);
    cluster.restart_node(node4);
    let s = wait_status(&cluster, node4, "its members after a restart", |s| roles(s).0.len() == 4).await;
    assert_eq!(roles(&s), (vec![1, 2, 3, 4], vec![]), "{s:?}");
    let (_, learners) = roles(&cluster.status(leader).await.unwrap());
    assert!(learners.is_empty(), "node 4 joined twice?");
}

/// A follower and then the leader are removed; the cluster keeps writing, the removed
/// leader steps down once its removal commits, the removed nodes stand for nothing, and a
/// removed id is refused: as a peer, and when added again.
#[actix_rt::test]
async fn a_follower_then_the_leader_are_removed() {
    let cluster = Cluster::start(5);
    let leader = cluster.wait_leader(LONG).await;
    let follower = (leader + 1) % 5;
    let fid = follower as u64 + 1;
    change(&cluster, leader, MemberChange::Remove { id: fid }).await.expect("remove a follower");
    let c = cluster.client(leader).await;
    c.set("after-follower", "1").await.unwrap();
    // Removing the leader: it commits the change with the others, then steps down.
    let lid = leader as u64 + 1;
    change(&cluster, leader, MemberChange::Remove { id: lid }).await.expect("remove the leader");
    let rest: Vec<usize> = (0..5).filter(|&i| i != leader && i != follower).collect();
    let s = wait_status(&cluster, rest[0], "a new leader", |s| s.leader.is_some_and(|l| l != lid)).await;
    let new_leader = (s.leader.unwrap() - 1) as usize;
    assert!(rest.contains(&new_leader), "{s:?}");
    let c = cluster.client(rest[1]).await;
    retry(LONG, || c.set("after-leader", "2")).await.expect("writes go on among the rest");
    for &i in &rest {
        let s = wait_status(&cluster, i, "three voters", |s| roles(s).0.len() == 3).await;
        assert!(!roles(&s).0.contains(&lid) && !roles(&s).0.contains(&fid), "{s:?}");
    }
    // The removed leader stepped down and stays down; neither removed node disrupts.
    let old = wait_status(&cluster, leader, "stepped down", |s| s.role != Role::Leader).await;
    assert_ne!(old.role, Role::Candidate);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let term = cluster.status(new_leader).await.unwrap().term;
    assert_eq!(term, s.term, "a removed node raised the term");
    // Ids are never reused.
    let again = MemberChange::Add { id: fid, addr: cluster.addr(follower), promote: true };
    match cluster.client(new_leader).await.change_members(again).await {
        Err(ClientError::Api(ApiError::BadRequest(m))) => assert!(m.contains("removed"), "{m}"),
        other => panic!("a removed id was accepted: {other:?}"),
    }
    holds_all(&cluster, rest[2], &[("after-leader".into(), "2".into())]).await;
}

/// A dead node is replaced: killed, removed, and a new node (new id) added; no acknowledged
/// write is lost, and the new node holds them all.
#[actix_rt::test]
async fn a_dead_node_is_replaced() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader(LONG).await;
    let dead = (leader + 2) % 3;
    let c = cluster.client(leader).await;
    let mut acked = Vec::new();
    for k in 0..50 {
        let (key, value) = (format!("k{k:05}"), format!("v{k}"));
        c.set(&key, &value).await.unwrap();
        acked.push((key, value));
    }
    cluster.stop_node(dead);
    change(&cluster, leader, MemberChange::Remove { id: dead as u64 + 1 }).await.expect("remove the dead node");
    let fresh = cluster.add_node(|_| {});
    let addr = cluster.addr(fresh);
    change(&cluster, leader, MemberChange::Add { id: fresh as u64 + 1, addr, promote: true }).await.unwrap();
    for k in 50..80 {
        let (key, value) = (format!("k{k:05}"), format!("v{k}"));
        retry(LONG, || c.set(&key, &value)).await.unwrap();
        acked.push((key, value));
    }
    let want = vec![1, 2, 3, 4].into_iter().filter(|&id| id != dead as u64 + 1).collect::<Vec<_>>();
    wait_status(&cluster, fresh, "its promotion", |s| roles(s).0 == want).await;
    holds_all(&cluster, fresh, &acked).await;
    // The replacement counts: with the other survivor stopped, leader and new node commit.
    let survivor = (0..3).find(|&i| i != leader && i != dead).unwrap();
    cluster.stop_node(survivor);
    c.set("two-of-three", "ok").await.expect("the new node acknowledges");
}

/// A learner receives the log and serves reads, but never votes or counts toward commit;
/// promotion by hand makes it count.
///
/// 1. Three voters; node 4 added as a learner (no promotion).
/// 2. It holds the writes and answers stale and linearizable reads.
/// 3. With two voters stopped, the leader and the learner are not a majority of three: a
///    write is not acknowledged, and the learner never stands.
/// 4. The voters return; `promote` makes node 4 a voter.
#[actix_rt::test]
async fn learners_never_vote_or_count() {
    let mut cluster = Cluster::start_with(3, |c| c.request_timeout_ms = 1_500);
    let leader = cluster.wait_leader(LONG).await;
    let learner = cluster.add_node(|_| {});
    let addr = cluster.addr(learner);
    let lid = learner as u64 + 1;
    change(&cluster, leader, MemberChange::Add { id: lid, addr, promote: false }).await.unwrap();
    let c = cluster.client(leader).await;
    c.set("seen-by-learner", "1").await.unwrap();
    // Once the learner holds the write it holds the configuration before it, and knows where
    // the leader is: a linearizable read through it is asked of the leader.
    holds_all(&cluster, learner, &[("seen-by-learner".into(), "1".into())]).await;
    let l = cluster.client(learner).await;
    assert_eq!(l.get("seen-by-learner", Consistency::Linearizable).await.unwrap().as_deref(), Some("1"));
    let s = cluster.status(leader).await.unwrap();
    assert_eq!(roles(&s), (vec![1, 2, 3], vec![lid]));
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.stop_node(others[0]);
    cluster.stop_node(others[1]);
    let write = c.set("no-majority", "x").await;
    assert!(write.is_err(), "a learner counted toward commit: {write:?}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let s = cluster.status(learner).await.unwrap();
    assert_ne!(s.role, Role::Candidate, "a learner stood");
    assert_ne!(s.role, Role::Leader, "a learner leads");
    cluster.start_node(others[0]);
    cluster.start_node(others[1]);
    cluster.wait_leader(LONG).await;
    change(&cluster, others[0], MemberChange::Promote { id: lid }).await.expect("promote by hand");
    wait_status(&cluster, learner, "its promotion", |s| roles(s).0.contains(&lid)).await;
}

/// A restarted node reads its members from the log, not from its file: after node 3 is
/// removed and node 4 added, node 1 restarted with its original peers (2 and 3) knows 1, 2
/// and 4.
#[actix_rt::test]
async fn a_restart_after_changes_reads_members_from_the_log() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader(LONG).await;
    let fresh = cluster.add_node(|_| {});
    let addr = cluster.addr(fresh);
    change(&cluster, leader, MemberChange::Add { id: 4, addr, promote: true }).await.unwrap();
    wait_status(&cluster, leader, "node 4 promoted", |s| roles(s).0 == [1, 2, 3, 4] && !s.members_pending).await;
    change(&cluster, leader, MemberChange::Remove { id: 3 }).await.unwrap();
    for i in 0..4 {
        cluster.stop_node(i);
    }
    assert_eq!(cluster.configs[0].peers.len(), 2, "node 1's file still lists 2 and 3");
    for i in [0, 1, 3] {
        cluster.start_node(i);
    }
    let s = wait_status(&cluster, 0, "a leader", |s| s.leader.is_some()).await;
    assert_eq!(roles(&s), (vec![1, 2, 4], vec![]), "{s:?}");
    let c = cluster.client(0).await;
    retry(LONG, || c.set("after-restart", "1")).await.expect("1, 2 and 4 make the cluster");
}

/// Leadership is handed over on request (TimeoutNow, thesis §3.10): the named voter leads
/// at once, with no election timeout, and writes sent to the old leader meanwhile wait and
/// succeed instead of failing. A learner or an unknown id is refused.
///
/// 1. Three voters and a learner; a client writes through the leader without pause.
/// 2. `transfer_leadership(Some(target))` through a follower answers `target`; every write
///    sent during it succeeded.
/// 3. With no target named, the most caught-up voter takes over.
#[actix_rt::test]
async fn leadership_is_handed_over_without_failing_writes() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader(LONG).await;
    let learner = cluster.add_node(|_| {});
    let addr = cluster.addr(learner);
    change(&cluster, leader, MemberChange::Add { id: 4, addr, promote: false }).await.unwrap();
    let target = (leader + 1) % 3;
    let via = cluster.client((leader + 2) % 3).await;
    match via.transfer_leadership(Some(4)).await {
        Err(ClientError::Api(ApiError::BadRequest(m))) => assert!(m.contains("not a voter"), "{m}"),
        other => panic!("handed to a learner: {other:?}"),
    }
    match via.transfer_leadership(Some(9)).await {
        Err(ClientError::Api(ApiError::BadRequest(m))) => assert!(m.contains("not a voter"), "{m}"),
        other => panic!("handed to nobody: {other:?}"),
    }
    let c = cluster.client(leader).await;
    let stop = Rc::new(RefCell::new(false));
    let writes = {
        let (c, stop) = (c.clone(), stop.clone());
        actix_rt::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            let mut k = 0;
            while !*stop.borrow() {
                match c.set(&format!("t{k}"), "v").await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                k += 1;
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let to = via.transfer_leadership(Some(target as u64 + 1)).await.expect("transfer");
    let took = started.elapsed();
    assert_eq!(to, target as u64 + 1);
    let s = wait_status(&cluster, target, "leadership", |s| s.role == Role::Leader).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    *stop.borrow_mut() = true;
    let (ok, failed) = writes.await.unwrap();
    assert!(failed.is_empty(), "writes failed during the transfer ({ok} succeeded): {failed:?}");
    assert!(ok > 10, "{ok} writes");
    eprintln!("transfer took {took:?}; {ok} writes, none failed; new term {}", s.term);
    // No target: the most caught-up voter.
    let to = cluster.client(target).await.transfer_leadership(None).await.expect("transfer to anyone");
    assert_ne!(to, target as u64 + 1);
    assert_ne!(to, 4, "a learner took over");
}
