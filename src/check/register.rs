//! The search for one key: does some order of its operations behave like a single register
//! (absent, or holding one string) while respecting real time?
//!
//! This is the Wing & Gong search as improved by Lowe ("Testing for linearizability", 2017) and
//! used by Porcupine: the history is a list of call and return events in time order; the search
//! repeatedly picks a call that is still in the list, applies it to the register if the result
//! agrees with what the client saw, and removes ("lifts") the call and its return. Meeting a
//! return means that operation's deadline passed unlinearized, so the last choice is undone.
//! A set of (linearized operations, register value) pairs already explored cuts off every path
//! that reaches a configuration seen before; without it the search is exponential.
//!
//! Operations with an unknown outcome have no return: they are optional. Three reductions keep
//! them, and reads, from multiplying the configurations (each argued where it is applied):
//! reads that agree with the register are placed first and alone ([`Pass`]); an optional
//! operation is placed only right before a read of the value it leaves, and only the earliest
//! of interchangeable ones ([`Events::worth_placing`]); and a configuration is cut off when one
//! with the same required operations and register but fewer optional ones was explored
//! ([`Memo::insert`]). The tests compare the result with a brute-force search.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::history::{Op, OpId, Operation, Outcome, Time};

/// Register value 0 is "absent"; value `v > 0` is `values[v - 1]`.
const ABSENT: u32 = 0;
/// End of the event list.
const NIL: usize = usize::MAX;
/// The list's head sentinel.
const HEAD: usize = 0;
/// How many operations an explanation lists at most, per section.
const SHOWN: usize = 8;

/// What one kept operation does, with values interned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Effect {
    Write(u32),
    Delete,
    Read(u32),
}

impl Effect {
    /// The register after this effect, or `None` if a read disagrees with the register.
    fn apply(self, state: u32) -> Option<u32> {
        match self {
            Effect::Write(value) => Some(value),
            Effect::Delete => Some(ABSENT),
            Effect::Read(seen) => (seen == state).then_some(state),
        }
    }
}

/// An operation the search must place: `deadline` is `None` when it may also be left out.
struct Call {
    id: OpId,
    effect: Effect,
    invoke: Time,
    deadline: Option<Time>,
    pass: Pass,
    /// Its bit in [`Linearized`]: among the required calls if it has a deadline, else among
    /// the optional ones.
    slot: usize,
}

/// Which candidates a configuration tries, in order. A read that agrees with the register
/// never hurts (it could move here from wherever a linearization puts it), so it goes first
/// and alone. An optional operation is tried last, and only right before a pending read of
/// the value it leaves: any linearization can be rearranged so, by moving each optional
/// operation up to the first read of its value, or cutting it if no read sees it before the
/// next write. Otherwise each optional operation would double the search from its invoke on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Read,
    Acknowledged,
    Unknown,
}

impl Pass {
    fn next(self) -> Option<Pass> {
        match self {
            Pass::Read => Some(Pass::Acknowledged),
            Pass::Acknowledged => Some(Pass::Unknown),
            Pass::Unknown => None,
        }
    }
}

/// What the search on one key found when it succeeded.
pub(super) struct KeyStats {
    /// Operations the search considered.
    pub checked: usize,
    /// Operations that cannot change the outcome: failed ones, reads without an answer, and
    /// unknown writes or deletes whose effect no read saw.
    pub dropped: usize,
    /// Configurations explored.
    pub states: usize,
}

/// Why the search on one key failed; each carries a multi-line explanation.
pub(super) enum KeyFailure {
    /// No linearization exists.
    Violation(String),
    /// The search explored as many configurations as it was allowed to without finding one.
    GaveUp(String),
}

/// One event of the doubly linked list the search lifts calls out of.
struct Event {
    call: usize,
    is_return: bool,
    prev: usize,
    next: usize,
    /// For a call, its return event (NIL if it has none); unused for a return.
    partner: usize,
}

/// Call and return events in time order, with O(1) removal and undo ("dancing links").
struct Events(Vec<Event>);

