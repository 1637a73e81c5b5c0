//! `PeerLink`: the outbound codec actor for one peer. Owns one TCP connection to that peer
//! (reconnecting with back-off), the request ids in flight on it, and their reply channels.
//!
//! Receives: `Call` (a request to send; answered with the peer's response).
//! Sends: frames to the peer. Many calls may be in flight at once (pipelining); responses are
//! matched by id.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::channel::oneshot;
use futures::{StreamExt, stream};

use crate::config::Config;
use crate::error::WireError;
use crate::raft::NodeId;
use crate::transport::TransportRef;
use crate::wire::{Frame, FrameSender, Hello, Request, Response, handshake, spawn_writer};

type Reply = oneshot::Sender<Result<Response, WireError>>;

/// Send `request` to the peer and wait at most `timeout` for its response.
#[derive(Debug, Message)]
#[rtype(result = "Result<Response, WireError>")]
pub struct Call {
    /// The request.
    pub request: Request,
    /// How long to wait for the response.
    pub timeout: Duration,
}

/// Close the connection and stop.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopLink;

enum Event {
    Frame(u64, Result<Frame, WireError>),
    Closed(u64),
}

impl Message for Event {
    type Result = ();
}

enum State {
    Idle,
    Connecting { queued: Vec<(u64, Request)> },
    Connected { writer: FrameSender, reader: SpawnHandle },
}

/// The outbound link to one peer.
pub struct PeerLink {
    peer: NodeId,
    addr: String,
    hello: Hello,
    config: Arc<Config>,
    transport: TransportRef,
    state: State,
    pending: BTreeMap<u64, Reply>,
    /// When the oldest call still waiting was sent, and when the peer last said anything:
    /// a connection that takes requests and never answers is dropped and reopened.
    waiting_since: Option<tokio::time::Instant>,
    last_heard: tokio::time::Instant,
    next_id: u64,
    /// Connection generation, so events from a replaced connection are ignored.
    generation: u64,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
}

const MAX_QUEUED: usize = 65_536;

impl PeerLink {
    /// A link from this node (`config.id`) to `peer` at `addr`.
    pub fn new(peer: NodeId, addr: String, config: Arc<Config>, transport: TransportRef) -> Self {
        let hello = Hello {
            group: config.group.clone(),
            node_id: Some(config.id),
            token: config.cluster_token.clone(),
            lease_wait_ms: config.lease_wait_ms(),
        };
        PeerLink {
            peer,
            addr,
            hello,
            config,
            transport,
            state: State::Idle,
            pending: BTreeMap::new(),
            waiting_since: None,
            last_heard: tokio::time::Instant::now(),
            next_id: 1,
            generation: 0,
            failures: 0,
            retry_at: None,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        let connect = self.transport.connect(&self.addr);
        let hello = self.hello.clone();
        let timeout = self.config.handshake_timeout();
        let max_frame = self.config.peer_max_frame();
        let fut = async move {
            let stream = tokio::time::timeout(timeout, connect).await.map_err(|_| WireError::Timeout)??;
            handshake::connect(stream, hello, timeout, max_frame).await
        };
        let peer = self.peer;
        let fut = async move {
            let (reader, write, welcome) = fut.await?;
            // Counting another node's answers as this peer's would count one voter twice.
            if welcome.node_id != peer {
                return Err(WireError::Handshake(format!(
                    "expected node {peer}, the address answered as node {}",
                    welcome.node_id
                )));
            }
            Ok((reader, write, welcome))
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if act.generation != generation {
                return;
            }
            let queued = match std::mem::replace(&mut act.state, State::Idle) {
                State::Connecting { queued } => queued,
                _ => Vec::new(),
            };
            match res {
                Ok((reader, write, _)) => {
                    tracing::debug!(id = act.config.id, peer = act.peer, addr = %act.addr, "connected to peer");
                    act.failures = 0;
                    let events = reader
                        .map(move |r| Event::Frame(generation, r))
                        .chain(stream::once(async move { Event::Closed(generation) }));
                    let reader = ctx.add_stream(events);
                    let writer = spawn_writer(write);
                    for (id, request) in queued {
                        let _ = writer.send(Frame::Request(id, request));
                    }
                    act.state = State::Connected { writer, reader };
                }
                Err(e) => {
                    act.failures = act.failures.saturating_add(1);
                    // Back off 50 ms, doubling to 1 s, so a dead peer costs little.
                    let backoff = Duration::from_millis((50u64 << act.failures.min(5)).min(1_000));
                    act.retry_at = Some(tokio::time::Instant::now() + backoff);
                    let tls_failed = matches!(&e, WireError::Io(io) if crate::tls::is_tls_error(io));
                    if tls_failed && (act.failures == 1 || act.failures % 20 == 0) {
                        // Its certificate refused here (expired, another CA's, another name),
                        // or this node's refused there.
                        tracing::warn!(id = act.config.id, peer = act.peer, addr = %act.addr, error = %e, "tls with peer failed");
                    } else if matches!(e, WireError::Handshake(_)) && (act.failures == 1 || act.failures % 20 == 0) {
                        tracing::warn!(id = act.config.id, peer = act.peer, addr = %act.addr, error = %e, "peer refused the handshake");
                    } else if act.failures == 1 || act.failures % 20 == 0 {
                        tracing::debug!(id = act.config.id, peer = act.peer, addr = %act.addr, error = %e, failures = act.failures, "cannot reach peer");
                    }
                    for (id, _) in queued {
                        if let Some(tx) = act.pending.remove(&id) {
                            let _ = tx.send(Err(WireError::Handshake(e.to_string())));
                        }
                    }
                }
            }
        }));
        self.state = State::Connecting { queued: Vec::new() };
    }

    fn disconnect(&mut self, ctx: &mut Context<Self>, why: &str) {
        if let State::Connected { reader, .. } = std::mem::replace(&mut self.state, State::Idle) {
            tracing::debug!(id = self.config.id, peer = self.peer, addr = %self.addr, why, "peer connection closed");
            // Dropping the writer closes our side; cancelling the reader releases the socket.
            ctx.cancel_future(reader);
        }
        self.generation += 1;
        self.waiting_since = None;
        for (_, tx) in std::mem::take(&mut self.pending) {
            let _ = tx.send(Err(WireError::Closed));
        }
    }
}

