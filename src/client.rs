//! An async client for the wire protocol, used by the CLI, the bench tool and tests. One
//! connection, many requests in flight (each tagged with an id); cheap to clone.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use crate::error::{ApiError, ClientError, WireError};
use crate::messages::kv::{KV_NAMESPACE, KvCommand, KvOutput};
use crate::messages::registry::{
    InstanceKey, REGISTRY_NAMESPACE, RegistryCommand, RegistryQuery, Service, ServiceNode, Strategy,
};
use crate::raft::members::MemberChange;
pub use crate::tls::ClientTls;
use crate::wire::{
    Consistency, Frame, Hello, Request, Response, StatusInfo, Write, WriteReply, handshake, spawn_writer,
};

/// Largest response a client accepts (a `kv list` of a big map).
pub const CLIENT_MAX_RESPONSE: usize = 256 * 1024 * 1024;

type Pending = (Request, oneshot::Sender<Result<Response, WireError>>);

/// How to reach a cluster's nodes: its group, the token to present, and the CA to check
/// their certificates by when they serve TLS.
#[derive(Clone, Debug)]
pub struct Dial {
    /// The cluster group.
    pub group: String,
    /// The cluster token or a login token, when the cluster wants one.
    pub token: Option<String>,
    /// TLS towards nodes that serve it (every port of a node with TLS does).
    pub tls: Option<ClientTls>,
}

impl Dial {
    /// Plain TCP to `group`, no token.
    pub fn new(group: &str) -> Dial {
        Dial { group: group.to_string(), token: None, tls: None }
    }

    /// The same, presenting `token`.
    pub fn token(self, token: Option<&str>) -> Dial {
        Dial { token: token.map(str::to_string), ..self }
    }

    /// The same, over TLS checked by `tls`.
    pub fn tls(self, tls: Option<ClientTls>) -> Dial {
        Dial { tls, ..self }
    }

    fn hello(&self) -> Hello {
        Hello { group: self.group.clone(), node_id: None, token: self.token.clone(), lease_wait_ms: None }
    }

    /// An open connection to `addr`, TLS's handshake done when there is TLS.
    async fn stream(&self, addr: &str) -> Result<crate::transport::BoxStream, WireError> {
        let stream = tcp(addr).await?;
        match &self.tls {
            None => Ok(Box::new(stream)),
            Some(tls) => {
                let secured = tokio::time::timeout(Duration::from_secs(5), tls.connect(addr, stream))
                    .await
                    .map_err(|_| WireError::Timeout)??;
                Ok(Box::new(secured))
            }
        }
    }
}

/// A connection to one node.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::UnboundedSender<Pending>,
    timeout: Duration,
    /// How long to keep retrying what the cluster refuses for now (zero: never).
    retry_within: Duration,
}

impl Client {
    /// Connects to `addr` over TCP and joins `group` as a client.
    pub async fn connect(addr: &str, group: &str) -> Result<Client, ClientError> {
        Client::connect_with_token(addr, group, None).await
    }

    /// Connects presenting the cluster token (required when the cluster has one).
    pub async fn connect_with_token(addr: &str, group: &str, token: Option<&str>) -> Result<Client, ClientError> {
        Client::dial(addr, &Dial::new(group).token(token)).await
    }

    /// Connects as `dial` says (TLS, token, group).
    pub async fn dial(addr: &str, dial: &Dial) -> Result<Client, ClientError> {
        let stream = dial.stream(addr).await?;
        Client::start(stream, dial.hello()).await
    }

    /// The id of the node at `addr`, as its handshake names it: refused (with the node's
    /// reason) if it belongs to another group or wants another token.
    pub async fn node_id_at(addr: &str, dial: &Dial) -> Result<crate::raft::NodeId, ClientError> {
        let stream = dial.stream(addr).await?;
        let (_, _, welcome) = handshake::connect(stream, dial.hello(), Duration::from_secs(5), 1024).await?;
        Ok(welcome.node_id)
    }

