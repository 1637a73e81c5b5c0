//! Nacos answers rendered once per change, not once per request: a config's body, MD5 and
//! type, and a service's instance list (its JSON and checksum). A rendering keeps the shared
//! value it was made from (the `Arc` the state machine's view holds) and is served again only
//! while the view still holds that very value. A change puts a new value in the view, so a
//! rendering is never served after its source changed, and holding the old value keeps its
//! address from being reused.
//!
//! Each cache holds at most [`MAX_RENDERED`] renderings (or as many as its source has
//! entries, if that is more) and [`MAX_RENDERED_BYTES`] of them; past either it is emptied
//! and refills as reads come. Rendering happens outside the caches' locks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::config::md5_of;
use crate::messages::registry::Service;
use bytes::{BufMut, Bytes, BytesMut};

/// Fewest renderings a cache may hold before it is emptied.
pub const MAX_RENDERED: usize = 16_384;
/// Most bytes of renderings a cache holds before it is emptied.
pub const MAX_RENDERED_BYTES: usize = 64 << 20;

/// A config as served: its body, MD5 and type.
#[derive(Debug)]
pub struct Config {
    content: Arc<str>,
    kind: Option<Arc<str>>,
    /// The content, shared by every answer.
    pub body: Bytes,
    /// Its MD5, lowercase hex, as Nacos' `Content-MD5`.
    pub md5: String,
}

impl Config {
    /// The type, `text` when none was published.
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("text")
    }
}

/// An instance list as served, but for the time of the answer (`lastRefTime`).
#[derive(Debug)]
pub struct List {
    service: Arc<Service>,
    /// The JSON object without its closing brace.
    head: Bytes,
}

impl List {
    /// The object as served at `now_ms` to a query that gave `clusters` (see [`answer`]).
    pub fn body(&self, clusters: &str, now_ms: u64) -> Bytes {
        answer(&self.head, clusters, now_ms)
    }
}

/// An instance list's answer from its rendering `head` (the object without its closing
/// brace): plus `clusters` (as the query spelt it) and `lastRefTime`.
fn answer(head: &[u8], clusters: &str, now_ms: u64) -> Bytes {
    let clusters = serde_json::to_string(clusters).unwrap_or_else(|_| "\"\"".into());
    let mut out = BytesMut::with_capacity(head.len() + clusters.len() + 48);
    out.put_slice(head);
    out.put_slice(if head.len() > 1 { b",\"clusters\":" } else { b"\"clusters\":" });
    out.put_slice(clusters.as_bytes());
    out.put_slice(b",\"lastRefTime\":");
    out.put_slice(now_ms.to_string().as_bytes());
    out.put_u8(b'}');
    out.freeze()
}

/// What an instance list is rendered for: the service, and the query's filters as they
/// apply to it (so spellings of one query share a rendering).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListQuery {
    /// The registry's name of the service.
    pub service: String,
    /// `healthyOnly`.
    pub healthy_only: bool,
    /// With a `clusters` filter: the service's clusters it names, sorted; without: `None`.
    pub clusters: Option<Vec<String>>,
}

/// A cache and the bytes its renderings hold.
#[derive(Debug)]
struct Cache<K, V> {
    /// Each rendering with the bytes it was counted for.
    entries: HashMap<K, (Arc<V>, usize)>,
    bytes: usize,
}

impl<K, V> Default for Cache<K, V> {
    fn default() -> Self {
        Cache { entries: HashMap::new(), bytes: 0 }
    }
}

