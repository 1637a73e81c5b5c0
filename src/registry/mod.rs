//! The service registry's logic without its actor: the replicated state and how commands
//! change it ([`Registry`]), instance selection ([`pick`]), and the health probes
//! ([`probe`]). `ServiceRegistry` (the actor) owns a `Registry` and adds the leader-only
//! parts: scheduling checks, tracking beats, proposing health changes.

pub mod probe;

use std::collections::{BTreeMap, BTreeSet};

use rand::RngExt;

use crate::error::ApiError;
use crate::messages::registry::{Health, InstanceKey, RegistryCommand, Service, ServiceNode, Strategy};

/// Services by name, as the log made them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Registry {
    services: BTreeMap<String, Service>,
    /// Services that exist only because an instance registered into them: they go when their
    /// last instance goes.
    implicit: BTreeSet<String>,
}

impl Registry {
    /// One service.
    pub fn get(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }

    /// Every service, by name.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// One instance.
    pub fn instance(&self, key: &InstanceKey) -> Option<&ServiceNode> {
        self.services.get(&key.service)?.nodes.iter().find(|n| n.host == key.host && n.port == key.port)
    }

    /// Every instance with its key, in order.
    pub fn instances(&self) -> impl Iterator<Item = (InstanceKey, &ServiceNode)> {
        self.services.values().flat_map(|s| {
            s.nodes
                .iter()
                .map(move |n| (InstanceKey { service: s.name.clone(), host: n.host.clone(), port: n.port }, n))
        })
    }

    /// Applies a committed command; answers how many services or instances it touched, or why
    /// the command was refused (the same on every node: it depends on the state alone).
    pub fn apply(&mut self, cmd: RegistryCommand) -> Result<usize, String> {
        Ok(match cmd {
            RegistryCommand::Set(services) => {
                let n = services.len();
                for mut s in services {
                    let before = self.services.get(&s.name);
                    for node in &mut s.nodes {
                        let old =
                            before.and_then(|b| b.nodes.iter().find(|o| o.host == node.host && o.port == node.port));
                        node.health = node.initial_health(old);
                    }
                    self.implicit.remove(&s.name);
                    self.services.insert(s.name.clone(), s);
                }
                n
            }
            RegistryCommand::Remove(names) => names
                .iter()
                .filter(|n| {
                    self.implicit.remove(*n);
                    self.services.remove(*n).is_some()
                })
                .count(),
            RegistryCommand::Register { service, kind, mut node } => {
                if !self.services.contains_key(&service) {
                    self.implicit.insert(service.clone());
                }
                let s = self.services.entry(service.clone()).or_insert_with(|| Service::new(service, kind));
                match s.nodes.iter_mut().find(|o| o.host == node.host && o.port == node.port) {
                    Some(old) => {
                        node.health = node.initial_health(Some(old));
                        *old = node;
                    }
                    None => {
                        node.health = node.initial_health(None);
                        s.nodes.push(node);
                    }
                }
                1
            }
            RegistryCommand::Deregister(key) => {
                let Some(s) = self.services.get_mut(&key.service) else { return Ok(0) };
                let before = s.nodes.len();
                s.nodes.retain(|n| !(n.host == key.host && n.port == key.port));
                let removed = before - s.nodes.len();
                if s.nodes.is_empty() && self.implicit.contains(&key.service) {
                    self.services.remove(&key.service);
                    self.implicit.remove(&key.service);
                }
                removed
            }
            RegistryCommand::SetHealth { key, health } => {
                let node = self
                    .services
                    .get_mut(&key.service)
                    .and_then(|s| s.nodes.iter_mut().find(|n| n.host == key.host && n.port == key.port));
                match node {
                    Some(n) => {
                        n.health = health;
                        1
                    }
                    None => 0,
                }
            }
            RegistryCommand::Define { service, create, update } => match self.services.get_mut(&service.name) {
                Some(_) if create => return Err(format!("service {:?} already exists", service.name)),
                None if update => return Err(format!("service {:?} does not exist", service.name)),
                Some(s) => {
                    s.kind = service.kind;
                    s.extra = service.extra;
                    // Defined on purpose: it stays when its last instance goes.
                    self.implicit.remove(&service.name);
                    1
                }
                None => {
                    let name = service.name.clone();
                    self.services.insert(name, Service { nodes: Vec::new(), ..service });
                    1
                }
            },
            RegistryCommand::Drop(name) => match self.services.get(&name) {
                None => return Err(format!("service {name:?} does not exist")),
                Some(s) if !s.nodes.is_empty() => {
                    return Err(format!("service {name:?} has {} instance(s); remove them first", s.nodes.len()));
                }
                Some(_) => {
                    self.services.remove(&name);
                    self.implicit.remove(&name);
                    1
                }
            },
        })
    }
}