impl Events {
    fn new(calls: &[Call]) -> Self {
        // Calls sort before returns at equal times: an operation that completes at the instant
        // another is invoked does not precede it.
        let mut order: Vec<(Time, bool, usize)> = Vec::with_capacity(calls.len() * 2);
        for (i, call) in calls.iter().enumerate() {
            order.push((call.invoke, false, i));
            if let Some(deadline) = call.deadline {
                order.push((deadline, true, i));
            }
        }
        order.sort_unstable();
        let mut events = vec![Event { call: 0, is_return: false, prev: NIL, next: NIL, partner: NIL }];
        let mut return_event = vec![NIL; calls.len()];
        for (n, &(_, is_return, call)) in order.iter().enumerate() {
            let at = n + 1;
            events[at - 1].next = at;
            events.push(Event { call, is_return, prev: at - 1, next: NIL, partner: NIL });
            if is_return {
                return_event[call] = at;
            }
        }
        // Partners are linked once every event exists: should a deadline precede its own
        // invoke, the search stops at the return before it meets the call, as it should.
        for event in &mut events[1..] {
            if !event.is_return {
                event.partner = return_event[event.call];
            }
        }
        Self(events)
    }

    fn remove(&mut self, at: usize) {
        let Event { prev, next, .. } = self.0[at];
        self.0[prev].next = next;
        if next != NIL {
            self.0[next].prev = prev;
        }
    }

    fn restore(&mut self, at: usize) {
        let Event { prev, next, .. } = self.0[at];
        self.0[prev].next = at;
        if next != NIL {
            self.0[next].prev = at;
        }
    }

    /// Whether placing the optional call at `optional`, leaving the register at `value`, can
    /// be needed (see [`Pass`]): a read of `value` is pending (its call is in the list before
    /// the first return), and no earlier pending optional call has the same effect. Pending
    /// optional calls with one effect are interchangeable, so placing only the earliest keeps
    /// the placed ones a prefix of each kind instead of any subset.
    fn worth_placing(&self, calls: &[Call], optional: usize, value: u32) -> bool {
        let effect = calls[self.0[optional].call].effect;
        let (mut at, mut read) = (self.0[HEAD].next, false);
        while at != NIL && !self.0[at].is_return {
            let call = &calls[self.0[at].call];
            if at < optional && call.deadline.is_none() && call.effect == effect {
                return false;
            }
            read |= call.effect == Effect::Read(value);
            at = self.0[at].next;
        }
        read
    }

    /// Takes a call and its return out of the list.
    fn lift(&mut self, call: usize) {
        self.remove(call);
        if self.0[call].partner != NIL {
            self.remove(self.0[call].partner);
        }
    }

    /// Undoes [`Events::lift`]; lifts must be undone in reverse order.
    fn unlift(&mut self, call: usize) {
        if self.0[call].partner != NIL {
            self.restore(self.0[call].partner);
        }
        self.restore(call);
    }
}

/// The operations linearized so far, as two bitsets: the required ones (acknowledged, with a
/// deadline) and the optional ones (unknown outcome, no deadline), each numbered in invoke
/// order. The required set is a run of full words, a few mixed words at the search's frontier,
/// then zeros: only the frontier is stored, and its (Zobrist) hash is kept as bits flip.
struct Linearized {
    required: Vec<u64>,
    hash: u64,
    /// Leading words of `required` with every bit set.
    full: usize,
    /// Words of `required` up to the last one with any bit set.
    used: usize,
    optional: Vec<u64>,
}

impl Linearized {
    fn new(calls: &[Call]) -> Self {
        let (optional, required): (Vec<&Call>, Vec<&Call>) = calls.iter().partition(|c| c.deadline.is_none());
        let words = |n: usize| vec![0; n.div_ceil(64)];
        Self { required: words(required.len()), hash: 0, full: 0, used: 0, optional: words(optional.len()) }
    }

