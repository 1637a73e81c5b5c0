//! `ServiceRegistry`: the service state machine. Owns services and their instances (with the
//! health field the checks of a later step will set through the log).
//!
//! Receives: `ApplyEntries` (committed `registry` commands, in index order), `GetService`,
//! `ListServices`, and generic `Query`s carrying a JSON `RegistryQuery`. Sends nothing yet;
//! health probes, when they come, run as async tasks and propose their results as writes.

use std::collections::BTreeMap;

use actix::prelude::*;
use bytes::Bytes;

use crate::error::ApiError;
use crate::messages::apply::{ApplyEntries, Query};
use crate::messages::registry::{GetService, ListServices, RegistryCommand, RegistryQuery, Service};
use crate::raft::Payload;
use crate::state_machine::{AppliedGate, read_after};

/// The service registry state machine.
#[derive(Default)]
pub struct ServiceRegistry {
    services: BTreeMap<String, Service>,
    gate: AppliedGate,
}

impl ServiceRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn apply(&mut self, data: &[u8]) -> Result<Bytes, String> {
        let cmd: RegistryCommand = serde_json::from_slice(data).map_err(|e| format!("bad registry command: {e}"))?;
        let count = match cmd {
            RegistryCommand::Set(services) => {
                let n = services.len();
                for s in services {
                    self.services.insert(s.name.clone(), s);
                }
                n
            }
            RegistryCommand::Remove(names) => names.iter().filter(|n| self.services.remove(*n).is_some()).count(),
        };
        Ok(Bytes::from(format!("{{\"count\":{count}}}")))
    }

    fn answer(&self, q: RegistryQuery) -> Result<Bytes, ApiError> {
        let json = match q {
            RegistryQuery::Get(name) => serde_json::to_vec(&self.services.get(&name)),
            RegistryQuery::List => serde_json::to_vec(&self.services.values().collect::<Vec<_>>()),
        };
        json.map(Bytes::from).map_err(|e| ApiError::BadRequest(e.to_string()))
    }
}

impl Actor for ServiceRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
    }
}

impl Handler<ApplyEntries> for ServiceRegistry {
    type Result = Vec<Result<Bytes, String>>;

    fn handle(&mut self, msg: ApplyEntries, _: &mut Context<Self>) -> Self::Result {
        let out = msg
            .entries
            .iter()
            .map(|e| match &e.payload {
                Payload::Command { data, .. } => self.apply(data),
                Payload::Blank => Ok(Bytes::new()),
            })
            .collect();
        self.gate.advance(msg.applied_to);
        out
    }
}

impl Handler<GetService> for ServiceRegistry {
    type Result = ResponseActFuture<Self, Option<Service>>;

    fn handle(&mut self, msg: GetService, _: &mut Context<Self>) -> Self::Result {
        read_after(self, |a| &mut a.gate, msg.min_applied, move |a| a.services.get(&msg.name).cloned())
    }
}

impl Handler<ListServices> for ServiceRegistry {
    type Result = ResponseActFuture<Self, Vec<Service>>;

    fn handle(&mut self, msg: ListServices, _: &mut Context<Self>) -> Self::Result {
        read_after(self, |a| &mut a.gate, msg.min_applied, |a| a.services.values().cloned().collect())
    }
}

impl Handler<Query> for ServiceRegistry {
    type Result = ResponseActFuture<Self, Result<Bytes, ApiError>>;

    fn handle(&mut self, msg: Query, _: &mut Context<Self>) -> Self::Result {
        let q: Result<RegistryQuery, _> = serde_json::from_slice(&msg.data);
        read_after(
            self,
            |a| &mut a.gate,
            msg.min_applied,
            move |a| a.answer(q.map_err(|e| ApiError::BadRequest(format!("bad registry query: {e}")))?),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replace_remove() {
        let mut r = ServiceRegistry::new();
        let svc: Service = serde_json::from_str(
            r#"{"name":"db","type":"mysql","node":[{"host":"10.0.0.1","port":3306,"priority":2,"check":"tcp"}]}"#,
        )
        .unwrap();
        assert_eq!(svc.nodes[0].extra.get("priority"), Some(&serde_json::json!(2)));
        r.apply(&serde_json::to_vec(&RegistryCommand::Set(vec![svc.clone()])).unwrap()).unwrap();
        let got: Option<Service> = serde_json::from_slice(&r.answer(RegistryQuery::Get("db".into())).unwrap()).unwrap();
        assert_eq!(got, Some(svc));
        r.apply(&serde_json::to_vec(&RegistryCommand::Remove(vec!["db".into()])).unwrap()).unwrap();
        assert_eq!(&r.answer(RegistryQuery::List).unwrap()[..], b"[]");
    }
}