/// Picks one available instance of `service`: enabled, healthy and weighted. `Weighted` draws
/// at random in proportion to weight; `RoundRobin` takes the next after `cursor` (which it
/// moves). No available instance is an error naming the service, never a dead address.
pub fn pick<'a>(
    service: Option<&'a Service>,
    name: &str,
    strategy: Strategy,
    cursor: &mut usize,
    rng: &mut impl rand::Rng,
) -> Result<&'a ServiceNode, ApiError> {
    let service = service.ok_or_else(|| ApiError::NotFound(format!("service {name:?} is not registered")))?;
    let available: Vec<&ServiceNode> = service.nodes.iter().filter(|n| n.is_available()).collect();
    if available.is_empty() {
        let why = match service.nodes.len() {
            0 => "has no instance".to_string(),
            n => format!("has no healthy, enabled instance of {n}"),
        };
        return Err(ApiError::NotFound(format!("service {name:?} {why}")));
    }
    Ok(match strategy {
        Strategy::RoundRobin => {
            *cursor = cursor.wrapping_add(1);
            available[*cursor % available.len()]
        }
        Strategy::Weighted => {
            let total: f64 = available.iter().map(|n| n.weight).sum();
            if !total.is_finite() || total <= 0.0 {
                // Only reachable through entries written before weights were bounded.
                return Ok(available[rng.random_range(0..available.len())]);
            }
            let mut r = rng.random_range(0.0..total);
            available
                .iter()
                .find(|n| {
                    if r < n.weight {
                        true
                    } else {
                        r -= n.weight;
                        false
                    }
                })
                .copied()
                // Rounding may leave r a hair above the last weight.
                .unwrap_or(available[available.len() - 1])
        }
    })
}

