//! Frame codec: bytes <-> [`Frame`]. The length prefix is checked against the connection's
//! limit before a single byte of the body is buffered for it, so an attacker's length cannot
//! make us allocate. `Ok(None)` means "need more bytes"; `Err` ends the stream.

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

use super::handshake::{Hello, Welcome};
use super::messages::{Request, Response};
use crate::error::WireError;

/// First two bytes after the length: "D157", for "dist".
pub const MAGIC: u16 = 0xD157;
/// The protocol version this build speaks; a peer with another is refused.
pub const PROTOCOL_VERSION: u8 = 2;
/// Bytes of header after the length field: magic, version, kind.
pub const HEADER_LEN: usize = 4;
/// Limit before the handshake tells us who is on the other side.
pub const HANDSHAKE_MAX_FRAME: usize = 64 * 1024;

const KIND_HELLO: u8 = 1;
const KIND_WELCOME: u8 = 2;
const KIND_REQUEST: u8 = 3;
const KIND_RESPONSE: u8 = 4;
const KIND_ERROR: u8 = 5;

/// One decoded frame.
#[derive(Debug, Clone)]
pub enum Frame {
    /// Opens a connection.
    Hello(Hello),
    /// Accepts it.
    Welcome(Welcome),
    /// A request and the id its response will carry.
    Request(u64, Request),
    /// The response to request `id`.
    Response(u64, Response),
    /// A fatal error; the sender closes the connection after it.
    Error(String),
}

/// Encodes and decodes frames, refusing any whose length is over `max_frame`.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    /// A codec accepting frames of at most `max_frame` bytes after the length field.
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }

    /// A codec for the handshake, before we know whether a peer or a client is talking.
    pub fn handshake() -> Self {
        Self::new(HANDSHAKE_MAX_FRAME)
    }

    /// Changes the limit, once the handshake has told us who is on the other side.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// The current limit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

fn body<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, WireError> {
    postcard::from_bytes(bytes).map_err(|e| WireError::Malformed(format!("{what} body: {e}")))
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_frame {
            return Err(WireError::FrameTooLarge { len, max: self.max_frame });
        }
        if len < HEADER_LEN {
            return Err(WireError::Malformed(format!("frame length {len} is shorter than its header")));
        }
        // Check the header as soon as it is here, so a stranger is told at once.
        if src.len() >= 4 + HEADER_LEN {
            let magic = u16::from_be_bytes([src[4], src[5]]);
            if magic != MAGIC {
                return Err(WireError::BadMagic(magic));
            }
            if src[6] != PROTOCOL_VERSION {
                return Err(WireError::Version { got: src[6], want: PROTOCOL_VERSION });
            }
        }
        if src.len() < 4 + len {
            // Room for the whole frame, within the limit. Not `reserve`: it may double the
            // buffer, so a length under the limit could make it hold up to twice the limit.
            if !src.try_reclaim(4 + len - src.len()) {
                let most = self.max_frame.saturating_add(4);
                let mut room = BytesMut::with_capacity((2 * src.capacity()).clamp(4 + len, most));
                room.extend_from_slice(src);
                *src = room;
            }
            return Ok(None);
        }
        src.advance(4);
        let frame = src.split_to(len);
        let kind = frame[3];
        let bytes = &frame[HEADER_LEN..];
        let frame = match kind {
            KIND_HELLO => Frame::Hello(body(bytes, "hello")?),
            KIND_WELCOME => Frame::Welcome(body(bytes, "welcome")?),
            KIND_REQUEST => {
                let (id, req) = body(bytes, "request")?;
                Frame::Request(id, req)
            }
            KIND_RESPONSE => {
                let (id, resp) = body(bytes, "response")?;
                Frame::Response(id, resp)
            }
            KIND_ERROR => Frame::Error(body(bytes, "error")?),
            other => return Err(WireError::Malformed(format!("unknown frame kind {other}"))),
        };
        Ok(Some(frame))
    }
}

