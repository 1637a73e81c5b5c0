//! The leader's health checks as decisions without an actor: when each instance is due, how
//! many probes may run at once, what a probe's result or a silence means, and which outcomes
//! go into the next log entry. `ServiceRegistry` feeds it the registry, the clock and the
//! probes' results, runs the probes it asks for and writes the batches it hands out.
//!
//! What keeps a big registry cheap for the cluster:
//! - nothing scans the registry after leadership starts: instances wait in two heaps ordered
//!   by when they are next due (probes, and silence deadlines of beating instances), and the
//!   registry's own changes are told to it ([`HealthChecks::registered`], [`removed`]);
//! - at most `concurrency` probes run at once; the rest wait for a slot;
//! - a new leader spreads the first probe of every instance over its interval (no thundering
//!   herd after an election) and gives every beating instance a fresh period;
//! - outcomes are written in batches, one entry at a time, each bounded in outcomes and bytes;
//!   an outcome names the registration (revision) it judged and is void on a newer one.
//!
//! [`removed`]: HealthChecks::removed

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Duration;

use rand::{Rng, RngExt};
use tokio::time::Instant;

use crate::config::Config;
use crate::messages::registry::{Change, CheckKind, CheckOutcome, Health, InstanceKey, ServiceNode};
use crate::registry::probe::Probe;
use crate::registry::{Registry, health_of};

/// What the checks are allowed to do.
#[derive(Clone, Debug)]
pub struct CheckSettings {
    /// Interval of an instance without its own.
    pub default_interval: Duration,
    /// Silence after which a beating instance without its own `ttl_ms` turns unhealthy.
    pub unhealthy_after: Duration,
    /// Silence after which an ephemeral instance is removed.
    pub remove_after: Duration,
    /// Probes running at once.
    pub concurrency: usize,
    /// Most outcomes in one log entry.
    pub max_batch: usize,
    /// Most bytes (estimated) of outcomes in one log entry.
    pub max_batch_bytes: usize,
}

impl CheckSettings {
    /// The settings `config` asks for.
    pub fn from_config(config: &Config) -> Self {
        CheckSettings {
            default_interval: Duration::from_millis(config.check_interval_ms),
            unhealthy_after: Duration::from_millis(config.ephemeral_unhealthy_after_ms),
            remove_after: Duration::from_millis(config.ephemeral_remove_after_ms),
            concurrency: config.check_concurrency,
            max_batch: MAX_BATCH,
            // Well inside a client request, so the entry replicates like any write.
            max_batch_bytes: (config.max_request_bytes / 2).min(MAX_BATCH_BYTES),
        }
    }

    fn interval(&self, node: &ServiceNode) -> Duration {
        node.interval_ms.map(Duration::from_millis).unwrap_or(self.default_interval).max(Duration::from_millis(10))
    }

    fn ttl(&self, node: &ServiceNode) -> Duration {
        node.ttl_ms.map(Duration::from_millis).unwrap_or(self.unhealthy_after)
    }
}

/// Most outcomes in one entry.
pub const MAX_BATCH: usize = 4_096;
/// Most bytes of outcomes in one entry.
pub const MAX_BATCH_BYTES: usize = 512 * 1024;

/// A probe the caller should run, and report with [`HealthChecks::probed`].
#[derive(Debug)]
pub struct ProbeJob {
    /// The instance.
    pub key: InstanceKey,
    /// Which registration of it this probe is for.
    pub generation: u64,
    /// What to probe.
    pub probe: Probe,
    /// How long the probe may take.
    pub timeout: Duration,
}

/// One instance as the checks follow it.
#[derive(Debug)]
struct Track {
    /// Bumped at every registration: heap entries and probes of an older one are void.
    generation: u64,
    /// When its heap entry fires.
    due: Instant,
    last_beat: Instant,
    probing: bool,
}

/// A heap entry: when, a tie-breaking sequence number, the instance and its generation.
type Slot = Reverse<(Instant, u64, InstanceKey, u64)>;

