//! Node configuration: defaults, TOML loading, validation. Every key is documented in
//! README.md; `validate()` names the bad value rather than falling back to a default.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::raft::NodeId;

/// One other member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The member's node id.
    pub id: NodeId,
    /// Its `host:port` (the address it listens on).
    pub addr: String,
}

impl std::str::FromStr for PeerConfig {
    type Err = ConfigError;

    /// Parses `ID=HOST:PORT`, the form `--peer` takes.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let (id, addr) = s
            .split_once('=')
            .ok_or_else(|| ConfigError::Invalid(format!("peer {s:?} is not of the form ID=HOST:PORT")))?;
        let id =
            id.trim().parse().map_err(|_| ConfigError::Invalid(format!("peer id {id:?} in {s:?} is not a number")))?;
        Ok(PeerConfig { id, addr: addr.trim().to_string() })
    }
}

/// Splits `HOST:PORT` (`[::1]:80` too) into host and port; the error says what is wrong.
pub fn parse_host_port(addr: &str) -> Result<(String, u16), String> {
    addr.rsplit_once(':')
        .and_then(|(h, p)| {
            let host = h.trim_start_matches('[').trim_end_matches(']');
            Some((host.to_string(), p.parse::<u16>().ok()?)).filter(|(h, _)| !h.is_empty())
        })
        .ok_or_else(|| format!("{addr:?} is not HOST:PORT"))
}

/// How a linearizable read learns the index it must wait for (thesis §6.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// The leader confirms it still leads with a round of heartbeats (one round serves every
    /// read waiting for it): safe whatever the clocks do.
    #[default]
    Index,
    /// The leader answers at once while a majority's last answers keep it leader (a lease
    /// of 85% of the shortest election timeout, renewed while reads come): no round trip,
    /// but it relies on every clock running within 5% of true time.
    Lease,
}

