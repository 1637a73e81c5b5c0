//! The node's metrics, in the OpenMetrics text format Prometheus scrapes, at `GET /metrics`
//! (and Nacos' `/nacos/actuator/prometheus`). Names follow etcd's where etcd measures the same
//! thing (`dister_server_has_leader` for `etcd_server_has_leader`, ...), so its dashboards and
//! alerts carry over.
//!
//! Two kinds, by what they cost:
//! - events are counted where they happen, on handles taken once (a replicator holds its
//!   peer's histogram, the log writer its fsync histogram): a counter is an atomic add, a
//!   histogram's observation a short lock of its own, never contended but by a scrape; nothing
//!   on the write path allocates for them;
//! - what the node's status already holds (leader, indexes, sizes, registry and key counts)
//!   is read when scraped ([`Metrics::render`] is given a [`Sample`]) and written as that
//!   scrape's constants: it costs the write path nothing.
//!
//! Each node has its own [`Metrics`] (several nodes may share a process, as in the tests); the
//! `process_*` metrics describe the process.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels naming a peer, as etcd's (`To`, capital and all: the label's name is the field's).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[allow(non_snake_case)]
pub struct PeerLabels {
    /// The peer's id.
    pub To: String,
}

/// Labels of an HTTP request: its route (the pattern matched, never the raw path, so the
/// series stay few), method and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route pattern (`/kv`, `/nacos/v1/cs/configs`, `unmatched`).
    pub route: String,
    /// The method.
    pub method: String,
    /// The status code.
    pub code: u16,
}

/// Labels of an HTTP route's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route pattern.
    pub route: String,
}

/// Labels of instances by health.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabels {
    /// `healthy`, `unhealthy` or `unknown`.
    pub health: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets of etcd's fsync histogram: 1 ms to about 8 s, doubling.
fn fsync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// Buckets of etcd's peer round-trip histogram: 0.1 ms to about 0.8 s, doubling.
fn rtt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 14))
}

/// Buckets of an HTTP request's latency: 0.1 ms to about 105 s, quadrupling (a Nacos long
/// poll holds its request up to 30 s).
fn http_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

/// What a replicator records about its peer.
#[derive(Clone, Debug, Default)]
pub struct PeerMetrics {
    /// Round trips of the leader's empty appends (heartbeats and probes: no entries to store,
    /// so mostly the network and the peer's mailboxes).
    pub round_trip: Option<Histogram>,
    /// Requests that failed to reach the peer or to come back.
    pub sent_failures: Counter,
}

impl PeerMetrics {
    /// Records one heartbeat's round trip.
    pub fn round_trip(&self, d: Duration) {
        if let Some(h) = &self.round_trip {
            h.observe(d.as_secs_f64());
        }
    }
}

/// The values a scrape reads from the node's status.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// A leader is known.
    pub has_leader: bool,
    /// This node leads.
    pub is_leader: bool,
    /// The term.
    pub term: u64,
    /// The commit index.
    pub committed: u64,
    /// The applied index.
    pub applied: u64,
    /// Client writes accepted and not yet answered.
    pub pending: u64,
    /// Entries held in the log.
    pub log_entries: u64,
    /// The newest snapshot's index and size.
    pub snapshot_index: u64,
    /// Its size in bytes.
    pub snapshot_bytes: u64,
    /// Bytes the data directory holds (log segments and snapshots).
    pub disk_bytes: u64,
    /// Services.
    pub services: u64,
    /// Instances, healthy, unhealthy, not yet checked.
    pub instances: [u64; 3],
    /// Keys.
    pub keys: u64,
    /// Nacos configs (keys under their prefix).
    pub configs: u64,
}