/// The leader's check schedule and the outcomes waiting to be written.
#[derive(Debug)]
pub struct HealthChecks {
    settings: CheckSettings,
    /// Looked up by key, never iterated (no decision depends on its order).
    tracks: HashMap<InstanceKey, Track, foldhash::fast::RandomState>,
    probes: BinaryHeap<Slot>,
    silences: BinaryHeap<Slot>,
    seq: u64,
    next_generation: u64,
    running: usize,
    /// Outcomes decided and not yet handed out, by instance (a later decision replaces an
    /// earlier one).
    pending: BTreeMap<InstanceKey, (u64, Change)>,
    /// The batch handed out and not yet done.
    inflight: BTreeMap<InstanceKey, (u64, Change)>,
    batch_out: bool,
    probes_done: u64,
    outcomes_written: u64,
}

impl HealthChecks {
    /// The checks of a leadership that starts `now` over `registry`: every probe is due at a
    /// random point of its instance's first interval, every beating instance gets a whole
    /// fresh period (beats sent to the previous leader are not held against it).
    pub fn start(settings: CheckSettings, registry: &Registry, now: Instant, rng: &mut impl Rng) -> Self {
        let mut checks = HealthChecks {
            settings,
            tracks: HashMap::default(),
            probes: BinaryHeap::new(),
            silences: BinaryHeap::new(),
            seq: 0,
            next_generation: 0,
            running: 0,
            pending: BTreeMap::new(),
            inflight: BTreeMap::new(),
            batch_out: false,
            probes_done: 0,
            outcomes_written: 0,
        };
        for (key, node) in registry.instances() {
            let spread = checks.settings.interval(node).mul_f64(rng.random_range(0.0..1.0));
            checks.track(key, node, now, now + spread);
        }
        checks
    }

    /// Follows `node` afresh (first probe at `probe_at`, silence counted from `now`).
    fn track(&mut self, key: InstanceKey, node: &ServiceNode, now: Instant, probe_at: Instant) {
        let Some(kind) = node.effective_check() else {
            self.tracks.remove(&key);
            return;
        };
        self.next_generation += 1;
        let generation = self.next_generation;
        let due = if kind == CheckKind::Ttl { now + self.settings.ttl(node) } else { probe_at };
        self.tracks.insert(key.clone(), Track { generation, due, last_beat: now, probing: false });
        self.push(kind == CheckKind::Ttl, due, key, generation);
    }

    fn push(&mut self, silence: bool, due: Instant, key: InstanceKey, generation: u64) {
        self.seq += 1;
        let heap = if silence { &mut self.silences } else { &mut self.probes };
        heap.push(Reverse((due, self.seq, key, generation)));
        // Registrations again leave void entries behind; drop them before they outnumber
        // the live ones, so the heaps stay within a small multiple of the instances.
        if heap.len() > 2 * self.tracks.len() + 1_024 {
            let tracks = &self.tracks;
            heap.retain(|Reverse((due, _, key, generation))| {
                tracks.get(key).is_some_and(|t| t.generation == *generation && t.due == *due)
            });
        }
    }

    /// An instance was registered (or registered again): its checks start over, its first
    /// probe as soon as a slot is free, its silence counted from now.
    pub fn registered(&mut self, registry: &Registry, key: &InstanceKey, now: Instant) {
        self.pending.remove(key);
        match registry.instance(key) {
            Some(node) => self.track(key.clone(), node, now, now),
            None => {
                self.tracks.remove(key);
            }
        }
    }

    /// An instance went: nothing more about it.
    pub fn removed(&mut self, key: &InstanceKey) {
        self.tracks.remove(key);
        self.pending.remove(key);
    }

    /// The instance beat: its silence starts over, and a beating instance that is (or is
    /// about to be written) unhealthy is healthy again.
    pub fn beat(&mut self, registry: &Registry, key: &InstanceKey, now: Instant) {
        let Some(node) = registry.instance(key) else { return };
        if node.effective_check() != Some(CheckKind::Ttl) {
            return;
        }
        if !self.tracks.contains_key(key) {
            self.track(key.clone(), node, now, now);
        }
        if let Some(t) = self.tracks.get_mut(key) {
            t.last_beat = now;
        }
        if self.expected(key, node) != Health::Healthy {
            self.want(key, node, Change::Health(Health::Healthy));
        }
    }

