//! TLS on both ports, through rustls (no OpenSSL). A node given a certificate, its key and the
//! cluster's CA serves TLS only, on the wire port and the HTTP port alike. Peers authenticate
//! each other with certificates from that CA (mutual TLS): a node asks every connection for a
//! certificate and accepts one only if the CA signed it and it is valid now; a connection that
//! then says it is a peer must have presented one (clients need not, they present the cluster
//! token or a login token as before). Outbound, a node presents its own certificate and checks
//! the other's against the CA and the address it dialled.
//!
//! [`Tls::reload`] reads the three files again (the binary calls it on SIGHUP): connections
//! opened afterwards get the new certificate and CA, open ones keep theirs. A reload that
//! fails changes nothing.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures::future::LocalBoxFuture;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::transport::{BoxStream, Listener, Transport, TransportRef};

/// The files a node's TLS is made of (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate chain, its own certificate first.
    pub cert: PathBuf,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates peers' certificates must chain to (and clients check nodes by).
    pub ca: PathBuf,
}

/// TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing, unreadable or holds no usable PEM.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate, key or CA were read but rustls refused them together.
    #[error("tls: {0}")]
    Refused(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File { path: path.to_path_buf(), reason: reason.to_string() }
}

fn refused(e: impl ToString) -> TlsError {
    TlsError::Refused(e.to_string())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// Whether `e` is TLS failing (a certificate refused by either end, or not TLS at all) rather
/// than the network.
pub fn is_tls_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

/// The name a node at `addr` (`host:port`, `[v6]:port`) must hold in its certificate: the
/// host, a DNS name or an IP address.
fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let (host, _) = crate::config::parse_host_port(addr)?;
    ServerName::try_from(host.clone()).map_err(|e| format!("{host}: not a name a certificate can hold: {e}"))
}

/// Whether `certificate` (already verified against the CA) names the host of `addr`: a peer
/// claiming a member's id must hold a certificate for that member's address, so one node's
/// certificate cannot speak for another.
pub fn names_host(certificate: &CertificateDer<'_>, addr: &str) -> bool {
    let Ok(name) = server_name(addr) else { return false };
    rustls::server::ParsedCertificate::try_from(certificate)
        .is_ok_and(|cert| rustls::client::verify_server_name(&cert, &name).is_ok())
}

/// Verifies nodes' certificates against a CA, for clients (the CLI, an application): no
/// certificate of its own is presented.
#[derive(Clone, Debug)]
pub struct ClientTls(Arc<ClientConfig>);

impl ClientTls {
    /// Trusts the CA certificates in the PEM file `ca`.
    pub fn from_ca_file(ca: &Path) -> Result<ClientTls, TlsError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(refused)?
            .with_root_certificates(read_roots(ca)?)
            .with_no_client_auth();
        Ok(ClientTls(Arc::new(config)))
    }

    /// The rustls configuration, for an HTTP client (awc's, reqwest's).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.0.clone()
    }

    /// Runs the TLS handshake on `stream`, a connection to `addr` (`host:port`): the node's
    /// certificate must chain to the CA and name that host (a DNS name or an IP address).
    pub async fn connect<S>(&self, addr: &str, stream: S) -> io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let name = server_name(addr).map_err(io::Error::other)?;
        tokio_rustls::TlsConnector::from(self.0.clone()).connect(name, stream).await
    }
}

/// What a set of files became.
struct Loaded {
    /// For the HTTP port, whose configuration rustls holds for the server's life.
    key: Arc<CertifiedKey>,
    /// For the wire port: asks for a certificate, accepts its absence (clients).
    wire: Arc<ServerConfig>,
    /// For connections to peers: presents this node's certificate.
    peer: ClientTls,
}

impl Loaded {
    fn read(files: &TlsFiles) -> Result<Loaded, TlsError> {
        let provider = provider();
        let chain = read_certs(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error(&files.key, e))?;
        let roots = read_roots(&files.ca)?;
        let signing = provider.key_provider.load_private_key(key.clone_key()).map_err(refused)?;
        let certified = CertifiedKey::new(chain.clone(), signing);
        certified
            .keys_match()
            .map_err(|e| refused(format!("{} and {}: {e}", files.cert.display(), files.key.display())))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(refused)?;
        let wire = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(refused)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(refused)?;
        let peer = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(refused)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(refused)?;
        Ok(Loaded { key: Arc::new(certified), wire: Arc::new(wire), peer: ClientTls(Arc::new(peer)) })
    }
}

