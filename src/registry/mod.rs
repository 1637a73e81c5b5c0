//! The service registry's logic without its actor: the replicated state and how commands
//! change it ([`Registry`]), instance selection ([`pick`]), service files as users write
//! them ([`input`]), and the health probes ([`probe`]). `ServiceRegistry` (the actor) owns a `Registry` and adds the leader-only
//! parts: scheduling checks, tracking beats, proposing health changes.

pub mod checks;
pub mod input;
pub mod probe;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use rand::RngExt;

use crate::error::ApiError;
use crate::messages::registry::{
    Change, CheckOutcome, Health, InstanceKey, RegistryCommand, Service, ServiceNode, Strategy,
};

/// Services by name, shared: a published view or a snapshot holds them for nothing, and a
/// change copies only the service it touches (and the map's path to it).
pub type Services = imbl::OrdMap<String, Arc<Service>>;

/// Services by name, as the log made them, with an index from each instance's key to its
/// place in its service, so that a lookup (a probe's result, a beat) never scans a service.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    services: Services,
    /// Services that exist only because an instance registered into them: they go when their
    /// last instance goes.
    implicit: BTreeSet<String>,
    /// Where each instance sits in its service's `nodes` (looked up, never iterated; a fast
    /// hash, as a probe result or a beat looks one up each).
    slots: HashMap<InstanceKey, usize, foldhash::fast::RandomState>,
}

impl PartialEq for Registry {
    fn eq(&self, other: &Self) -> bool {
        // The index follows from the services; order within a service does not matter.
        self.implicit == other.implicit
            && self.services.len() == other.services.len()
            && self.services.iter().all(|(name, s)| {
                other.services.get(name).is_some_and(|o| {
                    o.kind == s.kind
                        && o.extra == s.extra
                        && o.nodes.len() == s.nodes.len()
                        && s.nodes.iter().all(|n| other.instance(&n.key(name)) == Some(n))
                })
            })
    }
}

/// What applying one command changed, beside its count: the instances it (re-)registered
/// and those it removed, so the leader's checks can follow without scanning the registry.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// How many services or instances the command touched.
    pub count: usize,
    /// Instances registered or registered again (a fresh start for their checks).
    pub registered: Vec<InstanceKey>,
    /// Instances that went.
    pub removed: Vec<InstanceKey>,
}

impl Registry {
    /// Every service, with whether it exists only for its instances (implicit): what a
    /// snapshot keeps.
    pub fn snapshot_services(&self) -> impl Iterator<Item = (bool, &Service)> {
        self.services.values().map(|s| (self.implicit.contains(&s.name), &**s))
    }

    /// The services as they are now, for readers: a clone that copies nothing.
    pub fn view(&self) -> Services {
        self.services.clone()
    }

    /// Puts back a service a snapshot kept.
    pub fn restore_service(&mut self, implicit: bool, s: Service) {
        if implicit {
            self.implicit.insert(s.name.clone());
        }
        self.insert_service(s, &mut Applied::default());
    }

    /// One service.
    pub fn get(&self, name: &str) -> Option<&Service> {
        self.services.get(name).map(|s| &**s)
    }

