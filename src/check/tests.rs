//! Known-good and known-broken histories, random histories linearizable by construction, and a
//! size smoke test. Every history is on key "k" unless it says otherwise.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::*;

fn op(client: ClientId, op: Op, invoke: Time, complete: Time, outcome: Outcome) -> Operation {
    Operation { client, key: "k".to_string(), op, invoke, complete, outcome }
}

fn write(client: ClientId, value: &str, invoke: Time, complete: Time) -> Operation {
    op(client, Op::Write(value.to_string()), invoke, complete, Outcome::Ok)
}

fn read(client: ClientId, seen: Option<&str>, invoke: Time, complete: Time) -> Operation {
    op(client, Op::Read, invoke, complete, Outcome::Read(seen.map(str::to_string)))
}

fn delete(client: ClientId, invoke: Time, complete: Time) -> Operation {
    op(client, Op::Delete, invoke, complete, Outcome::Ok)
}

fn ended(op: Operation, outcome: Outcome) -> Operation {
    Operation { outcome, ..op }
}

fn assert_linearizable(ops: &[Operation]) -> CheckStats {
    match check(ops) {
        Ok(stats) => stats,
        Err(e) => panic!("expected a linearizable history, got: {e}"),
    }
}

/// Returns the key and explanation, printed so a failing assertion on them shows the report.
fn assert_not_linearizable(ops: &[Operation]) -> (String, String) {
    match check(ops) {
        Err(CheckError::NotLinearizable { key, explanation }) => {
            eprintln!("{}", CheckError::NotLinearizable { key: key.clone(), explanation: explanation.clone() });
            (key, explanation)
        }
        other => panic!("expected a linearizability violation, got {other:?}"),
    }
}

#[test]
fn sequential_operations_are_linearizable() {
    let ops = [
        read(1, None, 0, 1),
        write(1, "a", 2, 3),
        read(2, Some("a"), 4, 5),
        write(2, "b", 6, 7),
        read(1, Some("b"), 8, 9),
        delete(1, 10, 11),
        read(2, None, 12, 13),
    ];
    assert_eq!(assert_linearizable(&ops).operations, 7);
}

#[test]
fn read_concurrent_with_write_may_see_either_value() {
    for seen in ["a", "b"] {
        let ops = [write(1, "a", 0, 10), write(2, "b", 20, 40), read(3, Some(seen), 25, 35)];
        assert_linearizable(&ops);
    }
}

#[test]
fn reads_of_absent_key_are_linearizable_before_or_during_the_first_write() {
    let ops = [read(1, None, 0, 10), write(2, "a", 5, 30), read(3, None, 20, 25), read(3, Some("a"), 40, 50)];
    assert_linearizable(&ops);
}

#[test]
fn delete_makes_the_key_absent() {
    let ops = [write(1, "a", 0, 10), delete(2, 20, 30), read(1, None, 40, 50)];
    assert_linearizable(&ops);
}

#[test]
fn operations_touching_at_one_instant_may_go_either_way() {
    let ops = [write(1, "a", 0, 10), write(2, "b", 10, 20), read(1, Some("a"), 20, 30)];
    assert_linearizable(&ops);
}

#[test]
fn unknown_write_may_take_effect_long_after_its_timeout() {
    let ops = [
        write(1, "a", 0, 10),
        ended(write(2, "b", 20, 30), Outcome::Unknown),
        read(3, Some("a"), 100, 110),
        read(3, Some("b"), 200, 210),
    ];
    assert_linearizable(&ops);
}

#[test]
fn unknown_write_may_never_take_effect() {
    let ops =
        [write(1, "a", 0, 10), ended(write(2, "b", 20, Time::MAX), Outcome::Unknown), read(3, Some("a"), 100, 110)];
    assert_linearizable(&ops);
}

#[test]
fn unknown_delete_may_explain_a_later_read_of_absent() {
    let ops = [write(1, "a", 0, 10), ended(delete(2, 20, 30), Outcome::Unknown), read(3, None, 100, 110)];
    assert_linearizable(&ops);
}