/// A node's TLS: its certificate, key and CA as last (re)loaded.
pub struct Tls {
    files: TlsFiles,
    now: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

/// A wire connection after its TLS handshake.
pub struct Secured {
    /// The stream, encrypted.
    pub stream: BoxStream,
    /// The certificate the other end presented, which the CA signed and is valid now (the
    /// handshake refused any other): required of peers.
    pub certificate: Option<CertificateDer<'static>>,
}

impl Tls {
    /// Reads the files; an error says which one is wrong.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let loaded = Loaded::read(&files)?;
        Ok(Arc::new(Tls { files, now: RwLock::new(Arc::new(loaded)) }))
    }

    /// Reads the files again and uses them for every connection from now on; on an error the
    /// ones in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = Loaded::read(&self.files)?;
        *self.now.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        Ok(())
    }

    /// The files this TLS reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn current(&self) -> Arc<Loaded> {
        self.now.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The server side of an accepted wire connection's TLS handshake.
    pub async fn accept(&self, stream: BoxStream) -> io::Result<Secured> {
        let wire = self.current().wire.clone();
        let stream = tokio_rustls::TlsAcceptor::from(wire).accept(stream).await?;
        let certificate =
            stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
        Ok(Secured { stream: Box::new(stream), certificate })
    }

    /// The client side, towards a peer at `addr`, presenting this node's certificate.
    pub async fn connect(&self, addr: &str, stream: BoxStream) -> io::Result<BoxStream> {
        let peer = self.current().peer.clone();
        Ok(Box::new(peer.connect(addr, stream).await?))
    }

    /// How this node connects to others as a client (asking a leader for its view, say): the
    /// same CA, and its certificate presented.
    pub fn client(&self) -> ClientTls {
        self.current().peer.clone()
    }

    /// A configuration for the HTTP server: no client certificate asked for (HTTP clients
    /// authenticate as before), the certificate read anew from `self` on each handshake so a
    /// reload reaches it.
    pub fn http_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(refused)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Current(self.clone())));
        Ok(config)
    }
}

/// The certificate a `Tls` holds now.
#[derive(Debug)]
struct Current(Arc<Tls>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }
}

/// A transport whose connections to peers run TLS over `inner`'s. Binding is `inner`'s as is:
/// the accepting side's handshake is the `Listener` actor's, which bounds it by the handshake
/// timeout and needs the certificate seen to admit a peer. Health probes stay plain TCP.
pub struct TlsTransport {
    inner: TransportRef,
    tls: Arc<Tls>,
}

impl TlsTransport {
    /// TLS with `tls` over `inner`.
    pub fn new(inner: TransportRef, tls: Arc<Tls>) -> Self {
        TlsTransport { inner, tls }
    }
}

impl Transport for TlsTransport {
    fn bind(&self, addr: &str) -> LocalBoxFuture<'static, io::Result<Box<dyn Listener>>> {
        self.inner.bind(addr)
    }

    fn connect(&self, addr: &str) -> LocalBoxFuture<'static, io::Result<BoxStream>> {
        let connect = self.inner.connect(addr);
        let tls = self.tls.clone();
        let addr = addr.to_string();
        Box::pin(async move { tls.connect(&addr, connect.await?).await })
    }

    fn probe(&self, addr: &str) -> LocalBoxFuture<'static, io::Result<()>> {
        self.inner.probe(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_checked_by_the_host_it_is_dialled_at() {
        assert_eq!(server_name("127.0.0.1:7070").unwrap(), ServerName::try_from("127.0.0.1").unwrap());
        assert_eq!(server_name("[::1]:7070").unwrap(), ServerName::try_from("::1").unwrap());
        assert_eq!(server_name("node1.example:7070").unwrap(), ServerName::try_from("node1.example").unwrap());
        assert!(server_name("no-port").is_err());
    }
}
