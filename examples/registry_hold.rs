//! Registry hold benchmark: three `dister server` processes hold N persistent instances whose
//! TCP checks fail (127.x.y.z:8080, where nothing listens), at the default check interval,
//! for S seconds. It reports, every ten seconds and in sum: whether the leader or term
//! changed, the probes per second, the log entries per second the checks cause, and the CPU
//! the leader's threads spend (read from /proc, Linux).
//!
//! ```text
//! cargo build --release && cargo run --release --example registry_hold -- target/release/dister 100000 600
//! ```

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dister::messages::registry::{CheckKind, Health, Service, ServiceNode};
use dister::{Client, Consistency};

struct Node {
    child: Child,
    addr: String,
    http: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU time (ticks) of each thread of `pid`, by thread name.
fn thread_cpu(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_string();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
        let ticks = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        *out.entry(comm).or_default() += ticks;
    }
    out
}

async fn metrics(http: &str) -> anyhow::Result<serde_json::Value> {
    let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let mut r = client
        .get(format!("http://{http}/nacos/v1/ns/operator/metrics"))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(r.json().await?)
}

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let bin = args.get(1).cloned().unwrap_or_else(|| "target/release/dister".into());
    let instances: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let secs: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(600);
    let dir = tempfile::tempdir()?;
    let addrs: Vec<String> = (0..3).map(|_| free_port().map(|p| format!("127.0.0.1:{p}"))).collect::<Result<_, _>>()?;
    let https: Vec<String> = (0..3).map(|_| free_port().map(|p| format!("127.0.0.1:{p}"))).collect::<Result<_, _>>()?;
    let mut nodes = Vec::new();
    for i in 0..3 {
        let mut cmd = Command::new(&bin);
        cmd.arg("server").args(["--id", &(i + 1).to_string(), "--listen", &addrs[i], "--http", &https[i]]);
        cmd.arg("--data-dir").arg(dir.path().join(format!("n{}", i + 1)));
        for (j, a) in addrs.iter().enumerate() {
            if j != i {
                cmd.args(["--peer", &format!("{}={a}", j + 1)]);
            }
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        nodes.push(Node { child: cmd.spawn()?, addr: addrs[i].clone(), http: https[i].clone() });
    }
    let status = |addr: String| async move {
        let c = Client::connect(&addr, "default").await.ok()?;
        c.with_timeout(Duration::from_secs(3)).status().await.ok()
    };
    let leader = loop {
        let mut found = None;
        for (i, n) in nodes.iter().enumerate() {
            if let Some(s) = status(n.addr.clone()).await
                && s.leader == Some(i as u64 + 1)
            {
                found = Some(i);
            }
        }
        if let Some(l) = found {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // 100 services; instances registered in batches of 1,000 per service entry.
    let started = Instant::now();
    let c = Client::connect(&nodes[leader].addr, "default").await?.with_timeout(Duration::from_secs(60));
    let per_service = instances.div_ceil(100);
    let mut services: Vec<Service> = (0..100).map(|s| Service::new(format!("hold{s:03}"), "tcp")).collect();
    for k in 0..instances {
        let mut node = ServiceNode::new(format!("127.{}.{}.{}", 1 + k / 62_500, (k / 250) % 250, k % 250), 8080);
        node.check = Some(CheckKind::Tcp);
        services[k / per_service].nodes.push(node);
    }
    for chunk in services.chunks(4) {
        c.set_services(chunk.to_vec()).await?;
    }
    let registered_at = c.status().await?.commit_index;
    eprintln!("registered {instances} instances in {:.1} s", started.elapsed().as_secs_f64());
    loop {
        let all = c.list_services(Consistency::Stale).await?;
        let sick = all.iter().flat_map(|s| &s.nodes).filter(|n| n.health == Health::Unhealthy).count();
        if sick == instances {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let written = c.status().await?.commit_index - registered_at;
    eprintln!(
        "all {instances} unhealthy after {:.1} s, written in {written} log entries",
        started.elapsed().as_secs_f64()
    );

    let pid = nodes[leader].child.id();
    let hz = 100.0; // USER_HZ on Linux
    let first =
        (status(nodes[leader].addr.clone()).await.map(|s| (s.term, s.leader)), metrics(&nodes[leader].http).await?);
    let (mut prev_cpu, mut prev_m, mut prev_t) = (thread_cpu(pid), first.1.clone(), Instant::now());
    let (cpu0, m0, t0) = (prev_cpu.clone(), first.1.clone(), prev_t);
    let mut changes = 0;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut seen = Vec::new();
        for n in &nodes {
            seen.push(status(n.addr.clone()).await.map(|s| (s.term, s.leader)));
        }
        if seen.iter().any(|s| *s != first.0) {
            changes += 1;
        }
        let (cpu, m, t) = (thread_cpu(pid), metrics(&nodes[leader].http).await?, Instant::now());
        let dt = t.duration_since(prev_t).as_secs_f64();
        let rate = |k: &str| (m[k].as_f64().unwrap_or(0.0) - prev_m[k].as_f64().unwrap_or(0.0)) / dt;
        let share = |name: &str| {
            (cpu.get(name).copied().unwrap_or(0) - prev_cpu.get(name).copied().unwrap_or(0)) as f64 / hz / dt * 100.0
        };
        println!(
            "t={:>4.0}s terms/leaders {seen:?} probes/s={:.0} entries/s={:.2} checks={:.1}% state={:.1}% raft={:.1}%",
            t.duration_since(t0).as_secs_f64(),
            rate("probesDone"),
            rate("commitIndex"),
            share("dister-checks"),
            share("dister-state"),
            share("dister-raft"),
        );
        (prev_cpu, prev_m, prev_t) = (cpu, m, t);
    }
    let dt = prev_t.duration_since(t0).as_secs_f64();
    let total = |k: &str| (prev_m[k].as_f64().unwrap_or(0.0) - m0[k].as_f64().unwrap_or(0.0)) / dt;
    let share = |name: &str| {
        (prev_cpu.get(name).copied().unwrap_or(0) - cpu0.get(name).copied().unwrap_or(0)) as f64 / hz / dt * 100.0
    };
    println!(
        "RESULT instances={instances} secs={dt:.0} leader_changes={changes} probes_per_s={:.0} entries_per_s={:.2} \
         checks_cpu_pct={:.1} state_cpu_pct={:.1} raft_cpu_pct={:.1}",
        total("probesDone"),
        total("commitIndex"),
        share("dister-checks"),
        share("dister-state"),
        share("dister-raft"),
    );
    Ok(())
}
