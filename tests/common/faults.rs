//! The fault layer of the in-process harness: a transport that wraps every TCP stream a node
//! opens or accepts and applies, per direction between two named nodes, the faults the test
//! asks for: drop every frame (a partition: the connection stays up and nothing arrives, as
//! when a network drops packets), drop a fraction of frames, or delay them. Faults act on the
//! real transport path: the node only sees sockets that go quiet or slow.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use dister::raft::NodeId;
use dister::transport::{BoxStream, Listener, Transport};
use dister::wire::{Frame, FrameCodec};
use futures::future::LocalBoxFuture;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

/// What happens to frames from one node to another.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rule {
    /// Drop every frame.
    pub drop_all: bool,
    /// Drop this fraction of frames (0.0..=1.0).
    pub drop_fraction: f64,
    /// Hold each frame this long.
    pub delay: Duration,
}

/// The faults in force, shared by every node's transport.
#[derive(Debug)]
pub struct Faults {
    rules: Mutex<BTreeMap<(NodeId, NodeId), Rule>>,
    rng: Mutex<StdRng>,
}

impl Faults {
    /// No faults.
    pub fn new(seed: u64) -> Arc<Faults> {
        Arc::new(Faults { rules: Mutex::new(BTreeMap::new()), rng: Mutex::new(StdRng::seed_from_u64(seed)) })
    }

    fn rule(&self, from: NodeId, to: NodeId) -> Rule {
        self.rules.lock().unwrap().get(&(from, to)).copied().unwrap_or_default()
    }

    fn set(&self, from: NodeId, to: NodeId, f: impl FnOnce(&mut Rule)) {
        let mut rules = self.rules.lock().unwrap();
        f(rules.entry((from, to)).or_default());
    }

    /// Drops everything from `from` to `to` (one direction).
    pub fn partition_oneway(&self, from: NodeId, to: NodeId) {
        self.set(from, to, |r| r.drop_all = true);
    }

    /// Drops everything between `a` and `b`, both ways.
    pub fn partition(&self, a: NodeId, b: NodeId) {
        self.partition_oneway(a, b);
        self.partition_oneway(b, a);
    }

    /// Cuts `node` off from every other node in `all`.
    pub fn isolate(&self, node: NodeId, all: impl IntoIterator<Item = NodeId>) {
        for other in all {
            if other != node {
                self.partition(node, other);
            }
        }
    }

    /// Drops `fraction` of the frames from `from` to `to`.
    pub fn drop_fraction(&self, from: NodeId, to: NodeId, fraction: f64) {
        self.set(from, to, |r| r.drop_fraction = fraction);
    }

    /// Delays frames from `from` to `to`.
    pub fn delay(&self, from: NodeId, to: NodeId, delay: Duration) {
        self.set(from, to, |r| r.delay = delay);
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.rules.lock().unwrap().clear();
    }

    fn keep(&self, from: NodeId, to: NodeId) -> Option<Duration> {
        let rule = self.rule(from, to);
        if rule.drop_all || (rule.drop_fraction > 0.0 && self.rng.lock().unwrap().random_bool(rule.drop_fraction)) {
            return None;
        }
        Some(rule.delay)
    }
}

/// One node's transport: TCP, with the faults applied to what it sends.
pub struct FaultyTransport {
    /// This node.
    pub me: NodeId,
    /// Who listens where, to name the other end of an outgoing connection.
    pub nodes: BTreeMap<String, NodeId>,
    /// The faults.
    pub faults: Arc<Faults>,
}

struct FaultyListener {
    inner: Box<dyn Listener>,
    me: NodeId,
    faults: Arc<Faults>,
}