    /// The health `node` will have once what is decided about it is written.
    fn expected(&self, key: &InstanceKey, node: &ServiceNode) -> Health {
        match self.decided(key, node) {
            Some(Change::Health(h)) => h,
            Some(Change::Expire) => Health::Unhealthy,
            None => node.health,
        }
    }

    /// What is decided and not yet applied about this registration of `node` (an outcome
    /// in flight for an earlier one will be void, and decides nothing).
    fn decided(&self, key: &InstanceKey, node: &ServiceNode) -> Option<Change> {
        if self.pending.is_empty() && self.inflight.is_empty() {
            return None;
        }
        let current = |(r, c): &(u64, Change)| (*r == node.revision).then_some(*c);
        self.pending.get(key).and_then(current).or_else(|| self.inflight.get(key).and_then(current))
    }

    /// Decides `change` for `node` (as it is registered now), unless it is what the registry
    /// will hold anyway.
    fn want(&mut self, key: &InstanceKey, node: &ServiceNode, change: Change) {
        let revision = node.revision;
        let in_flight = self.inflight.get(key).is_some_and(|(r, _)| *r == revision);
        match self.decided(key, node) {
            Some(c) if c == change => {}
            None if change == Change::Health(node.health) => {}
            Some(_) if !in_flight && change == Change::Health(node.health) => {
                // It was to change and changed back before anything was written.
                self.pending.remove(key);
            }
            _ => {
                self.pending.insert(key.clone(), (revision, change));
            }
        }
    }

    /// Judges the silences that are due and hands out the probes that are due, as many as
    /// there are free slots. Call on every tick and after every probe result.
    pub fn due(&mut self, registry: &Registry, now: Instant) -> Vec<ProbeJob> {
        self.judge_silences(registry, now);
        let mut jobs = Vec::new();
        while self.running < self.settings.concurrency {
            let Some(Reverse((due, _, _, _))) = self.probes.peek() else { break };
            if *due > now {
                break;
            }
            let Some(Reverse((due, _, key, generation))) = self.probes.pop() else { break };
            let Some(track) = self.tracks.get_mut(&key) else { continue };
            if track.generation != generation || track.due != due || track.probing {
                continue;
            }
            let node = registry.instance(&key);
            let Some(probe) = node.and_then(Probe::for_node) else {
                self.tracks.remove(&key);
                continue;
            };
            let interval = node.map_or(self.settings.default_interval, |n| self.settings.interval(n));
            track.probing = true;
            self.running += 1;
            let timeout = node.and_then(|n| n.timeout_ms).map(Duration::from_millis).unwrap_or(interval);
            jobs.push(ProbeJob { key, generation, probe, timeout });
        }
        jobs
    }

    fn judge_silences(&mut self, registry: &Registry, now: Instant) {
        loop {
            let Some(Reverse((due, _, _, _))) = self.silences.peek() else { return };
            if *due > now {
                return;
            }
            let Some(Reverse((due, _, key, generation))) = self.silences.pop() else { return };
            let Some(track) = self.tracks.get(&key) else { continue };
            if track.generation != generation || track.due != due {
                continue;
            }
            let Some(node) = registry.instance(&key) else {
                self.tracks.remove(&key);
                continue;
            };
            let ttl = self.settings.ttl(node);
            // Removal comes only after the instance was marked unhealthy, whatever its TTL.
            let remove_after = self.settings.remove_after.max(ttl);
            let last_beat = track.last_beat;
            let silent = now.saturating_duration_since(last_beat);
            let next = if node.ephemeral && silent >= remove_after && node.health == Health::Unhealthy {
                self.want(&key, node, Change::Expire);
                // Looked at again in case the write does not make it.
                now + ttl
            } else if silent >= ttl && self.expected(&key, node) != Health::Unhealthy {
                self.want(&key, node, Change::Health(Health::Unhealthy));
                if node.ephemeral { last_beat + remove_after } else { now + ttl }
            } else if silent < ttl {
                last_beat + ttl
            } else if node.ephemeral && silent < remove_after {
                last_beat + remove_after
            } else {
                // Unhealthy and waiting for its "unhealthy" to be written, or a persistent
                // TTL instance waiting for a beat: look again soon.
                now + ttl.min(Duration::from_secs(1))
            };
            let next = next.max(now + Duration::from_millis(1));
            if let Some(t) = self.tracks.get_mut(&key) {
                t.due = next;
            }
            self.push(true, next, key, generation);
        }
    }

