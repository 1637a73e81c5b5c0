//! t80: the deterministic chaos suite. The real actors of three (or five) founding nodes and
//! their spares run inside turmoil with an in-memory log that loses what was not yet synced
//! when a node crashes; clients read and write a few keys while a nemesis partitions
//! (majority/minority, isolated leader, bridge, one-way), delays and drops messages, pauses
//! nodes and crashes and restarts them, and an operator changes the membership: adds spares
//! (by `member add`, as learners, or by `--join`), removes followers and leaders, replaces a
//! node that died for good, and transfers leadership. Every run is fully determined by its
//! seed, printed on failure; replaying a seed replays the run.
//!
//! Each run ends by healing and checking: the clients' history is linearizable (per key);
//! every acknowledged write was committed; the current members converge to the same state and
//! configuration, with no dead node left a member; at most one leader per term (Election
//! Safety); no two nodes, removed ones included, ever applied different entries at the same
//! index (State Machine Safety), checked from the nodes' own commit streams.
//!
//! CI runs `DISTER_SEEDS` seeds (default 200 in release builds, 10 in debug ones, which
//! simulate 14 times slower) of `DISTER_SIM_SECS` simulated seconds (default 10) for each of
//! three and five founders; `DISTER_SEED=N` replays one seed. Pinned regressions live in
//! `pinned_seeds`.

use crate::common;
use crate::common::sim::{Hosts, Nemesis, Shared, SharedHosts, host, host_nodes, kv_writes_committed, simulation};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dister::check::{History, Op, Outcome};
use dister::config::ReadMode;
use dister::raft::Role;
use dister::raft::members::{MemberChange, MemberRole};
use dister::wire::messages::StatusInfo;
use dister::{ApiError, Client, ClientError, Config, Consistency, PeerConfig};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

pub(crate) const KEYS: [&str; 3] = ["a", "b", "c"];
pub(crate) const CLIENTS: usize = 3;
const TOKEN: &str = "chaos-suite-token-0123";

// ---- the nodes -------------------------------------------------------------------------------

/// Who a run starts with and what may change.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// Voters of the first configuration.
    pub founders: usize,
    /// Hosts that may be added during the run.
    pub spares: usize,
    /// Whether an operator changes the membership during the chaos.
    pub membership: bool,
    /// Lease reads (`read_mode = "lease"`), every node's clock running up to 4% fast or slow.
    pub lease: bool,
}

impl Layout {
    /// Three fixed members: the suite before membership could change.
    pub const FIXED3: Layout = Layout { founders: 3, spares: 0, membership: false, lease: false };
    /// Three founders, four spares, membership changing.
    const CHANGING3: Layout = Layout { founders: 3, spares: 4, membership: true, lease: false };
    /// The same with lease reads and clocks that drift.
    const CHANGING3_LEASE: Layout = Layout { lease: true, ..Layout::CHANGING3 };
    /// Five founders, three spares, membership changing.
    const CHANGING5: Layout = Layout { founders: 5, spares: 3, membership: true, lease: false };
}

/// Node `i` of three fixed founders.
pub(crate) fn config(i: usize, seed: u64) -> Config {
    layout_config(i, seed, Layout::FIXED3, None)
}

