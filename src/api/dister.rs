//! dister's HTTP API: a second door onto the same actor messages as the wire, with
//! dister's paths and envelope so its users' scripts keep working. Every response is
//! `{"result":1|0,"message":"ok"|error,"data":...}`; bad input is a 400 that says what is wrong,
//! never a 500 or a panic. No logic lives here: each handler parses, calls `NodeHandle`, and
//! wraps the answer.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Api, Seen, authorize, cluster_view, read_body, seen, status_of, with_retry_after};
use crate::error::ApiError;
use crate::messages::registry::{InstanceKey, Strategy};
use crate::metrics::Sample;
use crate::node::NodeHandle;
use crate::raft::members::{MemberChange, MemberRole};
use crate::raft::{NodeId, Role};
use crate::wire::Consistency;

/// The routes, for `App::configure`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/kv", web::get().to(kv_get))
        .route("/kv", web::post().to(kv_set))
        .route("/kv", web::delete().to(kv_delete))
        .route("/node", web::get().to(node_get))
        .route("/node", web::post().to(node_change))
        .route("/node", web::delete().to(node_change))
        .route("/service", web::get().to(service_get))
        .route("/service", web::post().to(service_set))
        .route("/service", web::delete().to(service_delete))
        .route("/service/instance", web::put().to(instance_put))
        .route("/balance", web::get().to(balance))
        .route("/beat", web::post().to(beat))
        .route("/beat", web::put().to(beat))
        .route("/health", web::get().to(health))
        .route("/status", web::get().to(status))
        .route("/metrics", web::get().to(metrics))
        .route("/auth/login", web::post().to(login));
    for path in [
        "/kv",
        "/node",
        "/service",
        "/service/instance",
        "/balance",
        "/beat",
        "/health",
        "/status",
        "/metrics",
        "/auth/login",
    ] {
        cfg.route(
            path,
            web::route().to(|| async { fail(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here".into()) }),
        );
    }
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| {
        let message = format!("bad query string: {e}");
        actix_web::error::InternalError::from_response(e, fail(StatusCode::BAD_REQUEST, message)).into()
    }))
    .default_service(web::to(|| async { fail(StatusCode::NOT_FOUND, "no such path".into()) }));
}

#[derive(Serialize)]
struct Envelope<T> {
    result: u8,
    message: String,
    data: T,
}

fn ok<T: Serialize>(data: T) -> HttpResponse {
    HttpResponse::Ok().json(Envelope { result: 1, message: "ok".into(), data })
}

fn fail(status: StatusCode, message: String) -> HttpResponse {
    HttpResponse::build(status).json(Envelope { result: 0, message, data: Value::Null })
}

/// Maps what went wrong to the status a client can act on; a 503 says when to retry.
fn api_fail(e: ApiError) -> HttpResponse {
    let mut response = fail(status_of(&e), e.to_string());
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        with_retry_after(&mut response, e.retry_after_ms());
    }
    response
}

fn bad(message: String) -> HttpResponse {
    fail(StatusCode::BAD_REQUEST, message)
}

/// `POST /auth/login` with `username` and `password` (query, form or JSON body): a token for
/// the dister and Nacos APIs, valid on every node.
async fn login(api: web::Data<Api>, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let body = match body_of(&api.node, payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut p = super::nacos::Params::of(&req, &body);
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&body) {
        for (k, v) in m {
            if let Value::String(v) = v {
                p.insert(k, v);
            }
        }
    }
    match super::login(&api, p.get("username"), p.get("password")) {
        Ok(t) => ok(json!({ "accessToken": t.token, "tokenTtl": t.ttl.as_secs() })),
        Err((status, message)) => fail(status, message),
    }
}

/// The caller may go on (`None`), or the refusal to answer: see [`authorize`].
fn refuse_without_token(
    node: &NodeHandle,
    req: &HttpRequest,
    query: &BTreeMap<String, String>,
) -> Option<HttpResponse> {
    // Without the shared data (routes mounted elsewhere), the node's own config decides.
    let built;
    let api = match req.app_data::<web::Data<Api>>() {
        Some(a) => a.get_ref(),
        None => {
            built = Api::new(node.clone());
            &built
        }
    };
    authorize(api, req, |k| query.get(k).map(String::as_str)).err().map(|(status, m)| fail(status, m))
}

type Query = web::Query<BTreeMap<String, String>>;

fn consistency(q: &BTreeMap<String, String>) -> Consistency {
    match q.get("stale").map(String::as_str) {
        Some("" | "1" | "true" | "yes") => Consistency::Stale,
        _ => Consistency::Linearizable,
    }
}

