//! `Listener`: accepts connections, runs the handshake (group, version, and for peers a
//! configured node id), and starts a `Connection` for each accepted one. Holds no state but
//! the bound socket.

use std::io;
use std::net::SocketAddr;

use actix::prelude::*;
use futures::stream;

use crate::actors::connection::Connection;
use crate::node::NodeHandle;
use crate::transport::{BoxStream, Listener as BoundListener};
use crate::wire::{Hello, Welcome, handshake};

/// Stop accepting.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopListener;

/// The accepting actor.
pub struct Listener {
    bound: Option<Box<dyn BoundListener>>,
    node: NodeHandle,
}

impl Listener {
    /// A listener on an already bound socket.
    pub fn new(bound: Box<dyn BoundListener>, node: NodeHandle) -> Self {
        Listener { bound: Some(bound), node }
    }
}

/// Decides whether a `Hello` may open a connection, and with what frame limit.
fn admit(node: &NodeHandle, hello: &Hello) -> Result<usize, String> {
    let config = node.config();
    if hello.group != config.group {
        return Err(format!("wrong group {:?}: this node belongs to {:?}", hello.group, config.group));
    }
    match hello.node_id {
        None => Ok(config.client_max_frame()),
        Some(id) if config.peers.iter().any(|p| p.id == id) => Ok(config.peer_max_frame()),
        Some(id) => Err(format!("node id {id} is not a member of this cluster")),
    }
}

type Accepted = io::Result<(BoxStream, SocketAddr)>;

impl Actor for Listener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(bound) = self.bound.take() else { return };
        let accepts = stream::unfold(bound, |mut l| async move {
            let r = l.accept().await;
            Some((r, l))
        });
        ctx.add_stream(accepts);
    }
}

impl StreamHandler<Accepted> for Listener {
    fn handle(&mut self, item: Accepted, ctx: &mut Context<Self>) {
        let (stream, remote) = match item {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: keep accepting, but not in a hot loop.
                tracing::warn!(error = %e, "accept failed");
                return;
            }
        };
        let node = self.node.clone();
        let welcome = Welcome { group: node.config().group.clone(), node_id: node.id() };
        let timeout = node.config().handshake_timeout();
        let fut = async move {
            let admit_node = node.clone();
            match handshake::accept(stream, welcome, timeout, move |h| admit(&admit_node, h)).await {
                Ok((reader, write, hello)) => {
                    tracing::debug!(%remote, peer = ?hello.node_id, "connection accepted");
                    Connection::start(node, hello.node_id, remote, reader, write);
                }
                Err(e) => tracing::warn!(%remote, error = %e, "connection refused"),
            }
        };
        ctx.spawn(fut.into_actor(self));
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<StopListener> for Listener {
    type Result = ();

    fn handle(&mut self, _: StopListener, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