    /// Runs the handshake on an open stream (any transport) and starts the connection task on
    /// the current thread's `LocalSet` (an actix system, or a simulation host).
    pub async fn handshake<S>(stream: S, group: &str, token: Option<&str>) -> Result<Client, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        Client::start(stream, Dial::new(group).token(token).hello()).await
    }

    async fn start<S>(stream: S, hello: Hello) -> Result<Client, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let (mut reader, write, _welcome) =
            handshake::connect(stream, hello, Duration::from_secs(5), CLIENT_MAX_RESPONSE).await?;
        let writer = spawn_writer(write);
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
        tokio::task::spawn_local(async move {
            let mut pending: BTreeMap<u64, oneshot::Sender<Result<Response, WireError>>> = BTreeMap::new();
            let mut next_id = 0u64;
            loop {
                tokio::select! {
                    // In order, not at random: a simulation replays the same run.
                    biased;
                    req = rx.recv() => match req {
                        Some((request, reply)) => {
                            next_id += 1;
                            if writer.send(Frame::Request(next_id, request)).is_err() {
                                let _ = reply.send(Err(WireError::Closed));
                                break;
                            }
                            pending.insert(next_id, reply);
                        }
                        None => break,
                    },
                    frame = reader.next() => match frame {
                        Some(Ok(Frame::Response(id, resp))) => {
                            if let Some(reply) = pending.remove(&id) {
                                let _ = reply.send(Ok(resp));
                            }
                        }
                        Some(Ok(Frame::Error(msg))) => {
                            for (_, r) in std::mem::take(&mut pending) {
                                let _ = r.send(Err(WireError::Handshake(msg.clone())));
                            }
                            break;
                        }
                        Some(Ok(_)) | Some(Err(_)) | None => break,
                    },
                }
            }
            for (_, r) in std::mem::take(&mut pending) {
                let _ = r.send(Err(WireError::Closed));
            }
        });
        Ok(Client { tx, timeout: Duration::from_secs(30), retry_within: Duration::ZERO })
    }

    /// How long a call waits before failing with a timeout (default 30 s; the server times a
    /// write out after its own `request_timeout_ms` first).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Retries, for up to `within`, a request the cluster refuses for now but may take
    /// unchanged later ([`ApiError::is_retryable`]: no leader yet, an election or membership
    /// change under way, overloaded), waiting as the refusal says (at most 500 ms) between
    /// tries. Off by default; the CLI retries for 5 s, so a script calling `dister kv set`
    /// right after start just works.
    pub fn with_retries(mut self, within: Duration) -> Self {
        self.retry_within = within;
        self
    }

    /// Sends one request and waits for its response, retrying as [`Client::with_retries`]
    /// says.
    pub async fn call(&self, request: Request) -> Result<Response, ClientError> {
        if self.retry_within.is_zero() {
            return self.call_once(request).await;
        }
        let deadline = tokio::time::Instant::now() + self.retry_within;
        loop {
            match self.call_once(request.clone()).await {
                Err(ClientError::Api(e)) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    let wait = e.retry_after_ms().unwrap_or(100).min(500);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                other => return other,
            }
        }
    }

    async fn call_once(&self, request: Request) -> Result<Response, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((request, tx)).map_err(|_| WireError::Closed)?;
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => Err(WireError::Timeout.into()),
            Ok(Err(_)) => Err(WireError::Closed.into()),
            Ok(Ok(Err(e))) => Err(e.into()),
            Ok(Ok(Ok(Response::Error(e)))) => Err(e.into()),
            Ok(Ok(Ok(r))) => Ok(r),
        }
    }

    /// Replicates a command for `namespace`.
    pub async fn write(&self, namespace: &str, data: Bytes) -> Result<WriteReply, ClientError> {
        match self.call(Request::Write(Write { namespace: namespace.into(), data })).await? {
            Response::Written(w) => Ok(w),
            other => Err(unexpected(other)),
        }
    }

    /// Sets one key.
    pub async fn set(&self, key: &str, value: &str) -> Result<WriteReply, ClientError> {
        self.set_many(vec![(key.to_string(), value.to_string())]).await
    }

    /// Sets many keys in one entry.
    pub async fn set_many(&self, pairs: Vec<(String, String)>) -> Result<WriteReply, ClientError> {
        let data = serde_json::to_vec(&KvCommand::Set(pairs)).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        self.write(KV_NAMESPACE, data.into()).await
    }

    /// Deletes keys; answers how many existed.
    pub async fn delete(&self, keys: Vec<String>) -> Result<usize, ClientError> {
        let data = serde_json::to_vec(&KvCommand::Delete(keys)).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let reply = self.write(KV_NAMESPACE, data.into()).await?;
        let out: KvOutput =
            serde_json::from_slice(&reply.output).map_err(|e| ClientError::Unexpected(e.to_string()))?;
        Ok(out.count)
    }

    /// Reads one key.
    pub async fn get(&self, key: &str, consistency: Consistency) -> Result<Option<String>, ClientError> {
        match self.call(Request::Get { key: key.into(), consistency }).await? {
            Response::Value(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Lists pairs by key prefix.
    pub async fn list(&self, prefix: &str, consistency: Consistency) -> Result<Vec<(String, String)>, ClientError> {
        match self.call(Request::List { prefix: prefix.into(), consistency }).await? {
            Response::Pairs(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Queries the state machine owning `namespace`.
    pub async fn query(&self, namespace: &str, data: Bytes, consistency: Consistency) -> Result<Bytes, ClientError> {
        match self.call(Request::Query { namespace: namespace.into(), data, consistency }).await? {
            Response::QueryReply(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    /// Creates or replaces services.
    pub async fn set_services(&self, services: Vec<Service>) -> Result<WriteReply, ClientError> {
        self.registry_write(RegistryCommand::Set(services)).await
    }

    /// Removes services by name.
    pub async fn remove_services(&self, names: Vec<String>) -> Result<WriteReply, ClientError> {
        self.registry_write(RegistryCommand::Remove(names)).await
    }

    /// Creates or updates one instance.
    pub async fn register_instance(
        &self,
        service: &str,
        kind: &str,
        node: ServiceNode,
    ) -> Result<WriteReply, ClientError> {
        self.registry_write(RegistryCommand::Register { service: service.into(), kind: kind.into(), node }).await
    }

    /// Removes one instance.
    pub async fn deregister_instance(&self, key: InstanceKey) -> Result<WriteReply, ClientError> {
        self.registry_write(RegistryCommand::Deregister(key)).await
    }

    async fn registry_write(&self, cmd: RegistryCommand) -> Result<WriteReply, ClientError> {
        let data = serde_json::to_vec(&cmd).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        self.write(REGISTRY_NAMESPACE, data.into()).await
    }

    async fn registry_query<T: serde::de::DeserializeOwned>(
        &self,
        q: RegistryQuery,
        consistency: Consistency,
    ) -> Result<T, ClientError> {
        let data = serde_json::to_vec(&q).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let answer = self.query(REGISTRY_NAMESPACE, data.into(), consistency).await?;
        serde_json::from_slice(&answer).map_err(|e| ClientError::Unexpected(e.to_string()))
    }

    /// One service.
    pub async fn get_service(&self, name: &str, consistency: Consistency) -> Result<Option<Service>, ClientError> {
        self.registry_query(RegistryQuery::Get(name.into()), consistency).await
    }

    /// Every service.
    pub async fn list_services(&self, consistency: Consistency) -> Result<Vec<Service>, ClientError> {
        self.registry_query(RegistryQuery::List, consistency).await
    }

    /// One available instance of a service, picked by the node.
    pub async fn balance(&self, name: &str, strategy: Strategy) -> Result<ServiceNode, ClientError> {
        self.registry_query(RegistryQuery::Balance { name: name.into(), strategy }, Consistency::Stale).await
    }

    /// An instance is alive.
    pub async fn beat(&self, key: InstanceKey) -> Result<(), ClientError> {
        match self.call(Request::Beat { key, forwarded: false }).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The node's status.
    pub async fn status(&self) -> Result<StatusInfo, ClientError> {
        match self.call(Request::Status).await? {
            Response::Status(s) => Ok(*s),
            other => Err(unexpected(other)),
        }
    }

    /// Has the node take a snapshot now (unless its newest covers every applied entry);
    /// answers the snapshot's last entry and size.
    pub async fn take_snapshot(&self) -> Result<(crate::raft::LogId, u64), ClientError> {
        match self.call(Request::TakeSnapshot).await? {
            Response::Snapshot { last, bytes } => Ok((last, bytes)),
            other => Err(unexpected(other)),
        }
    }

    /// Up to `max` bytes of the node's snapshot covering `last`, from `offset`.
    pub async fn read_snapshot(&self, last: crate::raft::LogId, offset: u64, max: u32) -> Result<Bytes, ClientError> {
        match self.call(Request::ReadSnapshot { last, offset, max }).await? {
            Response::SnapshotBytes(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    /// Saves a fresh snapshot of the node's state to `path` (etcd's `snapshot save`): taken
    /// now, holding every entry the node had applied when asked, streamed a chunk at a time
    /// into `path.part`, verified whole, fsynced and renamed into place (the directory
    /// fsynced too). Started over if the node replaces the snapshot meanwhile. Answers what
    /// the file holds; on failure nothing is left behind.
    pub async fn save_snapshot(&self, path: &std::path::Path) -> Result<crate::snapshot::SnapshotInfo, ClientError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".part");
        let tmp = std::path::PathBuf::from(tmp);
        let result = self.save_snapshot_via(path, &tmp).await;
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    async fn save_snapshot_via(
        &self,
        path: &std::path::Path,
        tmp: &std::path::Path,
    ) -> Result<crate::snapshot::SnapshotInfo, ClientError> {
        use std::io::Write as _;
        let io = |op: &'static str, at: &std::path::Path| {
            let at = at.to_path_buf();
            move |source| ClientError::Storage(crate::error::StorageError::Io { op, path: at, source })
        };
        for attempt in 1.. {
            let (last, size) = self.take_snapshot().await?;
            let mut file = std::io::BufWriter::new(std::fs::File::create(tmp).map_err(io("create", tmp))?);
            let mut offset = 0;
            let mut replaced = false;
            while offset < size {
                match self.read_snapshot(last, offset, crate::wire::SNAPSHOT_CHUNK as u32).await {
                    Ok(chunk) if chunk.is_empty() => break,
                    Ok(chunk) => {
                        file.write_all(&chunk).map_err(io("write", tmp))?;
                        offset += chunk.len() as u64;
                    }
                    // A newer snapshot took its place: take that one.
                    Err(ClientError::Api(ApiError::Unavailable(_))) if attempt < 5 => {
                        replaced = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if replaced {
                continue;
            }
            let file = file.into_inner().map_err(|e| io("write", tmp)(e.into_error()))?;
            file.sync_all().map_err(io("fsync", tmp))?;
            drop(file);
            let info = crate::storage::snapshots::verify(tmp)?;
            std::fs::rename(tmp, path).map_err(io("rename", tmp))?;
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync dir", dir))?;
            return Ok(info);
        }
        unreachable!("the loop returns")
    }

    /// Hands leadership to `to` (or the most caught-up voter), through any member; answers
    /// the new leader once the old one stepped down.
    pub async fn transfer_leadership(
        &self,
        to: Option<crate::raft::NodeId>,
    ) -> Result<crate::raft::NodeId, ClientError> {
        match self.call(Request::TransferLeadership { to }).await? {
            Response::HandedTo(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// Changes the membership (any member passes it on to the leader); answers once the
    /// change is committed, with the index of its entry.
    pub async fn change_members(&self, change: MemberChange) -> Result<WriteReply, ClientError> {
        match self.call(Request::ChangeMembers { change, forwarded: false }).await? {
            Response::Written(w) => Ok(w),
            other => Err(unexpected(other)),
        }
    }
}

/// A TCP connection to `addr`, within 5 s, without Nagle's delay.
async fn tcp(addr: &str) -> Result<tokio::net::TcpStream, WireError> {
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| WireError::Timeout)?
        .map_err(WireError::Io)?;
    stream.set_nodelay(true).map_err(WireError::Io)?;
    Ok(stream)
}

fn unexpected(r: Response) -> ClientError {
    ClientError::Unexpected(format!("{r:?}"))
}
