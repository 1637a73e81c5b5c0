//! `Connection`: the inbound codec actor, one per accepted TCP connection after its handshake.
//! Owns one socket and whether it belongs to a configured peer. Decodes frames into requests,
//! hands each to the node (which routes it to the right actor) and writes the response with
//! the request's id; many requests may be in flight at once. Holds no cluster state.

use std::net::SocketAddr;

use actix::prelude::*;

use crate::error::{ApiError, WireError};
use crate::node::NodeHandle;
use crate::raft::NodeId;
use crate::transport::BoxStream;
use crate::wire::handshake::FrameReader;
use crate::wire::{Frame, FrameSender, Response, spawn_writer};

/// One accepted connection.
pub struct Connection {
    node: NodeHandle,
    peer: Option<NodeId>,
    remote: SocketAddr,
    writer: Option<FrameSender>,
}

impl Connection {
    /// Starts the actor for a connection that passed its handshake.
    pub fn start(
        node: NodeHandle,
        peer: Option<NodeId>,
        remote: SocketAddr,
        reader: FrameReader<BoxStream>,
        write: tokio::io::WriteHalf<BoxStream>,
    ) -> Addr<Connection> {
        Connection::create(move |ctx| {
            ctx.add_stream(reader);
            Connection { node, peer, remote, writer: Some(spawn_writer(write)) }
        })
    }

    fn send(&self, frame: Frame) {
        if let Some(w) = &self.writer {
            let _ = w.send(frame);
        }
    }

    /// Sends a last error frame and closes: the writer flushes what is queued, then shuts the
    /// socket.
    fn close_with(&mut self, ctx: &mut Context<Self>, message: String) {
        self.send(Frame::Error(message));
        self.writer = None;
        ctx.stop();
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(peer) = self.peer {
            self.node.peer_disconnected(peer);
        }
    }
}

impl StreamHandler<Result<Frame, WireError>> for Connection {
    fn handle(&mut self, item: Result<Frame, WireError>, ctx: &mut Context<Self>) {
        match item {
            Ok(Frame::Request(id, request)) => {
                if request.is_peer_only() && self.peer.is_none() {
                    tracing::warn!(remote = %self.remote, "client connection sent a peer-only request; closing");
                    self.node.count_refusal(crate::wire::RefusalKind::RaftFromClient);
                    let err = ApiError::BadRequest("raft messages are accepted only from configured peers".into());
                    self.send(Frame::Response(id, Response::Error(err)));
                    self.close_with(ctx, "peer-only request on a client connection".into());
                    return;
                }
                // `dispatch` queues its first actor message now, keeping arrival order.
                let fut = self.node.dispatch(request, self.peer);
                let writer = self.writer.clone();
                ctx.spawn(
                    async move {
                        let response = fut.await;
                        if let Some(w) = writer {
                            let _ = w.send(Frame::Response(id, response));
                        }
                    }
                    .into_actor(self),
                );
            }
            Ok(other) => {
                tracing::warn!(remote = %self.remote, frame = ?other, "unexpected frame; closing");
                self.close_with(ctx, "expected a request".into());
            }
            Err(e) => {
                tracing::warn!(remote = %self.remote, peer = ?self.peer, error = %e, "bad frame; closing");
                self.close_with(ctx, e.to_string());
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // The remote closed its side: answers still pending have nowhere to go.
        ctx.stop();
    }
}
