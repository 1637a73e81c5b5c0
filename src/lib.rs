//! dister: a Raft-replicated key/value, config and service-registry node built from actix
//! actors.
//!
//! A node is one actix system holding a handful of long-lived actors, on threads of their own
//! so that Raft keeps its pace whatever the rest does ([`node::Threads`]: Raft and the codec
//! actors on `dister-raft`, the state machines on `dister-state`, health probes on
//! `dister-checks`, collapsed onto one thread in a simulation); client work is admitted up
//! to bounds and refused past them ([`admission`]). Each piece of state has exactly one
//! owner and everything else asks it by message:
//!
//! | actor | owns |
//! | --- | --- |
//! | [`actors::election::Election`] | role, term, vote, leader, commit index, waiting writes and reads |
//! | [`actors::replicator::Replicator`] | one peer's next/match index and in-flight window (leader only) |
//! | [`actors::log_store::LogStore`] | the durable log, hard state, the commit stream |
//! | [`actors::data_map::DataMap`] | the key/value pairs |
//! | [`actors::service_registry::ServiceRegistry`] | services and instances |
//! | [`actors::connection::Connection`] / [`actors::peer_link::PeerLink`] | one socket each |
//!
//! A write's path (leader L, followers F):
//!
//! ```text
//! client ─▶ Connection ─▶ (F: Election ─forward─▶ L) ─▶ L.Election  stamps term+index
//!                                                        │
//!                       ┌────────── AppendLocal ─────────┤──── Replicate ───▶ Replicator (per F)
//!                       ▼                                │                      │ FetchEntries
//!                 L.LogStore ─fsync (group commit)─▶ durable                    ▼
//!                                                        │          AppendEntries ─▶ F.Election
//!                                                        │                      F.LogStore fsync
//!                          majority durable ◀─ PeerProgress ◀──────── success ◀─┘
//!                                 │
//!                      CommitTo ─▶ LogStore ─ApplyEntries─▶ DataMap / ServiceRegistry / yours
//!                                                        │
//!                      EntriesApplied ─▶ Election ─▶ answer to the client, with the index
//! ```
//!
//! Three ways in: run the `dister` binary; embed a [`Node`] in an actix application and talk
//! to it through its [`NodeHandle`] (by concern, see [`handle`]: keys, registry, cluster); or
//! add a replicated feature as a new actor that handles [`messages::apply::ApplyEntries`] for
//! its own namespace (see `examples/counter/`).

pub mod actors;
pub mod admission;
pub mod api;
pub mod auth;
pub mod bench;
pub mod check;
pub mod client;
pub mod config;
pub mod error;
pub mod handle;
pub mod messages;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod registry;
pub mod snapshot;
pub mod state_machine;
pub mod storage;
pub mod tls;
pub mod transport;
pub mod wire;

pub use client::Client;
pub use config::{Config, PeerConfig};
pub use error::{ApiError, ClientError, NodeError};
pub use node::{Node, NodeBuilder, NodeHandle};
pub use wire::Consistency;
