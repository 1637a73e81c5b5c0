//! The key/value namespace: commands replicated through the log, and reads of `DataMap`.

use actix::Message;
use serde::{Deserialize, Serialize};

/// The namespace `DataMap` owns.
pub const KV_NAMESPACE: &str = "kv";

/// A key/value command, as stored in a log entry (JSON, so old entries stay readable when
/// fields are added).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Set every pair, in one entry (dister sets a map at once).
    Set(Vec<(String, String)>),
    /// Delete every key listed; absent keys are ignored.
    Delete(Vec<String>),
}

impl KvCommand {
    /// Refuses what no key/value store should hold: an empty key, or nothing to do.
    pub fn validate(&self) -> Result<(), String> {
        let keys: Vec<&String> = match self {
            KvCommand::Set(pairs) => pairs.iter().map(|(k, _)| k).collect(),
            KvCommand::Delete(keys) => keys.iter().collect(),
        };
        if keys.is_empty() {
            return Err("no key given".into());
        }
        if keys.iter().any(|k| k.is_empty()) {
            return Err("a key must not be empty".into());
        }
        Ok(())
    }
}

/// What applying a [`KvCommand`] answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvOutput {
    /// Keys set, or keys that existed and were deleted.
    pub count: usize,
}

/// Read one key, once `min_applied` is applied.
#[derive(Debug, Message)]
#[rtype(result = "Option<String>")]
pub struct GetKey {
    /// The key.
    pub key: String,
    /// Answer only after applying this index (0: at once).
    pub min_applied: u64,
}

/// Count the keys, and those starting with `prefix`, from this node's copy at once.
#[derive(Debug, Message)]
#[rtype(result = "(usize, usize)")]
pub struct CountKeys {
    /// The prefix.
    pub prefix: String,
}

/// List pairs whose key starts with `prefix`, in key order, once `min_applied` is applied.
#[derive(Debug, Message)]
#[rtype(result = "Vec<(String, String)>")]
pub struct ListKeys {
    /// The prefix ("" for all).
    pub prefix: String,
    /// Answer only after applying this index (0: at once).
    pub min_applied: u64,
}
