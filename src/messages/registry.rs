//! The service-registry namespace: services as dister's `ServiceConfig` describes them
//! (a name, a type, and nodes with their fields), replicated through the log.

use std::collections::BTreeMap;

use actix::Message;
use serde::{Deserialize, Serialize};

/// The namespace `ServiceRegistry` owns.
pub const REGISTRY_NAMESPACE: &str = "registry";

/// Health of one instance, as the checks (a later step) will set it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet.
    #[default]
    Unknown,
    /// The last check passed.
    Healthy,
    /// The last check failed.
    Unhealthy,
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceNode {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Weight for balancing (dister's priority); 0 takes no traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Whether the instance takes traffic.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Health status.
    #[serde(default)]
    pub health: Health,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Any other field the service definition carries (check settings and the like), kept
    /// as given so that nothing a client sent is lost.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn default_weight() -> u32 {
    1
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
}

/// A registry command, as stored in a log entry (JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RegistryCommand {
    /// Create or replace each service.
    Set(Vec<Service>),
    /// Remove each named service; absent names are ignored.
    Remove(Vec<String>),
}

impl RegistryCommand {
    /// Refuses services without a name, and empty commands.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            RegistryCommand::Set(services) if services.is_empty() => Err("no service given".into()),
            RegistryCommand::Set(services) if services.iter().any(|s| s.name.is_empty()) => {
                Err("a service name must not be empty".into())
            }
            RegistryCommand::Remove(names) if names.is_empty() => Err("no service name given".into()),
            _ => Ok(()),
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
