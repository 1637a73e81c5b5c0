//! The frame decoder on arbitrary bytes, delivered in arbitrary reads the way `FramedRead`
//! reads them, under the handshake's 64 KiB limit or a small one. Checks what
//! `tests/t35_codec_fuzz.rs` checks: no panic, the stream ends at the first error, every frame
//! consumes bytes, the buffer stays within the limit, and the split does not change the
//! outcome. `RUSTC_BOOTSTRAP=1 cargo fuzz run frame_decoder`

#![no_main]

use bytes::BytesMut;
use dister::wire::FrameCodec;
use dister::wire::codec::HANDSHAKE_MAX_FRAME;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// Bytes the buffer may hold beyond the limit and its length field, or its first capacity.
const SLACK: usize = 64;

/// Read sizes from the input's second byte: mostly small, so frame boundaries land
/// everywhere, sometimes large.
fn reads(seed: u8, n: usize) -> Vec<u16> {
    let mut x = u32::from(seed) | 0x100;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if x % 8 == 0 { (x % 4096) as u16 } else { (x % 12) as u16 }
        })
        .collect()
}

/// Feeds `bytes` as `FramedRead` would; returns the frames and the error as text.
fn feed(max_frame: usize, bytes: &[u8], reads: &[u16], initial_capacity: usize) -> (Vec<String>, Option<String>) {
    let mut codec = FrameCodec::new(max_frame);
    let mut buf = BytesMut::with_capacity(initial_capacity);
    let bound = (4 + max_frame).max(initial_capacity) + SLACK;
    let mut frames = Vec::new();
    let mut reads = reads.iter().map(|&r| usize::from(r));
    let mut rest = bytes;
    loop {
        let eof = rest.is_empty();
        if !eof {
            buf.reserve(1);
            let want = reads.next().unwrap_or(rest.len()).clamp(1, rest.len());
            let n = want.min(buf.capacity() - buf.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        loop {
            let before = buf.len();
            let out = if eof { codec.decode_eof(&mut buf) } else { codec.decode(&mut buf) };
            assert!(buf.capacity() <= bound, "buffer of {} bytes for a limit of {max_frame}", buf.capacity());
            match out {
                Ok(Some(frame)) => {
                    assert!(buf.len() < before, "a frame consumed no bytes");
                    frames.push(format!("{frame:?}"));
                }
                Ok(None) if eof => {
                    assert!(buf.is_empty(), "decode_eof left bytes without an error");
                    return (frames, None);
                }
                Ok(None) => break,
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
    }
}

// The input: a byte choosing the limit (below 64: that limit times four; else the
// handshake's), a byte seeding the read sizes, a byte choosing the buffer's first capacity
// (0: `FramedRead`'s 8 KiB), then the bytes the peer sends. Raw, so seeds are plain frames
// behind three bytes.
fuzz_target!(|data: &[u8]| {
    let [limit, seed, capacity, bytes @ ..] = data else { return };
    let max_frame = if *limit < 64 { usize::from(*limit) * 4 } else { HANDSHAKE_MAX_FRAME };
    let initial_capacity = if *capacity == 0 { 8 * 1024 } else { usize::from(*capacity) };
    let split = feed(max_frame, bytes, &reads(*seed, 64), initial_capacity);
    let whole = feed(max_frame, bytes, &[], bytes.len());
    assert_eq!(split, whole, "the split changed the outcome");
});
