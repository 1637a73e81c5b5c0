//! The actors, one per file. See `crate` docs for how a write flows between them.

pub mod connection;
pub mod data_map;
pub mod election;
pub mod key_watch;
pub mod listener;
pub mod log_store;
pub mod peer_link;
pub mod replicator;
pub mod service_registry;
