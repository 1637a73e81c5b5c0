//! [`RegistryHandle`]: services and instances, their beats, and balancing over them.

use std::sync::Arc;

use actix::prelude::*;
use futures::FutureExt;
use futures::future::LocalBoxFuture;

use super::{Core, mailbox, ready};
use crate::actors::service_registry::ServiceRegistry;
use crate::error::ApiError;
use crate::messages::raft::ForwardToLeader;
use crate::messages::registry::{
    Balance, Beat, GetRegistryStats, InstanceKey, REGISTRY_NAMESPACE, RegistryCommand, RegistryStats, Service,
    ServiceNode, Strategy,
};
use crate::registry::Services;
use crate::state_machine::{Reader, View};
use crate::wire::{Consistency, Request, Response, WriteReply};

/// The service registry of a node.
#[derive(Clone)]
pub struct RegistryHandle {
    pub(crate) core: Arc<Core>,
    pub(crate) registry: Addr<ServiceRegistry>,
    /// The services as `ServiceRegistry` applied them: reads are answered from here, on the
    /// caller's thread.
    pub(crate) services: Reader<Services>,
}

impl RegistryHandle {
    /// The `ServiceRegistry` actor.
    pub fn actor(&self) -> &Addr<ServiceRegistry> {
        &self.registry
    }

    fn command(&self, command: RegistryCommand) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.core.write_command(REGISTRY_NAMESPACE, command)
    }

    /// Creates or replaces services.
    pub fn set_services(&self, services: Vec<Service>) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.command(RegistryCommand::Set(services))
    }

    /// Removes services by name.
    pub fn remove_services(&self, names: Vec<String>) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.command(RegistryCommand::Remove(names))
    }

    /// Creates or updates one instance (and its service, if new).
    pub fn register_instance(
        &self,
        service: String,
        kind: String,
        node: ServiceNode,
    ) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.command(RegistryCommand::Register { service, kind, node })
    }

    /// Creates a service (refused if it exists, with `create`) or updates its own fields,
    /// keeping its instances (refused if it does not exist, with `update`).
    pub fn define_service(
        &self,
        service: Service,
        create: bool,
        update: bool,
    ) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.command(RegistryCommand::Define { service, create, update })
    }

    /// Removes a service that has no instance (refused otherwise).
    pub fn drop_service(&self, name: String) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.command(RegistryCommand::Drop(name))
    }

    /// Removes one instance.
    pub fn deregister_instance(&self, key: InstanceKey) -> LocalBoxFuture<'static, Result<WriteReply, ApiError>> {
        self.command(RegistryCommand::Deregister(key))
    }

    /// One available instance of `name`, picked from this node's copy of the registry.
    pub fn balance(&self, name: String, strategy: Strategy) -> LocalBoxFuture<'static, Result<ServiceNode, ApiError>> {
        let fut = self.registry.send(Balance { name, strategy });
        async move { fut.await.map_err(mailbox)? }.boxed_local()
    }

    /// An instance says it is alive: the leader's registry records it (a follower passes it
    /// on, unless it was passed on already).
    pub fn beat(&self, key: InstanceKey, forwarded: bool) -> LocalBoxFuture<'static, Result<(), ApiError>> {
        let place = match self.core.admission.admit_beat() {
            Ok(p) => p,
            Err(e) => return ready(Err(e)),
        };
        let local = self.registry.send(Beat(key.clone()));
        let election = self.core.election.clone();
        async move {
            let _place = place;
            match local.await.map_err(mailbox)? {
                Err(ApiError::NotLeader { .. }) if !forwarded => {
                    match election
                        .send(ForwardToLeader(Request::Beat { key, forwarded: true }))
                        .await
                        .map_err(mailbox)?
                    {
                        Ok(Response::Done) => Ok(()),
                        Ok(other) => Err(ApiError::Unavailable(format!("unexpected answer to a beat: {other:?}"))),
                        Err(e) => Err(e),
                    }
                }
                other => other,
            }
        }
        .boxed_local()
    }

    /// How many services and instances this node's registry holds, and what its checks are
    /// doing (on the leader): counts only, nothing copied.
    pub fn stats(&self) -> LocalBoxFuture<'static, Result<RegistryStats, ApiError>> {
        let fut = self.registry.send(GetRegistryStats);
        async move { fut.await.map_err(mailbox) }.boxed_local()
    }

    /// The services as of a read index (linearizable) or as this node has them (stale):
    /// shared, nothing copied; hold it no longer than the read.
    pub fn view(&self, consistency: Consistency) -> LocalBoxFuture<'static, Result<Arc<View<Services>>, ApiError>> {
        let services = self.services.clone();
        self.core.read(consistency, move |min_applied| async move { services.at(min_applied).await })
    }

    /// One service.
    pub fn get_service(
        &self,
        name: String,
        consistency: Consistency,
    ) -> LocalBoxFuture<'static, Result<Option<Service>, ApiError>> {
        let view = self.view(consistency);
        async move { Ok(view.await?.state.get(&name).map(|s| Service::clone(s))) }.boxed_local()
    }

    /// Every service.
    pub fn list_services(&self, consistency: Consistency) -> LocalBoxFuture<'static, Result<Vec<Service>, ApiError>> {
        let view = self.view(consistency);
        async move { Ok(view.await?.state.values().map(|s| Service::clone(s)).collect()) }.boxed_local()
    }
}
