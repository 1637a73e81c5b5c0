//! The wire: one framed protocol on one TCP port, for peers and clients alike.
//!
//! ```text
//! frame  = len:u32be | magic:u16be (0xD157) | version:u8 | kind:u8 | body
//! len    = bytes after the length field (header + body)
//! body   = postcard encoding of the kind's payload
//! ```
//! A connection opens with `Hello` (group, optional node id, optional token) and is answered
//! `Welcome` or `Error`, after which the acceptor closes. Then `Request`s and `Response`s flow,
//! each tagged with a request id so many can be in flight on one connection (pipelining).
//! No actor code lives here: only bytes and the enums they become.

pub mod codec;
pub mod handshake;
pub mod messages;
pub mod writer;

pub use codec::{Frame, FrameCodec, HEADER_LEN, MAGIC, PROTOCOL_VERSION};
pub use handshake::{Hello, Refusal, RefusalKind, Welcome};
pub use messages::*;
pub use writer::{FrameSender, spawn_writer};

/// Most snapshot bytes one `ReadSnapshot` answers.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;
