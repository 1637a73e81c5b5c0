//! The `dister` command: parse the command line, load and validate the config, call into the
//! library. Logs go to stderr (`RUST_LOG` respected); results to stdout.

/// mimalloc, not the system allocator: a node allocates small buffers on several threads at
/// once (frames, entries, JSON), where glibc's arenas spent a fifth of its time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use dister::bench::{self, BenchOptions};
use dister::client::{ClientTls, Dial};
use dister::config::{ReadMode, parse_host_port};
use dister::messages::registry::{InstanceKey, Strategy};
use dister::raft::members::MemberChange;
use dister::registry::input::parse_services;
use dister::wire::{MemberStatus, StatusInfo};
use dister::{ApiError, Client, ClientError, Config, Consistency, Node, PeerConfig};

/// A Raft-replicated key/value, config and service-registry node.
#[derive(Parser, Debug)]
#[command(name = "dister", version, about)]
struct Cli {
    /// Node to talk to (client commands).
    #[arg(long, default_value = "127.0.0.1:7070", env = "DISTER_ADDR")]
    addr: String,
    /// Cluster group to join as a client.
    #[arg(long, default_value = "default", env = "DISTER_GROUP")]
    group: String,
    /// Cluster token to present (client commands; required when the cluster has one).
    #[arg(long, env = "DISTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) to check the node's certificate by: connect over TLS (client
    /// commands and the bench, towards a node started with --tls-*).
    #[arg(long, value_name = "FILE", env = "DISTER_TLS_CA")]
    tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node.
    Server(Box<ServerArgs>),
    /// Key/value commands.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Show the node's view of the cluster.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Service registry commands.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Print one healthy, enabled instance of a service (host:port).
    Balance {
        /// The service.
        name: String,
        /// Take instances in turn instead of at random by weight.
        #[arg(long)]
        round_robin: bool,
        /// Print the instance as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Instance commands.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Cluster membership: list, add, promote, remove (through any member).
    #[command(subcommand)]
    Member(MemberCommand),
    /// Leadership.
    #[command(subcommand)]
    Leader(LeaderCommand),
    /// Drive concurrent writers against a cluster and report throughput and latency.
    Bench(BenchArgs),
    /// Backups: save a node's state to a file, inspect a file, restore one into a new data
    /// directory.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// dister's `nodes`: every member (as `member list`).
    Nodes,
    /// dister's `kvs`: every key and value (as `kv list`).
    Kvs,
    /// dister's `getkv KEY` (as `kv get`).
    Getkv {
        /// The key.
        key: String,
    },
    /// dister's `addkv KEY VALUE` (as `kv set`).
    Addkv {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// dister's `delkv KEY,...` (as `kv del`).
    Delkv {
        /// The keys, comma separated.
        #[arg(required = true, value_delimiter = ',')]
        keys: Vec<String>,
    },
    /// dister's `services`: every service (as `service get`).
    Services,
    /// dister's `getservice NAME` (as `service get NAME`).
    Getservice {
        /// The service.
        name: String,
    },
    /// dister's `addservice FILE`: services from a file, dister's or this project's (as
    /// `service set`).
    Addservice {
        /// The file, or `-`.
        file: String,
    },
    /// dister's `delservice NAME,...` (as `service del`).
    Delservice {
        /// The services, comma separated.
        #[arg(required = true, value_delimiter = ',')]
        names: Vec<String>,
    },
    /// dister's `addnode ADDR,...`: add each node (started with `--no-bootstrap`), asking it
    /// its id; it becomes a voter once caught up (as `member add`). ADDR is HOST:PORT, or a
    /// HOST on the default port 7070.
    Addnode {
        /// The nodes, comma separated.
        #[arg(required = true, value_delimiter = ',')]
        addrs: Vec<String>,
    },
    /// dister's `delnode ADDR,...`: remove the members at these addresses (as `member
    /// remove`).
    Delnode {
        /// The members' addresses, comma separated.
        #[arg(required = true, value_delimiter = ',')]
        addrs: Vec<String>,
    },
}

/// The port dister's `addnode` and `delnode` take for an address given without one.
const DEFAULT_PORT: u16 = 7070;

impl Command {
    /// dister's command names, as the commands they stand for (the others as they are).
    fn canonical(self) -> Command {
        match self {
            Command::Nodes => Command::Member(MemberCommand::List { json: false }),
            Command::Kvs => Command::Kv(KvCommand::List { prefix: None, stale: false }),
            Command::Getkv { key } => Command::Kv(KvCommand::Get { key, stale: false }),
            Command::Addkv { key, value } => Command::Kv(KvCommand::Set { key, value }),
            Command::Delkv { keys } => Command::Kv(KvCommand::Del { keys }),
            Command::Services => Command::Service(ServiceCommand::Get { name: None, stale: false }),
            Command::Getservice { name } => Command::Service(ServiceCommand::Get { name: Some(name), stale: false }),
            Command::Addservice { file } => Command::Service(ServiceCommand::Set { file }),
            Command::Delservice { names } => Command::Service(ServiceCommand::Del { names }),
            other => other,
        }
    }
}

/// A node address as dister's `addnode` takes it: HOST:PORT, or HOST on [`DEFAULT_PORT`].
fn node_addr(addr: &str) -> Result<String, String> {
    let addr = addr.trim();
    if parse_host_port(addr).is_ok() {
        return Ok(addr.to_string());
    }
    if addr.is_empty() || addr.contains(':') && !addr.starts_with('[') {
        return Err(format!("{addr:?} is not HOST:PORT or HOST"));
    }
    Ok(format!("{addr}:{DEFAULT_PORT}"))
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Save a fresh snapshot of the node's state (`--addr`) to FILE.
    Save {
        /// Where to write it (replaced whole, never left half written).
        file: PathBuf,
    },
    /// Print what a snapshot file holds; a damaged file is refused (exit 1).
    Status {
        /// The snapshot file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build a data directory from FILE, from which `dister server` starts a new cluster
    /// holding its data. Run it for each member, with the same `--peer` list.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// The new data directory (must not exist, or be empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// This member's id in the new cluster.
        #[arg(long, default_value_t = 1)]
        id: u64,
        /// The address this member will serve on (`dister server --listen`, or its
        /// `--advertise`).
        #[arg(long, default_value = "127.0.0.1:7070")]
        addr: String,
        /// Another member of the new cluster, as ID=HOST:PORT; repeat for each.
        #[arg(long = "peer", value_name = "ID=HOST:PORT")]
        peers: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ServiceCommand {
    /// Create or replace services from a JSON file (an array of services, or one), `-` for stdin.
    Set {
        /// The file, or `-`.
        file: String,
    },
    /// Print a service as JSON, or every service.
    Get {
        /// The service (all when absent).
        name: Option<String>,
        /// Read from this node's copy at once.
        #[arg(long)]
        stale: bool,
    },
    /// Remove services.
    Del {
        /// The services.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum LeaderCommand {
    /// Hand leadership to a voter (the most caught-up one if none is named); writes wait
    /// meanwhile instead of failing. Prints the new leader's id.
    Transfer {
        /// The voter to take over.
        id: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum MemberCommand {
    /// Print every member: id, address, role, and from the leader its match index and
    /// whether it answers.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a node (started with `--no-bootstrap` or `--join`): a learner first, promoted to
    /// voter once it has caught up, unless `--learner`.
    Add {
        /// Its id, never used in this cluster before.
        id: u64,
        /// Where peers reach it, HOST:PORT.
        addr: String,
        /// Keep it a learner: it receives the log, never votes, never counts.
        #[arg(long)]
        learner: bool,
    },
    /// Make a learner a voter (refused while it is far behind the leader).
    Promote {
        /// The learner.
        id: u64,
    },
    /// Remove a member (the leader too: it steps down once the change commits).
    Remove {
        /// The member.
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
enum InstanceCommand {
    /// Tell the leader an instance is alive (ephemeral instances and TTL checks live by beats).
    Beat {
        /// The service.
        service: String,
        /// The instance, HOST:PORT.
        addr: String,
    },
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// TOML config file; flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id.
    #[arg(long)]
    id: Option<u64>,
    /// Directory for the log (created if missing).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on for peers and clients.
    #[arg(long)]
    listen: Option<String>,
    /// Another member of a new cluster, as ID=HOST:PORT; repeat for each (replaces the
    /// file's list). Read only on an empty data directory: then the log has the members.
    #[arg(long = "peer", value_name = "ID=HOST:PORT")]
    peers: Vec<String>,
    /// On an empty data directory, ask this member to add this node; it becomes a voter once
    /// it has caught up.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "peers")]
    join: Option<String>,
    /// Start empty and wait to be added (`dister member add`); never elect oneself.
    #[arg(long)]
    no_bootstrap: bool,
    /// Recovery from a lost majority: start as the only voter of a new cluster holding this
    /// node's data (every other member removed). Drop the flag once it runs.
    #[arg(long)]
    force_new_cluster: bool,
    /// The address peers reach this node at, when not --listen (a node on 0.0.0.0).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Cluster group name (overrides the config file).
    #[arg(long)]
    group: Option<String>,
    /// Cluster token every peer and client must present (at least 16 characters).
    #[arg(long, env = "DISTER_CLUSTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Allow listening beyond loopback without a cluster token or TLS.
    #[arg(long)]
    insecure: bool,
    /// This node's certificate chain (PEM): with --tls-key and --tls-ca, the wire and HTTP
    /// ports serve TLS only and peers authenticate each other by certificate. Reread on SIGHUP.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,
    /// The CA certificate(s) (PEM) peers' certificates must chain to.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// Serve the HTTP API on HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    http: Option<String>,
    /// How linearizable reads get their read index: `index` (a heartbeat round, the
    /// default) or `lease` (none while the leader's lease holds; relies on clocks within 5%).
    #[arg(long, value_enum, env = "DISTER_READ_MODE")]
    read_mode: Option<ReadMode>,
    /// Seed for the node's random choices (replays a run).
    #[arg(long)]
    seed: Option<u64>,
    /// Entries applied between two snapshots (0: never snapshot).
    #[arg(long, value_name = "N")]
    snapshot_entries: Option<u64>,
    /// Entries kept in the log behind each snapshot for slow followers.
    #[arg(long, value_name = "N")]
    snapshot_catchup_entries: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum KvCommand {
    /// Set a key.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Print a key's value.
    Get {
        /// The key.
        key: String,
        /// Read from this node's copy at once (may be behind the leader).
        #[arg(long)]
        stale: bool,
    },
    /// Delete keys.
    Del {
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// List keys and values, optionally by prefix.
    List {
        /// Key prefix.
        prefix: Option<String>,
        /// Read from this node's copy at once.
        #[arg(long)]
        stale: bool,
    },
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// What to send: kv, kv-get (wire writes, reads), nacos-register, nacos-publish,
    /// nacos-get, nacos-list (HTTP).
    #[arg(long, default_value = "kv")]
    workload: bench::Workload,
    /// Nodes to spread clients over (comma separated): wire addresses for kv, HTTP addresses
    /// for the Nacos workloads; defaults to --addr.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// Log in with this username (Nacos workloads on a cluster with auth).
    #[arg(long, requires = "password")]
    username: Option<String>,
    /// The password for --username.
    #[arg(long, requires = "username")]
    password: Option<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    clients: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    secs: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Overwrite N keys over and over instead of writing fresh ones (kv).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    keys: Option<u64>,
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

fn server_config(args: ServerArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(id) = args.id {
        config.id = id;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if !args.peers.is_empty() {
        config.peers = args.peers.iter().map(|p| p.parse::<PeerConfig>()).collect::<Result<_, _>>()?;
    }
    if let Some(g) = args.group {
        config.group = g;
    }
    if args.join.is_some() {
        config.join = args.join;
    }
    if args.no_bootstrap {
        config.bootstrap = false;
    }
    if args.force_new_cluster {
        config.force_new_cluster = true;
    }
    if args.advertise.is_some() {
        config.advertise = args.advertise;
    }
    if args.seed.is_some() {
        config.seed = args.seed;
    }
    if let Some(n) = args.snapshot_entries {
        config.snapshot_entries = n;
    }
    if let Some(n) = args.snapshot_catchup_entries {
        config.snapshot_catchup_entries = n;
    }
    if args.token.is_some() {
        config.cluster_token = args.token;
    }
    if args.insecure {
        config.insecure = true;
    }
    if args.tls_cert.is_some() {
        (config.tls_cert, config.tls_key, config.tls_ca) = (args.tls_cert, args.tls_key, args.tls_ca);
    }
    if args.http.is_some() {
        config.http = args.http;
    }
    if let Some(mode) = args.read_mode {
        config.read_mode = mode;
    }
    config.validate()?;
    Ok(config)
}

async fn run_server(config: Config) -> anyhow::Result<()> {
    let http = config.http.clone();
    let node = Node::start(config).await.context("cannot start node")?;
    let http = match http {
        Some(addr) => {
            Some(dister::api::serve(node.handle(), &addr).with_context(|| format!("cannot listen on {addr}"))?)
        }
        None => None,
    };
    tracing::info!(addr = %node.local_addr(), "serving");
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = term.recv() => break,
            _ = hangup.recv() => match node.handle().cluster().tls() {
                // As nginx or etcd: renewed certificates are taken without a restart.
                Some(tls) => match tls.reload() {
                    Ok(()) => tracing::info!(cert = %tls.files().cert.display(), "tls files reloaded"),
                    Err(e) => tracing::error!(error = %e, "tls files not reloaded; the ones in use stay"),
                },
                None => tracing::info!("SIGHUP: nothing to reload (no tls)"),
            },
        }
    }
    tracing::info!("shutting down");
    // A leader hands over first, so stopping it costs the cluster no election timeout
    // (a rolling restart): writes meanwhile wait for the new leader.
    let handle = node.handle();
    if handle.cluster().status().await.is_ok_and(|s| s.role == dister::raft::Role::Leader) {
        let wait = Duration::from_millis(2 * handle.config().election_timeout_max_ms);
        match tokio::time::timeout(wait, handle.cluster().transfer_leadership(None)).await {
            Ok(Ok(to)) => {
                tracing::info!(to, "handed leadership over");
                // Writes held during the handover, and those peers passed on to this node,
                // are answered through the new leader: give them a few heartbeats.
                tokio::time::sleep(Duration::from_millis(4 * handle.config().heartbeat_interval_ms)).await;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "could not hand leadership over"),
            Err(_) => tracing::warn!("leadership transfer did not finish in time"),
        }
    }
    if let Some(http) = http {
        drop(http.handle.stop(false));
    }
    node.stop();
    Ok(())
}

/// A client command's failure, with the exit code it maps to.
enum Failure {
    /// Exit 1: what was asked for does not exist.
    NotFound(String),
    /// Exit 2: the arguments are wrong.
    Usage(String),
    /// Exit 1: anything else.
    Other(anyhow::Error),
}

impl Failure {
    /// The same failure, saying first what was `done` before it (a command over several
    /// items stops at the first that fails).
    fn after(self, done: &str) -> Failure {
        match self {
            _ if done.is_empty() => self,
            Failure::NotFound(m) => Failure::NotFound(format!("{done}{m}")),
            Failure::Usage(m) => Failure::Usage(format!("{done}{m}")),
            Failure::Other(e) => Failure::Other(anyhow::anyhow!("{done}{e:#}")),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Other(e.into())
    }
}

/// Runs a client command; returns what to print on stdout.
async fn run_client(addr: &str, dial: &Dial, command: Command) -> Result<String, Failure> {
    use std::fmt::Write as _;
    let mut out = String::new();
    // What the cluster refuses for now (no leader yet, an election) is retried for 5 s: a
    // script calling `dister kv set` right after start just works.
    let client = Client::dial(addr, dial)
        .await
        .map_err(|e| Failure::Other(anyhow::anyhow!("cannot reach {addr}: {e}")))?
        .with_retries(Duration::from_secs(5));
    match command {
        Command::Kv(KvCommand::Set { key, value }) => {
            let reply = client.set(&key, &value).await?;
            tracing::debug!(index = reply.index, "set");
            out.push_str("OK\n");
        }
        Command::Kv(KvCommand::Get { key, stale }) => {
            let consistency = if stale { Consistency::Stale } else { Consistency::Linearizable };
            match client.get(&key, consistency).await? {
                Some(v) => {
                    let _ = writeln!(out, "{v}");
                }
                None => return Err(Failure::NotFound(format!("key {key:?} not found"))),
            }
        }
        Command::Kv(KvCommand::Del { keys }) => {
            let n = client.delete(keys.clone()).await?;
            let _ = writeln!(out, "{n}");
        }
        Command::Kv(KvCommand::List { prefix, stale }) => {
            let consistency = if stale { Consistency::Stale } else { Consistency::Linearizable };
            let prefix = prefix.unwrap_or_default();
            for (k, v) in client.list(&prefix, consistency).await? {
                let _ = writeln!(out, "{k}\t{v}");
            }
        }
        Command::Status { json } => {
            let s = client.status().await?;
            if json {
                let mut value = serde_json::to_value(&s).map_err(|e| Failure::Other(e.into()))?;
                // `match_index` is known only on the leader: leave it out elsewhere.
                if let Some(peers) = value.get_mut("peers").and_then(|p| p.as_array_mut()) {
                    for p in peers.iter_mut().filter_map(|p| p.as_object_mut()) {
                        if p.get("match_index").is_some_and(|m| m.is_null()) {
                            p.remove("match_index");
                        }
                    }
                }
                let json = serde_json::to_string_pretty(&value).map_err(|e| Failure::Other(e.into()))?;
                let _ = writeln!(out, "{json}");
            } else {
                let leader = s.leader.map_or("none".to_string(), |l| l.to_string());
                let _ = writeln!(out, "id {} ({}) term {} leader {leader}", s.id, s.role, s.term);
                let _ = writeln!(
                    out,
                    "log last {} (term {}) commit {} applied {}",
                    s.last_log_index, s.last_log_term, s.commit_index, s.applied_index
                );
                for p in s.peers {
                    let m = p.match_index.map_or(String::new(), |m| format!(" match {m}"));
                    let _ = writeln!(out, "peer {} {}{m}", p.id, p.addr);
                }
            }
        }
        Command::Service(ServiceCommand::Set { file }) => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin()).map_err(|e| Failure::Other(anyhow::anyhow!("stdin: {e}")))?
            } else {
                std::fs::read_to_string(&file).map_err(|e| Failure::Other(anyhow::anyhow!("{file}: {e}")))?
            };
            let services =
                parse_services(text.as_bytes()).map_err(|e| Failure::Other(anyhow::anyhow!("{file}: {e}")))?;
            let n = services.len();
            client.set_services(services.clone()).await?;
            let _ = writeln!(out, "{n}");
        }
        Command::Service(ServiceCommand::Get { name, stale }) => {
            let consistency = if stale { Consistency::Stale } else { Consistency::Linearizable };
            let json = match name {
                Some(name) => match client.get_service(&name, consistency).await? {
                    Some(s) => serde_json::to_string_pretty(&s),
                    None => return Err(Failure::NotFound(format!("service {name:?} not found"))),
                },
                None => serde_json::to_string_pretty(&client.list_services(consistency).await?),
            };
            let _ = writeln!(out, "{}", json.map_err(|e| Failure::Other(e.into()))?);
        }
        Command::Service(ServiceCommand::Del { names }) => {
            let reply = client.remove_services(names.clone()).await?;
            let _ = writeln!(out, "{}", String::from_utf8_lossy(&reply.output));
        }
        Command::Balance { name, round_robin, json } => {
            let strategy = if round_robin { Strategy::RoundRobin } else { Strategy::Weighted };
            match client.balance(&name, strategy).await {
                Ok(n) if json => {
                    let _ =
                        writeln!(out, "{}", serde_json::to_string_pretty(&n).map_err(|e| Failure::Other(e.into()))?);
                }
                Ok(n) => {
                    let _ = writeln!(out, "{}", n.addr());
                }
                Err(ClientError::Api(ApiError::NotFound(m))) => return Err(Failure::NotFound(m)),
                Err(e) => return Err(e.into()),
            }
        }
        Command::Instance(InstanceCommand::Beat { service, addr }) => {
            let (host, port) = parse_host_port(&addr).map_err(Failure::Usage)?;
            let key = InstanceKey { service, host, port };
            match client.beat(key.clone()).await {
                Ok(()) => out.push_str("OK\n"),
                Err(ClientError::Api(ApiError::NotFound(m))) => return Err(Failure::NotFound(m)),
                Err(e) => return Err(e.into()),
            }
        }
        Command::Member(MemberCommand::List { json }) => {
            let members = member_list(&client, dial).await?;
            if json {
                let json = serde_json::to_string_pretty(&members).map_err(|e| Failure::Other(e.into()))?;
                let _ = writeln!(out, "{json}");
            } else {
                for m in members {
                    let matched = m.match_index.map_or("-".to_string(), |i| i.to_string());
                    let reachable = m.reachable.map_or("-", |r| if r { "reachable" } else { "unreachable" });
                    let promoting = if m.promoting { " (to be promoted)" } else { "" };
                    let _ = writeln!(out, "{}\t{}\t{}{promoting}\t{matched}\t{reachable}", m.id, m.addr, m.role);
                }
            }
        }
        Command::Member(MemberCommand::Add { id, addr, learner }) => {
            let change = MemberChange::Add { id, addr, promote: !learner };
            let reply = client.change_members(change.clone()).await?;
            let _ = writeln!(out, "added {id} at index {}", reply.index);
        }
        Command::Leader(LeaderCommand::Transfer { id }) => {
            let to = client.transfer_leadership(id).await?;
            let _ = writeln!(out, "{to}");
        }
        Command::Member(MemberCommand::Promote { id }) => {
            let reply = client.change_members(MemberChange::Promote { id }).await?;
            let _ = writeln!(out, "promoted {id} at index {}", reply.index);
        }
        Command::Member(MemberCommand::Remove { id }) => {
            let reply = client.change_members(MemberChange::Remove { id }).await?;
            let _ = writeln!(out, "removed {id} at index {}", reply.index);
        }
        Command::Snapshot(SnapshotCommand::Save { file }) => {
            let info = client.save_snapshot(&file).await?;
            let _ = writeln!(
                out,
                "saved snapshot at index {} (term {}), {} bytes, to {}",
                info.meta.last.index,
                info.meta.last.term,
                info.size,
                file.display()
            );
        }
        Command::Addnode { addrs } => {
            for addr in addrs {
                let line = add_node(&client, dial, &addr).await.map_err(|e| e.after(&out))?;
                out.push_str(&line);
            }
        }
        Command::Delnode { addrs } => {
            for addr in addrs {
                let line = remove_node(&client, dial, &addr).await.map_err(|e| e.after(&out))?;
                out.push_str(&line);
            }
        }
        Command::Server(_) | Command::Bench(_) | Command::Snapshot(_) => unreachable!("handled in main"),
        Command::Nodes
        | Command::Kvs
        | Command::Getkv { .. }
        | Command::Addkv { .. }
        | Command::Delkv { .. }
        | Command::Services
        | Command::Getservice { .. }
        | Command::Addservice { .. }
        | Command::Delservice { .. } => unreachable!("made canonical in main"),
    }
    Ok(out)
}

/// dister's `addnode` for one address: the node there is asked its id, then added (a learner,
/// promoted once caught up).
async fn add_node(client: &Client, dial: &Dial, addr: &str) -> Result<String, Failure> {
    let addr = node_addr(addr).map_err(Failure::Usage)?;
    let node =
        Client::dial(&addr, dial).await.map_err(|e| Failure::Other(anyhow::anyhow!("cannot reach {addr}: {e}")))?;
    let id = node.status().await?.id;
    let change = MemberChange::Add { id, addr: addr.clone(), promote: true };
    let reply = client.change_members(change.clone()).await?;
    Ok(format!("added {id} ({addr}) at index {}\n", reply.index))
}

/// dister's `delnode` for one address: the member there is removed.
async fn remove_node(client: &Client, dial: &Dial, addr: &str) -> Result<String, Failure> {
    let addr = node_addr(addr).map_err(Failure::Usage)?;
    let members = member_list(client, dial).await?;
    let Some(id) = members.iter().find(|m| m.addr == addr).map(|m| m.id) else {
        return Err(Failure::NotFound(format!("no member at {addr}")));
    };
    let reply = client.change_members(MemberChange::Remove { id }).await?;
    Ok(format!("removed {id} ({addr}) at index {}\n", reply.index))
}

/// The members as the leader sees them (its match indexes and reachability), or as the node
/// asked sees them when the leader cannot be reached.
async fn member_list(client: &Client, dial: &Dial) -> Result<Vec<MemberStatus>, Failure> {
    let here: StatusInfo = client.status().await?;
    if here.role == dister::raft::Role::Leader {
        return Ok(here.members);
    }
    let leader_addr = here.leader.and_then(|l| here.members.iter().find(|m| m.id == l)).map(|m| m.addr.clone());
    if let Some(addr) = leader_addr
        && let Ok(leader) = Client::dial(&addr, dial).await
        && let Ok(s) = leader.status().await
        && s.role == dister::raft::Role::Leader
    {
        return Ok(s.members);
    }
    Ok(here.members)
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not an error.
fn print(text: &str) -> ExitCode {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: cannot write output: {e}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

/// What `snapshot status` prints of a verified snapshot.
fn snapshot_summary(info: &dister::snapshot::SnapshotInfo) -> serde_json::Value {
    use dister::messages::kv::KV_NAMESPACE;
    use dister::messages::registry::REGISTRY_NAMESPACE;
    let items = |ns: &str| info.section(ns).map_or(0, |s| s.items);
    let members: Vec<serde_json::Value> = info
        .meta
        .members
        .all()
        .map(|(id, addr, role)| serde_json::json!({ "id": id, "addr": addr, "role": role }))
        .collect();
    let sections: Vec<serde_json::Value> = info
        .sections
        .iter()
        .map(|s| serde_json::json!({ "namespace": s.namespace, "items": s.items, "bytes": s.bytes }))
        .collect();
    serde_json::json!({
        "index": info.meta.last.index,
        "term": info.meta.last.term,
        "members": members,
        "keys": items(KV_NAMESPACE),
        "services": items(REGISTRY_NAMESPACE),
        "sections": sections,
        "size": info.size,
        "crc32": format!("{:08x}", info.crc),
    })
}

fn snapshot_status(file: &std::path::Path, json: bool) -> anyhow::Result<String> {
    let info = dister::storage::snapshots::verify(file)?;
    let v = snapshot_summary(&info);
    if json {
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    let members: Vec<String> =
        info.meta.members.all().map(|(id, addr, role)| format!("{id}={addr} ({role})")).collect();
    Ok(format!(
        "index {}\nterm {}\nmembers {}\nkeys {}\nservices {}\nsize {}\ncrc32 {}\n",
        v["index"],
        v["term"],
        members.join(", "),
        v["keys"],
        v["services"],
        v["size"],
        v["crc32"].as_str().unwrap_or_default()
    ))
}

fn snapshot_restore(
    file: &std::path::Path,
    data_dir: &std::path::Path,
    id: u64,
    addr: String,
    peers: &[String],
) -> Result<String, Failure> {
    parse_host_port(&addr).map_err(Failure::Usage)?;
    let mut voters = vec![(id, addr)];
    for p in peers {
        let p: PeerConfig = p.parse().map_err(|e: dister::error::ConfigError| Failure::Usage(e.to_string()))?;
        if voters.iter().any(|(v, _)| *v == p.id) {
            return Err(Failure::Usage(format!("member id {} is given twice", p.id)));
        }
        voters.push((p.id, p.addr));
    }
    let members = dister::raft::members::Members::of_voters(voters);
    let segment_bytes = Config::default().segment_bytes;
    let info = dister::storage::snapshots::restore(file, data_dir, members, segment_bytes)
        .map_err(|e| Failure::Other(e.into()))?;
    Ok(format!(
        "restored index {} (term {}) into {}: start it with dister server --data-dir {} --id {id}\n",
        info.meta.last.index,
        info.meta.last.term,
        data_dir.display(),
        data_dir.display()
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // How client commands and the bench reach the node (a server reads its own TLS files).
    let dial = || match cli.tls_ca.as_deref().map(ClientTls::from_ca_file).transpose() {
        Ok(tls) => Ok(Dial::new(&cli.group).token(cli.token.as_deref()).tls(tls)),
        Err(e) => {
            eprintln!("error: --tls-ca: {e}");
            Err(ExitCode::from(2))
        }
    };
    match cli.command {
        Command::Server(args) => {
            init_logging("info");
            let config = match server_config(*args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = actix_rt::System::new().block_on(run_server(config)) {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Command::Snapshot(SnapshotCommand::Status { file, json }) => {
            init_logging("warn");
            finish(snapshot_status(&file, json).map_err(Failure::Other))
        }
        Command::Snapshot(SnapshotCommand::Restore { file, data_dir, id, addr, peers }) => {
            init_logging("warn");
            finish(snapshot_restore(&file, &data_dir, id, addr, &peers))
        }
        Command::Bench(args) => {
            init_logging("warn");
            let dial = match dial() {
                Ok(d) => d,
                Err(code) => return code,
            };
            let opts = BenchOptions {
                workload: args.workload,
                addrs: if args.nodes.is_empty() { vec![cli.addr] } else { args.nodes },
                login: args.username.zip(args.password),
                dial,
                clients: args.clients as usize,
                duration: Duration::from_secs(args.secs),
                key_size: args.key_size,
                value_size: args.value_size,
                keys: args.keys,
            };
            match actix_rt::System::new().block_on(bench::run(opts.clone())) {
                Ok(report) => {
                    println!(
                        "workload={:?} clients={} key_size={} value_size={} {report}",
                        opts.workload, opts.clients, opts.key_size, opts.value_size
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        command => {
            init_logging("warn");
            let command = command.canonical();
            // Arguments are checked before any connection, so a bad one is always exit 2.
            let checked = match &command {
                Command::Instance(InstanceCommand::Beat { addr, .. })
                | Command::Member(MemberCommand::Add { addr, .. }) => parse_host_port(addr).err(),
                Command::Addnode { addrs } | Command::Delnode { addrs } => {
                    addrs.iter().find_map(|a| node_addr(a).err())
                }
                _ => None,
            };
            if let Some(e) = checked {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            let dial = match dial() {
                Ok(d) => d,
                Err(code) => return code,
            };
            finish(actix_rt::System::new().block_on(run_client(&cli.addr, &dial, command)))
        }
    }
}

/// Prints a command's output, or its failure with the exit code it maps to.
fn finish(result: Result<String, Failure>) -> ExitCode {
    match result {
        Ok(out) => print(&out),
        Err(Failure::NotFound(m)) => {
            eprintln!("{m}");
            ExitCode::FAILURE
        }
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
