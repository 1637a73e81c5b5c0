//! dister: a Raft-replicated key/value, config and service-registry node built from actix actors.

pub mod error;
pub mod raft;
pub mod storage;