#[test]
fn unknown_delete_takes_effect_at_most_once() {
    let ops = [
        write(1, "a", 0, 10),
        ended(delete(2, 20, 30), Outcome::Unknown),
        read(3, None, 40, 50),
        write(1, "b", 60, 70),
        read(3, None, 80, 90),
    ];
    assert_not_linearizable(&ops);
}

#[test]
fn failed_write_and_unanswered_reads_are_dropped() {
    let ops = [
        write(1, "a", 0, 10),
        ended(write(2, "b", 20, 30), Outcome::Fail),
        op(3, Op::Read, 20, 30, Outcome::Unknown),
        op(3, Op::Read, 40, 50, Outcome::Fail),
        read(1, Some("a"), 100, 110),
    ];
    let stats = assert_linearizable(&ops);
    assert_eq!((stats.operations, stats.dropped), (2, 3));
}

#[test]
fn stale_read_after_a_completed_write_is_reported() {
    let ops = [write(1, "a", 0, 10), write(2, "b", 20, 30), read(3, Some("a"), 40, 50)];
    let (key, explanation) = assert_not_linearizable(&ops);
    assert_eq!(key, "k");
    assert!(explanation.contains("op 2: client 3 read"), "{explanation}");
}

#[test]
fn lost_acknowledged_write_is_reported_despite_an_unrelated_concurrent_write() {
    let ops = [
        write(1, "a", 0, 10),
        write(2, "b", 20, 30),
        ended(write(3, "c", 25, 60), Outcome::Unknown),
        read(2, Some("a"), 40, 50),
    ];
    assert_not_linearizable(&ops);
}

#[test]
fn read_older_than_an_earlier_read_is_reported() {
    // The write of "b" is still in flight, but once a read has seen it, later reads must too.
    let ops = [write(1, "a", 0, 10), write(2, "b", 15, 100), read(3, Some("b"), 20, 30), read(4, Some("a"), 40, 50)];
    assert_not_linearizable(&ops);
}

#[test]
fn read_of_a_value_never_written_is_reported() {
    let ops = [write(1, "a", 0, 10), read(2, Some("z"), 5, 15)];
    let (_, explanation) = assert_not_linearizable(&ops);
    assert!(explanation.contains("op 1"), "{explanation}");
}

#[test]
fn failed_write_observed_by_a_read_is_reported() {
    let ops = [write(1, "a", 0, 10), ended(write(2, "b", 20, 30), Outcome::Fail), read(3, Some("b"), 40, 50)];
    assert_not_linearizable(&ops);
}

#[test]
fn violation_names_the_broken_key_among_good_ones() {
    let on = |key: &str, op: Operation| Operation { key: key.to_string(), ..op };
    let ops = [
        on("x", write(1, "a", 0, 10)),
        on("y", write(1, "a", 0, 10)),
        on("x", read(2, Some("a"), 20, 30)),
        on("y", read(2, None, 20, 30)),
    ];
    assert_eq!(assert_not_linearizable(&ops).0, "y");
}

#[test]
fn read_acknowledged_without_a_value_is_malformed() {
    let ops = [write(1, "a", 0, 10), op(2, Op::Read, 20, 30, Outcome::Ok)];
    assert!(matches!(check(&ops), Err(CheckError::Malformed { id: OpId(1), .. })));
}

#[test]
fn recorder_times_operations_with_the_given_clock_and_counts_pending_ones_as_unknown() {
    let now = Arc::new(AtomicU64::new(0));
    let clock = now.clone();
    let history = History::with_clock(move || clock.fetch_add(10, Ordering::SeqCst));
    let w = history.invoke(1, "k", Op::Write("a".into()));
    history.complete(w, Outcome::Ok);
    history.invoke(2, "k", Op::Write("b".into()));
    let r = history.invoke(3, "k", Op::Read);
    history.complete(r, Outcome::Read(Some("b".into())));
    let ops = history.operations();
    assert_eq!((ops[0].invoke, ops[0].complete), (0, 10));
    assert_eq!((ops[1].outcome.clone(), ops[1].complete), (Outcome::Unknown, Time::MAX));
    assert_eq!(history.check().map(|s| s.operations).ok(), Some(3));
}

