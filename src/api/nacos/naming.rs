//! Nacos naming: instances, beats, services, and the operator endpoints clients probe, on the
//! registry's messages. A Nacos instance is a registry instance; its cluster is kept in the
//! instance's `cluster` field; an ephemeral one lives by beats (the registry's TTL), a
//! persistent one by a TCP check, as Nacos checks its persistent instances.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use md5::{Digest, Md5};
use serde_json::{Map, Value, json};

use super::rendered::{self, ListQuery};
use super::{NacosError, Params, Reply, text};
use crate::api::{Api, Seen, cluster_view, seen};
use crate::auth::hex;
use crate::error::ApiError;
use crate::messages::registry::{CheckKind, Health, InstanceKey, Service, ServiceNode};
use crate::registry::{protect_threshold, protection_reached};
use crate::wire::Consistency;

/// Nacos' default group.
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
/// Nacos' default namespace.
pub const PUBLIC: &str = "public";
/// Nacos' default cluster.
pub const DEFAULT_CLUSTER: &str = "DEFAULT";

/// A Nacos service: namespace, group and name. In the registry it is one service named
/// `name` (public namespace, default group), `group@@name` (public namespace) or
/// `namespace/group@@name`, so dister's own services are Nacos services of the default group
/// and the other way round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceId {
    /// Namespace id (`public` by default).
    pub namespace: String,
    /// Group (`DEFAULT_GROUP` by default).
    pub group: String,
    /// Name.
    pub name: String,
}

/// Whether `s` is a valid Nacos namespace, group, data id: letters, digits, `-_.:`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
}

impl ServiceId {
    /// From `serviceName` (which may be `group@@name`), `groupName` and `namespaceId`.
    pub fn from_params(p: &Params) -> Result<ServiceId, NacosError> {
        let raw = p.required("serviceName")?;
        let namespace = p.get("namespaceId").unwrap_or(PUBLIC);
        let (group, name) = match raw.split_once("@@") {
            Some((g, n)) => (g, n),
            None => (p.get("groupName").unwrap_or(DEFAULT_GROUP), raw),
        };
        Self::new(namespace, group, name)
    }

    /// Checks each part.
    pub fn new(namespace: &str, group: &str, name: &str) -> Result<ServiceId, NacosError> {
        if !valid_id(namespace) {
            return Err(NacosError::bad(format!("namespaceId {namespace:?} is not valid: letters, digits, -_.:")));
        }
        if !valid_id(group) {
            return Err(NacosError::bad(format!("groupName {group:?} is not valid: letters, digits, -_.:")));
        }
        if name.is_empty() || name.contains("@@") {
            return Err(NacosError::bad(format!("serviceName {name:?} is not valid")));
        }
        Ok(ServiceId { namespace: namespace.into(), group: group.into(), name: name.into() })
    }

    /// The registry's name for it.
    pub fn registry_name(&self) -> String {
        match (self.namespace.as_str(), self.group.as_str()) {
            (PUBLIC, DEFAULT_GROUP) => self.name.clone(),
            (PUBLIC, g) => format!("{g}@@{}", self.name),
            (ns, g) => format!("{ns}/{g}@@{}", self.name),
        }
    }

    /// Back from a registry name.
    pub fn from_registry_name(s: &str) -> ServiceId {
        let (scope, name) = match s.split_once("@@") {
            Some((scope, name)) => (scope, name),
            None => (DEFAULT_GROUP, s),
        };
        let (namespace, group) = scope.rsplit_once('/').unwrap_or((PUBLIC, scope));
        ServiceId { namespace: namespace.into(), group: group.into(), name: name.into() }
    }

    /// `group@@name`, the way Nacos names a service in answers.
    pub fn grouped(&self) -> String {
        format!("{}@@{}", self.group, self.name)
    }
}

fn cluster_of(n: &ServiceNode) -> &str {
    n.extra.get("cluster").and_then(Value::as_str).unwrap_or(DEFAULT_CLUSTER)
}

