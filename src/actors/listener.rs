//! `Listener`: accepts connections, runs the handshake (TLS when the node has it, then group,
//! version, token, and for peers an id this cluster has not removed and, with TLS, a
//! certificate), and starts a `Connection` for each accepted one. Holds no state but the bound
//! socket.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::SystemTime;

use actix::prelude::*;
use futures::stream;
use subtle::ConstantTimeEq;

use crate::actors::connection::{Connection, Place};
use crate::auth::Auth;
use crate::config::Config;
use crate::handle::WireRouter;
use crate::messages::client::{CountRefusal, GetRefusals, StopListener};
use crate::raft::members::Members;
use crate::tls::Tls;
use crate::transport::{BoxStream, Listener as BoundListener};
use crate::wire::handshake::AcceptError;
use crate::wire::{Hello, Refusal, RefusalKind, RefusedConnections, Welcome, handshake};

/// The accepting actor; owns the counts of refused connections.
pub struct Listener {
    bound: Option<Box<dyn BoundListener>>,
    node: WireRouter,
    /// Built once: the key behind login tokens is derived at start, not per connection.
    auth: Option<Auth>,
    refused: RefusedConnections,
    /// Client connections open now (each `Connection` gives its place back when it stops).
    clients: Arc<AtomicUsize>,
    /// TLS, when the node has it: every connection's first exchange.
    tls: Option<Arc<Tls>>,
    /// Connections accepted whose handshake is not over (at most [`MAX_HANDSHAKES`]).
    handshakes: Arc<AtomicUsize>,
}

/// Most handshakes (TLS's and the hello) under way at once; a connection accepted past it is
/// closed at once and counted as `too_many_connections`.
pub const MAX_HANDSHAKES: usize = 128;

