//! The service-registry namespace: services as dister's `ServiceConfig` describes them (a
//! name, a type, and nodes with their fields), replicated through the log; the health their
//! checks find; the queries and the leader-only beats that keep ephemeral instances alive.

use std::collections::BTreeMap;

use actix::Message;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The namespace `ServiceRegistry` owns.
pub const REGISTRY_NAMESPACE: &str = "registry";

/// The largest weight an instance may have (Nacos' bound): weights of any number of
/// instances then add up to a finite total.
pub const MAX_WEIGHT: f64 = 10_000.0;

/// Health of one instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet.
    #[default]
    Unknown,
    /// The last check passed (or the instance has no check, or beats in time).
    Healthy,
    /// The last check failed (or beats stopped).
    Unhealthy,
}

/// How the leader checks an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// Connect to host:port.
    Tcp,
    /// GET `url` (default `http://host:port/`); healthy on 2xx.
    Http,
    /// Run `script` with `sh -c`; healthy on exit 0 (only where the config allows scripts).
    Script,
    /// Healthy while the instance beats at least every `ttl_ms`.
    Ttl,
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceNode {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Weight for balancing (dister calls it priority; Nacos' weights are fractional);
    /// 0 takes no traffic. Whole weights are written as integers, as dister's clients read them.
    #[serde(default = "default_weight", alias = "priority", serialize_with = "whole_as_integer")]
    pub weight: f64,
    /// Whether the instance takes traffic.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Health status, as the leader's checks last found it.
    #[serde(default)]
    pub health: Health,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// An ephemeral instance lives by its beats (as Nacos' do): marked unhealthy when they
    /// stop, removed some time later.
    #[serde(default)]
    pub ephemeral: bool,
    /// The health check, if any (an ephemeral instance is checked by its beats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckKind>,
    /// URL for an `http` check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Command for a `script` check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// How often to check (default: the node's `check_interval_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// How long a probe may take before it counts as failed (default: the interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// For `ttl` checks and ephemeral instances: beats must come this often (default: the
    /// node's `ephemeral_unhealthy_after_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Any other field the service definition carries, kept as given so that nothing a client
    /// sent is lost.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
    /// The log index of the entry that last registered this instance, set when it is
    /// applied (not part of its JSON). A check's outcome names the revision it judged, so an
    /// outcome about an earlier registration never lands on a newer one.
    #[serde(skip)]
    pub revision: u64,
}

impl ServiceNode {
    /// A plain instance: weight 1, enabled, healthy, no check.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        ServiceNode {
            host: host.into(),
            port,
            weight: 1.0,
            enabled: true,
            health: Health::Healthy,
            metadata: BTreeMap::new(),
            ephemeral: false,
            check: None,
            url: None,
            script: None,
            interval_ms: None,
            timeout_ms: None,
            ttl_ms: None,
            extra: BTreeMap::new(),
            revision: 0,
        }
    }

    /// Its key within `service`.
    pub fn key(&self, service: &str) -> InstanceKey {
        InstanceKey { service: service.to_string(), host: self.host.clone(), port: self.port }
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// How this instance is checked: its own check, or beats for an ephemeral one.
    pub fn effective_check(&self) -> Option<CheckKind> {
        if self.ephemeral { Some(CheckKind::Ttl) } else { self.check }
    }

    /// Whether it may take traffic: enabled, healthy, with weight.
    pub fn is_available(&self) -> bool {
        self.enabled && self.health == Health::Healthy && self.weight > 0.0
    }

    /// The same instance, with the same way of being checked (so its health carries over
    /// when its service is set again, and a probe started for one still speaks for the other).
    pub fn same_checking(&self, other: &ServiceNode) -> bool {
        (self.host.as_str(), self.port, self.effective_check(), &self.url, &self.script)
            == (other.host.as_str(), other.port, other.effective_check(), &other.url, &other.script)
    }

    /// The health a (re-)registered instance starts with: kept from `before` if it is the
    /// same instance checked the same way; else healthy if nothing checks it or it lives by
    /// beats (registering is a sign of life), unknown until its first probe otherwise.
    pub fn initial_health(&self, before: Option<&ServiceNode>) -> Health {
        match (before, self.effective_check()) {
            // Nothing checks it, or it lives by beats and (re-)registering is a beat.
            (_, None | Some(CheckKind::Ttl)) => Health::Healthy,
            (Some(b), _) if b.same_checking(self) => b.health,
            _ => Health::Unknown,
        }
    }
}

fn default_weight() -> f64 {
    1.0
}

fn whole_as_integer<S: serde::Serializer>(w: &f64, s: S) -> Result<S::Ok, S::Error> {
    if w.fract() == 0.0 && (0.0..9.0e15).contains(w) { s.serialize_u64(*w as u64) } else { s.serialize_f64(*w) }
}