fn metadata_of(p: &Params) -> Result<BTreeMap<String, String>, NacosError> {
    let Some(raw) = p.get("metadata") else { return Ok(BTreeMap::new()) };
    parse_metadata(raw)
}

/// Metadata as Nacos takes it: a JSON object (scalar values become strings), or `k=v,k=v`.
pub fn parse_metadata(raw: &str) -> Result<BTreeMap<String, String>, NacosError> {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(m)) => m
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                Value::Number(_) | Value::Bool(_) => Ok((k, v.to_string())),
                Value::Null => Ok((k, String::new())),
                other => Err(NacosError::bad(format!("metadata value of {k:?} must be a string, not {other}"))),
            })
            .collect(),
        Ok(other) => Err(NacosError::bad(format!("metadata must be a JSON object, not {other}"))),
        Err(_) if raw.contains('=') => raw
            .split(',')
            .filter(|kv| !kv.trim().is_empty())
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| NacosError::bad(format!("metadata entry {kv:?} is not key=value")))
            })
            .collect(),
        Err(e) => Err(NacosError::bad(format!("metadata must be a JSON object: {e}"))),
    }
}

fn port_of(p: &Params) -> Result<u16, NacosError> {
    let raw = p.required("port")?;
    raw.trim().parse().map_err(|_| NacosError::bad(format!("port must be 0 to 65535, not {raw:?}")))
}

fn instance_from(p: &Params) -> Result<(ServiceId, ServiceNode), NacosError> {
    let id = ServiceId::from_params(p)?;
    let ip = p.required("ip")?;
    let mut node = ServiceNode::new(ip, port_of(p)?);
    node.weight = p.number("weight", 1.0)?;
    if !node.weight.is_finite() || !(0.0..=10_000.0).contains(&node.weight) {
        return Err(NacosError::bad(format!("weight must be 0 to 10000, not {}", node.weight)));
    }
    // Nacos' own parameter is `enable`; clients send `enabled` too.
    node.enabled = match p.get("enabled") {
        Some(_) => p.flag("enabled", true)?,
        None => p.flag("enable", true)?,
    };
    node.ephemeral = p.flag("ephemeral", true)?;
    if !node.ephemeral {
        node.check = Some(CheckKind::Tcp);
    }
    node.metadata = metadata_of(p)?;
    let cluster = p.get("clusterName").unwrap_or(DEFAULT_CLUSTER);
    if !valid_id(cluster) {
        return Err(NacosError::bad(format!("clusterName {cluster:?} is not valid: letters, digits, -_.:")));
    }
    node.extra.insert("cluster".into(), Value::String(cluster.into()));
    Ok((id, node))
}

