//! `Connection`: the inbound codec actor, one per accepted TCP connection after its handshake.
//! Owns one socket and whether it belongs to a configured peer. Decodes frames into requests,
//! hands each to the node (which routes it to the right actor) and writes the response with
//! the request's id; many requests may be in flight at once. Holds no cluster state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix::prelude::*;

use crate::error::{ApiError, WireError};
use crate::handle::WireRouter;
use crate::raft::NodeId;
use crate::transport::BoxStream;
use crate::wire::handshake::FrameReader;
use crate::wire::{Frame, FrameSender, Response, spawn_writer};

/// Most requests a client may have outstanding on one connection (sent and not yet
/// answered, or answered and not yet read): past it the connection is closed, so a client
/// that pipelines without reading cannot grow the node's queues.
pub const MAX_CLIENT_INFLIGHT: usize = 1_024;

/// Where one request's response goes. Dropped unsent (the request was dropped on its way),
/// it answers that the node cannot serve it, so no request is left without an answer and no
/// place among the outstanding ones is lost.
struct Answer {
    id: u64,
    writer: Option<FrameSender>,
    inflight: Option<Arc<AtomicUsize>>,
}

impl Answer {
    fn send(mut self, response: Response) {
        if let Some(w) = self.writer.take() {
            let _ = w.send(Frame::Response(self.id, response));
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            let e = ApiError::Unavailable("the node is stopping".into());
            let _ = w.send(Frame::Response(self.id, Response::Error(e)));
        }
        if let Some(n) = &self.inflight {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One accepted connection.
pub struct Connection {
    node: WireRouter,
    peer: Option<NodeId>,
    remote: SocketAddr,
    writer: Option<FrameSender>,
    /// Requests dispatched and not yet answered (clients only).
    inflight: Arc<AtomicUsize>,
    /// A client's place among `max_client_connections`, given back when this stops.
    _place: Option<Place>,
}

impl Connection {
    /// Starts the actor for a connection that passed its handshake.
    pub fn start(
        node: WireRouter,
        peer: Option<NodeId>,
        remote: SocketAddr,
        reader: FrameReader<BoxStream>,
        write: tokio::io::WriteHalf<BoxStream>,
        place: Option<Place>,
    ) -> Addr<Connection> {
        Connection::create(move |ctx| {
            ctx.add_stream(reader);
            Connection {
                node,
                peer,
                remote,
                writer: Some(spawn_writer(write)),
                inflight: Arc::new(AtomicUsize::new(0)),
                _place: place,
            }
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
                let Some(writer) = self.writer.clone() else { return };
                if self.peer.is_none() {
                    let outstanding = self.inflight.load(Ordering::Acquire) + writer.queued();
                    if outstanding >= MAX_CLIENT_INFLIGHT {
                        tracing::warn!(remote = %self.remote, outstanding, "client has too many requests outstanding; closing");
                        let m = format!("more than {MAX_CLIENT_INFLIGHT} requests outstanding: read the responses");
                        self.close_with(ctx, m);
                        return;
                    }
                    self.inflight.fetch_add(1, Ordering::AcqRel);
                }
                let answer =
                    Answer { id, writer: Some(writer), inflight: self.peer.is_none().then(|| self.inflight.clone()) };
                if self.peer.is_none()
                    && let Some(clients) = self.node.clients()
                {
                    // A client's request is served off the Raft thread; this actor only
                    // decoded it. Handed over in arrival order, and `dispatch` queues its
                    // first actor message at once, so the order holds. (If that thread is
                    // gone, the closure is dropped and the answer says so.)
                    let node = self.node.clone();
                    clients.spawn_fn(move || {
                        let fut = node.dispatch(request, None);
                        actix_rt::spawn(async move { answer.send(fut.await) });
                    });
                    return;
                }
                // `dispatch` queues its first actor message now, keeping arrival order.
                let fut = self.node.dispatch(request, self.peer);
                ctx.spawn(async move { answer.send(fut.await) }.into_actor(self));
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

/// A place counted in a shared count (a client connection's among `max_client_connections`,
/// a handshake's among those under way); given back on drop.
#[derive(Debug)]
pub struct Place(Arc<AtomicUsize>);

impl Place {
    pub(crate) fn take(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Place(count)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