/// Everything a node needs to start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id, unique in the cluster, not 0.
    pub id: NodeId,
    /// The cluster group name; connections from another group are refused.
    pub group: String,
    /// `host:port` to listen on for peers and clients.
    pub listen: String,
    /// `host:port` peers reach this node at, when not `listen` (a node listening on
    /// `0.0.0.0`): what the cluster's configuration records for it.
    pub advertise: Option<String>,
    /// Where the log lives; created if missing.
    pub data_dir: PathBuf,
    /// The other members of a brand-new cluster. Read only when the data directory is empty,
    /// to write the cluster's first configuration; from then on the members come from the
    /// log, whatever this list says.
    pub peers: Vec<PeerConfig>,
    /// Whether a node with an empty data directory and no `join` founds a cluster of itself
    /// and `peers` (its first leader logs that configuration). Off (`--no-bootstrap`): it
    /// waits, electing nobody, until a member adds it.
    pub bootstrap: bool,
    /// Start as the only voter of a new cluster holding this node's data, every other member
    /// removed (recovery when most machines are gone for good; etcd's
    /// `--force-new-cluster`). Everything in this node's log counts as committed. Drop the
    /// flag once the node runs: each start with it writes the change again.
    pub force_new_cluster: bool,
    /// A member to ask, on an empty data directory, to add this node (as a voter, once it has
    /// caught up). A node whose log holds anything never asks again.
    pub join: Option<String>,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// How often the leader sends heartbeats.
    pub heartbeat_interval_ms: u64,
    /// How a linearizable read gets its read index (see [`ReadMode`]).
    pub read_mode: ReadMode,
    /// Simulations only: this node's Raft clock runs this many parts per million fast
    /// (above 0) or slow (below), to test what clock drift does to lease reads. Not a file key.
    #[serde(skip)]
    pub clock_skew_ppm: i32,
    /// How long a client request may take before it fails with a timeout.
    pub request_timeout_ms: u64,
    /// Largest client request frame accepted, in bytes (etcd's `--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Most entries in one AppendEntries.
    pub max_append_entries: usize,
    /// Most entry bytes in one AppendEntries; also bounds peer frames.
    pub max_append_bytes: usize,
    /// Most AppendEntries in flight to one peer (pipelining window).
    pub max_inflight_appends: usize,
    /// Size at which a log segment file is closed and a new one started.
    pub segment_bytes: u64,
    /// Entries applied between two snapshots of the state machines (0: never snapshot).
    pub snapshot_entries: u64,
    /// Entries kept in the log behind each snapshot, so that a follower that lags by fewer
    /// catches up from the log instead of by a snapshot transfer (etcd's
    /// `--snapshot-catchup-entries`).
    pub snapshot_catchup_entries: u64,
    /// How long a new connection has to complete its handshake.
    pub handshake_timeout_ms: u64,
    /// Seed for the node's random choices (election timeouts). `None` draws one at start;
    /// a simulation sets it to replay a run.
    pub seed: Option<u64>,
    /// Shared secret every connection (peer or client) must present in its handshake.
    pub cluster_token: Option<String>,
    /// Allow listening beyond loopback without a cluster token or TLS (refused otherwise).
    pub insecure: bool,
    /// This node's certificate chain (PEM). With `tls_key` and `tls_ca`, both ports serve
    /// TLS only and peers authenticate each other by certificate.
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// The CA certificates (PEM) a peer's certificate must chain to.
    pub tls_ca: Option<PathBuf>,
    /// `host:port` for the HTTP port (dister's API, the Nacos API, the console); `None` turns
    /// it off. The binary serves it ([`crate::api::serve`]); an embedding application starts
    /// it itself, `Node` does not.
    pub http: Option<String>,
    /// Default interval of an instance's health check.
    pub check_interval_ms: u64,
    /// A TTL-checked (or ephemeral) instance silent this long is marked unhealthy.
    pub ephemeral_unhealthy_after_ms: u64,
    /// An ephemeral instance silent this long is removed.
    pub ephemeral_remove_after_ms: u64,
    /// Allow `script` and `custom` health checks (they run commands on the leader's machine);
    /// without it, nodes checked so are refused when they are set.
    pub allow_script_checks: bool,
    /// Most health probes the leader runs at once; the others wait for a free slot.
    pub check_concurrency: usize,
    /// Most client writes a node holds at once (accepted, not yet answered); past it new
    /// writes are refused at once with a retryable "overloaded".
    pub max_pending_writes: usize,
    /// Most bytes of such writes.
    pub max_pending_write_bytes: usize,
    /// Most reads (and beats) a node holds at once.
    pub max_pending_reads: usize,
    /// Most client connections, on the wire and on the HTTP API each.
    pub max_client_connections: usize,
    /// With a username (and password), HTTP callers log in (`POST /auth/login`, or Nacos'
    /// `/nacos/v1/auth/login`) and present the token they get; wire clients present it (or
    /// the cluster token) in their handshake.
    pub auth_username: Option<String>,
    /// The password that goes with `auth_username`.
    pub auth_password: Option<String>,
    /// How long a login token stays valid (Nacos' default: 5 hours).
    pub auth_token_ttl_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: 1,
            group: "default".into(),
            listen: "127.0.0.1:7070".into(),
            advertise: None,
            data_dir: PathBuf::from("data"),
            peers: Vec::new(),
            bootstrap: true,
            force_new_cluster: false,
            join: None,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            heartbeat_interval_ms: 50,
            read_mode: ReadMode::Index,
            clock_skew_ppm: 0,
            request_timeout_ms: 5_000,
            max_request_bytes: 1_572_864,
            max_append_entries: 4_096,
            max_append_bytes: 4 * 1024 * 1024,
            max_inflight_appends: 8,
            segment_bytes: 64 * 1024 * 1024,
            // As etcd 3.6 and r-nacos.
            snapshot_entries: 10_000,
            snapshot_catchup_entries: 5_000,
            handshake_timeout_ms: 5_000,
            seed: None,
            cluster_token: None,
            insecure: false,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            http: None,
            check_interval_ms: 2_000,
            ephemeral_unhealthy_after_ms: 15_000,
            ephemeral_remove_after_ms: 30_000,
            allow_script_checks: false,
            check_concurrency: 256,
            max_pending_writes: 8_192,
            max_pending_write_bytes: 64 * 1024 * 1024,
            max_pending_reads: 16_384,
            max_client_connections: 4_096,
            auth_username: None,
            auth_password: None,
            auth_token_ttl_secs: 18_000,
        }
    }
}