/// The ephemeral instance a beat describes (`weight`, `metadata`, `cluster` as the beat
/// carries them).
fn instance_from_beat(beat: &Value, key: &InstanceKey) -> Result<ServiceNode, NacosError> {
    let mut node = ServiceNode::new(key.host.clone(), key.port);
    node.ephemeral = true;
    if let Some(w) = beat.get("weight") {
        node.weight = w
            .as_f64()
            .filter(|w| (0.0..=10_000.0).contains(w))
            .ok_or_else(|| NacosError::bad(format!("beat weight must be 0 to 10000, not {w}")))?;
    }
    if let Some(m) = beat.get("metadata").filter(|m| !m.is_null()) {
        node.metadata = parse_metadata(&m.to_string())?;
    }
    let cluster = beat.get("cluster").and_then(Value::as_str).unwrap_or(DEFAULT_CLUSTER);
    if !valid_id(cluster) {
        return Err(NacosError::bad(format!("beat cluster {cluster:?} is not valid: letters, digits, -_.:")));
    }
    node.extra.insert("cluster".into(), Value::String(cluster.into()));
    Ok(node)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn host_json(api: &Api, id: &ServiceId, n: &ServiceNode) -> Value {
    let cluster = cluster_of(n);
    let c = api.node.config();
    json!({
        "instanceId": format!("{}#{}#{}#{}", n.host, n.port, cluster, id.grouped()),
        "ip": n.host,
        "port": n.port,
        "weight": n.weight,
        "healthy": n.health == Health::Healthy,
        "enabled": n.enabled,
        "ephemeral": n.ephemeral,
        "clusterName": cluster,
        "serviceName": id.grouped(),
        "metadata": n.metadata,
        "instanceHeartBeatInterval": beat_interval_ms(api),
        "instanceHeartBeatTimeOut": c.ephemeral_unhealthy_after_ms,
        "ipDeleteTimeout": c.ephemeral_remove_after_ms,
        "marked": false,
    })
}

/// How often clients should beat: three beats per unhealthy timeout (Nacos: 5 s of 15 s).
fn beat_interval_ms(api: &Api) -> u64 {
    (api.node.config().ephemeral_unhealthy_after_ms / 3).max(1)
}

/// `POST|PUT /ns/instance`: registers an instance, or replaces it.
pub async fn register(api: web::Data<Api>, p: Params) -> Reply {
    let (id, node) = instance_from(&p)?;
    api.node.registry().register_instance(id.registry_name(), String::new(), node).await?;
    Ok(text("ok"))
}

/// `DELETE /ns/instance`: removes an instance (absent is fine, as in Nacos).
pub async fn deregister(api: web::Data<Api>, p: Params) -> Reply {
    let id = ServiceId::from_params(&p)?;
    let key = InstanceKey { service: id.registry_name(), host: p.required("ip")?.into(), port: port_of(&p)? };
    api.node.registry().deregister_instance(key).await?;
    Ok(text("ok"))
}

async fn service_of(api: &Api, id: &ServiceId) -> Result<Option<Service>, NacosError> {
    Ok(api.node.registry().get_service(id.registry_name(), Consistency::Linearizable).await?)
}

/// `GET /ns/instance`: one instance's details; 404 if there is none.
pub async fn detail(api: web::Data<Api>, p: Params) -> Reply {
    let id = ServiceId::from_params(&p)?;
    let (ip, port) = (p.required("ip")?, port_of(&p)?);
    let cluster = p.get("cluster").or(p.get("clusterName")).unwrap_or(DEFAULT_CLUSTER);
    let service = service_of(&api, &id).await?;
    let n = service
        .as_ref()
        .and_then(|s| s.nodes.iter().find(|n| n.host == ip && n.port == port && cluster_of(n) == cluster))
        .ok_or_else(|| NacosError(StatusCode::NOT_FOUND, "no matched ip found!".into()))?;
    let mut out = host_json(&api, &id, n);
    out["service"] = json!(id.grouped());
    Ok(HttpResponse::Ok().json(out))
}

/// `GET /ns/instance/list`: the service's enabled instances, in Nacos' shape; an unknown
/// service has none. When the healthy share of them is at or below the service's protect
/// threshold (0 unless set), every one is listed, as healthy, as Nacos does: a mass failure
/// of checks must not leave clients with nothing, or all traffic on the few left.
pub async fn list(api: web::Data<Api>, p: Params) -> Reply {
    let id = ServiceId::from_params(&p)?;
    let healthy_only = p.flag("healthyOnly", false)?;
    let clusters = p.get("clusters");
    let view = api.node.registry().view(Consistency::Linearizable).await?;
    let name = id.registry_name();
    let wanted: Option<Vec<&str>> = clusters.map(|c| c.split(',').map(str::trim).collect());
    let render = |s: Option<&Service>| list_fields(&api, &id, s, healthy_only, wanted.as_deref());
    let echo = clusters.unwrap_or("");
    let body = match view.state.get(&name) {
        Some(service) => {
            // The filter as it applies to this service: the clusters it has that are named.
            let clusters = wanted.as_ref().map(|w| {
                let mut named: Vec<String> =
                    service.nodes.iter().map(cluster_of).filter(|c| w.contains(c)).map(str::to_string).collect();
                named.sort_unstable();
                named.dedup();
                named
            });
            let query = ListQuery { service: name, healthy_only, clusters };
            api.rendered.list(query, service, view.state.len(), |s| render(Some(s))).body(echo, now_ms())
        }
        None => rendered::once(render(None), echo, now_ms()),
    };
    Ok(HttpResponse::Ok().content_type("application/json").body(body))
}

/// The fields of an instance list but `lastRefTime`, rendered once per change of the service
/// and query (see [`rendered`]).
fn list_fields(
    api: &Api,
    id: &ServiceId,
    service: Option<&Service>,
    healthy_only: bool,
    wanted: Option<&[&str]>,
) -> Map<String, Value> {
    let served: Vec<&ServiceNode> = service
        .iter()
        .flat_map(|s| s.nodes.iter())
        .filter(|n| n.enabled)
        .filter(|n| wanted.is_none_or(|w| w.contains(&cluster_of(n))))
        .collect();
    let healthy = served.iter().filter(|n| n.health == Health::Healthy).count();
    let threshold = service.map_or(0.0, protect_threshold);
    let protected = protection_reached(threshold, healthy, served.len());
    if protected {
        tracing::debug!(service = %id.grouped(), healthy, total = served.len(), threshold, "protect threshold reached");
    }
    let hosts: Vec<Value> = served
        .into_iter()
        .filter(|n| protected || !healthy_only || n.health == Health::Healthy)
        .map(|n| {
            let mut h = host_json(api, id, n);
            if protected {
                h["healthy"] = json!(true);
            }
            h
        })
        .collect();
    let checksum = hex(&Md5::digest(serde_json::to_vec(&hosts).unwrap_or_default()));
    let fields = json!({
        "name": id.grouped(),
        "dom": id.grouped(),
        "groupName": id.group,
        "cacheMillis": 10_000,
        "hosts": hosts,
        "checksum": checksum,
        "allIPs": false,
        "reachProtectionThreshold": protected,
        "valid": true,
    });
    match fields {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `PUT /ns/instance/beat`: an ephemeral instance is alive. An unknown one is registered
/// from a full beat (as Nacos does); a light beat for one gets code 20404, on which Nacos
/// clients register it again.
pub async fn beat(api: web::Data<Api>, p: Params) -> Reply {
    let id = ServiceId::from_params(&p)?;
    let beat: Value = match p.get("beat") {
        Some(b) => serde_json::from_str(b).map_err(|e| NacosError::bad(format!("beat must be JSON: {e}")))?,
        None => json!({}),
    };
    let ip = match beat.get("ip").and_then(Value::as_str) {
        Some(ip) => ip.to_string(),
        None => p.required("ip")?.to_string(),
    };
    let port = match beat.get("port").and_then(Value::as_u64) {
        Some(port) => u16::try_from(port).map_err(|_| NacosError::bad(format!("port {port} is out of range")))?,
        None => port_of(&p)?,
    };
    let key = InstanceKey { service: id.registry_name(), host: ip, port };
    let code = match api.node.registry().beat(key.clone(), false).await {
        Ok(()) => 10_200,
        // As Nacos does: a full beat for an instance that is gone (removed while its
        // beats could not arrive) registers it again from what the beat says, since
        // some clients (the Python one) never re-register on their own.
        Err(ApiError::NotFound(_)) if beat.as_object().is_some_and(|b| !b.is_empty()) => {
            let node = instance_from_beat(&beat, &key)?;
            api.node.registry().register_instance(key.service, String::new(), node).await?;
            10_200
        }
        // A light beat (no instance details): the code on which clients register again.
        Err(ApiError::NotFound(_)) => 20_404,
        Err(e) => return Err(e.into()),
    };
    Ok(HttpResponse::Ok().json(json!({
        "clientBeatInterval": beat_interval_ms(&api),
        "code": code,
        "lightBeatEnabled": false,
    })))
}

fn service_fields(p: &Params, id: &ServiceId) -> Result<Service, NacosError> {
    let mut s = Service::new(id.registry_name(), "");
    let threshold: f64 = p.number("protectThreshold", 0.0)?;
    if !(0.0..=1.0).contains(&threshold) {
        return Err(NacosError::bad(format!("protectThreshold must be 0 to 1, not {threshold}")));
    }
    s.extra.insert("protectThreshold".into(), json!(threshold));
    s.extra.insert("metadata".into(), json!(metadata_of(p)?));
    if let Some(sel) = p.get("selector") {
        let v: Value = serde_json::from_str(sel).map_err(|e| NacosError::bad(format!("selector must be JSON: {e}")))?;
        s.extra.insert("selector".into(), v);
    }
    Ok(s)
}

/// `POST /ns/service`: creates a service; refused if it exists.
pub async fn service_create(api: web::Data<Api>, p: Params) -> Reply {
    let id = ServiceId::from_params(&p)?;
    api.node.registry().define_service(service_fields(&p, &id)?, true, false).await?;
    Ok(text("ok"))
}

/// `PUT /ns/service`: updates a service's threshold, metadata and selector.
pub async fn service_update(api: web::Data<Api>, p: Params) -> Reply {
    let id = ServiceId::from_params(&p)?;
    api.node.registry().define_service(service_fields(&p, &id)?, false, true).await?;
    Ok(text("ok"))
}

/// `DELETE /ns/service`: removes a service with no instance.
pub async fn service_delete(api: web::Data<Api>, p: Params) -> Reply {
    let id = ServiceId::from_params(&p)?;
    api.node.registry().drop_service(id.registry_name()).await?;
    Ok(text("ok"))
}

/// `GET /ns/service`: a service's fields and clusters; 404 if absent.
pub async fn service_get(api: web::Data<Api>, p: Params) -> Reply {
    let id = ServiceId::from_params(&p)?;
    let s = service_of(&api, &id)
        .await?
        .ok_or_else(|| NacosError(StatusCode::NOT_FOUND, format!("service {} is not found!", id.grouped())))?;
    let mut clusters: Vec<&str> = s.nodes.iter().map(cluster_of).collect();
    clusters.sort_unstable();
    clusters.dedup();
    let clusters: Vec<Value> = clusters
        .into_iter()
        .map(|c| json!({ "name": c, "healthChecker": { "type": "TCP" }, "metadata": {} }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "namespaceId": id.namespace,
        "groupName": id.group,
        "name": id.name,
        "protectThreshold": s.extra.get("protectThreshold").cloned().unwrap_or(json!(0.0)),
        "metadata": s.extra.get("metadata").cloned().unwrap_or(json!({})),
        "selector": s.extra.get("selector").cloned().unwrap_or(json!({ "type": "none" })),
        "clusters": clusters,
    })))
}

/// `GET /ns/service/list`: a page of the names of a namespace's group's services.
pub async fn service_list(api: web::Data<Api>, p: Params) -> Reply {
    let namespace = p.get("namespaceId").unwrap_or(PUBLIC);
    let group = p.get("groupName").unwrap_or(DEFAULT_GROUP);
    let page: usize = p.number("pageNo", 1)?;
    let size: usize = p.number("pageSize", 20)?;
    if page == 0 || size == 0 {
        return Err(NacosError::bad("pageNo and pageSize must be 1 or more"));
    }
    let view = api.node.registry().view(Consistency::Linearizable).await?;
    let names: Vec<String> = view
        .state
        .keys()
        .map(|name| ServiceId::from_registry_name(name))
        .filter(|id| id.namespace == namespace && id.group == group)
        .map(|id| id.name)
        .collect();
    let doms: Vec<&String> = names.iter().skip((page - 1).saturating_mul(size)).take(size).collect();
    Ok(HttpResponse::Ok().json(json!({ "count": names.len(), "doms": doms })))
}

/// `GET /ns/operator/metrics`: `UP` while the node knows a leader (it can serve writes),
/// `DOWN` with a 503 otherwise; with the registry's counts.
pub async fn metrics(api: web::Data<Api>) -> Reply {
    let status = api.node.cluster().status().await?;
    let stats = api.node.registry().stats().await?;
    let up = status.leader.is_some();
    let body = json!({
        "status": if up { "UP" } else { "DOWN" },
        "serviceCount": stats.services,
        "instanceCount": stats.instances,
        "probesRunning": stats.probes_running,
        "checkOutcomesPending": stats.outcomes_pending,
        "probesDone": stats.probes_done,
        "checkOutcomesWritten": stats.outcomes_written,
        "raftRole": status.role,
        "term": status.term,
        "leader": status.leader,
        "commitIndex": status.commit_index,
    });
    Ok(if up { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) })
}