    /// Every service, by name.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values().map(|s| &**s)
    }

    /// A service to change: copied first if a view still holds it.
    fn service_mut(&mut self, name: &str) -> Option<&mut Service> {
        self.services.get_mut(name).map(Arc::make_mut)
    }

    /// How many services and instances there are.
    pub fn counts(&self) -> (usize, usize) {
        (self.services.len(), self.slots.len())
    }

    /// Instances by health: healthy, unhealthy, not yet checked (a walk, copying nothing).
    pub fn health_counts(&self) -> [usize; 3] {
        let mut counts = [0; 3];
        for n in self.services.values().flat_map(|s| &s.nodes) {
            counts[match n.health {
                Health::Healthy => 0,
                Health::Unhealthy => 1,
                Health::Unknown => 2,
            }] += 1;
        }
        counts
    }

    /// One instance.
    pub fn instance(&self, key: &InstanceKey) -> Option<&ServiceNode> {
        let slot = *self.slots.get(key)?;
        self.services.get(&key.service)?.nodes.get(slot)
    }

    fn instance_mut(&mut self, key: &InstanceKey) -> Option<&mut ServiceNode> {
        let slot = *self.slots.get(key)?;
        self.service_mut(&key.service)?.nodes.get_mut(slot)
    }

    /// Every instance with its key, in service order.
    pub fn instances(&self) -> impl Iterator<Item = (InstanceKey, &ServiceNode)> {
        self.services.values().flat_map(|s| s.nodes.iter().map(move |n| (n.key(&s.name), n)))
    }

    /// Puts `s` in place of the service of its name, indexing its instances.
    fn insert_service(&mut self, s: Service, applied: &mut Applied) {
        if let Some(old) = self.services.remove(&s.name) {
            for n in &old.nodes {
                let key = n.key(&old.name);
                self.slots.remove(&key);
                if !s.nodes.iter().any(|m| m.host == n.host && m.port == n.port) {
                    applied.removed.push(key);
                }
            }
        }
        for (i, n) in s.nodes.iter().enumerate() {
            let key = n.key(&s.name);
            self.slots.insert(key.clone(), i);
            applied.registered.push(key);
        }
        self.services.insert(s.name.clone(), Arc::new(s));
    }

    fn remove_service(&mut self, name: &str, applied: &mut Applied) -> bool {
        self.implicit.remove(name);
        let Some(old) = self.services.remove(name) else { return false };
        for n in &old.nodes {
            let key = n.key(name);
            self.slots.remove(&key);
            applied.removed.push(key);
        }
        true
    }

    /// Removes one instance (and its service if it was implicit and this was its last).
    fn remove_instance(&mut self, key: &InstanceKey, applied: &mut Applied) -> bool {
        let Some(slot) = self.slots.remove(key) else { return false };
        let Some(s) = self.services.get_mut(&key.service).map(Arc::make_mut) else { return false };
        s.nodes.swap_remove(slot);
        if let Some(moved) = s.nodes.get(slot) {
            self.slots.insert(moved.key(&key.service), slot);
        }
        if s.nodes.is_empty() && self.implicit.contains(&key.service) {
            self.services.remove(&key.service);
            self.implicit.remove(&key.service);
        }
        applied.removed.push(key.clone());
        true
    }

    /// Applies a committed command found at log index `index`; answers what it changed, or
    /// why the command was refused (the same on every node: it depends on the state alone).
    pub fn apply(&mut self, cmd: RegistryCommand, index: u64) -> Result<Applied, String> {
        let mut applied = Applied::default();
        applied.count = match cmd {
            RegistryCommand::Set(services) => {
                let n = services.len();
                for mut s in services {
                    for node in &mut s.nodes {
                        let old = self.instance(&node.key(&s.name));
                        node.health = node.initial_health(old);
                        node.revision = index;
                    }
                    self.implicit.remove(&s.name);
                    self.insert_service(s, &mut applied);
                }
                n
            }
            RegistryCommand::Remove(names) => names.iter().filter(|n| self.remove_service(n, &mut applied)).count(),
            RegistryCommand::Register { service, kind, mut node } => {
                let key = node.key(&service);
                node.revision = index;
                match self.instance_mut(&key) {
                    Some(old) => {
                        node.health = node.initial_health(Some(old));
                        *old = node;
                    }
                    None => {
                        if !self.services.contains_key(&service) {
                            self.implicit.insert(service.clone());
                        }
                        let s = Arc::make_mut(
                            self.services
                                .entry(service.clone())
                                .or_insert_with(|| Arc::new(Service::new(service, kind))),
                        );
                        node.health = node.initial_health(None);
                        s.nodes.push(node);
                        self.slots.insert(key.clone(), s.nodes.len() - 1);
                    }
                }
                applied.registered.push(key);
                1
            }
            RegistryCommand::Deregister(key) => usize::from(self.remove_instance(&key, &mut applied)),
            RegistryCommand::SetHealth { key, health } => match self.instance_mut(&key) {
                Some(n) => {
                    n.health = health;
                    1
                }
                None => 0,
            },
            RegistryCommand::Checked(outcomes) => {
                let mut n = 0;
                for CheckOutcome { key, revision, change } in outcomes {
                    // An outcome speaks only for the registration it judged.
                    if self.instance(&key).is_none_or(|i| i.revision != revision) {
                        continue;
                    }
                    match change {
                        Change::Health(h) => {
                            if let Some(i) = self.instance_mut(&key) {
                                i.health = h;
                            }
                        }
                        Change::Expire => {
                            self.remove_instance(&key, &mut applied);
                        }
                    }
                    n += 1;
                }
                n
            }
            RegistryCommand::Define { service, create, update } => match self.service_mut(&service.name) {
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
                    self.services.insert(name, Arc::new(Service { nodes: Vec::new(), ..service }));
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
        };
        Ok(applied)
    }
}

