//! t35: the frame codec and the handshake acceptor under arbitrary and adversarial bytes.
//!
//! What must hold, whatever arrives and however it is split into reads:
//! - the decoder never panics, answers `Ok(None)`, `Ok(Some)` or `Err`, and the stream ends at
//!   the first `Err`; on a finite input the read-and-decode loop ends, every frame consuming
//!   bytes;
//! - its read buffer never grows past the frame limit plus a few bytes, whatever the length
//!   prefixes claim;
//! - the result does not depend on the split: the same frames and the same error as when the
//!   whole input arrives in one read;
//! - every kind of frame roundtrips exactly, and a frame of exactly the limit is taken while
//!   one a byte over is refused;
//! - `handshake::accept` over an in-memory stream finishes, `Ok` or `Err`, within its
//!   timeout, and a client that drips a frame without finishing it is cut off by it.
//!
//! The properties run a few thousand cases in CI. The soak test runs them on fresh inputs for
//! as long as asked and prints how many it ran:
//! `DISTER_FUZZ_SECS=600 cargo test --release --test all t35_codec_fuzz::soak -- --nocapture`
//! (`DISTER_FUZZ_SEED=N` replays a run).

use crate::codec_cases;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use codec_cases::{
    Delivery, Mutated, VARIANTS, delivery, encode_all, frame, frame_starts, garbage_frames, hello, limit,
};
use dister::error::WireError;
use dister::wire::codec::encode_frame;
use dister::wire::handshake::{self, AcceptError, FrameReader};
use dister::wire::{Frame, FrameCodec, Hello, Refusal, RefusalKind, Welcome};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::task::LocalSet;
use tokio::time::Instant;
use tokio_util::codec::Decoder;

/// Bytes the read buffer may hold beyond the larger of the frame limit plus its length field
/// and the buffer's starting capacity (the allocator rounds up to at least 8).
const SLACK: usize = 64;

/// What feeding one input to a decoder did.
#[derive(Debug)]
struct Fed {
    frames: Vec<Frame>,
    error: Option<WireError>,
}

impl Fed {
    /// Frames and error as text, to compare runs (the wire types have no `PartialEq`).
    fn summary(&self) -> (Vec<String>, Option<String>) {
        (self.frames.iter().map(|f| format!("{f:?}")).collect(), self.error.as_ref().map(|e| e.to_string()))
    }
}

