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

/// How the leader checks an instance. A node names its own (`check`), or, written without one
/// into a service of one of dister's types (`tcp`, `web`, `custom`, `mysql`, `pgsql`), is
/// given that type's check where the write is received ([`Service::resolve_checks`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// Connect to host:port.
    Tcp,
    /// GET `url` (default `http://host:port/`); healthy on 2xx.
    Http,
    /// dister's `web`: GET `url` (which it must have); healthy on 200 only.
    Web,
    /// Run `script` with `sh -c`; healthy on exit 0 (only where the config allows scripts).
    Script,
    /// dister's `custom`: run `script` with `sh -c`; healthy when it exits 0 and prints `1`
    /// (surrounding white space aside). Only where the config allows scripts.
    Custom,
    /// Log in to MySQL or MariaDB at host:port with `user`, `pass` and `database`, and ping.
    Mysql,
    /// Log in to PostgreSQL at host:port with `user`, `pass` and `database`, and ping.
    Pgsql,
    /// Healthy while the instance beats at least every `ttl_ms`.
    Ttl,
}

impl CheckKind {
    /// The check a service of dister's type `kind` gives its nodes (any case), if any: other
    /// types are labels, their nodes unchecked.
    pub fn of_type(kind: &str) -> Option<CheckKind> {
        [CheckKind::Tcp, CheckKind::Web, CheckKind::Custom, CheckKind::Mysql, CheckKind::Pgsql]
            .into_iter()
            .find(|c| kind.eq_ignore_ascii_case(c.name()))
    }

    /// Whether it runs a command on the leader's machine.
    pub fn runs_scripts(self) -> bool {
        matches!(self, CheckKind::Script | CheckKind::Custom)
    }