/// A node's metrics.
pub struct Metrics {
    registry: Registry,
    /// Times a node saw a new leader (or none).
    pub leader_changes: Counter,
    /// Client writes that failed.
    pub proposals_failed: Counter,
    /// Read indexes a follower asked its leader for, each for every read waiting then.
    pub read_indexes_forwarded: Counter,
    /// Read indexes answered from a lease (`read_mode = "lease"`): the leader's, without a round,
    /// or a follower's own, without asking the leader.
    pub read_indexes_by_lease: Counter,
    /// Of those, read indexes this follower took from its own read lease, without asking the
    /// leader.
    pub read_indexes_by_follower_lease: Counter,
    /// Durations of the log's fsyncs.
    pub wal_fsync: Histogram,
    peer_rtt: HistogramFamily<PeerLabels>,
    peer_failures: Family<PeerLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: HistogramFamily<RouteLabels>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric, registered under `dister_` (and `process_`).
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            leader_changes: Counter::default(),
            proposals_failed: Counter::default(),
            read_indexes_forwarded: Counter::default(),
            read_indexes_by_lease: Counter::default(),
            read_indexes_by_follower_lease: Counter::default(),
            wal_fsync: fsync_histogram(),
            peer_rtt: Family::new_with_constructor(rtt_histogram),
            peer_failures: Family::default(),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(http_histogram),
        };
        let r = m.registry.sub_registry_with_prefix("dister");
        r.register("server_leader_changes_seen", "Leader changes this node saw", m.leader_changes.clone());
        r.register("server_proposals_failed", "Client writes that failed", m.proposals_failed.clone());
        r.register(
            "server_read_indexes_forwarded",
            "Read indexes this follower asked its leader for, one for every read waiting then",
            m.read_indexes_forwarded.clone(),
        );
        r.register(
            "server_read_indexes_by_lease",
            "Read indexes answered from a lease: this leader's, without a round of heartbeats, or this follower's, without asking the leader",
            m.read_indexes_by_lease.clone(),
        );
        r.register(
            "server_read_indexes_by_follower_lease",
            "Read indexes this follower answered from its own read lease, without asking the leader",
            m.read_indexes_by_follower_lease.clone(),
        );
        r.register("disk_wal_fsync_duration_seconds", "Durations of the log's fsyncs", m.wal_fsync.clone());
        r.register(
            "network_peer_round_trip_time_seconds",
            "Round trips of heartbeats to each peer",
            m.peer_rtt.clone(),
        );
        r.register(
            "network_peer_sent_failures",
            "Requests to each peer that failed or got no answer",
            m.peer_failures.clone(),
        );
        r.register("http_requests", "HTTP requests answered, by route, method and status", m.http_requests.clone());
        r.register("http_request_duration_seconds", "HTTP request latency, by route", m.http_seconds.clone());
        m.registry.register_collector(Box::new(ProcessCollector));
        m
    }

    /// What the replicator to `peer` records.
    pub fn peer(&self, peer: u64) -> PeerMetrics {
        let labels = PeerLabels { To: peer.to_string() };
        PeerMetrics {
            round_trip: Some(self.peer_rtt.get_or_create_owned(&labels)),
            sent_failures: self.peer_failures.get_or_create_owned(&labels),
        }
    }

    /// Records one HTTP request.
    pub fn http_request(&self, labels: HttpLabels, elapsed: Duration) {
        self.http_seconds.get_or_create(&RouteLabels { route: labels.route.clone() }).observe(elapsed.as_secs_f64());
        self.http_requests.get_or_create(&labels).inc();
    }

    /// The text of every metric, the scrape-time ones as `sample` says: constants of this
    /// scrape alone, so two scrapes never mix their samples.
    pub fn render(&self, sample: &Sample) -> String {
        let mut now = Registry::with_prefix("dister");
        let mut gauge = |name: &str, help: &str, v: u64| {
            now.register(name, help, ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)));
        };
        gauge("server_has_leader", "Whether a leader exists (1) or not (0)", u64::from(sample.has_leader));
        gauge("server_is_leader", "Whether this node is the leader (1) or not (0)", u64::from(sample.is_leader));
        gauge("server_term", "The term this node is in", sample.term);
        gauge("server_proposals_committed_total", "The commit index", sample.committed);
        gauge("server_proposals_applied_total", "The index applied to every state machine", sample.applied);
        gauge("server_proposals_pending", "Client writes accepted and not yet answered", sample.pending);
        gauge("log_entries", "Entries held in the log", sample.log_entries);
        gauge("snapshot_index", "The last entry the newest snapshot covers", sample.snapshot_index);
        gauge("snapshot_bytes", "Size of the newest snapshot", sample.snapshot_bytes);
        gauge("disk_data_bytes", "Bytes of the data directory: log segments and snapshots", sample.disk_bytes);
        gauge("registry_services", "Services registered", sample.services);
        gauge("kv_keys", "Keys in the key/value store", sample.keys);
        gauge("nacos_configs", "Nacos configs", sample.configs);
        let instances = Family::<HealthLabels, Gauge>::default();
        for (health, n) in ["healthy", "unhealthy", "unknown"].into_iter().zip(sample.instances) {
            instances.get_or_create(&HealthLabels { health: health.into() }).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        now.register("registry_instances", "Instances registered, by health", instances);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = text::encode_registry(&mut out, &self.registry);
        let _ = text::encode_registry(&mut out, &now);
        let _ = text::encode_eof(&mut out);
        out
    }
}

