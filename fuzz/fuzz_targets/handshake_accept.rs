//! `handshake::accept` against a client that writes arbitrary bytes in timed pieces over an
//! in-memory pipe, then closes, reads to the end, or holds the connection without reading.
//! Checks that it finishes within its timeout (in paused time, so no case waits) and takes a
//! connection only after a `Hello` of the admitted group.
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run handshake_accept`

#![no_main]

use std::time::Duration;

use bytes::BytesMut;
use dister::wire::handshake;
use dister::wire::{Frame, FrameCodec, Hello, Refusal, RefusalKind, Welcome};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::LocalSet;
use tokio::time::Instant;
use tokio_util::codec::Decoder;

const TIMEOUT: Duration = Duration::from_millis(200);
/// What a timer may fire late by in paused time.
const TIMER_SLOP: Duration = Duration::from_millis(2);

/// What the client does once it has written everything.
#[derive(Debug, Clone, Copy)]
enum End {
    Close,
    Drain,
    Hold,
}

/// Up to seven timed writes from a seed: a wait of 0 to 80 ms (mostly none), then 1 to 64
/// bytes; the rest goes in one last write.
fn writes(seed: u8) -> Vec<(u8, u8)> {
    let mut x = u32::from(seed) | 0x100;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let n = next() % 8;
    (0..n)
        .map(|_| {
            let wait = if next() % 4 == 0 { (next() % 81) as u8 } else { 0 };
            (wait, (1 + next() % 64) as u8)
        })
        .collect()
}

async fn client(mut stream: DuplexStream, bytes: Vec<u8>, writes: Vec<(u8, u8)>, end: End) {
    let mut rest = &bytes[..];
    for (wait, len) in writes {
        tokio::time::sleep(Duration::from_millis(wait.into())).await;
        let (now, later) = rest.split_at(usize::from(len).min(rest.len()));
        if stream.write_all(now).await.is_err() {
            return;
        }
        rest = later;
    }
    if stream.write_all(rest).await.is_err() {
        return;
    }
    match end {
        End::Close => drop(stream),
        End::Drain => {
            let _ = stream.read_to_end(&mut Vec::new()).await;
        }
        End::Hold => std::future::pending().await,
    }
}

fn admit(hello: &Hello) -> Result<usize, Refusal> {
    if hello.group == "default" { Ok(1 << 20) } else { Err(Refusal::new(RefusalKind::WrongGroup, "wrong group")) }
}

// The input: a byte choosing the client's end (close, drain, hold), a byte for the pipe's
// size (0: 8 KiB), a byte seeding the timed writes, then the bytes the client sends. Raw, so
// seeds are plain frames behind three bytes.
fuzz_target!(|data: &[u8]| {
    let [end, pipe, seed, bytes @ ..] = data else { return };
    let end = [End::Close, End::Drain, End::Hold][usize::from(*end % 3)];
    let pipe = if *pipe == 0 { 8 * 1024 } else { usize::from(*pipe) };
    let first = FrameCodec::handshake().decode(&mut BytesMut::from(bytes));
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    let (accepted, took) = LocalSet::new().block_on(&rt, async {
        let (ours, theirs) = tokio::io::duplex(pipe);
        tokio::task::spawn_local(client(ours, bytes.to_vec(), writes(*seed), end));
        let welcome = Welcome { group: "default".into(), node_id: 1 };
        let start = Instant::now();
        let accepted = tokio::time::timeout(10 * TIMEOUT, handshake::accept(theirs, welcome, TIMEOUT, admit)).await;
        (accepted, start.elapsed())
    });
    let accepted = accepted.expect("accept did not finish");
    assert!(took <= TIMEOUT + TIMER_SLOP, "accept took {took:?}");
    if let Ok((_, _, hello)) = accepted {
        assert!(matches!(&first, Ok(Some(Frame::Hello(h))) if *h == hello), "took {hello:?} from {first:?}");
    }
});