impl Listener for FaultyListener {
    fn accept(&mut self) -> LocalBoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        Box::pin(async move {
            let (s, a) = self.inner.accept().await?;
            // The peer is unknown until its hello is read; client connections stay unfaulted.
            Ok((Box::new(FaultyStream::new(s, self.me, None, self.faults.clone())) as BoxStream, a))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl Transport for FaultyTransport {
    fn bind(&self, addr: &str) -> LocalBoxFuture<'static, io::Result<Box<dyn Listener>>> {
        let inner = dister::transport::TcpTransport.bind(addr);
        let (me, faults) = (self.me, self.faults.clone());
        Box::pin(async move { Ok(Box::new(FaultyListener { inner: inner.await?, me, faults }) as Box<dyn Listener>) })
    }

    fn connect(&self, addr: &str) -> LocalBoxFuture<'static, io::Result<BoxStream>> {
        let to = self.nodes.get(addr).copied();
        let (me, faults) = (self.me, self.faults.clone());
        let inner = dister::transport::TcpTransport.connect(addr);
        Box::pin(async move {
            if let Some(to) = to
                && faults.rule(me, to).drop_all
            {
                // A partitioned SYN goes nowhere: the caller sees a timeout, a little later.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(io::Error::new(io::ErrorKind::TimedOut, "partitioned"));
            }
            Ok(Box::new(FaultyStream::new(inner.await?, me, to, faults)) as BoxStream)
        })
    }
}

/// A stream that cuts what it writes into frames and drops or delays each by the rules. The
/// kept frames go out through a task that owns the write half, so a delay does not block the
/// writer; dropping the stream ends the task and closes the socket.
struct FaultyStream {
    read: tokio::io::ReadHalf<BoxStream>,
    me: NodeId,
    peer: Option<NodeId>,
    faults: Arc<Faults>,
    out: Vec<u8>,
    sink: mpsc::UnboundedSender<Option<(tokio::time::Instant, Vec<u8>)>>,
    read_buf: bytes::BytesMut,
    sniffed: bool,
}

impl FaultyStream {
    fn new(inner: BoxStream, me: NodeId, peer: Option<NodeId>, faults: Arc<Faults>) -> Self {
        let (read, mut write) = tokio::io::split(inner);
        let (sink, mut rx) = mpsc::unbounded_channel::<Option<(tokio::time::Instant, Vec<u8>)>>();
        tokio::task::spawn_local(async move {
            while let Some(item) = rx.recv().await {
                match item {
                    Some((at, frame)) => {
                        tokio::time::sleep_until(at).await;
                        if write.write_all(&frame).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        let _ = write.shutdown().await;
                        break;
                    }
                }
            }
        });
        FaultyStream {
            read,
            me,
            sniffed: peer.is_some(),
            peer,
            faults,
            out: Vec::new(),
            sink,
            read_buf: bytes::BytesMut::new(),
        }
    }
}

impl AsyncRead for FaultyStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.read).poll_read(cx, buf);
        if !self.sniffed && buf.filled().len() > before {
            // Learn who is on the other end from its hello (accepted connections only).
            let new = buf.filled()[before..].to_vec();
            self.read_buf.extend_from_slice(&new);
            let mut pending = self.read_buf.clone();
            match FrameCodec::handshake().decode(&mut pending) {
                Ok(Some(Frame::Hello(h))) => {
                    self.peer = h.node_id;
                    self.sniffed = true;
                }
                Ok(None) => {}
                _ => self.sniffed = true,
            }
        }
        r
    }
}

impl AsyncWrite for FaultyStream {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.out.extend_from_slice(buf);
        while this.out.len() >= 4 {
            let len = u32::from_be_bytes([this.out[0], this.out[1], this.out[2], this.out[3]]) as usize;
            if this.out.len() < 4 + len {
                break;
            }
            let frame: Vec<u8> = this.out.drain(..4 + len).collect();
            let verdict = match this.peer {
                Some(p) => this.faults.keep(this.me, p),
                None => Some(Duration::ZERO),
            };
            if let Some(delay) = verdict
                && this.sink.send(Some((tokio::time::Instant::now() + delay, frame))).is_err()
            {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = self.sink.send(None);
        Poll::Ready(Ok(()))
    }
}