impl<K: std::hash::Hash + Eq, V> Cache<K, V> {
    /// Makes room for `bytes` more: empties the cache when it is full for a source of
    /// `entries`.
    fn insert(&mut self, key: K, value: Arc<V>, bytes: usize, entries: usize) {
        if self.entries.len() >= MAX_RENDERED.max(entries) || self.bytes + bytes > MAX_RENDERED_BYTES {
            tracing::debug!(renderings = self.entries.len(), bytes = self.bytes, "rendered answers emptied");
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += bytes;
        if let Some((_, replaced)) = self.entries.insert(key, (value, bytes)) {
            self.bytes -= replaced;
        }
    }
}

/// The renderings of one node's Nacos API.
#[derive(Debug, Default)]
pub struct Rendered {
    configs: Mutex<Cache<String, Config>>,
    lists: Mutex<Cache<ListQuery, List>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn same(a: &Option<Arc<str>>, b: Option<&Arc<str>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

impl Rendered {
    /// The config stored under `key` with `content` and `kind`, rendered now if the content or
    /// type changed since the last rendering (or there was none); `entries`: how many keys the
    /// store holds.
    pub fn config(&self, key: &str, content: &Arc<str>, kind: Option<&Arc<str>>, entries: usize) -> Arc<Config> {
        if let Some((r, _)) = lock(&self.configs).entries.get(key)
            && Arc::ptr_eq(&r.content, content)
            && same(&r.kind, kind)
        {
            return r.clone();
        }
        let r = Arc::new(Config {
            content: content.clone(),
            kind: kind.cloned(),
            body: Bytes::from_owner(Shared(content.clone())),
            md5: md5_of(Some(content)),
        });
        lock(&self.configs).insert(key.to_string(), r.clone(), content.len() + key.len(), entries);
        r
    }

    /// The instance list of `service` for `query`, rendered by `render` (the JSON object's
    /// fields but `lastRefTime`) if the service changed since the last rendering for that
    /// query; `services`: how many services the registry holds.
    pub fn list(
        &self,
        query: ListQuery,
        service: &Arc<Service>,
        services: usize,
        render: impl FnOnce(&Service) -> serde_json::Map<String, serde_json::Value>,
    ) -> Arc<List> {
        if let Some((r, _)) = lock(&self.lists).entries.get(&query)
            && Arc::ptr_eq(&r.service, service)
        {
            return r.clone();
        }
        let r = Arc::new(List { service: service.clone(), head: head_of(render(service)) });
        // Every query shape of every service may be rendered: bound by a few per service.
        let bytes = r.head.len() + query.service.len();
        lock(&self.lists).insert(query, r.clone(), bytes, services.saturating_mul(4));
        r
    }
}

/// A shared content as the bytes of an answer body, without a copy.
struct Shared(Arc<str>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The JSON of `fields` without the object's closing brace.
pub fn head_of(fields: serde_json::Map<String, serde_json::Value>) -> Bytes {
    let mut json = serde_json::to_vec(&serde_json::Value::Object(fields)).unwrap_or_else(|_| b"{}".to_vec());
    json.pop();
    Bytes::from(json)
}

/// An instance list rendered for one answer (no service to keep it for).
pub fn once(fields: serde_json::Map<String, serde_json::Value>, clusters: &str, now_ms: u64) -> Bytes {
    answer(&head_of(fields), clusters, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A rendering is served again while its source is the same value, made again when the
    /// source is a new one even with the same content, and the cache stays bounded.
    #[test]
    fn renderings_follow_their_source() {
        let r = Rendered::default();
        let (a, kind): (Arc<str>, Arc<str>) = ("hello".into(), "yaml".into());
        let first = r.config("k", &a, Some(&kind), 1);
        assert_eq!(
            (first.md5.as_str(), first.kind(), &first.body[..]),
            ("5d41402abc4b2a76b9719d911017c592", "yaml", &b"hello"[..])
        );
        assert!(Arc::ptr_eq(&first, &r.config("k", &a, Some(&kind), 1)), "same source, same rendering");
        let b: Arc<str> = "hellp".into();
        let changed = r.config("k", &b, Some(&kind), 1);
        assert_ne!(changed.md5, first.md5);
        assert_eq!(r.config("k", &b, None, 1).kind(), "text", "the type is part of the source");
        for n in 0..MAX_RENDERED + 10 {
            r.config(&format!("k{n}"), &a, None, 1);
        }
        assert!(lock(&r.configs).entries.len() <= MAX_RENDERED);
        let big: Arc<str> = "x".repeat(1 << 20).into();
        for n in 0..100 {
            r.config(&format!("big{n}"), &big, None, 1);
        }
        assert!(lock(&r.configs).bytes <= MAX_RENDERED_BYTES, "the bytes are bounded too");

        let service = Arc::new(Service::new("s", ""));
        let q = ListQuery { service: "s".into(), healthy_only: false, clusters: None };
        let mut renders = 0;
        let mut render = |_: &Service| {
            renders += 1;
            json!({ "hosts": [] }).as_object().cloned().unwrap()
        };
        let list = r.list(q.clone(), &service, 1, &mut render);
        r.list(q.clone(), &service, 1, &mut render);
        r.list(q, &Arc::new(Service::clone(&service)), 1, &mut render);
        assert_eq!(renders, 2, "rendered again only for a new value");
        let body: serde_json::Value = serde_json::from_slice(&list.body("A, B\"", 7)).unwrap();
        assert_eq!(body, json!({ "hosts": [], "clusters": "A, B\"", "lastRefTime": 7 }));
        let empty: serde_json::Value = serde_json::from_slice(&once(serde_json::Map::new(), "", 3)).unwrap();
        assert_eq!(empty, json!({ "clusters": "", "lastRefTime": 3 }));
    }
}