impl Listener {
    /// A listener on an already bound socket.
    pub fn new(bound: Box<dyn BoundListener>, node: WireRouter) -> Self {
        let auth = Auth::from_config(node.config());
        let tls = node.tls().cloned();
        Listener {
            tls,
            bound: Some(bound),
            node,
            auth,
            refused: RefusedConnections::default(),
            clients: Arc::new(AtomicUsize::new(0)),
            handshakes: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Decides whether a `Hello` may open a connection, and with what frame limit. Peers present
/// the cluster token when there is one; clients present it too, or, when the node has
/// credentials (`auth`), a login token.
/// `clients` is how many client connections are open: one more than
/// `max_client_connections` is refused (peers always get in).
///
/// A peer's id is refused if `members` (the newest configuration this node knows committed)
/// says the cluster removed it, or if it is this node's own: a removal not yet committed may
/// be undone, and the node removed may lead meanwhile. Any other id gets in, member or not yet: a node
/// behind on the log cannot know of every member added since (thesis §4.1: requests are
/// handled without consulting the configuration; etcd does the same). The group and the
/// cluster token tell this cluster's nodes from others; the core counts only members.
pub fn admit(
    config: &Config,
    members: &Members,
    auth: Option<&Auth>,
    hello: &Hello,
    clients: usize,
) -> Result<usize, Refusal> {
    admit_secured(config, members, auth, hello, clients, None)
}

/// [`admit`] on a TLS port: `certificate` is what the connection presented (`Some(None)`:
/// nothing), verified against the CA. A peer must present one (mutual TLS, on top of the
/// cluster token), and one naming its address when this node knows the id as a member: a
/// certificate speaks for its own host only. (An id this node does not know yet, a member
/// added since, cannot be checked so: the CA should be the cluster's own.)
pub fn admit_secured(
    config: &Config,
    members: &Members,
    auth: Option<&Auth>,
    hello: &Hello,
    clients: usize,
    certificate: Option<Option<&rustls_pki_types::CertificateDer<'static>>>,
) -> Result<usize, Refusal> {
    if hello.group != config.group {
        let m = format!("wrong group {:?}: this node belongs to {:?}", hello.group, config.group);
        return Err(Refusal::new(RefusalKind::WrongGroup, m));
    }
    let presented = hello.token.as_deref().unwrap_or_default();
    // Constant time, so the answer's timing does not leak how much of a guess was right.
    let cluster_ok = config.cluster_token.as_ref().map(|t| bool::from(presented.as_bytes().ct_eq(t.as_bytes())));
    let client_login_ok = hello.node_id.is_none() && auth.is_some_and(|a| a.verify(presented, SystemTime::now()));
    let token_needed = config.cluster_token.is_some() || (hello.node_id.is_none() && auth.is_some());
    if token_needed && cluster_ok != Some(true) && !client_login_ok {
        let m = match (hello.token.is_some(), auth.is_some()) {
            (false, _) => "this cluster requires a token",
            (true, false) => "wrong cluster token",
            (true, true) => "wrong or expired token",
        };
        return Err(Refusal::new(RefusalKind::BadToken, m));
    }
    match hello.node_id {
        None if clients >= config.max_client_connections => Err(Refusal::new(
            RefusalKind::TooManyConnections,
            format!("this node already serves {clients} clients (max_client_connections); retry later"),
        )),
        None => Ok(config.client_max_frame()),
        Some(id) if id == config.id => {
            Err(Refusal::new(RefusalKind::UnknownNode, format!("node id {id} is this node's own: ids must be unique")))
        }
        Some(id) if members.removed.contains(&id) => Err(Refusal::new(
            RefusalKind::UnknownNode,
            format!("node id {id} was removed from this cluster and is not a member"),
        )),
        Some(id) if hello.lease_wait_ms != config.lease_wait_ms() => {
            let mode = |wait: Option<u64>| match wait {
                Some(ms) => format!("read_mode = \"lease\" with election_timeout_min_ms = {ms}"),
                None => "read_mode = \"index\"".to_string(),
            };
            let (theirs, ours) = (mode(hello.lease_wait_ms), mode(config.lease_wait_ms()));
            Err(Refusal::new(
                RefusalKind::WrongReadMode,
                format!(
                    "node {id} runs {theirs}, this node {ours}: every member must run the same (switch with all nodes stopped)"
                ),
            ))
        }
        Some(id) if certificate == Some(None) => Err(Refusal::new(
            RefusalKind::Tls,
            format!("node {id} presented no certificate: peers of a cluster with TLS must present one from its CA"),
        )),
        Some(id) => match (certificate.flatten(), members.addr(id)) {
            (Some(cert), Some(addr)) if !crate::tls::names_host(cert, addr) => Err(Refusal::new(
                RefusalKind::Tls,
                format!("node {id}'s certificate does not name {addr}, its address in this cluster"),
            )),
            _ => Ok(config.peer_max_frame()),
        },
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
        if self.handshakes.load(std::sync::atomic::Ordering::Acquire) >= MAX_HANDSHAKES {
            // Shed, not queued: a handshake costs this (Raft's) thread a key exchange with
            // TLS, and a flood of them must not take its time from heartbeats. Peers retry.
            tracing::debug!(%remote, "too many handshakes under way; connection closed");
            self.refused.count(RefusalKind::TooManyConnections);
            return;
        }
        let handshaking = Place::take(self.handshakes.clone());
        let node = self.node.clone();
        let auth = self.auth.clone();
        let welcome = Welcome { group: node.config().group.clone(), node_id: node.id() };
        let timeout = node.config().handshake_timeout();
        let clients = self.clients.clone();
        let tls = self.tls.clone();
        let fut = async move {
            let _handshaking = handshaking;
            let (stream, certificate) = match tls {
                None => (stream, None),
                Some(tls) => match tokio::time::timeout(timeout, tls.accept(stream)).await {
                    Ok(Ok(secured)) => (secured.stream, Some(secured.certificate)),
                    Ok(Err(e)) => {
                        // A plain-text client, or a certificate refused (foreign, expired):
                        // the other end is known only by its address yet.
                        tracing::warn!(%remote, error = %e, "tls handshake failed; connection refused");
                        return Some(RefusalKind::Tls);
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "no tls handshake within the handshake timeout");
                        return Some(RefusalKind::Timeout);
                    }
                },
            };
            let config = node.config().clone();
            let open = clients.clone();
            let members = node.committed_members();
            let admitted = move |h: &Hello| {
                let open = open.load(std::sync::atomic::Ordering::Acquire);
                admit_secured(&config, &members, auth.as_ref(), h, open, certificate.as_ref().map(Option::as_ref))
            };
            match handshake::accept(stream, welcome, timeout, admitted).await {
                Ok((reader, write, hello)) => {
                    tracing::debug!(%remote, peer = ?hello.node_id, "connection accepted");
                    let place = hello.node_id.is_none().then(|| Place::take(clients));
                    Connection::start(node, hello.node_id, remote, reader, write, place);
                    None
                }
                Err(AcceptError::Refused(r)) => {
                    tracing::warn!(%remote, reason = ?r.kind, message = %r.message, "connection refused");
                    Some(r.kind)
                }
                Err(AcceptError::Gone(e)) => {
                    tracing::debug!(%remote, error = %e, "connection closed during handshake");
                    None
                }
            }
        };
        ctx.spawn(fut.into_actor(self).map(|refused, act, _| {
            if let Some(kind) = refused {
                act.refused.count(kind);
            }
        }));
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<CountRefusal> for Listener {
    type Result = ();

    fn handle(&mut self, msg: CountRefusal, _: &mut Context<Self>) {
        self.refused.count(msg.0);
    }
}

impl Handler<GetRefusals> for Listener {
    type Result = MessageResult<GetRefusals>;

    fn handle(&mut self, _: GetRefusals, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.refused)
    }
}

impl Handler<StopListener> for Listener {
    type Result = ();

    fn handle(&mut self, _: StopListener, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