/// Node `i` of `layout`: a founder knows the other founders; a spare waits to be added, or
/// joins through `join` (a member's host) when it starts.
fn layout_config(i: usize, seed: u64, layout: Layout, join: Option<usize>) -> Config {
    let founder = i < layout.founders;
    Config {
        id: i as u64 + 1,
        listen: "0.0.0.0:7070".into(),
        advertise: Some(format!("{}:7070", host(i))),
        peers: (0..layout.founders)
            .filter(|&j| founder && j != i)
            .map(|j| PeerConfig { id: j as u64 + 1, addr: format!("{}:7070", host(j)) })
            .collect(),
        bootstrap: founder,
        join: join.filter(|_| !founder).map(|j| format!("{}:7070", host(j))),
        seed: Some(seed.wrapping_mul(31).wrapping_add(i as u64)),
        cluster_token: Some(TOKEN.into()),
        // A simulated network: nothing leaves the process, and TLS is not what it tests.
        insecure: true,
        request_timeout_ms: 1_000,
        handshake_timeout_ms: 1_000,
        // Snapshots every few dozen entries, and the log compacted to a few entries behind
        // them, so crashes land before, during and after snapshots, compactions and
        // installs, restarts restore them, and a node that falls behind gets a snapshot.
        snapshot_entries: 20 + seed % 40,
        snapshot_catchup_entries: seed % 3 * 8,
        read_mode: if layout.lease { ReadMode::Lease } else { ReadMode::Index },
        // Within the 5% the lease allows for: from 4% slow to 4% fast, per node and seed.
        clock_skew_ppm: if layout.lease {
            (seed.wrapping_mul(7).wrapping_add(i as u64 * 13) % 81) as i32 * 1_000 - 40_000
        } else {
            0
        },
        ..Config::default()
    }
}

// ---- clients ---------------------------------------------------------------------------------

pub(crate) fn now() -> u64 {
    turmoil::sim_elapsed().map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Whether a failed write definitely did not happen: refused before it was proposed, or its
/// entry was replaced. Anything else (timeouts, lost connections, an unreachable leader that
/// may have received it) is unknown.
pub(crate) fn definitely_failed(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Api(
            ApiError::NoLeader { .. }
                | ApiError::NotLeader { .. }
                | ApiError::Dropped { .. }
                | ApiError::BadRequest(_)
                | ApiError::Overloaded { .. }
                | ApiError::UnknownNamespace(_)
        )
    )
}

pub(crate) async fn connect(node: &str) -> Option<Client> {
    let stream = tokio::time::timeout(
        Duration::from_millis(500),
        turmoil::net::TcpStream::connect(format!("{node}:7070").as_str()),
    )
    .await
    .ok()?
    .ok()?;
    let c = Client::handshake(stream, "default", Some(TOKEN)).await.ok()?;
    Some(c.with_timeout(Duration::from_secs(2)))
}