/// Nacos' protect threshold of a service (`protectThreshold`, 0 to 1; 0 when not set).
pub fn protect_threshold(service: &Service) -> f64 {
    service.extra.get("protectThreshold").and_then(serde_json::Value::as_f64).unwrap_or(0.0).clamp(0.0, 1.0)
}

/// Whether a service whose `healthy` of `total` instances are healthy has reached its
/// protect threshold (Nacos: the healthy share is at or below it). Listing then offers every
/// instance as healthy, so that a mass failure of checks does not send all traffic to the
/// few left, or none anywhere.
pub fn protection_reached(threshold: f64, healthy: usize, total: usize) -> bool {
    total > 0 && (healthy as f64 / total as f64) <= threshold
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
    use std::collections::BTreeMap;

    fn node(host: &str, port: u16, weight: u32) -> ServiceNode {
        ServiceNode { weight: f64::from(weight), ..ServiceNode::new(host, port) }
    }

    /// Applies at a made-up index; answers the count.
    fn ap(r: &mut Registry, cmd: RegistryCommand) -> Result<usize, String> {
        r.apply(cmd, 1).map(|a| a.count)
    }

    fn key(s: &str, host: &str, port: u16) -> InstanceKey {
        InstanceKey { service: s.into(), host: host.into(), port }
    }

    #[test]
    fn register_creates_and_deregister_removes_an_implicit_service() {
        let mut r = Registry::default();
        ap(&mut r, RegistryCommand::Register { service: "web".into(), kind: "http".into(), node: node("a", 1, 1) })
            .unwrap();
        assert_eq!(r.get("web").unwrap().nodes.len(), 1);
        ap(&mut r, RegistryCommand::Deregister(key("web", "a", 1))).unwrap();
        assert!(r.get("web").is_none(), "a service made by registration goes with its last instance");
        ap(
            &mut r,
            RegistryCommand::Set(vec![Service {
                name: "db".into(),
                kind: "tcp".into(),
                nodes: vec![node("b", 2, 1)],
                extra: BTreeMap::new(),
            }]),
        )
        .unwrap();
        ap(&mut r, RegistryCommand::Deregister(key("db", "b", 2))).unwrap();
        assert!(r.get("db").is_some(), "a declared service stays, empty");
    }

    #[test]
    fn define_keeps_instances_and_drop_refuses_a_service_in_use() {
        let mut r = Registry::default();
        let mut svc = Service::new("web", "");
        svc.extra.insert("protectThreshold".into(), serde_json::json!(0.5));
        ap(&mut r, RegistryCommand::Define { service: svc.clone(), create: true, update: false }).unwrap();
        let again =
            ap(&mut r, RegistryCommand::Define { service: svc.clone(), create: true, update: false }).unwrap_err();
        assert!(again.contains("already exists"), "{again}");
        ap(&mut r, RegistryCommand::Register { service: "web".into(), kind: String::new(), node: node("a", 1, 1) })
            .unwrap();
        svc.extra.insert("protectThreshold".into(), serde_json::json!(0.8));
        ap(&mut r, RegistryCommand::Define { service: svc, create: false, update: true }).unwrap();
        let web = r.get("web").unwrap();
        assert_eq!((web.nodes.len(), &web.extra["protectThreshold"]), (1, &serde_json::json!(0.8)));
        let busy = ap(&mut r, RegistryCommand::Drop("web".into())).unwrap_err();
        assert!(busy.contains("1 instance"), "{busy}");
        ap(&mut r, RegistryCommand::Deregister(key("web", "a", 1))).unwrap();
        assert!(r.get("web").is_some(), "a defined service stays when its last instance goes");
        ap(&mut r, RegistryCommand::Drop("web".into())).unwrap();
        assert!(ap(&mut r, RegistryCommand::Drop("web".into())).unwrap_err().contains("does not exist"));
    }

    #[test]
    fn health_survives_a_repeated_set_of_the_same_instance() {
        let mut r = Registry::default();
        let checked = ServiceNode { check: Some(CheckKind::Tcp), ..node("a", 1, 1) };
        let svc =
            Service { name: "s".into(), kind: "tcp".into(), nodes: vec![checked.clone()], extra: BTreeMap::new() };
        ap(&mut r, RegistryCommand::Set(vec![svc.clone()])).unwrap();
        assert_eq!(r.instance(&key("s", "a", 1)).unwrap().health, Health::Unknown, "checked: unknown until probed");
        ap(&mut r, RegistryCommand::SetHealth { key: key("s", "a", 1), health: Health::Unhealthy }).unwrap();
        ap(&mut r, RegistryCommand::Set(vec![svc])).unwrap();
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