    fn flip(&mut self, call: &Call) {
        let (word, bit) = (call.slot / 64, 1 << (call.slot % 64));
        if call.deadline.is_none() {
            self.optional[word] ^= bit;
            return;
        }
        self.required[word] ^= bit;
        self.hash ^= mix(call.slot as u64);
        self.full = self.full.min(word);
        while self.full < self.required.len() && self.required[self.full] == u64::MAX {
            self.full += 1;
        }
        if self.required[word] != 0 {
            self.used = self.used.max(word + 1);
        }
        while self.used > 0 && self.required[self.used - 1] == 0 {
            self.used -= 1;
        }
    }

    /// The words of `required` between the full ones and the empty ones.
    fn frontier(&self) -> &[u64] {
        &self.required[self.full..self.used.max(self.full)]
    }
}

/// One explored configuration: the required set as (full words, frontier) and the optional
/// set, both stored in [`Memo::words`], and the register.
struct Explored {
    full: usize,
    state: u32,
    /// Where its frontier starts in [`Memo::words`]; the optional set follows it.
    start: usize,
    frontier: usize,
    /// The next configuration with the same hash, or [`NIL`].
    next: usize,
}

/// The configurations already explored: chained by hash, their words in one arena, since
/// long searches hold millions of them.
#[derive(Default)]
struct Memo {
    heads: HashMap<u64, usize>,
    explored: Vec<Explored>,
    words: Vec<u64>,
}

impl Memo {
    /// Records `(linearized, state)`; false if it, or a configuration that dominates it, was
    /// already explored. Leaving out an optional operation is always allowed, so a configuration
    /// that placed fewer of them (and the same required ones, with the same register) can do
    /// all this one can; without this, every pending unknown operation would double the search.
    fn insert(&mut self, linearized: &Linearized, state: u32) -> bool {
        // The high bit keeps state keys apart from the per-operation keys of `Linearized`.
        let hash = linearized.hash ^ mix(u64::from(state) | 1 << 63);
        let (full, frontier, optional) = (linearized.full, linearized.frontier(), &linearized.optional);
        let head = self.heads.get(&hash).copied().unwrap_or(NIL);
        let mut at = head;
        while at != NIL {
            let e = &self.explored[at];
            let (f, o) = self.words[e.start..e.start + e.frontier + optional.len()].split_at(e.frontier);
            if e.state == state
                && e.full == full
                && f == frontier
                && o.iter().zip(optional).all(|(o, now)| o & !now == 0)
            {
                return false;
            }
            at = e.next;
        }
        let start = self.words.len();
        self.words.extend_from_slice(frontier);
        self.words.extend_from_slice(optional);
        self.explored.push(Explored { full, state, start, frontier: frontier.len(), next: head });
        self.heads.insert(hash, self.explored.len() - 1);
        true
    }

    fn len(&self) -> usize {
        self.explored.len()
    }
}

/// SplitMix64's finaliser: a cheap, well-spread 64-bit hash.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The deepest point the search reached, kept to explain a failure.
#[derive(Default)]
struct Deepest {
    order: Vec<usize>,
    state: u32,
    /// Calls still in the list before the return the search could not get past, that return's
    /// call last.
    stuck: Vec<usize>,
}