#[test]
fn recorder_collects_a_linearizable_history_from_many_threads() {
    let history = History::new();
    let store: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let threads: Vec<_> = (0..4u64)
        .map(|client| {
            let (history, store) = (history.clone(), store.clone());
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let key = format!("k{}", i % 3);
                    let id = history.invoke(client, key.as_str(), Op::Write(format!("{client}-{i}")));
                    store.lock().expect("store").insert(key.clone(), format!("{client}-{i}"));
                    history.complete(id, Outcome::Ok);
                    let id = history.invoke(client, key.as_str(), Op::Read);
                    let seen = store.lock().expect("store").get(&key).cloned();
                    history.complete(id, Outcome::Read(seen));
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().expect("client thread"));
    let stats = history.check().expect("a mutex-guarded map is linearizable");
    assert_eq!((stats.keys, stats.operations), (3, 1600));
}

/// Builds a history linearizable by construction: each operation gets an interval and a point
/// inside it (after it, for an unknown outcome), and a sequential register applies the
/// operations in the order of their points. Returns the ok reads' indices too.
fn random_history(seed: u64, clients: u64, per_client: usize, keys: &[&str]) -> (Vec<Operation>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut planned: Vec<(Time, Operation)> = Vec::new();
    let mut values = 0;
    for client in 0..clients {
        let mut free = rng.random_range(0..50);
        for _ in 0..per_client {
            let invoke = free + rng.random_range(0..20);
            let complete = invoke + rng.random_range(1..200);
            free = complete + 1;
            let key = keys[rng.random_range(0..keys.len())];
            let point = rng.random_range(invoke..=complete);
            let kind = rng.random_range(0..100);
            let (op, outcome) = if kind < 45 {
                values += 1;
                (Op::Write(format!("v{values}")), Outcome::Ok)
            } else if kind < 55 {
                (Op::Delete, Outcome::Ok)
            } else {
                (Op::Read, Outcome::Read(None))
            };
            let outcome = match rng.random_range(0..100) {
                0..4 => Outcome::Fail,
                4..8 => Outcome::Unknown,
                _ => outcome,
            };
            // An unknown operation may still take effect, possibly well after its timeout.
            let point = match outcome {
                Outcome::Unknown if rng.random_bool(0.5) => Some(point + rng.random_range(0..1000)),
                Outcome::Fail | Outcome::Unknown => None,
                _ => Some(point),
            };
            let op = Operation { client, key: key.to_string(), op, invoke, complete, outcome };
            planned.push((point.unwrap_or(Time::MAX), op));
        }
    }
    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|&i| planned[i].0);
    let mut register: HashMap<String, String> = HashMap::new();
    let mut reads = Vec::new();
    for i in order {
        let (point, op) = &mut planned[i];
        match (&op.op, &mut op.outcome) {
            _ if *point == Time::MAX => {}
            (Op::Write(value), _) => drop(register.insert(op.key.clone(), value.clone())),
            (Op::Delete, _) => drop(register.remove(&op.key)),
            (Op::Read, Outcome::Read(seen)) => {
                *seen = register.get(&op.key).cloned();
                reads.push(i);
            }
            (Op::Read, _) => {}
        }
    }
    (planned.into_iter().map(|(_, op)| op).collect(), reads)
}

#[test]
fn random_histories_linearizable_by_construction_pass_and_fail_once_a_read_is_corrupted() {
    for seed in 0..100 {
        let (mut ops, reads) = random_history(seed, 4, 40, &["a", "b", "c"]);
        if let Err(e) = check(&ops) {
            panic!("seed {seed}: {e}");
        }
        let corrupt = reads[seed as usize % reads.len()];
        ops[corrupt].outcome = Outcome::Read(Some("never written".into()));
        match check(&ops) {
            Err(CheckError::NotLinearizable { key, .. }) => assert_eq!(key, ops[corrupt].key, "seed {seed}"),
            other => panic!("seed {seed}: corrupting op {corrupt} went unnoticed: {other:?}"),
        }
    }
}