fn put<T: Serialize>(dst: &mut BytesMut, kind: u8, value: &T) -> Result<(), WireError> {
    let start = dst.len();
    dst.put_u32(0);
    dst.put_u16(MAGIC);
    dst.put_u8(PROTOCOL_VERSION);
    dst.put_u8(kind);
    let body = postcard::to_extend(value, Vec::new()).map_err(|e| WireError::Malformed(format!("encode: {e}")))?;
    dst.extend_from_slice(&body);
    let len = dst.len() - start - 4;
    let len = u32::try_from(len).map_err(|_| WireError::FrameTooLarge { len, max: u32::MAX as usize })?;
    dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

impl Encoder<Frame> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        match &frame {
            Frame::Hello(h) => put(dst, KIND_HELLO, h),
            Frame::Welcome(w) => put(dst, KIND_WELCOME, w),
            Frame::Request(id, r) => put(dst, KIND_REQUEST, &(id, r)),
            Frame::Response(id, r) => put(dst, KIND_RESPONSE, &(id, r)),
            Frame::Error(m) => put(dst, KIND_ERROR, m),
        }
    }
}

/// Encodes one frame into a fresh buffer (for the handshake, written before the framed
/// writer exists).
pub fn encode_frame(frame: Frame) -> Result<BytesMut, WireError> {
    let mut buf = BytesMut::new();
    FrameCodec::new(usize::MAX).encode(frame, &mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::Consistency;

    fn roundtrip(frame: Frame) -> Frame {
        let mut buf = encode_frame(frame).unwrap();
        FrameCodec::new(1 << 20).decode(&mut buf).unwrap().unwrap()
    }

    #[test]
    fn request_roundtrips() {
        let f = roundtrip(Frame::Request(7, Request::Get { key: "a".into(), consistency: Consistency::Stale }));
        assert!(
            matches!(f, Frame::Request(7, Request::Get { ref key, consistency: Consistency::Stale }) if key == "a")
        );
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let full = encode_frame(Frame::Error("boom".into())).unwrap();
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        for (i, b) in full.iter().enumerate() {
            buf.put_u8(*b);
            let out = codec.decode(&mut buf).unwrap();
            assert_eq!(out.is_some(), i == full.len() - 1);
        }
    }

    /// The length prefix is refused before anything is buffered for it.
    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xf0][..]);
        let err = FrameCodec::new(1024).decode(&mut buf).unwrap_err();
        assert!(matches!(err, WireError::FrameTooLarge { len, max: 1024 } if len == 0xffff_fff0));
        assert!(buf.capacity() < 64);
    }

    /// Found by t35's fuzzing: `reserve` may double the buffer, so a length within the limit
    /// arriving in a buffer that already held part of its frame grew it to twice the limit.
    #[test]
    fn room_for_a_frame_stays_within_the_limit() {
        let max = 1024;
        // As `FramedRead` leaves it: 1000 bytes of room, the start of a frame claiming the
        // whole limit at its front (so there is nothing to reclaim).
        let mut buf = BytesMut::with_capacity(1000);
        buf.put_u32(max as u32);
        buf.put_u16(MAGIC);
        buf.put_u8(PROTOCOL_VERSION);
        buf.put_u8(KIND_ERROR);
        buf.put_bytes(0, 900);
        assert!(FrameCodec::new(max).decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.capacity(), 4 + max, "room for the frame, and no more");
    }

    /// A codec without a limit (as `encode_frame` builds) still makes room for a frame.
    #[test]
    fn room_without_a_limit_does_not_overflow() {
        let mut buf = encode_frame(Frame::Error("boom".into())).unwrap();
        buf.truncate(buf.len() - 1);
        let mut buf = BytesMut::from(&buf[..]);
        assert!(FrameCodec::new(usize::MAX).decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() > buf.len());
    }

    #[test]
    fn wrong_magic_and_version_are_refused() {
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x10GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(FrameCodec::new(1024).decode(&mut buf), Err(WireError::BadMagic(_))));
        let mut good = encode_frame(Frame::Error("x".into())).unwrap();
        good[6] = PROTOCOL_VERSION + 1;
        assert!(matches!(FrameCodec::new(1024).decode(&mut good), Err(WireError::Version { .. })));
    }

    #[test]
    fn garbage_body_is_malformed_not_a_panic() {
        let mut buf = BytesMut::new();
        buf.put_u32(4 + 3);
        buf.put_u16(MAGIC);
        buf.put_u8(PROTOCOL_VERSION);
        buf.put_u8(KIND_REQUEST);
        buf.put_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(FrameCodec::new(1024).decode(&mut buf), Err(WireError::Malformed(_))));
    }
}
