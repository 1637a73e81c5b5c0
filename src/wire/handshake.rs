//! The handshake both ends run before any request: the connector sends `Hello`, the acceptor
//! checks it and answers `Welcome`, or an `Error` frame and closes (as dister checks group and
//! version on every connection).

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::{Instant, timeout_at};
use tokio_util::codec::FramedRead;

use super::codec::{Frame, FrameCodec, encode_frame};
use crate::error::WireError;
use crate::raft::NodeId;

/// The first frame on a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The cluster group the connector belongs to (or wants to talk to).
    pub group: String,
    /// The connector's node id when it is a peer; `None` for a client.
    pub node_id: Option<NodeId>,
    /// The cluster token, when the cluster has one.
    pub token: Option<String>,
    /// A peer's `election_timeout_min_ms` when it runs `read_mode = "lease"`, `None` when it
    /// does not (and for a client): a lease relies on every member's wait, so peers that
    /// disagree refuse each other.
    pub lease_wait_ms: Option<u64>,
}

/// The acceptor's answer to a good `Hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The acceptor's group.
    pub group: String,
    /// The acceptor's node id.
    pub node_id: NodeId,
}

/// The reading half of a connection after its handshake.
pub type FrameReader<S> = FramedRead<ReadHalf<S>, FrameCodec>;

/// Connector side: send `hello`, wait for `Welcome`. On success the reader's limit is set to
/// `max_frame` for the rest of the connection.
pub async fn connect<S>(
    stream: S,
    hello: Hello,
    timeout: Duration,
    max_frame: usize,
) -> Result<(FrameReader<S>, WriteHalf<S>, Welcome), WireError>
where
    S: AsyncRead + AsyncWrite,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = FramedRead::new(read, FrameCodec::handshake());
    let exchange = async {
        write.write_all(&encode_frame(Frame::Hello(hello))?).await?;
        match reader.next().await {
            Some(Ok(Frame::Welcome(w))) => Ok(w),
            Some(Ok(Frame::Error(msg))) => Err(WireError::Handshake(msg)),
            Some(Ok(other)) => Err(WireError::Handshake(format!("expected welcome, got {other:?}"))),
            Some(Err(WireError::FrameTooLarge { len, .. })) if is_tls_record(len) => Err(WireError::Handshake(
                "the node answered in TLS: it serves TLS only; connect with TLS (--tls-ca, DISTER_TLS_CA)".into(),
            )),
            Some(Err(e)) => Err(e),
            None => Err(WireError::Closed),
        }
    };
    let welcome = tokio::time::timeout(timeout, exchange).await.map_err(|_| WireError::Timeout)??;
    reader.decoder_mut().set_max_frame(max_frame);
    Ok((reader, write, welcome))
}

/// Whether a frame length read off the wire is really the start of a TLS record (an alert or
/// a handshake, TLS 1.0 to 1.3): a TLS node's answer to plain text.
fn is_tls_record(len: usize) -> bool {
    let [kind, major, minor, _] = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    matches!(kind, 0x15 | 0x16) && major == 3 && minor <= 4
}

/// Why a connection was refused at (or right after) its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalKind {
    /// The hello named another cluster group.
    WrongGroup,
    /// The frame header carried another protocol version.
    WrongVersion,
    /// The cluster token was missing or wrong.
    BadToken,
    /// A node id the cluster removed, or the acceptor's own.
    UnknownNode,
    /// A client connection sent a peer-only (Raft) request.
    RaftFromClient,
    /// Not a dister frame, or not a hello first.
    Malformed,
    /// No hello within the handshake timeout.
    Timeout,
    /// The node already serves `max_client_connections` clients.
    TooManyConnections,
    /// TLS failed: not TLS on a TLS port, a certificate refused, or a peer without one.
    Tls,
    /// A peer with another `read_mode`, or with leases and another `election_timeout_min_ms`.
    WrongReadMode,
}

/// A refused connection: why, and what the other side was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The category, for counting.
    pub kind: RefusalKind,
    /// The message sent in the error frame.
    pub message: String,
}

impl Refusal {
    /// A refusal of `kind` saying `message`.
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Refusal { kind, message: message.into() }
    }
}

/// How an accepted socket failed to become a connection.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Refused, and told why.
    #[error("refused ({:?}): {}", .0.kind, .0.message)]
    Refused(Refusal),
    /// The other side went away first.
    #[error("gone: {0}")]
    Gone(WireError),
}

/// Acceptor side: read `Hello`, ask `admit` whether to take it (it returns the frame limit for
/// the connection, or a refusal), answer `Welcome` or an `Error` frame and close. The whole
/// exchange, answer included, ends within `timeout`.
pub async fn accept<S, F>(
    stream: S,
    welcome: Welcome,
    timeout: Duration,
    admit: F,
) -> Result<(FrameReader<S>, WriteHalf<S>, Hello), AcceptError>
where
    S: AsyncRead + AsyncWrite,
    F: FnOnce(&Hello) -> Result<usize, Refusal>,
{
    // One deadline for every step: a client that reads nothing must not hold the acceptor
    // past it while the answer waits to be written.
    let deadline = Instant::now() + timeout;
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = FramedRead::new(read, FrameCodec::handshake());
    let refusal = match timeout_at(deadline, reader.next()).await {
        Err(_) => Refusal::new(RefusalKind::Timeout, format!("no hello within {} ms", timeout.as_millis())),
        Ok(Some(Ok(Frame::Hello(hello)))) => match admit(&hello) {
            Ok(max_frame) => {
                let answer = encode_frame(Frame::Welcome(welcome)).map_err(AcceptError::Gone)?;
                timeout_at(deadline, write.write_all(&answer))
                    .await
                    .map_err(|_| AcceptError::Gone(WireError::Timeout))?
                    .map_err(|e| AcceptError::Gone(e.into()))?;
                reader.decoder_mut().set_max_frame(max_frame);
                return Ok((reader, write, hello));
            }
            Err(refusal) => refusal,
        },
        Ok(Some(Ok(other))) => {
            Refusal::new(RefusalKind::Malformed, format!("expected hello, got {}", frame_name(&other)))
        }
        Ok(Some(Err(e @ WireError::Version { .. }))) => Refusal::new(RefusalKind::WrongVersion, e.to_string()),
        Ok(Some(Err(e @ WireError::Io(_)))) => return Err(AcceptError::Gone(e)),
        Ok(Some(Err(e))) => Refusal::new(RefusalKind::Malformed, e.to_string()),
        Ok(None) => return Err(AcceptError::Gone(WireError::Closed)),
    };
    // Best effort: the connection closes either way.
    if let Ok(buf) = encode_frame(Frame::Error(refusal.message.clone())) {
        let _ = timeout_at(deadline, async {
            let _ = write.write_all(&buf).await;
            let _ = write.shutdown().await;
        })
        .await;
    }
    Err(AcceptError::Refused(refusal))
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello(_) => "hello",
        Frame::Welcome(_) => "welcome",
        Frame::Request(..) => "request",
        Frame::Response(..) => "response",
        Frame::Error(_) => "error",
    }
}
