//! The typed messages the actors exchange, grouped by concern. Wire types (what crosses a
//! socket) live in `crate::wire`; these are what crosses a mailbox.

pub mod apply;
pub mod client;
pub mod kv;
pub mod raft;
pub mod registry;