impl Config {
    /// Reads a TOML config file; keys not in the file keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
    }

    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => {
                Some(crate::tls::TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() })
            }
            _ => None,
        }
    }

    /// The address peers reach this node at.
    pub fn advertised(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }

    /// Checks every value; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.id == 0 {
            return bad("id must not be 0".into());
        }
        if self.group.is_empty() {
            return bad("group must not be empty".into());
        }
        if self.listen.is_empty() {
            return bad("listen must be host:port".into());
        }
        let mut ids = BTreeSet::new();
        for p in &self.peers {
            if p.id == self.id {
                return bad(format!("peer {} has this node's own id; list only the other members", p.id));
            }
            if p.id == 0 {
                return bad("peer id must not be 0".into());
            }
            if !ids.insert(p.id) {
                return bad(format!("peer id {} is listed twice", p.id));
            }
            if !p.addr.contains(':') {
                return bad(format!("peer {} address {:?} is not host:port", p.id, p.addr));
            }
        }
        if let Some(join) = &self.join {
            if !self.peers.is_empty() {
                return bad(
                    "join and peers exclude each other: a joining node learns the members from the cluster".into()
                );
            }
            if !join.contains(':') {
                return bad(format!("join address {join:?} is not host:port"));
            }
        }
        if self.election_timeout_min_ms == 0 || self.election_timeout_min_ms >= self.election_timeout_max_ms {
            return bad(format!(
                "election_timeout_min_ms ({}) must be above 0 and below election_timeout_max_ms ({})",
                self.election_timeout_min_ms, self.election_timeout_max_ms
            ));
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms * 3 > self.election_timeout_min_ms {
            return bad(format!(
                "heartbeat_interval_ms ({}) must be above 0 and at most a third of election_timeout_min_ms ({})",
                self.heartbeat_interval_ms, self.election_timeout_min_ms
            ));
        }
        if self.request_timeout_ms == 0 || self.handshake_timeout_ms == 0 {
            return bad("request_timeout_ms and handshake_timeout_ms must be above 0".into());
        }
        if self.max_request_bytes < 1024 {
            return bad(format!("max_request_bytes ({}) must be at least 1024", self.max_request_bytes));
        }
        if self.max_append_entries == 0 || self.max_inflight_appends == 0 {
            return bad("max_append_entries and max_inflight_appends must be above 0".into());
        }
        if self.max_append_bytes < self.max_request_bytes {
            return bad(format!(
                "max_append_bytes ({}) must be at least max_request_bytes ({}) so any accepted write can replicate",
                self.max_append_bytes, self.max_request_bytes
            ));
        }
        if self.cluster_token.as_deref().is_some_and(|t| t.len() < 16) {
            return bad("cluster_token must be at least 16 characters".into());
        }
        let tls = match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => false,
            (Some(_), Some(_), Some(_)) => true,
            _ => return bad("tls_cert, tls_key and tls_ca (--tls-cert, --tls-key, --tls-ca) go together".into()),
        };
        if let Some(http) = &self.http
            && !http.contains(':')
        {
            return bad(format!("http address {http:?} is not host:port"));
        }
        for (what, addr) in std::iter::once(("listen", &self.listen)).chain(self.http.iter().map(|h| ("http", h))) {
            if self.insecure || is_loopback(addr) {
                continue;
            }
            let missing = match (self.cluster_token.is_some(), tls) {
                (true, true) => continue,
                (false, true) => {
                    "no cluster_token is set: anyone who can reach it could join the cluster or send it writes"
                }
                (true, false) => "it has no TLS: its token and data would cross the network in clear",
                (false, false) => "it has neither a cluster_token nor TLS",
            };
            return bad(format!(
                "{what} address {addr} is reachable beyond this machine and {missing}; set cluster_token (--token) \
                 and --tls-cert/--tls-key/--tls-ca, listen on 127.0.0.1, or pass --insecure"
            ));
        }
        if self.check_interval_ms == 0 {
            return bad("check_interval_ms must be above 0".into());
        }
        if self.max_pending_writes == 0 || self.max_pending_reads == 0 || self.max_client_connections == 0 {
            return bad("max_pending_writes, max_pending_reads and max_client_connections must be above 0".into());
        }
        if self.max_pending_write_bytes < self.max_request_bytes {
            return bad(format!(
                "max_pending_write_bytes ({}) must be at least max_request_bytes ({}) so any accepted write fits",
                self.max_pending_write_bytes, self.max_request_bytes
            ));
        }
        if self.check_concurrency == 0 || self.check_concurrency > 65_536 {
            return bad(format!("check_concurrency ({}) must be 1 to 65536", self.check_concurrency));
        }
        if self.ephemeral_unhealthy_after_ms == 0 || self.ephemeral_remove_after_ms < self.ephemeral_unhealthy_after_ms
        {
            return bad(format!(
                "ephemeral_remove_after_ms ({}) must be at least ephemeral_unhealthy_after_ms ({}), which must be above 0",
                self.ephemeral_remove_after_ms, self.ephemeral_unhealthy_after_ms
            ));
        }
        match (&self.auth_username, &self.auth_password) {
            (Some(u), Some(p)) if !u.is_empty() && p.len() >= 8 => {}
            (None, None) => {}
            (Some(u), Some(_)) if !u.is_empty() => return bad("auth_password must be at least 8 characters".into()),
            _ => return bad("auth_username and auth_password go together, neither empty".into()),
        }
        if self.auth_token_ttl_secs == 0 || self.auth_token_ttl_secs > 366 * 86_400 {
            return bad(format!("auth_token_ttl_secs ({}) must be 1 to 31622400 (a year)", self.auth_token_ttl_secs));
        }
        if self.auth_username.is_some() && !self.peers.is_empty() && self.cluster_token.is_none() {
            return bad("auth with peers needs a cluster_token too: peers present it, as they cannot log in".into());
        }
        if self.segment_bytes < 4096 {
            return bad(format!("segment_bytes ({}) must be at least 4096", self.segment_bytes));
        }
        Ok(())
    }

    /// Whether callers must log in.
    pub fn auth_enabled(&self) -> bool {
        self.auth_username.is_some()
    }

    /// The number of voters, this node included.
    pub fn voters(&self) -> usize {
        self.peers.len() + 1
    }

    /// Largest frame accepted from a client connection.
    pub fn client_max_frame(&self) -> usize {
        self.max_request_bytes + 1024
    }

    /// What a peer's hello says of its lease timing ([`crate::wire::Hello::lease_wait_ms`]).
    pub fn lease_wait_ms(&self) -> Option<u64> {
        (self.read_mode == ReadMode::Lease).then_some(self.election_timeout_min_ms)
    }

    /// Largest frame accepted from a peer: a full batch plus one maximal entry, since a batch
    /// always carries at least one entry.
    pub fn peer_max_frame(&self) -> usize {
        self.max_append_bytes + self.max_request_bytes + 64 * 1024
    }

    /// `request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// `heartbeat_interval_ms` as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// `handshake_timeout_ms` as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