fn default_true() -> bool {
    true
}

/// A service: a name, a type, and its instances.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Unique name.
    pub name: String,
    /// Type (dister's `Type`: what kind of service, e.g. "tcp", "http", "mysql").
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Instances.
    #[serde(rename = "node", default)]
    pub nodes: Vec<ServiceNode>,
    /// Any other field (Nacos' `metadata` and `protectThreshold`, say), kept as given.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Service {
    /// A service with no instance and no other field.
    pub fn new(name: impl Into<String>, kind: impl Into<String>) -> Self {
        Service { name: name.into(), kind: kind.into(), nodes: Vec::new(), extra: BTreeMap::new() }
    }
}

/// Names one instance.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceKey {
    /// Its service.
    pub service: String,
    /// Its host.
    pub host: String,
    /// Its port.
    pub port: u16,
}

impl std::fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.service, self.host, self.port)
    }
}

/// A registry command, as stored in a log entry (JSON, so old entries stay readable when
/// fields are added).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RegistryCommand {
    /// Create or replace each service.
    Set(Vec<Service>),
    /// Remove each named service; absent names are ignored.
    Remove(Vec<String>),
    /// Create or update one instance (creating its service if needed).
    Register {
        /// The service.
        service: String,
        /// The service's type, when the service is created.
        #[serde(default)]
        kind: String,
        /// The instance.
        node: ServiceNode,
    },
    /// Remove one instance (and its service, if it was the last one and the service was
    /// created by a registration).
    Deregister(InstanceKey),
    /// Creates a service, or updates its own fields (type and the others) keeping its
    /// instances. The service's `nodes` are ignored.
    Define {
        /// The service's fields.
        service: Service,
        /// Refuse a service that exists.
        #[serde(default)]
        create: bool,
        /// Refuse a service that does not exist.
        #[serde(default)]
        update: bool,
    },
    /// Removes a service that has no instance; refused if it has some, or does not exist.
    Drop(String),
    /// The leader's checks found this health (written only when it changes). Kept so that
    /// logs written before [`RegistryCommand::Checked`] replay; no longer proposed.
    SetHealth {
        /// The instance.
        key: InstanceKey,
        /// Its health.
        health: Health,
    },
    /// What the leader's checks found over one tick: many health changes and expiries in one
    /// entry, each applied only to the registration it was judged on.
    Checked(Vec<CheckOutcome>),
}

/// One outcome of the leader's checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOutcome {
    /// The instance.
    pub key: InstanceKey,
    /// Its revision when it was judged ([`ServiceNode::revision`]).
    pub revision: u64,
    /// What to do.
    pub change: Change,
}

/// What a check decided for one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Its health is now this.
    Health(Health),
    /// An ephemeral instance stopped beating long enough ago: remove it.
    Expire,
}

impl CheckOutcome {
    /// About how many bytes it takes in an entry (JSON), to bound a batch before encoding it.
    pub fn size_hint(&self) -> usize {
        self.key.service.len() + self.key.host.len() + 64
    }
}

/// The JSON names of a service's own fields.
const SERVICE_FIELDS: [&str; 3] = ["name", "type", "node"];

/// The JSON names of an instance's own fields (`priority` is `weight`'s alias).
const NODE_FIELDS: [&str; 14] = [
    "host",
    "port",
    "weight",
    "priority",
    "enabled",
    "health",
    "metadata",
    "ephemeral",
    "check",
    "url",
    "script",
    "interval_ms",
    "timeout_ms",
    "ttl_ms",
];