    /// A probe handed out by [`due`](Self::due) finished with `ok`.
    pub fn probed(&mut self, registry: &Registry, key: &InstanceKey, generation: u64, ok: bool, now: Instant) {
        self.running = self.running.saturating_sub(1);
        self.probes_done += 1;
        let interval = match registry.instance(key) {
            Some(n) => self.settings.interval(n),
            None => return,
        };
        let Some(track) = self.tracks.get_mut(key) else { return };
        if track.generation != generation {
            return;
        }
        track.probing = false;
        // Keep the instance's phase, so probes stay spread over the interval; one that fell
        // behind (slots were short) starts a new phase instead of catching up in a burst.
        let mut next = track.due + interval;
        if next <= now {
            next = now + interval;
        }
        track.due = next;
        self.push(false, next, key.clone(), generation);
        if let Some(node) = registry.instance(key) {
            self.want(key, node, Change::Health(health_of(ok)));
        }
    }

    /// The next batch of outcomes to write, if none is out and some wait: at most
    /// `max_batch` outcomes and about `max_batch_bytes`.
    pub fn take_batch(&mut self) -> Option<Vec<CheckOutcome>> {
        if self.batch_out || self.pending.is_empty() {
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < self.settings.max_batch {
            let Some(entry) = self.pending.first_entry() else { break };
            let outcome = CheckOutcome { key: entry.key().clone(), revision: entry.get().0, change: entry.get().1 };
            if !batch.is_empty() && bytes + outcome.size_hint() > self.settings.max_batch_bytes {
                break;
            }
            bytes += outcome.size_hint();
            let (key, decided) = entry.remove_entry();
            self.inflight.insert(key, decided);
            batch.push(outcome);
        }
        self.batch_out = true;
        Some(batch)
    }

    /// The batch handed out was written (or failed: what it decided is decided again by the
    /// next probe or silence, since the registry did not change).
    pub fn batch_done(&mut self, written: bool) {
        if written {
            self.outcomes_written += self.inflight.len() as u64;
        }
        self.inflight.clear();
        self.batch_out = false;
    }

    /// Probes running, outcomes waiting to be written, probes done and outcomes written.
    pub fn load(&self) -> (usize, usize, u64, u64) {
        (self.running, self.pending.len() + self.inflight.len(), self.probes_done, self.outcomes_written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::registry::RegistryCommand;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn settings(concurrency: usize) -> CheckSettings {
        CheckSettings {
            default_interval: Duration::from_secs(2),
            unhealthy_after: Duration::from_secs(15),
            remove_after: Duration::from_secs(30),
            concurrency,
            max_batch: 100,
            max_batch_bytes: 1 << 20,
        }
    }

    fn registry(persistent: usize, ephemeral: usize) -> Registry {
        let mut r = Registry::default();
        for i in 0..persistent + ephemeral {
            let mut node = ServiceNode::new(format!("127.0.{}.{}", i / 250, i % 250), 8080);
            if i < persistent {
                node.check = Some(CheckKind::Tcp);
            } else {
                node.ephemeral = true;
            }
            let cmd = RegistryCommand::Register { service: format!("svc{}", i % 7), kind: String::new(), node };
            r.apply(cmd, i as u64 + 1).unwrap();
        }
        r
    }

    fn apply(r: &mut Registry, batch: Vec<CheckOutcome>, index: u64) {
        r.apply(RegistryCommand::Checked(batch), index).unwrap();
    }

    /// A new leader spreads the first probes over the interval: no burst at election time.
    #[test]
    fn a_new_leadership_spreads_its_first_probes_over_the_interval() {
        let r = registry(10_000, 0);
        let now = Instant::now();
        let mut c = HealthChecks::start(settings(usize::MAX), &r, now, &mut StdRng::seed_from_u64(1));
        let mut per_tenth = Vec::new();
        for tenth in 1..=20u32 {
            per_tenth.push(c.due(&r, now + Duration::from_millis(100) * tenth).len());
        }
        assert_eq!(per_tenth.iter().sum::<usize>(), 10_000, "every instance is probed within one interval");
        assert!(per_tenth.iter().all(|&n| n < 800), "no tenth of the interval takes a burst: {per_tenth:?}");
    }

    /// At most `concurrency` probes run; a result frees a slot for the next one.
    #[test]
    fn probes_never_exceed_the_concurrency() {
        let r = registry(1_000, 0);
        let now = Instant::now();
        let mut c = HealthChecks::start(settings(16), &r, now, &mut StdRng::seed_from_u64(2));
        let later = now + Duration::from_secs(3);
        let jobs = c.due(&r, later);
        assert_eq!(jobs.len(), 16);
        assert!(c.due(&r, later).is_empty(), "no slot is free");
        c.probed(&r, &jobs[0].key, jobs[0].generation, true, later);
        assert_eq!(c.due(&r, later).len(), 1);
    }

    /// Failed probes become outcomes in batches bounded by count, one batch out at a time,
    /// and a probe result only speaks for the registration it was run for.
    #[test]
    fn outcomes_are_batched_and_bound_to_their_registration() {
        let mut r = registry(250, 0);
        let now = Instant::now();
        let mut c = HealthChecks::start(settings(1_000), &r, now, &mut StdRng::seed_from_u64(3));
        let t = now + Duration::from_secs(3);
        let jobs = c.due(&r, t);
        assert_eq!(jobs.len(), 250);
        for j in &jobs {
            c.probed(&r, &j.key, j.generation, false, t);
        }
        let first = c.take_batch().expect("a batch");
        assert_eq!(first.len(), 100);
        assert!(c.take_batch().is_none(), "one batch out at a time");
        // Re-registered before its outcome was written: the outcome is void.
        let again = first[0].key.clone();
        let node = ServiceNode { check: Some(CheckKind::Tcp), ..ServiceNode::new(again.host.clone(), again.port) };
        r.apply(RegistryCommand::Register { service: again.service.clone(), kind: String::new(), node }, 1_000)
            .unwrap();
        c.registered(&r, &again, t);
        apply(&mut r, first, 1_001);
        c.batch_done(true);
        assert_eq!(r.instance(&again).unwrap().health, Health::Unknown, "the new registration waits for its probe");
        let mut written = 100;
        while let Some(b) = c.take_batch() {
            written += b.len();
            apply(&mut r, b, 1_002);
            c.batch_done(true);
        }
        assert_eq!(written, 250);
        let unhealthy = r.instances().filter(|(_, n)| n.health == Health::Unhealthy).count();
        assert_eq!(unhealthy, 249);
        // Steady state: the same results decide nothing more.
        let t2 = t + Duration::from_secs(3);
        for j in c.due(&r, t2) {
            c.probed(&r, &j.key, j.generation, false, t2);
        }
        let b = c.take_batch().expect("only the re-registered one changes");
        assert_eq!(
            b.iter().map(|o| (&o.key, o.change)).collect::<Vec<_>>(),
            [(&again, Change::Health(Health::Unhealthy))]
        );
    }

    /// Silent ephemeral instances turn unhealthy after their TTL and are removed after the
    /// removal time, in batches; a beat brings one back; a new leader starts every silence
    /// afresh.
    #[test]
    fn silences_expire_in_order_and_beats_keep_instances() {
        let mut r = registry(0, 500);
        let now = Instant::now();
        let mut c = HealthChecks::start(settings(8), &r, now, &mut StdRng::seed_from_u64(4));
        let kept = r.instances().next().unwrap().0;
        let mut index = 1_000;
        let mut run = |c: &mut HealthChecks, r: &mut Registry, at: Instant| {
            c.due(r, at);
            while let Some(b) = c.take_batch() {
                index += 1;
                apply(r, b, index);
                c.batch_done(true);
            }
        };
        run(&mut c, &mut r, now + Duration::from_secs(14));
        assert!(r.instances().all(|(_, n)| n.health == Health::Healthy), "nothing before the TTL");
        for s in [10, 20, 29] {
            c.beat(&r, &kept, now + Duration::from_secs(s));
        }
        run(&mut c, &mut r, now + Duration::from_secs(16));
        assert_eq!(r.instances().filter(|(_, n)| n.health == Health::Unhealthy).count(), 499);
        run(&mut c, &mut r, now + Duration::from_secs(31));
        assert_eq!(r.counts().1, 1, "the silent ones are removed, the beating one stays");
        assert_eq!(r.instance(&kept).unwrap().health, Health::Healthy);
        // A new leader: the kept one's silence starts again now, however long it has been.
        let later = now + Duration::from_secs(100);
        let mut c = HealthChecks::start(settings(8), &r, later, &mut StdRng::seed_from_u64(5));
        run(&mut c, &mut r, later + Duration::from_secs(14));
        assert_eq!(r.instance(&kept).unwrap().health, Health::Healthy);
    }

    /// An outcome decided and then undone before it is written writes nothing; one whose
    /// write failed is decided again by the next probe.
    #[test]
    fn undone_changes_write_nothing_and_failed_writes_are_decided_again() {
        let mut r = registry(1, 0);
        let now = Instant::now();
        let mut c = HealthChecks::start(settings(1), &r, now, &mut StdRng::seed_from_u64(6));
        let mut t = now + Duration::from_secs(3);
        let probe = |c: &mut HealthChecks, r: &Registry, t: Instant, ok: bool| {
            let j = c.due(r, t).pop().expect("a probe is due");
            c.probed(r, &j.key, j.generation, ok, t);
        };
        probe(&mut c, &r, t, true);
        let b = c.take_batch().unwrap();
        assert_eq!(b[0].change, Change::Health(Health::Healthy), "unknown → healthy");
        c.batch_done(true);
        t += Duration::from_secs(2);
        probe(&mut c, &r, t, true);
        let b = c.take_batch().expect("the write failed: decided again");
        apply(&mut r, b, 10);
        c.batch_done(true);
        t += Duration::from_secs(2);
        probe(&mut c, &r, t, false);
        t += Duration::from_secs(2);
        probe(&mut c, &r, t, true);
        assert!(c.take_batch().is_none(), "down and up again before a write: nothing to write");
    }

    /// An outcome in flight for an earlier registration does not stand in for the same
    /// outcome about the new one: that one is decided (and written) on its own.
    #[test]
    fn an_outcome_for_an_old_registration_does_not_stand_for_the_new_one() {
        let mut r = registry(1, 0);
        let now = Instant::now();
        let mut c = HealthChecks::start(settings(4), &r, now, &mut StdRng::seed_from_u64(7));
        let t = now + Duration::from_secs(3);
        let j = c.due(&r, t).pop().unwrap();
        c.probed(&r, &j.key, j.generation, false, t);
        let old = c.take_batch().expect("unknown -> unhealthy");
        // Registered again while that batch is out: the batch is void for it.
        let node = ServiceNode { check: Some(CheckKind::Tcp), ..ServiceNode::new(j.key.host.clone(), j.key.port) };
        r.apply(RegistryCommand::Register { service: j.key.service.clone(), kind: String::new(), node }, 50).unwrap();
        c.registered(&r, &j.key, t);
        let j2 = c.due(&r, t).pop().expect("the new registration is probed at once");
        c.probed(&r, &j2.key, j2.generation, false, t);
        apply(&mut r, old, 51);
        c.batch_done(true);
        assert_eq!(r.instance(&j.key).unwrap().health, Health::Unknown, "the old outcome was void");
        let b = c.take_batch().expect("the new registration's own outcome");
        assert_eq!((b[0].revision, b[0].change), (50, Change::Health(Health::Unhealthy)));
    }
}