/// The health a probe result means for an instance.
pub fn health_of(ok: bool) -> Health {
    if ok { Health::Healthy } else { Health::Unhealthy }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::registry::CheckKind;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn node(host: &str, port: u16, weight: u32) -> ServiceNode {
        ServiceNode { weight: f64::from(weight), ..ServiceNode::new(host, port) }
    }

    fn key(s: &str, host: &str, port: u16) -> InstanceKey {
        InstanceKey { service: s.into(), host: host.into(), port }
    }

    #[test]
    fn register_creates_and_deregister_removes_an_implicit_service() {
        let mut r = Registry::default();
        r.apply(RegistryCommand::Register { service: "web".into(), kind: "http".into(), node: node("a", 1, 1) })
            .unwrap();
        assert_eq!(r.get("web").unwrap().nodes.len(), 1);
        r.apply(RegistryCommand::Deregister(key("web", "a", 1))).unwrap();
        assert!(r.get("web").is_none(), "a service made by registration goes with its last instance");
        r.apply(RegistryCommand::Set(vec![Service {
            name: "db".into(),
            kind: "tcp".into(),
            nodes: vec![node("b", 2, 1)],
            extra: BTreeMap::new(),
        }]))
        .unwrap();
        r.apply(RegistryCommand::Deregister(key("db", "b", 2))).unwrap();
        assert!(r.get("db").is_some(), "a declared service stays, empty");
    }

    #[test]
    fn define_keeps_instances_and_drop_refuses_a_service_in_use() {
        let mut r = Registry::default();
        let mut svc = Service::new("web", "");
        svc.extra.insert("protectThreshold".into(), serde_json::json!(0.5));
        r.apply(RegistryCommand::Define { service: svc.clone(), create: true, update: false }).unwrap();
        let again = r.apply(RegistryCommand::Define { service: svc.clone(), create: true, update: false }).unwrap_err();
        assert!(again.contains("already exists"), "{again}");
        r.apply(RegistryCommand::Register { service: "web".into(), kind: String::new(), node: node("a", 1, 1) })
            .unwrap();
        svc.extra.insert("protectThreshold".into(), serde_json::json!(0.8));
        r.apply(RegistryCommand::Define { service: svc, create: false, update: true }).unwrap();
        let web = r.get("web").unwrap();
        assert_eq!((web.nodes.len(), &web.extra["protectThreshold"]), (1, &serde_json::json!(0.8)));
        let busy = r.apply(RegistryCommand::Drop("web".into())).unwrap_err();
        assert!(busy.contains("1 instance"), "{busy}");
        r.apply(RegistryCommand::Deregister(key("web", "a", 1))).unwrap();
        assert!(r.get("web").is_some(), "a defined service stays when its last instance goes");
        r.apply(RegistryCommand::Drop("web".into())).unwrap();
        assert!(r.apply(RegistryCommand::Drop("web".into())).unwrap_err().contains("does not exist"));
    }

    #[test]
    fn health_survives_a_repeated_set_of_the_same_instance() {
        let mut r = Registry::default();
        let checked = ServiceNode { check: Some(CheckKind::Tcp), ..node("a", 1, 1) };
        let svc =
            Service { name: "s".into(), kind: "tcp".into(), nodes: vec![checked.clone()], extra: BTreeMap::new() };
        r.apply(RegistryCommand::Set(vec![svc.clone()])).unwrap();
        assert_eq!(r.instance(&key("s", "a", 1)).unwrap().health, Health::Unknown, "checked: unknown until probed");
        r.apply(RegistryCommand::SetHealth { key: key("s", "a", 1), health: Health::Unhealthy }).unwrap();
        r.apply(RegistryCommand::Set(vec![svc])).unwrap();
        assert_eq!(r.instance(&key("s", "a", 1)).unwrap().health, Health::Unhealthy);
    }

    #[test]
    fn pick_skips_unhealthy_disabled_and_weightless_instances() {
        let mut svc = Service {
            name: "s".into(),
            kind: String::new(),
            nodes: vec![node("ok", 1, 1), node("sick", 2, 5), node("off", 3, 5), node("zero", 4, 0)],
            extra: BTreeMap::new(),
        };
        svc.nodes[1].health = Health::Unhealthy;
        svc.nodes[2].enabled = false;
        let mut rng = StdRng::seed_from_u64(1);
        let mut cursor = 0;
        for strategy in [Strategy::Weighted, Strategy::RoundRobin] {
            for _ in 0..200 {
                assert_eq!(pick(Some(&svc), "s", strategy, &mut cursor, &mut rng).unwrap().host, "ok");
            }
        }
        svc.nodes[0].enabled = false;
        let err = pick(Some(&svc), "s", Strategy::Weighted, &mut cursor, &mut rng).unwrap_err();
        assert!(err.to_string().contains("no healthy, enabled instance"), "{err}");
        assert!(pick(None, "x", Strategy::Weighted, &mut cursor, &mut rng).is_err());
    }

    /// Weighted draws follow the weights, within a tolerance, over many draws.
    #[test]
    fn weighted_pick_follows_the_weights() {
        let svc = Service {
            name: "s".into(),
            kind: String::new(),
            nodes: vec![node("a", 1, 1), node("b", 2, 3)],
            extra: BTreeMap::new(),
        };
        let mut rng = StdRng::seed_from_u64(7);
        let mut cursor = 0;
        let n = 40_000;
        let b = (0..n)
            .filter(|_| pick(Some(&svc), "s", Strategy::Weighted, &mut cursor, &mut rng).unwrap().host == "b")
            .count();
        let share = b as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.02, "b drew {share:.3} of picks, weight says 0.75");
    }

    #[test]
    fn round_robin_takes_each_in_turn() {
        let svc = Service {
            name: "s".into(),
            kind: String::new(),
            nodes: vec![node("a", 1, 1), node("b", 2, 9)],
            extra: BTreeMap::new(),
        };
        let mut rng = StdRng::seed_from_u64(7);
        let mut cursor = 0;
        let picks: Vec<_> = (0..4)
            .map(|_| pick(Some(&svc), "s", Strategy::RoundRobin, &mut cursor, &mut rng).unwrap().host.clone())
            .collect();
        assert_eq!(picks, ["b", "a", "b", "a"]);
    }
}
