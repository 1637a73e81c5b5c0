//! Error types, one enum per boundary. API errors (what a client is told) are kept apart from
//! fatal ones (storage, configuration) so a caller can tell "retry" from "stop".

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::raft::NodeId;

/// Durable storage failed; the node cannot go on safely.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An IO call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A record failed its checksum, or did not decode, before the end of the log: this is
    /// not a torn write and cutting it could drop committed data.
    #[error("corrupt record in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the record in the file.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A snapshot could not be read whole.
    #[error("snapshot {path}: {source}")]
    Snapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: crate::snapshot::SnapshotError,
    },
    /// A data directory to be made from a snapshot already holds something.
    #[error("{path} is not empty: a snapshot is restored only into a new data directory")]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// The storage thread has stopped, after an earlier error or at shutdown.
    #[error("storage is closed")]
    Closed,
}

/// A configuration value is missing or out of range.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for a config.
    #[error("cannot parse config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is not allowed.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The wire is broken: the connection ends after this.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A socket call failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A frame announced more bytes than this connection accepts.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame header does not start with the protocol magic.
    #[error("bad magic {0:#06x}: not a dister peer or client")]
    BadMagic(u16),
    /// The peer speaks another protocol version.
    #[error("protocol version {got} is not supported (this node speaks {want})")]
    Version {
        /// The version in the frame.
        got: u8,
        /// The version this node speaks.
        want: u8,
    },
    /// The frame kind byte is unknown, or its body does not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The handshake was refused or broken.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The remote closed the connection.
    #[error("connection closed")]
    Closed,
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

/// What a client (over the wire or embedded) is told when a request fails. Serializable, so a
/// follower can relay the leader's answer unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApiError {
    /// No leader is known right now (an election is under way, or no quorum); retry later.
    #[error("no leader: the cluster has no leader right now, retry in {retry_after_ms} ms")]
    NoLeader {
        /// A hint for when to retry.
        retry_after_ms: u64,
    },
    /// This node is not the leader; a forwarded request does not hop twice.
    #[error("not leader: node {node} is not the leader (leader: {leader:?})")]
    NotLeader {
        /// The node that answered.
        node: NodeId,
        /// The leader it knows of.
        leader: Option<NodeId>,
    },
    /// Leadership changed while the write was pending and its entry was replaced: it was
    /// not applied.
    #[error("write lost leadership at index {index}: it was not applied, retry")]
    Dropped {
        /// Where the entry had been placed.
        index: u64,
    },
    /// The request did not complete in time; a write may or may not have been applied.
    #[error("timed out after {ms} ms (a write may still be applied)")]
    Timeout {
        /// The timeout.
        ms: u64,
    },
    /// The leader could not be reached to forward the request.
    #[error("leader {leader} unreachable: {reason}")]
    Unreachable {
        /// The leader's id.
        leader: NodeId,
        /// Why.
        reason: String,
    },
    /// The thing asked for does not exist (a service, an instance, an available instance).
    #[error("not found: {0}")]
    NotFound(String),
    /// No state machine handles this namespace on this node.
    #[error("unknown namespace {0:?}")]
    UnknownNamespace(String),
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The state machine refused the command when applying it.
    #[error("apply failed: {0}")]
    Apply(String),
    /// The node has as much client work pending as its bounds allow; retry after the hint.
    #[error("overloaded: {reason}; retry in {retry_after_ms} ms")]
    Overloaded {
        /// Which bound was reached.
        reason: String,
        /// A hint for when to retry.
        retry_after_ms: u64,
    },
    /// The node cannot serve (storage failed, or it is shutting down).
    #[error("node unavailable: {0}")]
    Unavailable(String),
    /// A configuration change must wait for the one before it (or for the leader's first
    /// commit); retry shortly.
    #[error("membership change refused for now: {0}")]
    ChangeInProgress(String),
}

impl ApiError {
    /// Whether retrying the same request later may succeed without changing it.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ApiError::NoLeader { .. }
                | ApiError::NotLeader { .. }
                | ApiError::Dropped { .. }
                | ApiError::Unreachable { .. }
                | ApiError::Overloaded { .. }
                | ApiError::ChangeInProgress(_)
        )
    }

    /// When to retry, if the error says.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            ApiError::NoLeader { retry_after_ms } | ApiError::Overloaded { retry_after_ms, .. } => {
                Some(*retry_after_ms)
            }
            _ => None,
        }
    }
}

/// Starting a node failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The log could not be opened or recovered.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The TLS files could not be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The node's threads could not be started.
    #[error("cannot start the node's threads: {0}")]
    Threads(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

/// A client call failed: either the connection, or the server's answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The server refused the request.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The server answered with something this request does not expect.
    #[error("unexpected response: {0}")]
    Unexpected(String),
    /// A local file the call writes (a saved snapshot) could not be written.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