/// A key's operations as calls in invoke order, and the interned values.
/// Leaves out the operations that cannot change the verdict.
///
/// Fails at once, without a search, on a read of a value that no write which may have happened
/// began writing before the read ended: however long the history, that needs no search.
fn prepare<'a>(ops: &'a [Operation], indices: &[usize]) -> Result<(Vec<Call>, Vec<&'a str>), String> {
    // For each value some read saw: the earliest completion of such a read.
    let mut first_seen: HashMap<Option<&str>, Time> = HashMap::new();
    // For each value: how many writes that may have happened wrote it, and the first invoke.
    let mut writers: HashMap<&str, (usize, Time)> = HashMap::new();
    for op in indices.iter().map(|&i| &ops[i]) {
        match (&op.op, &op.outcome) {
            (Op::Read, Outcome::Read(seen)) => {
                let first = first_seen.entry(seen.as_deref()).or_insert(op.complete);
                *first = op.complete.min(*first);
            }
            (Op::Write(value), Outcome::Ok | Outcome::Unknown) => {
                let (count, first) = writers.entry(value).or_insert((0, op.invoke));
                (*count, *first) = (*count + 1, op.invoke.min(*first));
            }
            _ => {}
        }
    }
    for &i in indices {
        if let Outcome::Read(Some(seen)) = &ops[i].outcome
            && writers.get(seen.as_str()).is_none_or(|&(_, first)| first > ops[i].complete)
        {
            return Err(format!(
                "op {i} saw a value that no write which may have happened had begun to write:\n    op {i}: {}\n",
                ops[i]
            ));
        }
    }
    let mut values: Vec<&'a str> = Vec::new();
    let mut interned: HashMap<&'a str, u32> = HashMap::new();
    let mut intern = |value: Option<&'a str>| match value {
        None => ABSENT,
        Some(v) => *interned.entry(v).or_insert_with(|| {
            values.push(v);
            values.len() as u32
        }),
    };
    let mut by_invoke = indices.to_vec();
    by_invoke.sort_by_key(|&i| ops[i].invoke);
    let (mut calls, mut required, mut optional) = (Vec::new(), 0, 0);
    for i in by_invoke {
        let op = &ops[i];
        let acknowledged = (op.outcome != Outcome::Unknown).then_some(op.complete);
        let (effect, deadline) = match (&op.op, &op.outcome) {
            (_, Outcome::Fail) | (Op::Read, Outcome::Unknown | Outcome::Ok) => continue,
            (Op::Read, Outcome::Read(seen)) => (Effect::Read(intern(seen.as_deref())), acknowledged),
            // An unknown write no read saw (or an unknown delete when no read saw the key absent)
            // can be cut out of any linearization without changing what a read sees; left in,
            // each would double the configurations to search.
            (Op::Write(value), Outcome::Unknown) => match first_seen.get(&Some(value.as_str())) {
                None => continue,
                // The only write of a value some read saw did happen, before that read ended:
                // giving it that deadline keeps it from doubling the search too.
                Some(&by) => (Effect::Write(intern(Some(value))), (writers[value.as_str()].0 == 1).then_some(by)),
            },
            (Op::Delete, Outcome::Unknown) if !first_seen.contains_key(&None) => continue,
            (Op::Write(value), _) => (Effect::Write(intern(Some(value))), acknowledged),
            (Op::Delete, _) => (Effect::Delete, acknowledged),
        };
        let pass = match (effect, deadline) {
            (Effect::Read(_), _) => Pass::Read,
            (_, Some(_)) => Pass::Acknowledged,
            (_, None) => Pass::Unknown,
        };
        let slots = if deadline.is_some() { &mut required } else { &mut optional };
        *slots += 1;
        calls.push(Call { id: OpId(i), effect, invoke: op.invoke, deadline, pass, slot: *slots - 1 });
    }
    Ok((calls, values))
}