/// Feeds `input` to a fresh decoder the way `FramedRead` does: reserve a byte when the buffer
/// is full, read into its spare room, decode until `Ok(None)`, and at the end of the input
/// `decode_eof` until it answers `Ok(None)`; stop at the first `Err`. Checks after every call
/// that the buffer stayed within the limit and that each frame consumed bytes.
fn feed(max_frame: usize, input: &[u8], delivery: &Delivery) -> Result<Fed, TestCaseError> {
    let mut codec = FrameCodec::new(max_frame);
    let mut buf = BytesMut::with_capacity(delivery.initial_capacity);
    let bound = (4 + max_frame).max(delivery.initial_capacity) + SLACK;
    let mut fed = Fed { frames: Vec::new(), error: None };
    let mut reads = delivery.reads.iter().copied();
    let mut rest = input;
    let mut eof = false;
    loop {
        if !eof {
            if rest.is_empty() {
                eof = true;
            } else {
                buf.reserve(1);
                let want = reads.next().unwrap_or(rest.len()).clamp(1, rest.len());
                let n = want.min(buf.capacity() - buf.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
        }
        loop {
            let before = buf.len();
            let out = if eof { codec.decode_eof(&mut buf) } else { codec.decode(&mut buf) };
            prop_assert!(
                buf.capacity() <= bound,
                "buffer grew to {} bytes, over {bound} for a limit of {max_frame}",
                buf.capacity()
            );
            match out {
                Ok(Some(frame)) => {
                    prop_assert!(buf.len() < before, "a frame consumed no bytes: {frame:?}");
                    fed.frames.push(frame);
                }
                Ok(None) if eof => {
                    prop_assert!(buf.is_empty(), "decode_eof left {} bytes without an error", buf.len());
                    return Ok(fed);
                }
                Ok(None) => break,
                Err(e) => {
                    fed.error = Some(e);
                    return Ok(fed);
                }
            }
        }
    }
}

/// Decoding `input` split as `delivery` says keeps the buffer bounded and gives what decoding
/// it in one read gives.
fn check_decoder(max_frame: usize, input: &[u8], delivery: &Delivery) -> Result<Fed, TestCaseError> {
    let split = feed(max_frame, input, delivery)?;
    let whole = feed(max_frame, input, &Delivery::whole(input.len()))?;
    prop_assert_eq!(split.summary(), whole.summary(), "the split changed the outcome");
    Ok(split)
}

/// Encodes `frames`, feeds them back split as `delivery` says, and checks they come back the
/// same, in order, with no error.
fn check_roundtrip(frames: &[Frame], delivery: &Delivery, max_frame: usize) -> Result<(), TestCaseError> {
    let bytes = encode_all(frames);
    let fed = check_decoder(max_frame, &bytes, delivery)?;
    prop_assert!(fed.error.is_none(), "valid frames were refused: {:?}", fed.error);
    prop_assert_eq!(fed.frames.len(), frames.len());
    for (got, sent) in fed.frames.iter().zip(frames) {
        prop_assert_eq!(format!("{got:?}"), format!("{sent:?}"));
        let again = encode_frame(got.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let first = encode_frame(sent.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(again, first, "re-encoding changed the bytes");
    }
    Ok(())
}

/// Frames roundtrip under a generous limit and under exactly the largest frame's length; a
/// limit a byte under it takes the frames before the first such frame, then refuses it.
fn check_valid_frames(frames: &[Frame], delivery: &Delivery) -> Result<(), TestCaseError> {
    check_roundtrip(frames, delivery, 1 << 20)?;
    let bytes = encode_all(frames);
    let lens: Vec<usize> = frame_starts(&bytes)
        .iter()
        .map(|&at| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize)
        .collect();
    let Some(&largest) = lens.iter().max() else { return Ok(()) };
    check_roundtrip(frames, delivery, largest)?;
    let fed = check_decoder(largest - 1, &bytes, delivery)?;
    let first_too_large = lens.iter().position(|&l| l == largest).unwrap();
    prop_assert_eq!(fed.frames.len(), first_too_large);
    prop_assert!(
        matches!(fed.error, Some(WireError::FrameTooLarge { len, max }) if len == largest && max == largest - 1),
        "expected the {largest}-byte frame to be refused, got {:?}",
        fed.error
    );
    Ok(())
}

fn check_mutated(m: &Mutated, max_frame: usize, delivery: &Delivery) -> Result<(), TestCaseError> {
    check_decoder(max_frame, &m.bytes(max_frame), delivery).map(drop)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Arbitrary bytes, split arbitrarily.
    #[test]
    fn arbitrary_bytes_are_decoded_or_refused(
        input in vec(any::<u8>(), 0..512), max_frame in limit(), delivery in delivery()
    ) {
        check_decoder(max_frame, &input, &delivery)?;
    }

    /// Frames with a right header but an arbitrary kind and body.
    #[test]
    fn arbitrary_bodies_are_decoded_or_refused(input in garbage_frames(), max_frame in limit(), delivery in delivery()) {
        check_decoder(max_frame, &input, &delivery)?;
    }

    /// Valid frames with bytes flipped, cut, inserted, removed or spliced, and length fields
    /// set to the limit, around it, or anything.
    #[test]
    fn mutated_frames_are_decoded_or_refused(m in codec_cases::mutated(), max_frame in limit(), delivery in delivery()) {
        check_mutated(&m, max_frame, &delivery)?;
    }
}

proptest! {
    #![proptest_config(config(500))]

    /// Valid frames of every kind come back exactly.
    #[test]
    fn valid_frames_roundtrip_in_any_split(frames in vec(frame(), 0..6), delivery in delivery()) {
        check_valid_frames(&frames, &delivery)?;
    }
}

/// The frame strategy reaches every kind of frame, down to each request and response variant
/// (so the roundtrip property covers them all).
#[test]
fn frame_strategy_covers_every_kind() {
    let mut runner = TestRunner::deterministic();
    let strategy = frame();
    let mut seen = BTreeSet::new();
    for _ in 0..5_000 {
        seen.insert(codec_cases::variant(&strategy.new_tree(&mut runner).unwrap().current()));
    }
    assert_eq!(seen.len(), VARIANTS, "only {seen:?}");
}

/// A frame exactly at the handshake limit, its bytes split in two at every 1 KiB, is taken
/// without the buffer outgrowing it.
#[test]
fn a_frame_at_the_limit_is_taken_in_any_split() {
    let max = dister::wire::codec::HANDSHAKE_MAX_FRAME;
    // Header, then the group's 3-byte length and its bytes, then three absent options.
    let group = "g".repeat(max - 4 - 3 - 1 - 1 - 1);
    let bytes = encode_frame(Frame::Hello(Hello { group, node_id: None, token: None, lease_wait_ms: None })).unwrap();
    assert_eq!(bytes.len(), 4 + max);
    for cut in (1..bytes.len()).step_by(1024) {
        let delivery = Delivery { reads: vec![cut], initial_capacity: 8 * 1024 };
        let fed = feed(max, &bytes, &delivery).unwrap();
        assert!(fed.error.is_none() && fed.frames.len() == 1, "cut at {cut}: {:?}", fed.error);
    }
}

// ---- the handshake acceptor ----

/// The acceptor's timeout: short, and in paused time, so a case costs no waiting.
const TIMEOUT: Duration = Duration::from_millis(200);
/// What a timer may fire late by in paused time (deadlines round up to the millisecond).
const TIMER_SLOP: Duration = Duration::from_millis(2);
/// The frame limit the acceptor grants.
const GRANTED: usize = 1 << 20;

/// What the client does once it has written its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientEnd {
    /// Closes the connection.
    Close,
    /// Reads whatever the acceptor answers, until it closes.
    Drain,
    /// Keeps the connection open and never reads.
    Hold,
}

/// One client of the acceptor.
#[derive(Clone, Debug)]
struct Client {
    /// Everything it writes.
    bytes: Vec<u8>,
    /// Its writes before the last: how long it waits first (ms), then how many bytes.
    writes: Vec<(u64, usize)>,
    /// What it does after.
    end: ClientEnd,
    /// The in-memory pipe's buffer, each way.
    pipe: usize,
}

impl Client {
    /// When the client has written the first `n` bytes, in paused time from the start.
    fn written_by(&self, n: usize) -> Duration {
        let (mut at, mut sent) = (0, 0);
        for &(wait, len) in &self.writes {
            if sent >= n {
                break;
            }
            at += wait;
            sent += len;
        }
        Duration::from_millis(at)
    }

    async fn run(self, mut stream: DuplexStream) {
        let mut rest = &self.bytes[..];
        for &(wait, len) in &self.writes {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let (now, later) = rest.split_at(len.min(rest.len()));
            if stream.write_all(now).await.is_err() {
                return;
            }
            rest = later;
        }
        if stream.write_all(rest).await.is_err() {
            return;
        }
        match self.end {
            ClientEnd::Close => drop(stream),
            ClientEnd::Drain => {
                let _ = stream.read_to_end(&mut Vec::new()).await;
            }
            ClientEnd::Hold => std::future::pending().await,
        }
    }
}

fn client() -> impl Strategy<Value = Client> {
    let bytes = prop_oneof![
        vec(any::<u8>(), 0..256),
        garbage_frames(),
        (hello(), vec(frame(), 0..3)).prop_map(|(h, more)| encode_all(&[&[Frame::Hello(h)][..], &more].concat())),
        codec_cases::mutated().prop_map(|m| m.bytes(dister::wire::codec::HANDSHAKE_MAX_FRAME)),
        (hello(), codec_cases::mutated()).prop_map(|(h, mut m)| {
            m.frames.insert(0, Frame::Hello(h));
            m.bytes(dister::wire::codec::HANDSHAKE_MAX_FRAME)
        }),
    ];
    let wait = prop_oneof![3 => Just(0u64), 1 => 1u64..=80];
    let end = prop_oneof![Just(ClientEnd::Close), Just(ClientEnd::Drain), Just(ClientEnd::Hold)];
    let pipe = prop_oneof![1usize..64, 64usize..8192];
    (bytes, vec((wait, 1usize..64), 0..8), end, pipe).prop_map(|(bytes, writes, end, pipe)| Client {
        bytes,
        writes,
        end,
        pipe,
    })
}

type Accepted = Result<(FrameReader<DuplexStream>, WriteHalf<DuplexStream>, Hello), AcceptError>;

/// Admits the group "default" and refuses any other.
fn admit(hello: &Hello) -> Result<usize, Refusal> {
    if hello.group == "default" {
        Ok(GRANTED)
    } else {
        Err(Refusal::new(RefusalKind::WrongGroup, format!("wrong group {:?}", hello.group)))
    }
}

/// Runs `accept` against `client` on a current-thread runtime in paused time; returns what it
/// answered and how long it took, or `None` when it had not finished after ten timeouts.
fn run_accept(client: Client) -> (Option<Accepted>, Duration) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    LocalSet::new().block_on(&rt, async move {
        let (ours, theirs) = tokio::io::duplex(client.pipe);
        tokio::task::spawn_local(client.run(ours));
        let welcome = Welcome { group: "default".into(), node_id: 1 };
        let start = Instant::now();
        let accepted = tokio::time::timeout(10 * TIMEOUT, handshake::accept(theirs, welcome, TIMEOUT, admit)).await;
        (accepted.ok(), start.elapsed())
    })
}

/// `accept` finishes within its timeout whatever the client does; it takes a connection only
/// after a `Hello` of the admitted group, and takes every one whose `Hello` arrives in time
/// from a client that leaves room for the `Welcome`.
fn check_accept(client: Client) -> Result<(), TestCaseError> {
    let first = FrameCodec::handshake().decode(&mut BytesMut::from(&client.bytes[..]));
    let welcome_len = encode_frame(Frame::Welcome(Welcome { group: "default".into(), node_id: 1 })).unwrap().len();
    let must_accept = match &first {
        Ok(Some(Frame::Hello(h))) if h.group == "default" => {
            let hello_len = 4 + u32::from_be_bytes(client.bytes[..4].try_into().unwrap()) as usize;
            client.written_by(hello_len) + TIMER_SLOP < TIMEOUT
                && client.end != ClientEnd::Close
                && client.pipe >= welcome_len
        }
        _ => false,
    };

    let (accepted, took) = run_accept(client);
    let Some(accepted) = accepted else {
        return Err(TestCaseError::fail(format!("accept had not finished after {:?}", 10 * TIMEOUT)));
    };
    prop_assert!(took <= TIMEOUT + TIMER_SLOP, "accept took {took:?}, over its timeout of {TIMEOUT:?}: {accepted:?}");
    match accepted {
        Ok((reader, _, hello)) => {
            prop_assert!(
                matches!(&first, Ok(Some(Frame::Hello(h))) if *h == hello && h.group == "default"),
                "accepted {hello:?} but the client's first frame is {first:?}"
            );
            prop_assert_eq!(reader.decoder().max_frame(), GRANTED);
        }
        Err(e) => prop_assert!(!must_accept, "a good hello in time was refused: {e}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1000))]

    /// Arbitrary, valid and mutated client bytes, written in pieces over time, then a close,
    /// a read to the end, or nothing.
    #[test]
    fn accept_finishes_within_its_timeout(client in client()) {
        check_accept(client)?;
    }
}

/// A client that sends all of a `Hello` but its last byte, one byte every 30 ms, and then
/// holds the connection open, is cut off when the timeout runs out rather than waited for.
///
/// 1. Write the `Hello` less its last byte, a byte at a time, slower than the timeout allows.
/// 2. Hold the connection open without reading.
/// 3. `accept` answers `Timeout` once `TIMEOUT` has passed, not before and not much after.
#[test]
fn a_dripping_client_is_ended_by_the_timeout() {
    let hello =
        encode_frame(Frame::Hello(Hello { group: "default".into(), node_id: None, token: None, lease_wait_ms: None }))
            .unwrap();
    let drip = hello.len() - 1;
    let client = Client { bytes: hello[..drip].to_vec(), writes: vec![(30, 1); drip], end: ClientEnd::Hold, pipe: 64 };
    let (accepted, took) = run_accept(client);
    assert!(
        matches!(&accepted, Some(Err(AcceptError::Refused(Refusal { kind: RefusalKind::Timeout, .. })))),
        "{accepted:?}"
    );
    assert!(took >= TIMEOUT && took <= TIMEOUT + TIMER_SLOP, "took {took:?}");
}

/// Found by this suite: `accept` wrote its `Welcome` with no deadline, so a client that sent
/// a good `Hello` and never read held the acceptor forever once the pipe was full. (Over TCP
/// the kernel's send buffer hides it for a `Welcome` this small; the timeout is the contract.)
///
/// 1. A client sends a good `Hello` over a pipe too small for the `Welcome`.
/// 2. It holds the connection open and never reads.
/// 3. `accept` answers `Timeout` when its timeout runs out.
#[test]
fn accept_gives_up_on_a_client_that_never_reads_its_welcome() {
    let hello =
        encode_frame(Frame::Hello(Hello { group: "default".into(), node_id: None, token: None, lease_wait_ms: None }))
            .unwrap();
    let client = Client { bytes: hello.to_vec(), writes: vec![], end: ClientEnd::Hold, pipe: 8 };
    let (accepted, took) = run_accept(client);
    assert!(matches!(accepted, Some(Err(AcceptError::Gone(WireError::Timeout)))), "{accepted:?}");
    assert!(took <= TIMEOUT + TIMER_SLOP, "took {took:?}");
}

/// Found by this suite: the `Error` frame refusing a client had a timeout of its own, after
/// the one for reading its `Hello`, so a refusal could take twice the handshake's timeout.
///
/// 1. A client waits 150 ms, then sends a `Hello` of another group over a pipe too small for
///    the refusal, and holds the connection open without reading.
/// 2. `accept` refuses it by the end of its timeout, not 150 ms + the timeout.
#[test]
fn a_refusal_ends_within_the_same_timeout() {
    let hello =
        encode_frame(Frame::Hello(Hello { group: "other".into(), node_id: None, token: None, lease_wait_ms: None }))
            .unwrap();
    let client = Client { bytes: hello.to_vec(), writes: vec![(150, 0)], end: ClientEnd::Hold, pipe: 8 };
    let (accepted, took) = run_accept(client);
    assert!(
        matches!(&accepted, Some(Err(AcceptError::Refused(r))) if r.message.contains("wrong group")),
        "{accepted:?}"
    );
    assert!(took <= TIMEOUT + TIMER_SLOP, "took {took:?}");
}

// ---- the soak ----

/// Runs every property above on fresh random inputs for `DISTER_FUZZ_SECS` seconds, then
/// prints how many inputs it ran. Without the variable it does nothing. A failure is shrunk
/// and printed with the seed that finds it again (`DISTER_FUZZ_SEED`); a case that runs for a
/// minute is called a hang and aborts the run.
#[test]
fn soak() {
    let Ok(secs) = std::env::var("DISTER_FUZZ_SECS") else {
        eprintln!("soak: skipped; DISTER_FUZZ_SECS=N runs it for N seconds");
        return;
    };
    let secs: u64 = secs.parse().expect("DISTER_FUZZ_SECS is a whole number of seconds");
    let seed: u64 = std::env::var("DISTER_FUZZ_SEED")
        .map(|s| s.parse().expect("DISTER_FUZZ_SEED is a number"))
        .unwrap_or_else(|_| rand::random());
    eprintln!("soak: {secs} s, seed {seed}");

    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut master = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    let execs = Arc::new(AtomicU64::new(0));
    let failures = Cell::new(0u64);
    watch_for_hangs(execs.clone(), seed);

    let start = std::time::Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut batch = |name: &str, run: &dyn Fn(&mut TestRunner) -> Result<(), String>| {
        let config = Config { cases: 256, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, master.new_rng());
        if let Err(e) = run(&mut runner) {
            failures.set(failures.get() + 1);
            eprintln!("soak: {name} FAILED after {} executions (seed {seed}): {e}", execs.load(Ordering::Relaxed));
        }
    };
    let count = |n: &AtomicU64| n.fetch_add(1, Ordering::Relaxed);
    while std::time::Instant::now() < deadline && failures.get() == 0 {
        batch("arbitrary bytes", &|r| {
            outcome(r.run(&(vec(any::<u8>(), 0..4096), limit(), delivery()), |(input, max, d)| {
                count(&execs);
                check_decoder(max, &input, &d).map(drop)
            }))
        });
        batch("arbitrary bodies", &|r| {
            outcome(r.run(&(garbage_frames(), limit(), delivery()), |(input, max, d)| {
                count(&execs);
                check_decoder(max, &input, &d).map(drop)
            }))
        });
        batch("mutated frames", &|r| {
            outcome(r.run(&(codec_cases::mutated(), limit(), delivery()), |(m, max, d)| {
                count(&execs);
                check_mutated(&m, max, &d)
            }))
        });
        batch("roundtrip", &|r| {
            outcome(r.run(&(vec(frame(), 0..6), delivery()), |(frames, d)| {
                count(&execs);
                check_valid_frames(&frames, &d)
            }))
        });
        batch("accept", &|r| {
            outcome(r.run(&client(), |c| {
                count(&execs);
                check_accept(c)
            }))
        });
    }
    let n = execs.load(Ordering::Relaxed);
    let took = start.elapsed().as_secs_f64();
    eprintln!("soak: {n} executions in {took:.0} s ({:.0}/s), {} failed, seed {seed}", n as f64 / took, failures.get());
    assert_eq!(failures.get(), 0, "the soak found a failure; see above");
}

fn outcome<T: Debug>(r: Result<(), TestError<T>>) -> Result<(), String> {
    r.map_err(|e| match e {
        TestError::Fail(why, input) => format!("{why}\nminimal input: {input:#?}"),
        TestError::Abort(why) => format!("aborted: {why}"),
    })
}

/// Aborts the process when no case has finished for a minute: a decoder or an acceptor that
/// never returns would otherwise hold the soak until its caller gives up, saying nothing.
fn watch_for_hangs(execs: Arc<AtomicU64>, seed: u64) {
    std::thread::spawn(move || {
        let mut last = u64::MAX;
        loop {
            std::thread::sleep(Duration::from_secs(60));
            let now = execs.load(Ordering::Relaxed);
            if now == last {
                eprintln!("soak: HANG: no case finished in 60 s, after {now} executions (seed {seed})");
                std::process::abort();
            }
            last = now;
        }
    });
}