/// Whether `addr` (`host:port`) only accepts connections from this machine.
pub fn is_loopback(addr: &str) -> bool {
    let host = parse_host_port(addr).map_or_else(|_| addr.to_string(), |(h, _)| h);
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn names_bad_values() {
        let c = Config { election_timeout_min_ms: 700, ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("election_timeout_min_ms (700)"));
        let c = Config { heartbeat_interval_ms: 200, ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("heartbeat_interval_ms (200)"));
        let c = Config { peers: vec![PeerConfig { id: 1, addr: "a:1".into() }], ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("own id"));
    }

    /// Secure by default: beyond loopback, a token and TLS, or an explicit `insecure`.
    #[test]
    fn refuses_to_listen_beyond_loopback_without_a_token_and_tls() {
        for listen in ["127.0.0.1:1", "127.0.0.5:1", "localhost:1", "[::1]:1"] {
            Config { listen: listen.into(), ..Config::default() }.validate().unwrap();
        }
        for listen in ["0.0.0.0:1", "10.1.2.3:1", "[::]:1", "node1:1"] {
            let err = Config { listen: listen.into(), ..Config::default() }.validate().unwrap_err();
            assert!(err.to_string().contains("neither a cluster_token nor TLS"), "{err}");
            Config { listen: listen.into(), insecure: true, ..Config::default() }.validate().unwrap();
            let token = Some("0123456789abcdef".to_string());
            let tokened = Config { listen: listen.into(), cluster_token: token, ..Config::default() };
            let err = tokened.validate().unwrap_err();
            assert!(err.to_string().contains("no TLS"), "{err}");
            let tls = Config {
                tls_cert: Some("node.pem".into()),
                tls_key: Some("node.key".into()),
                tls_ca: Some("ca.pem".into()),
                ..tokened.clone()
            };
            tls.validate().unwrap();
            let err = Config { cluster_token: None, ..tls.clone() }.validate().unwrap_err();
            assert!(err.to_string().contains("no cluster_token"), "{err}");
            let err = Config { tls_ca: None, ..tls.clone() }.validate().unwrap_err();
            assert!(err.to_string().contains("go together"), "{err}");
            // The HTTP port is held to the same rule.
            let http = Config { listen: "127.0.0.1:1".into(), http: Some(listen.into()), ..tokened };
            assert!(http.validate().unwrap_err().to_string().contains("http address"));
            Config { listen: "127.0.0.1:1".into(), ..tls }.validate().unwrap();
        }
        let auth = Config {
            auth_username: Some("admin".into()),
            auth_password: Some("long-enough".into()),
            peers: vec![PeerConfig { id: 2, addr: "127.0.0.1:7072".into() }],
            ..Config::default()
        };
        assert!(auth.validate().unwrap_err().to_string().contains("cluster_token"), "peers cannot log in");
        Config { cluster_token: Some("0123456789abcdef".into()), ..auth.clone() }.validate().unwrap();
        let short_pw = Config { auth_password: Some("short".into()), peers: vec![], ..auth };
        assert!(short_pw.validate().is_err());
        let short = Config { cluster_token: Some("short".into()), ..Config::default() };
        assert!(short.validate().unwrap_err().to_string().contains("at least 16"));
    }

    #[test]
    fn parses_peer_flags_and_toml() {
        let p: PeerConfig = "2=127.0.0.1:7071".parse().unwrap();
        assert_eq!(p, PeerConfig { id: 2, addr: "127.0.0.1:7071".into() });
        assert!("x=1".parse::<PeerConfig>().is_err());
        let c: Config = toml::from_str("id = 3\n[[peers]]\nid = 1\naddr = \"h:1\"\n").unwrap();
        assert_eq!(c.id, 3);
        assert_eq!(c.peers.len(), 1);
        assert!(toml::from_str::<Config>("idd = 3").is_err());
    }
}