/// `GET /ns/operator/servers`: the cluster's members, by the address they listen on for
/// each other, as the leader sees them ([`cluster_view`]): `UP` or `DOWN`; when the leader
/// cannot be asked, this node is `UP` and the others `UNKNOWN`. A node not (yet) a member
/// lists itself too.
pub async fn servers(api: web::Data<Api>, _: Params) -> Reply {
    let view = cluster_view(&api.node).await?;
    let (me, http) = (api.node.cluster().id(), api.node.config().http.clone());
    let server = |id: u64, addr: &str, state: &str, role: &str, member_role: Value| {
        let (ip, port) = crate::config::parse_host_port(addr).unwrap_or_else(|_| (addr.to_string(), 0));
        json!({
            "ip": ip,
            "port": port,
            "address": addr,
            "state": state,
            "failAccessCnt": 0,
            "extendInfo": {
                "nodeId": id,
                "raftRole": role,
                "memberRole": member_role,
                "httpAddress": if id == me { http.clone() } else { None },
            },
        })
    };
    let mut servers: Vec<Value> = view
        .members
        .iter()
        .map(|m| {
            let (state, role) = seen(&view, m);
            let state = match state {
                Seen::Up => "UP",
                Seen::Down => "DOWN",
                Seen::Unknown => "UNKNOWN",
            };
            server(m.id, &m.addr, state, &role, json!(m.role))
        })
        .collect();
    if !view.members.iter().any(|m| m.id == me) {
        // Not a member (yet): it answers, so it is up, and says it is none.
        servers.push(server(me, api.node.config().advertised(), "UP", "none", Value::Null));
    }
    Ok(HttpResponse::Ok().json(json!({ "servers": servers })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_map_both_ways() {
        for (ns, g, n, reg) in [
            (PUBLIC, DEFAULT_GROUP, "web", "web"),
            (PUBLIC, "G1", "web", "G1@@web"),
            ("dev", "G1", "web", "dev/G1@@web"),
            ("dev", DEFAULT_GROUP, "a/b", "dev/DEFAULT_GROUP@@a/b"),
        ] {
            let id = ServiceId::new(ns, g, n).unwrap();
            assert_eq!(id.registry_name(), reg);
            assert_eq!(ServiceId::from_registry_name(reg), id);
        }
        assert!(ServiceId::new("a/b", "g", "s").is_err());
        assert!(ServiceId::new(PUBLIC, "g@@x", "s").is_err());
        assert!(ServiceId::new(PUBLIC, "g", "").is_err());
    }

    #[test]
    fn metadata_takes_json_or_pairs() {
        let m = parse_metadata(r#"{"a":"1","b":2,"c":true}"#).unwrap();
        assert_eq!(m.get("b").map(String::as_str), Some("2"));
        assert_eq!(parse_metadata("a=1, b=2").unwrap().len(), 2);
        assert!(parse_metadata(r#"{"a":{"b":1}}"#).is_err());
        assert!(parse_metadata("[1]").is_err());
        assert!(parse_metadata("nonsense").is_err());
    }
}