impl PeerLink {
    /// A peer that neither answers nor closes (a silently dropped connection, a half-open
    /// socket behind a dead middlebox) would hold every call until its timeout forever:
    /// when calls have waited a whole election timeout and nothing came back since, the
    /// connection is dropped and the next call opens a new one.
    fn check_liveness(&mut self, ctx: &mut Context<Self>) {
        self.pending.retain(|_, tx| !tx.is_canceled());
        if self.pending.is_empty() {
            self.waiting_since = None;
            return;
        }
        let limit = Duration::from_millis(self.config.election_timeout_max_ms);
        let now = tokio::time::Instant::now();
        let since = *self.waiting_since.get_or_insert(now);
        if now.duration_since(since) >= limit && now.duration_since(self.last_heard) >= limit {
            tracing::debug!(id = self.config.id, peer = self.peer, addr = %self.addr, "peer connection unresponsive; reconnecting");
            self.disconnect(ctx, "unresponsive");
        }
    }
}

impl Actor for PeerLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        // Drop reply slots whose caller gave up (timed out), so a silent peer cannot grow them.
        let period = Duration::from_millis(self.config.election_timeout_min_ms.max(100));
        ctx.run_interval(period, |act, ctx| act.check_liveness(ctx));
    }
}

impl Handler<Call> for PeerLink {
    type Result = ResponseFuture<Result<Response, WireError>>;

    fn handle(&mut self, msg: Call, ctx: &mut Context<Self>) -> Self::Result {
        if matches!(self.state, State::Idle) {
            if let Some(at) = self.retry_at
                && tokio::time::Instant::now() < at
            {
                return Box::pin(async { Err(WireError::Closed) });
            }
            self.connect(ctx);
        }
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        match &mut self.state {
            State::Connected { writer, .. } => {
                if writer.send(Frame::Request(id, msg.request)).is_err() {
                    self.disconnect(ctx, "writer stopped");
                    return Box::pin(async { Err(WireError::Closed) });
                }
            }
            State::Connecting { queued } if queued.len() < MAX_QUEUED => queued.push((id, msg.request)),
            _ => return Box::pin(async { Err(WireError::Closed) }),
        }
        self.pending.insert(id, tx);
        let timeout = msg.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(WireError::Closed),
                Err(_) => Err(WireError::Timeout),
            }
        })
    }
}

impl StreamHandler<Event> for PeerLink {
    fn handle(&mut self, event: Event, ctx: &mut Context<Self>) {
        match event {
            Event::Frame(g, _) | Event::Closed(g) if g != self.generation => {}
            Event::Frame(_, Ok(Frame::Response(id, resp))) => {
                self.last_heard = tokio::time::Instant::now();
                self.waiting_since = None;
                if let Some(tx) = self.pending.remove(&id) {
                    let _ = tx.send(Ok(resp));
                }
            }
            Event::Frame(_, Ok(Frame::Error(msg))) => {
                tracing::warn!(id = self.config.id, peer = self.peer, addr = %self.addr, error = %msg, "peer closed the connection with an error");
                self.disconnect(ctx, "error frame");
            }
            Event::Frame(_, Ok(other)) => {
                tracing::warn!(id = self.config.id, peer = self.peer, frame = ?other, "unexpected frame from peer");
                self.disconnect(ctx, "unexpected frame");
            }
            Event::Frame(_, Err(e)) => {
                tracing::warn!(id = self.config.id, peer = self.peer, error = %e, "bad frame from peer");
                self.disconnect(ctx, "bad frame");
            }
            Event::Closed(_) => self.disconnect(ctx, "closed by peer"),
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // A connection ended; the link lives on and reconnects on the next call.
    }
}

impl Handler<StopLink> for PeerLink {
    type Result = ();

    fn handle(&mut self, _: StopLink, ctx: &mut Context<Self>) {
        self.disconnect(ctx, "stopping");
        ctx.stop();
    }
}