    /// Its name, as written in a service file.
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Web => "web",
            CheckKind::Script => "script",
            CheckKind::Custom => "custom",
            CheckKind::Mysql => "mysql",
            CheckKind::Pgsql => "pgsql",
            CheckKind::Ttl => "ttl",
        }
    }
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceNode {
    /// Host name or address.
    pub host: String,
    /// Port (0, or absent: none, for a node checked by a script alone).
    #[serde(default)]
    pub port: u16,
    /// Weight for balancing (dister calls it priority; Nacos' weights are fractional);
    /// 0 takes no traffic. Whole weights are written as integers, as dister's clients read them.
    #[serde(default = "default_weight", alias = "priority", serialize_with = "whole_as_integer")]
    pub weight: f64,
    /// Whether the instance takes traffic.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Health status, as the leader's checks last found it. Written with dister's `status`
    /// beside it (1 healthy, 0 not); a `status` read back in is ignored, as health is the
    /// checks' to decide.
    #[serde(flatten, with = "health_and_status")]
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
    /// How often to check (default: the node's `check_interval_ms`); dister's `interval`,
    /// read as this from service files ([`crate::registry::input`]).
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

    /// How this instance is checked: its own check, or beats for an ephemeral one. Its
    /// service's type plays no part once it is in the log: the check it names was written
    /// into the instance where the write was received ([`Service::resolve_checks`]), so an
    /// entry means on replay what it meant when it was written.
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

    /// Gives a persistent instance without a check of its own the check of dister's service
    /// type `kind`, if it names one; answers whether it did.
    fn resolve_check(&mut self, kind: &str) -> bool {
        if self.ephemeral || self.check.is_some() {
            return false;
        }
        self.check = CheckKind::of_type(kind);
        self.check.is_some()
    }

    /// A text field of the instance's own extra fields (`user`, `database`, ...), a number
    /// given for it as its digits.
    pub fn extra_text(&self, field: &str) -> Option<String> {
        match self.extra.get(field)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// `health` as written: `health` and dister's `status` (1 healthy, 0 not), side by side.
mod health_and_status {
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Health;

    pub fn serialize<S: Serializer>(health: &Health, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("health", health)?;
        map.serialize_entry("status", &u8::from(*health == Health::Healthy))?;
        map.end()
    }

    /// Takes `health` and `status` out of the instance's fields, so neither lands among its
    /// extra ones; `status` is dropped.
    #[derive(Deserialize)]
    struct Read {
        #[serde(default)]
        health: Health,
        #[serde(default, rename = "status")]
        _status: serde::de::IgnoredAny,
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Health, D::Error> {
        Read::deserialize(d).map(|r| r.health)
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

    /// As in dister, the service's type checks every node that names no check itself: each
    /// such node is given the check its type names (`tcp`, `web`, `custom`, `mysql`,
    /// `pgsql`; other types are labels). Done before the write reaches the log. Answers
    /// whether any node was given one.
    pub fn resolve_checks(&mut self) -> bool {
        let kind = &self.kind;
        self.nodes.iter_mut().fold(false, |changed, n| n.resolve_check(kind) | changed)
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

/// The JSON names of an instance's own fields (`priority` is `weight`'s alias; `status` is
/// written beside `health`).
const NODE_FIELDS: [&str; 15] = [
    "host",
    "port",
    "weight",
    "priority",
    "enabled",
    "health",
    "status",
    "metadata",
    "ephemeral",
    "check",
    "url",
    "script",
    "interval_ms",
    "timeout_ms",
    "ttl_ms",
];

/// Refuses an instance of service `service` that its check could not run on, naming both.
fn validate_node(service: &str, n: &ServiceNode, scripts_allowed: bool) -> Result<(), String> {
    let fail = |why: String| Err(format!("service {service:?}, node {}: {why}", n.addr()));
    if n.host.is_empty() {
        return Err(format!("service {service:?}: a node needs a host (or, checked by web, a url)"));
    }
    let check = n.effective_check();
    if let Some(c) = check {
        if c.runs_scripts() && n.script.as_deref().is_none_or(|s| s.trim().is_empty()) {
            return fail(format!("a {} check needs a script", c.name()));
        }
        if c.runs_scripts() && !scripts_allowed {
            return fail(format!(
                "a {} check runs its script on the leader's machine, and allow_script_checks is off",
                c.name()
            ));
        }
        if matches!(c, CheckKind::Mysql | CheckKind::Pgsql) {
            if n.extra_text("user").is_none_or(|u| u.is_empty()) {
                return fail(format!("a {} check needs a user", c.name()));
            }
            if n.host.starts_with('/') {
                return fail(format!("a {} check connects over TCP: host must not be a socket path", c.name()));
            }
        }
        // dister's web nodes are given by their url; an http check defaults to
        // http://host:port/.
        if c == CheckKind::Web && n.url.is_none() {
            return fail("a web check needs a url".into());
        }
    }
    if n.port == 0 && !check.is_some_and(CheckKind::runs_scripts) {
        return fail("a port (1 to 65535) is needed".into());
    }
    if let Some(url) = &n.url
        && !url.starts_with("http://")
    {
        return fail(format!("check url {url:?} must start with http://"));
    }
    if !(0.0..=MAX_WEIGHT).contains(&n.weight) {
        return fail(format!("weight must be 0 to {MAX_WEIGHT}"));
    }
    if n.ttl_ms == Some(0) || n.interval_ms == Some(0) || n.timeout_ms == Some(0) {
        return fail("ttl_ms, interval and timeout_ms must be above 0".into());
    }
    // An extra field named like a real one would be written twice and refused when
    // applied, on every node: refuse it here.
    if let Some(k) = n.extra.keys().find(|k| NODE_FIELDS.contains(&k.as_str())) {
        return fail(format!("extra field {k:?} is one of the node's own"));
    }
    Ok(())
}

fn validate_service_fields(s: &Service) -> Result<(), String> {
    if s.name.is_empty() {
        return Err("a service name must not be empty".into());
    }
    match s.extra.keys().find(|k| SERVICE_FIELDS.contains(&k.as_str())) {
        Some(k) => Err(format!("service {:?}: extra field {k:?} is one of the service's own", s.name)),
        None => Ok(()),
    }
}

impl RegistryCommand {
    /// Readies a command received from a client for the log: gives the instances it writes
    /// their service type's check ([`Service::resolve_checks`]), then validates it. Answers
    /// whether the command changed (and must be encoded again).
    pub fn prepare(&mut self, scripts_allowed: bool) -> Result<bool, String> {
        let changed = match self {
            RegistryCommand::Set(services) => services.iter_mut().fold(false, |c, s| s.resolve_checks() | c),
            RegistryCommand::Register { kind, node, .. } => node.resolve_check(kind),
            _ => false,
        };
        self.validate(scripts_allowed).map(|()| changed)
    }

    /// Refuses services without a name, instances their checks could not run on (script
    /// checks among them, unless `scripts_allowed`), and empty commands.
    pub fn validate(&self, scripts_allowed: bool) -> Result<(), String> {
        match self {
            RegistryCommand::Set(services) if services.is_empty() => Err("no service given".into()),
            RegistryCommand::Set(services) => {
                for s in services {
                    validate_service_fields(s)?;
                    s.nodes.iter().try_for_each(|n| validate_node(&s.name, n, scripts_allowed))?;
                    let mut seen = std::collections::BTreeSet::new();
                    if let Some(dup) = s.nodes.iter().find(|n| !seen.insert((n.host.as_str(), n.port))) {
                        return Err(format!("service {:?} lists node {} twice", s.name, dup.addr()));
                    }
                }
                Ok(())
            }
            RegistryCommand::Remove(names) if names.is_empty() => Err("no service name given".into()),
            RegistryCommand::Register { service, .. } if service.is_empty() => {
                Err("a service name must not be empty".into())
            }
            RegistryCommand::Register { service, node, .. } => validate_node(service, node, scripts_allowed),
            RegistryCommand::Deregister(k) | RegistryCommand::SetHealth { key: k, .. } if k.service.is_empty() => {
                Err("a service name must not be empty".into())
            }
            RegistryCommand::Define { service, .. } => validate_service_fields(service),
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
    /// Instances by health: healthy, unhealthy, not yet checked.
    #[serde(default)]
    pub by_health: [usize; 3],
}

/// The registry's answer to a generic query, in JSON.
pub type QueryAnswer = Result<Bytes, ApiError>;