#[test]
fn stale_read_late_in_a_long_history_is_reported() {
    let (mut ops, reads) = random_history(7, 8, 200, &["k"]);
    let last = reads.iter().copied().max_by_key(|&i| ops[i].invoke).expect("some reads");
    let first_written = ops
        .iter()
        .filter_map(|o| match (&o.op, &o.outcome) {
            (Op::Write(value), Outcome::Ok) => Some((o.invoke, value.clone())),
            _ => None,
        })
        .min()
        .map(|(_, value)| value);
    ops[last].outcome = Outcome::Read(first_written);
    let start = std::time::Instant::now();
    assert_not_linearizable(&ops);
    eprintln!("stale read among 8 x 200 operations found in {:?}", start.elapsed());
}

#[test]
fn eight_clients_with_a_thousand_operations_each_on_one_key_check() {
    let (ops, _) = random_history(7, 8, 1000, &["k"]);
    let stats = assert_linearizable(&ops);
    eprintln!("8 clients x 1000 ops on one key: {stats}");
}

/// Tries every order of a small one-key history: the definition of linearizability, slowly.
fn brute_force(ops: &[Operation]) -> bool {
    fn search<'a>(ops: &[&'a Operation], used: u32, state: Option<&'a str>) -> bool {
        let unplaced = |i: usize| used & 1 << i == 0;
        let must = |i: usize| unplaced(i) && ops[i].outcome != Outcome::Unknown;
        if !(0..ops.len()).any(must) {
            return true;
        }
        (0..ops.len()).filter(|&i| unplaced(i)).any(|i| {
            let ready = (0..ops.len()).all(|j| !must(j) || ops[j].complete >= ops[i].invoke);
            let placed = used | 1 << i;
            ready
                && match (&ops[i].op, &ops[i].outcome) {
                    (Op::Write(value), _) => search(ops, placed, Some(value)),
                    (Op::Delete, _) => search(ops, placed, None),
                    (Op::Read, Outcome::Read(seen)) => seen.as_deref() == state && search(ops, placed, state),
                    (Op::Read, _) => false,
                }
        })
    }
    let kept: Vec<&Operation> = ops
        .iter()
        .filter(|o| o.outcome != Outcome::Fail && !(o.op == Op::Read && o.outcome == Outcome::Unknown))
        .collect();
    search(&kept, 0, None)
}

#[test]
fn checker_agrees_with_brute_force_on_small_random_histories() {
    let mut rng = StdRng::seed_from_u64(42);
    let values = ["a", "b", "c"];
    let mut verdicts = [0, 0];
    for round in 0..3000 {
        let ops: Vec<Operation> = (0..rng.random_range(1..=7))
            .map(|_| {
                let invoke = rng.random_range(0..20);
                let complete = invoke + rng.random_range(0..10);
                let value = values[rng.random_range(0..values.len())].to_string();
                let (op, done) = match rng.random_range(0..3) {
                    0 => (Op::Write(value), Outcome::Ok),
                    1 => (Op::Delete, Outcome::Ok),
                    _ => (Op::Read, Outcome::Read(rng.random_bool(0.7).then_some(value))),
                };
                let outcome =
                    [done, Outcome::Fail, Outcome::Unknown][rng.random_range(0..5usize).saturating_sub(2)].clone();
                self::op(rng.random_range(0..3), op, invoke, complete, outcome)
            })
            .collect();
        let expected = brute_force(&ops);
        assert_eq!(check(&ops).is_ok(), expected, "round {round}: {ops:#?}");
        verdicts[usize::from(expected)] += 1;
    }
    assert!(verdicts[0] > 300 && verdicts[1] > 300, "too one-sided to test much: {verdicts:?}");
}
