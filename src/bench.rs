//! The write benchmark behind `dister bench`: N closed-loop clients, each on its own
//! connection (spread over the given nodes), setting keys of a fixed size for a fixed time;
//! reports throughput and latency percentiles. Keys start with `bench/` and stay in the
//! store: run it against a throwaway cluster.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::Client;
use crate::error::ClientError;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Nodes to connect to (clients are spread over them round-robin).
    pub addrs: Vec<String>,
    /// Cluster group.
    pub group: String,
    /// Cluster token, if the cluster has one.
    pub token: Option<String>,
    /// Concurrent clients, one connection each.
    pub clients: usize,
    /// How long to measure.
    pub duration: Duration,
    /// Key size in bytes (keys are `bench/CLIENT/SEQ/` padded to this size, or longer).
    pub key_size: usize,
    /// Value size in bytes.
    pub value_size: usize,
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

/// Runs the benchmark on the current thread's `LocalSet` (call it inside an actix system).
pub async fn run(opts: BenchOptions) -> Result<BenchReport, ClientError> {
    let mut clients = Vec::with_capacity(opts.clients);
    for i in 0..opts.clients {
        let addr = &opts.addrs[i % opts.addrs.len()];
        let client = Client::connect_with_token(addr, &opts.group, opts.token.as_deref())
            .await
            .map_err(|e| ClientError::Unexpected(format!("cannot reach {addr}: {e}")))?;
        clients.push(client);
    }
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).map_err(|e| ClientError::Unexpected(e.to_string()))?,
    ));
    let errors = Rc::new(RefCell::new(0u64));
    let start = Instant::now();
    let deadline = start + opts.duration;
    let value = padded(String::new(), opts.value_size);
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let hist = hist.clone();
        let errors = errors.clone();
        let value = value.clone();
        let key_size = opts.key_size;
        tasks.push(tokio::task::spawn_local(async move {
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let key = padded(format!("bench/{i:x}/{seq:x}/"), key_size);
                let t = Instant::now();
                match client.set(&key, &value).await {
                    Ok(_) => {
                        let _ = hist.borrow_mut().record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Err(e) => {
                        *errors.borrow_mut() += 1;
                        tracing::debug!(error = %e, "bench write failed");
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