impl RegistryCommand {
    /// Refuses services without a name, instances without a host, and empty commands.
    pub fn validate(&self) -> Result<(), String> {
        let node_ok = |n: &ServiceNode| {
            if n.host.is_empty() {
                return Err("an instance needs a host".to_string());
            }
            if n.check == Some(CheckKind::Script) && n.script.as_deref().is_none_or(str::is_empty) {
                return Err(format!("instance {} has a script check but no script", n.addr()));
            }
            if let Some(url) = &n.url
                && !url.starts_with("http://")
            {
                return Err(format!("instance {}: check url {url:?} must start with http://", n.addr()));
            }
            if !(0.0..=MAX_WEIGHT).contains(&n.weight) {
                return Err(format!("instance {}: weight must be 0 to {MAX_WEIGHT}", n.addr()));
            }
            if n.ttl_ms == Some(0) || n.interval_ms == Some(0) || n.timeout_ms == Some(0) {
                return Err(format!("instance {}: ttl_ms, interval_ms and timeout_ms must be above 0", n.addr()));
            }
            // An extra field named like a real one would be written twice and refused when
            // applied, on every node: refuse it here.
            if let Some(k) = n.extra.keys().find(|k| NODE_FIELDS.contains(&k.as_str())) {
                return Err(format!("instance {}: extra field {k:?} is one of the instance's own", n.addr()));
            }
            Ok(())
        };
        match self {
            RegistryCommand::Set(services) if services.is_empty() => Err("no service given".into()),
            RegistryCommand::Set(services) => {
                for s in services {
                    if s.name.is_empty() {
                        return Err("a service name must not be empty".into());
                    }
                    if let Some(k) = s.extra.keys().find(|k| SERVICE_FIELDS.contains(&k.as_str())) {
                        return Err(format!("service {:?}: extra field {k:?} is one of the service's own", s.name));
                    }
                    s.nodes.iter().try_for_each(node_ok)?;
                    let mut seen = std::collections::BTreeSet::new();
                    if let Some(dup) = s.nodes.iter().find(|n| !seen.insert((n.host.as_str(), n.port))) {
                        return Err(format!("service {:?} lists instance {} twice", s.name, dup.addr()));
                    }
                }
                Ok(())
            }
            RegistryCommand::Remove(names) if names.is_empty() => Err("no service name given".into()),
            RegistryCommand::Register { service, node, .. } => {
                if service.is_empty() {
                    return Err("a service name must not be empty".into());
                }
                node_ok(node)
            }
            RegistryCommand::Deregister(k) | RegistryCommand::SetHealth { key: k, .. } if k.service.is_empty() => {
                Err("a service name must not be empty".into())
            }
            RegistryCommand::Define { service, .. } if service.name.is_empty() => {
                Err("a service name must not be empty".into())
            }
            RegistryCommand::Define { service, .. } => {
                match service.extra.keys().find(|k| SERVICE_FIELDS.contains(&k.as_str())) {
                    Some(k) => {
                        Err(format!("service {:?}: extra field {k:?} is one of the service's own", service.name))
                    }
                    None => Ok(()),
                }
            }
            RegistryCommand::Drop(name) if name.is_empty() => Err("a service name must not be empty".into()),
            RegistryCommand::Checked(outcomes) if outcomes.is_empty() => Err("no check outcome given".into()),
            _ => Ok(()),
        }
    }
}

/// How `balance` picks an instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// At random, in proportion to weight (dister's rule).
    #[default]
    Weighted,
    /// Each available instance in turn.
    RoundRobin,
}

impl std::str::FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "weighted" | "random" | "" => Ok(Strategy::Weighted),
            "round_robin" | "roundrobin" | "rr" => Ok(Strategy::RoundRobin),
            other => Err(format!("unknown strategy {other:?}: use weighted or round_robin")),
        }
    }
}

/// A registry query, as carried by a generic `Query` (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryQuery {
    /// One service by name.
    Get(String),
    /// Every service, by name.
    List,
    /// One available instance of a service.
    Balance {
        /// The service.
        name: String,
        /// How to pick.
        #[serde(default)]
        strategy: Strategy,
    },
}

/// Read one service, once `min_applied` is applied.
#[derive(Debug, Message)]
#[rtype(result = "Option<Service>")]
pub struct GetService {
    /// The name.
    pub name: String,
    /// Answer only after applying this index.
    pub min_applied: u64,
}

/// Read every service, once `min_applied` is applied.
#[derive(Debug, Message)]
#[rtype(result = "Vec<Service>")]
pub struct ListServices {
    /// Answer only after applying this index.
    pub min_applied: u64,
}

/// Pick one available (enabled, healthy, weighted) instance of a service from this node's
/// copy of the registry.
#[derive(Debug, Message)]
#[rtype(result = "Result<ServiceNode, ApiError>")]
pub struct Balance {
    /// The service.
    pub name: String,
    /// How to pick.
    pub strategy: Strategy,
}

/// An instance says it is alive. Only the leader tracks beats; elsewhere the answer is
/// `NotLeader` and the caller forwards it.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct Beat(pub InstanceKey);

/// Count services and instances, without copying them.
#[derive(Debug, Message)]
#[rtype(result = "RegistryStats")]
pub struct GetRegistryStats;

/// How big the registry is, and what its checks are doing on this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryStats {
    /// Services.
    pub services: usize,
    /// Instances.
    pub instances: usize,
    /// Probes running now (leader only).
    pub probes_running: usize,
    /// Check outcomes waiting to be written (leader only).
    pub outcomes_pending: usize,
    /// Probes finished since this node became leader.
    pub probes_done: u64,
    /// Check outcomes written since this node became leader.
    pub outcomes_written: u64,
}

/// The registry's answer to a generic query, in JSON.
pub type QueryAnswer = Result<Bytes, ApiError>;