async fn body_of(node: &NodeHandle, payload: web::Payload) -> Result<web::Bytes, HttpResponse> {
    read_body(node, payload).await.map_err(|(status, m)| fail(status, m))
}

/// Parses a JSON body; the error says what the body must be and what is wrong with it.
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8], what: &str) -> Result<T, String> {
    if body.is_empty() {
        return Err(format!("the body must be {what}"));
    }
    serde_json::from_slice(body).map_err(|e| format!("the body must be {what}: {e}"))
}

macro_rules! guard {
    ($node:expr, $req:expr, $q:expr) => {
        if let Some(refusal) = refuse_without_token(&$node, &$req, &$q) {
            return refusal;
        }
    };
}

async fn kv_get(node: web::Data<NodeHandle>, req: HttpRequest, q: Query) -> HttpResponse {
    guard!(node, req, q);
    match q.get("k") {
        Some(k) if k.is_empty() => bad("k must not be empty".into()),
        Some(k) => match node.kv().get(k.clone(), consistency(&q)).await {
            Ok(v) => ok(v),
            Err(e) => api_fail(e),
        },
        None => match node.kv().list(q.get("prefix").cloned().unwrap_or_default(), consistency(&q)).await {
            Ok(pairs) => ok(pairs.into_iter().collect::<BTreeMap<_, _>>()),
            Err(e) => api_fail(e),
        },
    }
}