/// One client: random reads and writes of random keys through random nodes (any that was
/// ever a member and still runs) until `until`.
pub(crate) async fn client(
    id: u64,
    seed: u64,
    until: Duration,
    hosts: SharedHosts,
    history: History,
    acked: Arc<Mutex<Vec<(String, String)>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (id << 32) ^ 0xC11E);
    let mut conns: BTreeMap<usize, Client> = BTreeMap::new();
    let mut n = 0u64;
    while turmoil::elapsed() < until {
        let targets = hosts.lock().unwrap().targets();
        let node = targets[rng.random_range(0..targets.len())];
        let key = KEYS[rng.random_range(0..KEYS.len())];
        if let std::collections::btree_map::Entry::Vacant(slot) = conns.entry(node) {
            match connect(&host(node)).await {
                Some(c) => {
                    slot.insert(c);
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(c) = conns.get(&node).cloned() else { continue };
        if rng.random_bool(0.6) {
            n += 1;
            let value = format!("c{id}-{n}");
            let op = history.invoke(id, key, Op::Write(value.clone()));
            let outcome = match c.set(key, &value).await {
                Ok(_) => {
                    acked.lock().unwrap().push((key.to_string(), value));
                    Outcome::Ok
                }
                Err(e) if definitely_failed(&e) => Outcome::Fail,
                Err(_) => {
                    conns.remove(&node);
                    Outcome::Unknown
                }
            };
            history.complete(op, outcome);
        } else {
            let op = history.invoke(id, key, Op::Read);
            match c.get(key, Consistency::Linearizable).await {
                Ok(v) => history.complete(op, Outcome::Read(v)),
                Err(e) => {
                    if !definitely_failed(&e) {
                        conns.remove(&node);
                    }
                    history.complete(op, Outcome::Unknown);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
    }
}

// ---- the operator ----------------------------------------------------------------------------

/// The membership changes an operator made in one run (completed ones).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Changes {
    /// Spares added by `member add`.
    added: usize,
    /// Spares started with `--join`.
    joined: usize,
    /// Followers (or learners) removed.
    removed: usize,
    /// Leaders removed.
    removed_leader: usize,
    /// Dead nodes replaced: stopped for good, removed, a new one added.
    replaced: usize,
    /// Leadership transfers.
    transfers: usize,
    /// Added hosts seen as voters at the end: promoted once caught up.
    promoted: usize,
    /// Runs whose members had all taken a snapshot by the end.
    snapshotted: usize,
    /// Runs where a member had installed a snapshot from the leader (it had fallen behind
    /// the compacted log).
    installed: usize,
}

impl std::ops::AddAssign for Changes {
    fn add_assign(&mut self, o: Changes) {
        self.added += o.added;
        self.joined += o.joined;
        self.removed += o.removed;
        self.removed_leader += o.removed_leader;
        self.replaced += o.replaced;
        self.transfers += o.transfers;
        self.promoted += o.promoted;
        self.snapshotted += o.snapshotted;
        self.installed += o.installed;
    }
}

/// What the operator and the checker share.
#[derive(Default)]
struct Operated {
    changes: Changes,
    /// What the operator did when, for the failure message and the digest.
    log: Vec<String>,
    /// Spares to start with `--join` through the given member's host.
    join_via: BTreeMap<usize, usize>,
    /// Whether the operator is done: its last change finished, no dead host left a member.
    done: bool,
}

/// The status of the leader with the highest term among the hosts still running.
async fn leader_status(hosts: &SharedHosts) -> Option<StatusInfo> {
    let targets = hosts.lock().unwrap().targets();
    let mut best: Option<StatusInfo> = None;
    for h in targets {
        let Some(c) = connect(&host(h)).await else { continue };
        if let Ok(s) = c.status().await
            && s.role == Role::Leader
            && best.as_ref().is_none_or(|b| b.term < s.term)
        {
            best = Some(s);
        }
    }
    best
}

/// Host index of member id `id`.
fn host_of(id: u64) -> usize {
    id as usize - 1
}

/// The leader's view, once it has no change pending; records its members in `hosts`.
async fn settled_view(hosts: &SharedHosts, within: Duration) -> Option<StatusInfo> {
    let until = turmoil::elapsed() + within;
    while turmoil::elapsed() < until {
        if let Some(s) = leader_status(hosts).await
            && !s.members_pending
        {
            let mut h = hosts.lock().unwrap();
            h.members = s.members.iter().map(|m| host_of(m.id)).collect();
            let members = h.members.clone();
            h.ever.extend(members);
            return Some(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Makes `change` through random members until it is committed, refused, or `within` has
/// passed. A refusal of an add whose id is a member by now, or of a removal whose id is gone
/// (an earlier attempt that timed out did commit), counts as done.
async fn make_change(
    hosts: &SharedHosts,
    rng: &mut StdRng,
    change: MemberChange,
    within: Duration,
) -> Result<(), String> {
    let until = turmoil::elapsed() + within;
    let mut last = String::from("no member answered");
    while turmoil::elapsed() < until {
        let live = hosts.lock().unwrap().live_members();
        let Some(c) = connect(&host(live[rng.random_range(0..live.len())])).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match c.change_members(change.clone()).await {
            Ok(_) => return Ok(()),
            Err(ClientError::Api(ApiError::BadRequest(why))) => {
                let Some(s) = settled_view(hosts, Duration::from_secs(3)).await else { return Err(why) };
                let has = |id| s.members.iter().any(|m| m.id == id);
                return match change {
                    MemberChange::Add { id, .. } if has(id) => Ok(()),
                    MemberChange::Remove { id } if !has(id) => Ok(()),
                    _ => Err(why),
                };
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
    }
    Err(format!("not done in {within:?}: {last}"))
}

/// The operator: every second or two, while the chaos lasts, one membership change chosen
/// from the leader's configuration: add a spare (by `member add`, as a learner now and then,
/// or by starting it with `--join`), remove a follower, remove the leader, replace a node
/// (stop it for good, remove it, add a new one), or transfer leadership. It keeps at least
/// three voters before any removal, at most one dead voter, and at the end removes any dead
/// host still a member.
async fn operator(seed: u64, layout: Layout, until: Duration, hosts: SharedHosts, op: Arc<Mutex<Operated>>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0BE7_A70E);
    let mut spares = layout.founders..layout.founders + layout.spares;
    let say = |what: String| {
        let line = format!("{:>6} ms operator: {what}", turmoil::elapsed().as_millis());
        op.lock().unwrap().log.push(line);
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    while turmoil::elapsed() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2_000))).await;
        let Some(s) = settled_view(&hosts, Duration::from_secs(2)).await else { continue };
        let voters: Vec<u64> = s.members.iter().filter(|m| m.role == MemberRole::Voter).map(|m| m.id).collect();
        let followers: Vec<u64> = s.members.iter().map(|m| m.id).filter(|&id| id != s.id).collect();
        let dead = hosts.lock().unwrap().dead.clone();
        let all_alive = s.members.iter().all(|m| !dead.contains(&host_of(m.id)));
        let room = s.members.len() < layout.founders + 2;
        let roll = rng.random_range(0..10);
        let outcome = match roll {
            0..=2 if room => add_spare(&hosts, &op, &mut rng, &mut spares).await,
            3..=4 if voters.len() >= 3 && !followers.is_empty() => {
                let id = followers[rng.random_range(0..followers.len())];
                let r = make_change(&hosts, &mut rng, MemberChange::Remove { id }, Duration::from_secs(5)).await;
                if r.is_ok() {
                    op.lock().unwrap().changes.removed += 1;
                    // Now and then the removed machine keeps running: it must not disturb.
                    if rng.random_bool(0.5) {
                        hosts.lock().unwrap().to_kill.push(host_of(id));
                    }
                }
                r.map(|_| format!("removed {id}"))
            }
            5 if voters.len() >= 3 => {
                let r = make_change(&hosts, &mut rng, MemberChange::Remove { id: s.id }, Duration::from_secs(5)).await;
                if r.is_ok() {
                    op.lock().unwrap().changes.removed_leader += 1;
                }
                r.map(|_| format!("removed the leader {}", s.id))
            }
            6..=7 if voters.len() >= 3 && all_alive && !spares.is_empty() => {
                let id = voters[rng.random_range(0..voters.len())];
                hosts.lock().unwrap().to_kill.push(host_of(id));
                say(format!("stopping {id} for good, to replace it"));
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
                // The dead voter is removed whatever it takes: the run ends only once it is.
                let r = make_change(&hosts, &mut rng, MemberChange::Remove { id }, Duration::from_secs(30)).await;
                match r {
                    Ok(()) => match add_spare(&hosts, &op, &mut rng, &mut spares).await {
                        Ok(added) => {
                            op.lock().unwrap().changes.replaced += 1;
                            Ok(format!("replaced {id}: {added}"))
                        }
                        Err(e) => Err(format!("removed {id}, adding a new one failed: {e}")),
                    },
                    Err(e) => Err(format!("removing dead {id}: {e}")),
                }
            }
            8 => {
                let others: Vec<u64> = voters.iter().copied().filter(|&v| v != s.id).collect();
                let to = if others.is_empty() || rng.random_bool(0.5) {
                    None
                } else {
                    Some(others[rng.random_range(0..others.len())])
                };
                let r = match connect(&host(host_of(s.id))).await {
                    Some(c) => c.transfer_leadership(to).await.map_err(|e| e.to_string()),
                    None => Err("leader unreachable".into()),
                };
                if r.is_ok() {
                    op.lock().unwrap().changes.transfers += 1;
                }
                r.map(|id| format!("transferred leadership from {} to {id} (asked {to:?})", s.id))
            }
            _ => continue,
        };
        match outcome {
            Ok(done) => say(done),
            Err(e) => say(format!("change failed: {e}")),
        }
    }
    // Settle: no dead host may stay a member.
    for _ in 0..100 {
        let Some(s) = settled_view(&hosts, Duration::from_secs(5)).await else { continue };
        let dead = hosts.lock().unwrap().dead.clone();
        match s.members.iter().find(|m| dead.contains(&host_of(m.id))) {
            Some(m) => {
                let id = m.id;
                let r = make_change(&hosts, &mut rng, MemberChange::Remove { id }, Duration::from_secs(10)).await;
                say(format!("at the end, removing dead {id}: {r:?}"));
            }
            None => {
                let added =
                    s.members.iter().filter(|m| m.role == MemberRole::Voter && host_of(m.id) >= layout.founders);
                let mut op = op.lock().unwrap();
                op.changes.promoted = added.count();
                op.done = true;
                return;
            }
        }
    }
    say("could not settle: a dead host is still a member".into());
}

/// Adds the next spare, if any is left: by `member add` (one in five as a plain learner), or
/// by starting it with `--join` through a member.
async fn add_spare(
    hosts: &SharedHosts,
    op: &Arc<Mutex<Operated>>,
    rng: &mut StdRng,
    spares: &mut std::ops::Range<usize>,
) -> Result<String, String> {
    let spare = spares.next().ok_or("no spare left")?;
    let id = spare as u64 + 1;
    let addr = format!("{}:7070", host(spare));
    let joins = op.lock().unwrap().join_via.contains_key(&spare);
    if joins {
        let live = hosts.lock().unwrap().live_members();
        let via = live[rng.random_range(0..live.len())];
        {
            let mut op = op.lock().unwrap();
            op.join_via.insert(spare, via);
            op.changes.joined += 1;
        }
        let mut h = hosts.lock().unwrap();
        h.to_start.push(spare);
        h.ever.insert(spare);
        return Ok(format!("started {id} with --join {}", host(via)));
    }
    let promote = rng.random_range(0..5) > 0;
    make_change(hosts, rng, MemberChange::Add { id, addr, promote }, Duration::from_secs(5)).await?;
    hosts.lock().unwrap().ever.insert(spare);
    op.lock().unwrap().changes.added += 1;
    Ok(format!("added {id}{}", if promote { "" } else { " as a learner" }))
}

// ---- one run ---------------------------------------------------------------------------------

/// What one seed did.
#[derive(Debug, PartialEq)]
struct Summary {
    ops: usize,
    acked_writes: usize,
    terms: usize,
    faults: usize,
    changes: Changes,
    /// Read indexes answered from a lease: a leader's, or a follower's own.
    lease_reads: u64,
    /// Of those, read indexes followers answered from their own lease.
    follower_lease_reads: u64,
    /// A digest of every operation (with its times and outcome), of the fault schedule and
    /// of the operator's log: equal digests mean the same run.
    digest: u64,
}

/// What the convergence check found: the lowest snapshot index and the installs, or why not.
type Converged = Result<(u64, u64), String>;

/// The current members' own copies (key/values and configuration), once they agree; answers
/// the lowest snapshot index among them, and how many snapshots they installed from a leader
/// since they last started.
async fn converged(hosts: &SharedHosts) -> Converged {
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen.clear();
        let Some(view) = settled_view(hosts, Duration::from_secs(2)).await else {
            seen.push("no leader without a pending change".into());
            continue;
        };
        let members: Vec<u64> = view.members.iter().map(|m| m.id).collect();
        let dead = hosts.lock().unwrap().dead.clone();
        if let Some(id) = members.iter().find(|id| dead.contains(&host_of(**id))) {
            return Err(format!("dead node {id} is still a member: {members:?}"));
        }
        let mut states = Vec::new();
        let (mut lowest_snapshot, mut installed) = (u64::MAX, 0);
        for &id in &members {
            let node = host(host_of(id));
            match connect(&node).await {
                Some(c) => {
                    let status = c.status().await;
                    if let (Ok(l), Ok(s)) = (c.list("", Consistency::Stale).await, &status) {
                        lowest_snapshot = lowest_snapshot.min(s.snapshot_index);
                        installed += s.snapshots_installed;
                        let config: Vec<(u64, MemberRole)> = s.members.iter().map(|m| (m.id, m.role)).collect();
                        states.push((l, config));
                    }
                    seen.push(format!("{node}: {:?}", status.map_err(|e| e.to_string())));
                }
                None => seen.push(format!("{node}: unreachable")),
            }
        }
        if states.len() == members.len() && states.windows(2).all(|w| w[0] == w[1]) {
            return Ok((lowest_snapshot, installed));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("members did not converge after healing:\n{}", seen.join("\n")))
}

fn run_seed(seed: u64, secs: u64, layout: Layout) -> Result<Summary, String> {
    let chaos = Duration::from_secs(secs);
    let mut sim = simulation(seed, secs + 90);
    let records: Shared = Arc::default();
    let hosts = Hosts::with_spares(layout.founders, layout.spares);
    let operated: Arc<Mutex<Operated>> = Arc::default();
    // About half the spares join by themselves: they start only when the operator says.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5BA7E);
    let joiners: Vec<usize> =
        (layout.founders..layout.founders + layout.spares).filter(|_| rng.random_bool(0.5)).collect();
    operated.lock().unwrap().join_via = joiners.iter().map(|&j| (j, 0)).collect();
    let node_config = {
        let operated = operated.clone();
        move |i: usize| {
            let via = operated.lock().unwrap().join_via.get(&i).copied();
            layout_config(i, seed, layout, via)
        }
    };
    host_nodes(&mut sim, layout.founders + layout.spares, &joiners, node_config, &records);
    let history = History::with_clock(now);
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    for id in 0..CLIENTS as u64 {
        let (history, acked, hosts) = (history.clone(), acked.clone(), hosts.clone());
        sim.client(format!("client{id}"), async move {
            client(id, seed, chaos, hosts, history, acked).await;
            Ok(())
        });
    }
    if layout.membership {
        let (hosts, operated) = (hosts.clone(), operated.clone());
        sim.client("operator", async move {
            operator(seed, layout, chaos, hosts, operated).await;
            Ok(())
        });
    } else {
        operated.lock().unwrap().done = true;
    }
    // After the chaos and the operator's last change: wait for a healed cluster, read every
    // key linearizably (part of the history), and collect each member's own copy until they
    // agree.
    let converged_ok: Arc<Mutex<Option<Converged>>> = Arc::default();
    {
        let (history, hosts, operated, out) = (history.clone(), hosts.clone(), operated.clone(), converged_ok.clone());
        sim.client("checker", async move {
            tokio::time::sleep(chaos + Duration::from_secs(3)).await;
            while !operated.lock().unwrap().done {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let mut rng = StdRng::seed_from_u64(seed ^ 0xC4EC);
            'keys: for key in KEYS {
                for _ in 0..100 {
                    let live = hosts.lock().unwrap().live_members();
                    let node = host(live[rng.random_range(0..live.len())]);
                    if let Some(c) = connect(&node).await {
                        let op = history.invoke(99, key, Op::Read);
                        match c.get(key, Consistency::Linearizable).await {
                            Ok(v) => {
                                history.complete(op, Outcome::Read(v));
                                continue 'keys;
                            }
                            Err(_) => history.complete(op, Outcome::Unknown),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                *out.lock().unwrap() = Some(Err(format!("no member answered a read of {key} after healing")));
                return Ok(());
            }
            *out.lock().unwrap() = Some(converged(&hosts).await);
            Ok(())
        });
    }
    let mut nemesis = Nemesis::new(seed, chaos, hosts.clone());
    let ran = nemesis.run(&mut sim, &records, true);
    if let Some(f) = nemesis.active.take() {
        nemesis.heal(&mut sim, &f);
    }
    let operated = operated.lock().unwrap();
    let mut events = nemesis.log.clone();
    events.extend(operated.log.iter().cloned());
    events.sort_by_key(|l| l.split(" ms").next().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0));
    let fail = |what: String| Err(format!("{what}\nfaults and changes:\n{}", events.join("\n")));
    if let Err(e) = ran {
        return fail(e);
    }

    // Linearizable, per key.
    let ops = history.operations();
    if let Err(e) = dister::check::check(&ops) {
        return fail(format!("history is not linearizable: {e}"));
    }
    let r = records.lock().unwrap();
    if !r.violations.is_empty() {
        return fail(format!("safety violations: {:#?}", r.violations));
    }
    // State Machine Safety across nodes, removed ones too: one entry per index.
    let by_index = match r.one_entry_per_index() {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    // Every acknowledged write was committed (it is in the commit stream).
    if let Err(e) = kv_writes_committed(&acked.lock().unwrap(), &by_index) {
        return fail(e);
    }
    if !operated.done {
        return fail("the operator did not finish".into());
    }
    let mut changes = operated.changes;
    match converged_ok.lock().unwrap().take() {
        Some(Ok((snapshot, installed))) => {
            changes.snapshotted = (snapshot > 0) as usize;
            changes.installed = (installed > 0) as usize;
        }
        Some(Err(e)) => return fail(e),
        None => return fail("the checker did not finish".into()),
    }
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        ops.hash(&mut h);
        events.hash(&mut h);
        h.finish()
    };
    Ok(Summary {
        ops: ops.len(),
        acked_writes: acked.lock().unwrap().len(),
        terms: r.leaders.len(),
        faults: nemesis.log.len(),
        changes,
        lease_reads: r.metrics.iter().map(|m| m.read_indexes_by_lease.get()).sum(),
        follower_lease_reads: r.metrics.iter().map(|m| m.read_indexes_by_follower_lease.get()).sum(),
        digest,
    })
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The seeds to run: `DISTER_SEED` alone, or `DISTER_SEEDS` of them (default 200 in release
/// builds, 10 in debug ones, which simulate about 14 times slower) from `first` (or
/// `DISTER_FIRST_SEED`, for longer hunts past the ones CI runs).
fn seeds(first: u64, release_seeds: u64) -> Vec<u64> {
    let default_seeds = if cfg!(debug_assertions) { 10 } else { release_seeds };
    let first = env_u64("DISTER_FIRST_SEED", first);
    match std::env::var("DISTER_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => (first..first + env_u64("DISTER_SEEDS", default_seeds)).collect(),
    }
}

/// Runs every seed of `layout`; panics with the seed and its schedule at the first that
/// breaks a check. Answers the changes made over all runs.
fn run_suite(name: &str, first: u64, layout: Layout, release_seeds: u64) -> Changes {
    let secs = env_u64("DISTER_SIM_SECS", 10);
    let seeds = seeds(first, release_seeds);
    if cfg!(debug_assertions) && std::env::var("DISTER_SEEDS").is_err() {
        eprintln!("{name}: debug build, {} seeds (CI runs 200 in release: cargo test --release)", seeds.len());
    }
    let started = std::time::Instant::now();
    let (mut ops, mut acked, mut terms, mut faults, mut lease_reads, mut follower_reads) = (0, 0, 0, 0, 0, 0);
    let mut changes = Changes::default();
    for &seed in &seeds {
        match run_seed(seed, secs, layout) {
            Ok(s) => {
                ops += s.ops;
                acked += s.acked_writes;
                terms += s.terms;
                faults += s.faults;
                lease_reads += s.lease_reads;
                follower_reads += s.follower_lease_reads;
                changes += s.changes;
            }
            Err(e) => {
                panic!(
                    "{name}: seed {seed} failed (replay: DISTER_SEED={seed} cargo test --release --test all t80_chaos::{name}): {e}"
                )
            }
        }
    }
    eprintln!(
        "{name}: {} seeds x {secs} s simulated in {:.1} s: {ops} client ops, {acked} acknowledged writes, {terms} terms, {faults} fault events, {lease_reads} lease reads ({follower_reads} on followers), changes {changes:?}",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    if layout.lease && std::env::var("DISTER_SEED").is_err() {
        assert!(lease_reads > 0, "{name}: no read was answered from a lease: the suite proved nothing of them");
        assert!(
            follower_reads > 0,
            "{name}: no follower answered a read from its lease: the suite proved nothing of them"
        );
    }
    changes
}

/// Every kind of change happened somewhere in a full suite: a run that quietly stopped
/// changing the membership would prove nothing.
fn assert_changes_made(name: &str, c: Changes) {
    if std::env::var("DISTER_SEED").is_ok() {
        return;
    }
    let made = [
        c.added,
        c.joined,
        c.removed,
        c.removed_leader,
        c.replaced,
        c.transfers,
        c.promoted,
        c.snapshotted,
        c.installed,
    ];
    assert!(made.iter().all(|&n| n > 0), "{name}: some kind of change never completed: {c:?}");
}

/// The chaos suite on three founders, with an operator changing the membership meanwhile:
/// up to seven hosts over a run. Fails with the seed and the schedule of faults and changes
/// of the first run that breaks a check.
#[test]
fn chaos_seeds_stay_linearizable_and_safe() {
    common::init_tracing();
    let changes = run_suite("chaos_seeds_stay_linearizable_and_safe", 1, Layout::CHANGING3, 200);
    assert_changes_made("three founders", changes);
}

/// The same with lease reads (`read_mode = "lease"`) and every node's clock running between
/// 4% slow and 4% fast: reads answered from a lease stay linearizable through partitions,
/// pauses, crashes, transfers and membership changes. Fails if no read used a lease.
#[test]
fn chaos_lease_reads_stay_linearizable() {
    common::init_tracing();
    let changes = run_suite("chaos_lease_reads_stay_linearizable", 20_001, Layout::CHANGING3_LEASE, 100);
    assert_changes_made("three founders, lease reads", changes);
}

/// The same on five founders (eight hosts over a run), on other seeds.
#[test]
fn chaos_five_nodes() {
    common::init_tracing();
    let changes = run_suite("chaos_five_nodes", 10_001, Layout::CHANGING5, 200);
    assert_changes_made("five founders", changes);
}

/// Seeds that once failed, replayed every run (t90 style), with the layout they failed in.
/// Each entry: the seed and what it found.
#[test]
fn pinned_seeds() {
    common::init_tracing();
    let pinned: &[(u64, Layout, &str)] = &[
        (
            1,
            Layout::FIXED3,
            "a peer link whose connection went silent in a partition kept it forever: one follower \
             never rejoined after healing (fixed: PeerLink drops an unresponsive connection)",
        ),
        (
            92,
            Layout::CHANGING3,
            "a follower's core took LogStore's answers in the order they came back, not the order \
             the appends were applied: a late answer cut a newer configuration, and the node kept \
             an old one its log no longer held (fixed: configurations follow appends in order)",
        ),
        (
            179,
            Layout::CHANGING3,
            "a new leader's batch was answered on a connection that then broke; probing again from \
             past it matched, so the replicator never sent it again and, with the clients gone, the \
             leader never committed an entry of its term (fixed: an unconfirmed batch goes again \
             once nothing is in flight)",
        ),
    ];
    for (seed, layout, found) in pinned {
        if let Err(e) = run_seed(*seed, 10, *layout) {
            panic!("pinned seed {seed} ({found}) fails again: {e}");
        }
    }
}

/// The same seed gives the same run, operation for operation, change for change.
#[test]
fn a_seed_replays_exactly() {
    common::init_tracing();
    let a = run_seed(7, 4, Layout::CHANGING3).expect("seed 7");
    let b = run_seed(7, 4, Layout::CHANGING3).expect("seed 7");
    assert_eq!(a, b);
    assert!(a.ops > 50 && a.faults > 0, "the run did too little to prove anything: {a:?}");
    assert_ne!(run_seed(8, 4, Layout::CHANGING3).expect("seed 8").digest, a.digest, "another seed gave the same run");
}
