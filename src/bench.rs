//! The benchmark behind `dister bench`: N closed-loop clients, each on its own connection
//! (spread over the given nodes), running one workload for a fixed time; reports throughput
//! and latency percentiles. Workloads: `kv` sets keys and `kv-get` reads them over the wire
//! protocol; `nacos-register`, `nacos-publish`, `nacos-get` and `nacos-list` drive the Nacos
//! Open API over HTTP (instance registration, config publish, config read, instance list).
//! What they write stays in the store (`bench/` keys, `bench-N` services, `bench-N` configs):
//! run it against a throwaway cluster.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::{Client, Dial};
use crate::error::ClientError;

/// Which requests the clients send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Workload {
    /// `set` of a fresh key, over the wire protocol.
    #[default]
    Kv,
    /// `POST /nacos/v1/ns/instance`: each client (re-)registers 64 ephemeral instances of its
    /// own service in turn.
    NacosRegister,
    /// `POST /nacos/v1/cs/configs`: each client publishes its own config, a new content each time.
    NacosPublish,
    /// `GET /nacos/v1/cs/configs` (linearizable): each client reads its own config.
    NacosGet,
    /// `get` (linearizable) over the wire protocol: each client reads its own key.
    KvGet,
    /// `GET /nacos/v1/ns/instance/list` (linearizable): each client lists its own service, of
    /// three instances.
    NacosList,
}

impl Workload {
    /// Whether it runs over the wire protocol (else over HTTP).
    fn on_the_wire(self) -> bool {
        matches!(self, Workload::Kv | Workload::KvGet)
    }
}

impl std::str::FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kv" => Ok(Workload::Kv),
            "nacos-register" => Ok(Workload::NacosRegister),
            "nacos-publish" => Ok(Workload::NacosPublish),
            "nacos-get" => Ok(Workload::NacosGet),
            "kv-get" => Ok(Workload::KvGet),
            "nacos-list" => Ok(Workload::NacosList),
            other => Err(format!(
                "unknown workload {other:?}: kv, kv-get, nacos-register, nacos-publish, nacos-get or nacos-list"
            )),
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The workload.
    pub workload: Workload,
    /// Nodes to connect to (clients are spread over them round-robin): their wire addresses
    /// for `kv`, their HTTP addresses for the Nacos workloads.
    pub addrs: Vec<String>,
    /// For the Nacos workloads on a cluster with auth: username and password to log in with.
    pub login: Option<(String, String)>,
    /// How to reach the nodes: group, token, TLS (over HTTP too, for the Nacos workloads).
    pub dial: Dial,
    /// Concurrent clients, one connection each.
    pub clients: usize,
    /// How long to measure.
    pub duration: Duration,
    /// Key size in bytes (keys are `bench/CLIENT/SEQ/` padded to this size, or longer).
    pub key_size: usize,
    /// Value size in bytes.
    pub value_size: usize,
    /// Overwrite this many keys (`bench/N/`, spread over every client) instead of writing
    /// fresh ones, so that a long run reaches a steady state (kv only).
    pub keys: Option<u64>,
}

/// What it measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Acknowledged writes.
    pub ops: u64,
    /// Failed writes.
    pub errors: u64,
    /// Measured time.
    pub elapsed: Duration,
    /// Latency percentiles, microseconds: p50, p99, p99.9, max.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
}

impl BenchReport {
    /// Acknowledged writes per second.
    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "ops={} errors={} secs={:.2} throughput={:.0}/s p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.2}",
            self.ops,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us)
        )
    }
}

/// Pads `s` with `x` up to `size` bytes (never shortens it, so keys stay unique).
fn padded(mut s: String, size: usize) -> String {
    if s.len() < size {
        s.extend(std::iter::repeat_n('x', size - s.len()));
    }
    s
}

/// One client's connection.
enum Conn {
    Wire(Client),
    Http { client: awc::Client, base: String, token: Option<String> },
}

impl Conn {
    async fn open(opts: &BenchOptions, addr: &str) -> Result<Conn, ClientError> {
        if opts.workload.on_the_wire() {
            let client = Client::dial(addr, &opts.dial)
                .await
                .map_err(|e| ClientError::Unexpected(format!("cannot reach {addr}: {e}")))?;
            return Ok(Conn::Wire(client));
        }
        // One keep-alive connection per client, as a load generator's connection would be.
        let connector = awc::Connector::new().limit(1);
        let (connector, scheme) = match &opts.dial.tls {
            Some(tls) => (connector.rustls_0_23(tls.config()), "https"),
            None => (connector, "http"),
        };
        let client = awc::Client::builder().connector(connector).timeout(Duration::from_secs(30)).finish();
        let base = format!("{scheme}://{addr}/nacos/v1");
        let token = match &opts.login {
            // The cluster token serves as Nacos' access token too.
            None => opts.dial.token.clone(),
            Some((user, pass)) => {
                let mut r = client
                    .post(format!("{base}/auth/login"))
                    .send_form(&[("username", user), ("password", pass)])
                    .await
                    .map_err(|e| ClientError::Unexpected(format!("cannot log in at {addr}: {e}")))?;
                let v: serde_json::Value =
                    r.json().await.map_err(|e| ClientError::Unexpected(format!("login at {addr}: {e}")))?;
                let t =
                    v["accessToken"].as_str().ok_or_else(|| ClientError::Unexpected(format!("login refused: {v}")))?;
                Some(t.to_string())
            }
        };
        Ok(Conn::Http { client, base, token })
    }