async fn kv_set(node: web::Data<NodeHandle>, req: HttpRequest, q: Query, payload: web::Payload) -> HttpResponse {
    guard!(node, req, q);
    let body = match body_of(&node, payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let map: serde_json::Map<String, Value> = match parse(&body, "a JSON object of key/value pairs") {
        Ok(m) => m,
        Err(m) => return bad(m),
    };
    let mut pairs = Vec::with_capacity(map.len());
    for (k, v) in map {
        match v {
            Value::String(s) => pairs.push((k, s)),
            other => return bad(format!("the value of {k:?} must be a string, not {other}")),
        }
    }
    match node.kv().set(pairs).await {
        Ok(w) => ok(json!({ "index": w.index })),
        Err(e) => api_fail(e),
    }
}

async fn kv_delete(node: web::Data<NodeHandle>, req: HttpRequest, q: Query, payload: web::Payload) -> HttpResponse {
    guard!(node, req, q);
    let body = match body_of(&node, payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let keys: Vec<String> = match parse(&body, "a JSON array of keys") {
        Ok(k) => k,
        Err(m) => return bad(m),
    };
    match node.kv().delete(keys).await {
        Ok(n) => ok(json!({ "deleted": n })),
        Err(e) => api_fail(e),
    }
}

async fn node_get(node: web::Data<NodeHandle>, req: HttpRequest, q: Query) -> HttpResponse {
    guard!(node, req, q);
    let s = match cluster_view(&node).await {
        Ok(s) => s,
        Err(e) => return api_fail(e),
    };
    let nodes: Vec<Value> = s
        .members
        .iter()
        .map(|m| {
            let (state, raft_role) = seen(&s, m);
            json!({
                "id": m.id,
                "name": format!("node-{}", m.id),
                "address": m.addr,
                // dister's roles: a `client` receives the data and does not vote.
                "role": if m.role == MemberRole::Voter { "server" } else { "client" },
                "member_role": m.role,
                "promoting": m.promoting,
                "raft_role": raft_role,
                "status": match state {
                    Seen::Up => "alive",
                    Seen::Down => "unreachable",
                    Seen::Unknown => "unknown",
                },
                "last_log_index": if m.id == s.id { Some(s.last_log_index) } else { m.match_index },
            })
        })
        .collect();
    ok(nodes)
}

/// A node to add: `{"id":4,"addr":"127.0.0.1:7074"}` (`"learner": true` keeps it one), or as
/// dister takes it, an address alone (the id is the one its handshake names).
#[derive(Deserialize)]
#[serde(untagged)]
enum NodeToAdd {
    Addr(String),
    Member {
        id: NodeId,
        addr: String,
        #[serde(default)]
        learner: bool,
    },
}

/// A node to remove: its id, or its address.
#[derive(Deserialize)]
#[serde(untagged)]
enum NodeToRemove {
    Id(NodeId),
    Addr(String),
}

/// `POST /node` adds nodes, `DELETE /node` removes them, one change after the other, each
/// answered once committed. Every item is checked first: one bad item changes nothing.
async fn node_change(node: web::Data<NodeHandle>, req: HttpRequest, q: Query, payload: web::Payload) -> HttpResponse {
    guard!(node, req, q);
    let body = match body_of(&node, payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let members = node.cluster().members();
    let mut changes = Vec::new();
    if req.method() == actix_web::http::Method::POST {
        let items: Vec<NodeToAdd> =
            match parse(&body, r#"a JSON array of nodes: {"id":4,"addr":"HOST:PORT"} or "HOST:PORT""#) {
                Ok(i) => i,
                Err(m) => return bad(m),
            };
        for item in items {
            let (id, addr, learner) = match item {
                NodeToAdd::Member { id, addr, learner } => (id, addr, learner),
                NodeToAdd::Addr(addr) => {
                    if let Err(m) = crate::config::parse_host_port(&addr) {
                        return bad(m);
                    }
                    match crate::client::Client::node_id_at(&addr, &node.cluster().dial()).await {
                        Ok(id) => (id, addr, false),
                        Err(e) => return bad(format!("cannot learn the id of the node at {addr}: {e}")),
                    }
                }
            };
            if let Err(m) = crate::config::parse_host_port(&addr) {
                return bad(m);
            }
            let change = MemberChange::Add { id, addr, promote: !learner };
            // Checked against the configuration as it stands (the leader checks again).
            if let Err(e) = members.changed(&change) {
                return bad(e.to_string());
            }
            changes.push(change);
        }
    } else {
        let items: Vec<NodeToRemove> = match parse(&body, "a JSON array of node ids or addresses") {
            Ok(i) => i,
            Err(m) => return bad(m),
        };
        for item in items {
            let id = match item {
                NodeToRemove::Id(id) => id,
                NodeToRemove::Addr(addr) => match members.at_addr(&addr) {
                    Some(id) => id,
                    None => return bad(format!("no member is at {addr}")),
                },
            };
            let change = MemberChange::Remove { id };
            if let Err(e) = members.changed(&change) {
                return bad(e.to_string());
            }
            changes.push(change);
        }
    }
    let mut done = Vec::new();
    for change in changes {
        let (id, what) = match &change {
            MemberChange::Add { id, .. } => (*id, "added"),
            MemberChange::Promote { id } => (*id, "promoted"),
            MemberChange::Remove { id } => (*id, "removed"),
        };
        match node.cluster().change_members(change).await {
            Ok(w) => done.push(json!({ "id": id, what: true, "index": w.index })),
            Err(e) => return api_fail(e),
        }
    }
    ok(done)
}

async fn service_get(node: web::Data<NodeHandle>, req: HttpRequest, q: Query) -> HttpResponse {
    guard!(node, req, q);
    match q.get("name") {
        Some(name) => match node.registry().get_service(name.clone(), consistency(&q)).await {
            Ok(Some(s)) => ok(s),
            Ok(None) => fail(StatusCode::NOT_FOUND, format!("service {name:?} is not registered")),
            Err(e) => api_fail(e),
        },
        None => match node.registry().list_services(consistency(&q)).await {
            Ok(all) => ok(all),
            Err(e) => api_fail(e),
        },
    }
}

async fn service_set(node: web::Data<NodeHandle>, req: HttpRequest, q: Query, payload: web::Payload) -> HttpResponse {
    guard!(node, req, q);
    let body = match body_of(&node, payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // dister's files as they are: an array (or one service), numbers as strings or numbers.
    let services = match crate::registry::input::parse_services(&body) {
        Ok(s) => s,
        Err(e) => return bad(format!("bad service: {e}")),
    };
    match node.registry().set_services(services).await {
        Ok(w) => ok(json!({ "index": w.index })),
        Err(e) => api_fail(e),
    }
}

/// `PUT /service/instance?service=NAME`: creates or replaces one instance of a service, its
/// body a node as `POST /service` takes them; the service's other instances are untouched.
async fn instance_put(node: web::Data<NodeHandle>, req: HttpRequest, q: Query, payload: web::Payload) -> HttpResponse {
    guard!(node, req, q);
    let Some(service) = q.get("service").filter(|s| !s.is_empty()) else {
        return bad("service is required: /service/instance?service=NAME".into());
    };
    let body = match body_of(&node, payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let instance = match parse::<Value>(&body, "a JSON object: one node")
        .and_then(|n| crate::registry::input::node_from_value(service, n))
    {
        Ok(n) => n,
        Err(e) => return bad(format!("bad instance: {e}")),
    };
    match node.registry().register_instance(service.clone(), String::new(), instance).await {
        Ok(w) => ok(json!({ "index": w.index })),
        Err(e) => api_fail(e),
    }
}

async fn service_delete(
    node: web::Data<NodeHandle>,
    req: HttpRequest,
    q: Query,
    payload: web::Payload,
) -> HttpResponse {
    guard!(node, req, q);
    let body = match body_of(&node, payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let names: Vec<String> = match parse(&body, "a JSON array of service names") {
        Ok(n) => n,
        Err(m) => return bad(m),
    };
    match node.registry().remove_services(names).await {
        Ok(w) => ok(json!({ "index": w.index })),
        Err(e) => api_fail(e),
    }
}

async fn balance(node: web::Data<NodeHandle>, req: HttpRequest, q: Query) -> HttpResponse {
    guard!(node, req, q);
    let Some(name) = q.get("name").filter(|n| !n.is_empty()) else {
        return bad("name is required: /balance?name=SERVICE".into());
    };
    let strategy: Strategy = match q.get("strategy").map(|s| s.parse()).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => return bad(e),
    };
    match node.registry().balance(name.clone(), strategy).await {
        Ok(n) => ok(n),
        Err(e) => api_fail(e),
    }
}

async fn beat(node: web::Data<NodeHandle>, req: HttpRequest, q: Query) -> HttpResponse {
    guard!(node, req, q);
    let (Some(service), Some(addr)) = (q.get("service"), q.get("addr")) else {
        return bad("service and addr are required: /beat?service=NAME&addr=HOST:PORT".into());
    };
    let (host, port) = match crate::config::parse_host_port(addr) {
        Ok(hp) => hp,
        Err(e) => return bad(format!("addr {e}")),
    };
    match node.registry().beat(InstanceKey { service: service.clone(), host, port }, false).await {
        Ok(()) => ok(Value::Null),
        Err(e) => api_fail(e),
    }
}

async fn health(node: web::Data<NodeHandle>) -> HttpResponse {
    match node.cluster().status().await {
        Ok(s) if s.leader.is_some() => ok(json!({ "id": s.id, "role": s.role, "leader": s.leader })),
        Ok(s) => fail(StatusCode::SERVICE_UNAVAILABLE, format!("node {} is up but knows no leader", s.id)),
        Err(e) => api_fail(e),
    }
}

/// Bytes of the files directly in `dir` and in `dir/snapshots`: the log segments and the
/// snapshots (0 where there is no such directory, as with a memory log).
fn data_bytes(dir: &std::path::Path) -> u64 {
    let files = |d: &std::path::Path| -> u64 {
        let Ok(entries) = std::fs::read_dir(d) else { return 0 };
        entries.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
    };
    files(dir) + files(&dir.join("snapshots"))
}

/// `GET /metrics` (and Nacos' `/nacos/actuator/prometheus`): every metric in Prometheus'
/// OpenMetrics text, the scrape-time values read from this node now. Open to any caller, as
/// `/health` is and as etcd's `/metrics`: it tells counts and timings, no key or value.
pub(crate) async fn metrics(node: web::Data<NodeHandle>) -> HttpResponse {
    use crate::messages::kv::CountKeys;
    let keys = node.kv().data_map().send(CountKeys { prefix: super::nacos::config::CONFIG_PREFIX.into() });
    let (status, registry) = (node.cluster().status(), node.registry().stats());
    let (pending, _, _) = node.cluster().pending();
    let dir = node.config().data_dir.clone();
    let (s, r, keys) = match (status.await, registry.await, keys.await) {
        (Ok(s), Ok(r), Ok(k)) => (s, r, k),
        (Err(e), _, _) | (_, Err(e), _) => return api_fail(e),
        (_, _, Err(e)) => return api_fail(ApiError::Unavailable(format!("actor stopped: {e}"))),
    };
    let disk_bytes = web::block(move || data_bytes(&dir)).await.unwrap_or(0);
    let sample = Sample {
        has_leader: s.leader.is_some(),
        is_leader: s.role == Role::Leader,
        term: s.term,
        committed: s.commit_index,
        applied: s.applied_index,
        pending: pending as u64,
        log_entries: (s.last_log_index + 1).saturating_sub(s.first_log_index),
        snapshot_index: s.snapshot_index,
        snapshot_bytes: s.snapshot_bytes,
        disk_bytes,
        services: r.services as u64,
        instances: r.by_health.map(|n| n as u64),
        keys: keys.0 as u64,
        configs: keys.1 as u64,
    };
    HttpResponse::Ok().content_type(crate::metrics::CONTENT_TYPE).body(node.cluster().metrics().render(&sample))
}

async fn status(node: web::Data<NodeHandle>, req: HttpRequest, q: Query) -> HttpResponse {
    guard!(node, req, q);
    match node.cluster().status().await {
        Ok(s) => ok(s),
        Err(e) => api_fail(e),
    }
}