/// Searches for a linearization of the operations `indices` of `ops`, all on one key,
/// exploring at most `max_states` configurations. Explanations name operations by their index
/// in `ops`.
pub(super) fn check_key(ops: &[Operation], indices: &[usize], max_states: usize) -> Result<KeyStats, KeyFailure> {
    let (calls, values) = prepare(ops, indices).map_err(KeyFailure::Violation)?;
    let dropped = indices.len() - calls.len();

    let mut events = Events::new(&calls);
    let mut linearized = Linearized::new(&calls);
    let mut memo = Memo::default();
    let mut stack: Vec<(usize, u32)> = Vec::new(); // (lifted call event, register before it)
    let mut state = ABSENT;
    let mut remaining = calls.iter().filter(|c| c.deadline.is_some()).count();
    let mut deepest = Deepest::default();
    // Stack depth below which `deepest.order` still matches the stack; keeps snapshots cheap.
    let mut unchanged = 0;
    let mut at = events.0[HEAD].next;
    let mut pass = Pass::Read;
    // Operations with an unknown outcome have no return event and never block: the search is
    // done once every acknowledged operation has found its place.
    while remaining > 0 {
        if at != NIL && !events.0[at].is_return {
            let call = events.0[at].call;
            if calls[call].pass == pass
                && let Some(next) = calls[call].effect.apply(state)
                && (pass != Pass::Unknown || events.worth_placing(&calls, at, next))
            {
                linearized.flip(&calls[call]);
                if memo.len() == max_states {
                    return Err(KeyFailure::GaveUp(explain(ops, &calls, &values, &deepest)));
                }
                if memo.insert(&linearized, next) {
                    stack.push((at, state));
                    state = next;
                    events.lift(at);
                    remaining -= usize::from(calls[call].deadline.is_some());
                    at = events.0[HEAD].next;
                    pass = Pass::Read;
                    continue;
                }
                linearized.flip(&calls[call]);
            }
            at = events.0[at].next;
            continue;
        }
        if let Some(later) = pass.next() {
            pass = later;
            at = events.0[HEAD].next;
            continue;
        }
        // A return: its operation cannot be placed before its deadline on this path.
        if stack.len() > deepest.order.len() || deepest.order.is_empty() {
            deepest.order.truncate(unchanged.min(deepest.order.len()));
            deepest.order.extend(stack[deepest.order.len()..].iter().map(|&(e, _)| events.0[e].call));
            deepest.state = state;
            deepest.stuck.clear();
            let mut e = events.0[HEAD].next;
            while e != NIL && e != at {
                deepest.stuck.push(events.0[e].call);
                e = events.0[e].next;
            }
            if at != NIL {
                deepest.stuck.push(events.0[at].call);
            }
            unchanged = stack.len();
        }
        loop {
            let Some((lifted, before)) = stack.pop() else {
                return Err(KeyFailure::Violation(explain(ops, &calls, &values, &deepest)));
            };
            unchanged = unchanged.min(stack.len());
            let call = events.0[lifted].call;
            events.unlift(lifted);
            linearized.flip(&calls[call]);
            state = before;
            remaining += usize::from(calls[call].deadline.is_some());
            // A read that agreed with the register could move to this point from wherever a
            // linearization puts it (it is pending and changes nothing), so if no linearization
            // continues from it, none continues from this configuration: skip its siblings.
            if calls[call].pass != Pass::Read {
                // Resume the pass that chose this call, after it.
                pass = calls[call].pass;
                at = events.0[lifted].next;
                break;
            }
        }
    }
    Ok(KeyStats { checked: calls.len(), dropped, states: memo.len() })
}

/// Says where the deepest path got stuck and how it got there.
fn explain(ops: &[Operation], calls: &[Call], values: &[&str], deepest: &Deepest) -> String {
    let value = |v: u32| if v == ABSENT { "absent".to_string() } else { format!("{:?}", values[v as usize - 1]) };
    let list = |out: &mut String, shown: &[usize]| {
        for &call in shown {
            let id = calls[call].id;
            let _ = writeln!(out, "    op {}: {}", id.0, ops[id.0]);
        }
    };
    let (placed, total) = (deepest.order.len(), calls.len());
    let mut out = format!("the longest linearization found places {placed} of {total} operations, leaving the key ");
    out.push_str(&value(deepest.state));
    if let Some((&blocked, others)) = deepest.stuck.split_last() {
        out.push_str(", then cannot place\n");
        list(&mut out, &[blocked]);
        // The blocked operation's own call is among the pending ones; list it once.
        let others: Vec<usize> = others.iter().copied().filter(|&c| c != blocked).collect();
        if !others.is_empty() {
            let _ =
                writeln!(out, "  before it completes, nor any of the {} other operations pending then:", others.len());
            list(&mut out, &others[..others.len().min(SHOWN)]);
            if others.len() > SHOWN {
                let _ = writeln!(out, "    ... and {} more", others.len() - SHOWN);
            }
        }
    } else {
        out.push('\n');
    }
    if placed > 0 {
        let _ = writeln!(out, "  that linearization ends with:");
        list(&mut out, &deepest.order[placed.saturating_sub(SHOWN)..]);
    }
    out
}