    /// One operation; `Err` says why it failed.
    async fn op(&self, opts: &BenchOptions, me: usize, seq: u64, value: &str) -> Result<(), String> {
        match self {
            Conn::Wire(c) => {
                let key = match opts.keys {
                    // The clients walk the key space together, each taking every `clients`th
                    // key: about `n` writes have written every key once.
                    Some(n) => {
                        let key = (seq * opts.clients as u64 + me as u64) % n.max(1);
                        padded(format!("bench/{key:x}/"), opts.key_size)
                    }
                    None => padded(format!("bench/{me:x}/{seq:x}/"), opts.key_size),
                };
                if opts.workload == Workload::KvGet {
                    // The key its setup wrote (sequence 0).
                    let key = padded(format!("bench/{me:x}/0/"), opts.key_size);
                    return match c.get(&key, crate::wire::Consistency::Linearizable).await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err(format!("{key} not found")),
                        Err(e) => Err(e.to_string()),
                    };
                }
                c.set(&key, value).await.map(|_| ()).map_err(|e| e.to_string())
            }
            Conn::Http { client, base, token } => {
                let auth: Vec<(&str, &str)> = token.iter().map(|t| ("accessToken", t.as_str())).collect();
                let mut resp = match opts.workload {
                    Workload::NacosRegister => {
                        let port = (20_000 + seq % 64).to_string();
                        let service = format!("bench-{me}");
                        let mut q = vec![("serviceName", service.as_str()), ("ip", "127.0.0.1"), ("port", &port)];
                        q.extend(auth);
                        client.post(format!("{base}/ns/instance")).query(&q).map_err(|e| e.to_string())?.send().await
                    }
                    Workload::NacosPublish => {
                        let data_id = format!("bench-{me}");
                        let content = format!("{seq}:{value}");
                        let mut form = vec![("dataId", data_id.as_str()), ("group", "BENCH"), ("content", &content)];
                        form.extend(auth);
                        client.post(format!("{base}/cs/configs")).send_form(&form).await
                    }
                    Workload::NacosList => {
                        let service = format!("bench-{me}");
                        let mut q = vec![("serviceName", service.as_str())];
                        q.extend(auth);
                        let url = format!("{base}/ns/instance/list");
                        client.get(url).query(&q).map_err(|e| e.to_string())?.send().await
                    }
                    Workload::NacosGet | Workload::Kv | Workload::KvGet => {
                        let data_id = format!("bench-{me}");
                        let mut q = vec![("dataId", data_id.as_str()), ("group", "BENCH")];
                        q.extend(auth);
                        client.get(format!("{base}/cs/configs")).query(&q).map_err(|e| e.to_string())?.send().await
                    }
                }
                .map_err(|e| e.to_string())?;
                let body = resp.body().await.map_err(|e| e.to_string())?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("{}: {}", resp.status(), String::from_utf8_lossy(&body)))
                }
            }
        }
    }
}

/// Runs the benchmark on the current thread's `LocalSet` (call it inside an actix system).
pub async fn run(opts: BenchOptions) -> Result<BenchReport, ClientError> {
    let mut conns = Vec::with_capacity(opts.clients);
    for i in 0..opts.clients {
        conns.push(Conn::open(&opts, &opts.addrs[i % opts.addrs.len()]).await?);
    }
    let value = padded(String::new(), opts.value_size);
    // Something to read: each client's config published once, its key set once, or its
    // service's three instances registered.
    let setup: &[(Workload, u64)] = match opts.workload {
        Workload::NacosGet => &[(Workload::NacosPublish, 0)],
        Workload::KvGet => &[(Workload::Kv, 0)],
        Workload::NacosList => {
            &[(Workload::NacosRegister, 0), (Workload::NacosRegister, 1), (Workload::NacosRegister, 2)]
        }
        _ => &[],
    };
    for &(workload, seq) in setup {
        let first = BenchOptions { workload, keys: None, ..opts.clone() };
        for (i, conn) in conns.iter().enumerate() {
            conn.op(&first, i, seq, &value).await.map_err(|e| ClientError::Unexpected(format!("setup: {e}")))?;
        }
    }
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).map_err(|e| ClientError::Unexpected(e.to_string()))?,
    ));
    let errors = Rc::new(RefCell::new(0u64));
    let start = Instant::now();
    let deadline = start + opts.duration;
    let opts = Rc::new(opts);
    let mut tasks = Vec::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let (hist, errors, value, opts) = (hist.clone(), errors.clone(), value.clone(), opts.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let t = Instant::now();
                match conn.op(&opts, i, seq, &value).await {
                    Ok(()) => {
                        let _ = hist.borrow_mut().record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Err(e) => {
                        *errors.borrow_mut() += 1;
                        tracing::debug!(error = %e, "bench operation failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    let h = hist.borrow();
    let errors = *errors.borrow();
    Ok(BenchReport {
        ops: h.len(),
        errors,
        elapsed,
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    })
}
