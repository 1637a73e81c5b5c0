//! The transport seam: how a node binds and connects. Production uses `tokio::net`; a
//! simulation (turmoil) or a fault-injecting test harness supplies its own implementation,
//! and the actors never know which one they run on.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::LocalBoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream the node can frame.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + 'static> Stream for T {}

/// A boxed stream, whatever the transport.
pub type BoxStream = Box<dyn Stream>;

/// A bound listener.
pub trait Listener: 'static {
    /// Waits for the next connection.
    fn accept(&mut self) -> LocalBoxFuture<'_, io::Result<(BoxStream, SocketAddr)>>;
    /// The address actually bound (port 0 resolved).
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Binds listeners and opens connections.
pub trait Transport: 'static {
    /// Binds `addr` (`host:port`).
    fn bind(&self, addr: &str) -> LocalBoxFuture<'static, io::Result<Box<dyn Listener>>>;
    /// Connects to `addr` (`host:port`).
    fn connect(&self, addr: &str) -> LocalBoxFuture<'static, io::Result<BoxStream>>;

    /// Whether something accepts connections at `addr`: a TCP health check. The connection
    /// is closed at once.
    fn probe(&self, addr: &str) -> LocalBoxFuture<'static, io::Result<()>> {
        let connect = self.connect(addr);
        Box::pin(async move { connect.await.map(drop) })
    }
}

/// Shared handle to a transport. `Send + Sync`: a node's actors may live on several threads
/// (each connection's futures stay on the thread that made it).
pub type TransportRef = Arc<dyn Transport + Send + Sync>;

/// Real TCP through `tokio::net`, with Nagle off: frames are small and latency matters.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpTransport;

struct TcpListener(tokio::net::TcpListener);

impl Listener for TcpListener {
    fn accept(&mut self) -> LocalBoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        Box::pin(async move {
            let (s, addr) = self.0.accept().await?;
            s.set_nodelay(true)?;
            Ok((Box::new(s) as BoxStream, addr))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Transport for TcpTransport {
    fn bind(&self, addr: &str) -> LocalBoxFuture<'static, io::Result<Box<dyn Listener>>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let l = tokio::net::TcpListener::bind(&addr).await?;
            Ok(Box::new(TcpListener(l)) as Box<dyn Listener>)
        })
    }

    fn connect(&self, addr: &str) -> LocalBoxFuture<'static, io::Result<BoxStream>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(&addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as BoxStream)
        })
    }

    /// A health check pays for every probe a TCP connect costs, hundreds of thousands a
    /// minute on a big registry: a refusal the kernel already has when `connect` returns
    /// (a closed port nearby) is read from the socket there, without the event loop's
    /// registration and wake-up; only a connect still under way waits in the event loop.
    fn probe(&self, addr: &str) -> LocalBoxFuture<'static, io::Result<()>> {
        let Ok(at) = addr.parse::<SocketAddr>() else {
            // A name: resolved by tokio, as any connect.
            let connect = self.connect(addr);
            return Box::pin(async move { connect.await.map(drop) });
        };
        Box::pin(async move {
            let socket = socket2::Socket::new(socket2::Domain::for_address(at), socket2::Type::STREAM, None)?;
            socket.set_nonblocking(true)?;
            match socket.connect(&at.into()) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e),
            }
            if let Some(e) = socket.take_error()? {
                return Err(e);
            }
            let stream = tokio::net::TcpStream::from_std(std::net::TcpStream::from(socket))?;
            stream.writable().await?;
            match stream.take_error()? {
                Some(e) => Err(e),
                None => stream.peer_addr().map(drop),
            }
        })
    }
}