/// The standard `process_*` metrics of this process, read from `/proc` at each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(me) = procfs::process::Process::myself() else { return Ok(()) };
        let Ok(stat) = me.stat() else { return Ok(()) };
        let ticks = procfs::ticks_per_second().max(1) as f64;
        let cpu = (stat.utime + stat.stime) as f64 / ticks;
        let counter = ConstCounter::new(cpu);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            counter.metric_type(),
        )?)?;
        let mut gauge = |name: &str, help: &str, v: f64| -> Result<(), std::fmt::Error> {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            (stat.rss * procfs::page_size()) as f64,
        )?;
        gauge("process_virtual_memory_bytes", "Virtual memory size in bytes", stat.vsize as f64)?;
        gauge("process_threads", "Threads of the process", stat.num_threads as f64)?;
        if let Ok(fds) = me.fd_count() {
            gauge("process_open_fds", "Open file descriptors", fds as f64)?;
        }
        if let Ok(limits) = me.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            gauge("process_max_fds", "Most open file descriptors", max as f64)?;
        }
        if let Ok(boot) = procfs::boot_time_secs() {
            let start = boot as f64 + stat.starttime as f64 / ticks;
            gauge("process_start_time_seconds", "Start time of the process since the epoch, in seconds", start)?;
        }
        Ok(())
    }
}

/// A node's metrics, shared by its actors and its HTTP API.
pub type MetricsRef = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The names dashboards look for are there, with etcd's spelling, and events count.
    #[test]
    fn renders_etcd_names_and_counts_events() {
        let m = Metrics::new();
        m.leader_changes.inc();
        m.wal_fsync.observe(0.002);
        let peer = m.peer(2);
        peer.round_trip(Duration::from_micros(300));
        peer.sent_failures.inc();
        m.http_request(HttpLabels { route: "/kv".into(), method: "GET".into(), code: 200 }, Duration::from_millis(1));
        let sample =
            Sample { has_leader: true, is_leader: true, committed: 7, instances: [2, 1, 0], ..Sample::default() };
        let text = m.render(&sample);
        for line in [
            "dister_server_has_leader 1",
            "dister_server_is_leader 1",
            "dister_server_leader_changes_seen_total 1",
            "dister_server_proposals_committed_total 7",
            "dister_disk_wal_fsync_duration_seconds_count 1",
            "dister_network_peer_round_trip_time_seconds_count{To=\"2\"} 1",
            "dister_network_peer_sent_failures_total{To=\"2\"} 1",
            "dister_registry_instances{health=\"healthy\"} 2",
            "dister_http_requests_total{route=\"/kv\",method=\"GET\",code=\"200\"} 1",
            "dister_http_request_duration_seconds_count{route=\"/kv\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.lines().any(|l| l.starts_with("process_resident_memory_bytes ")), "{text}");
        assert!(text.lines().any(|l| l.starts_with("process_open_fds ")), "{text}");
    }
}
