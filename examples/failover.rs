//! Failover benchmark: how long after a `kill -9` of the leader does the cluster acknowledge
//! writes again? Starts three `dister server` processes, and for each round: finds the leader,
//! starts one write every 10 ms through the survivors, SIGKILLs the leader, and measures the
//! time from the kill to the acknowledgement of the first write started after it; then
//! restarts the killed node and lets it catch up.
//!
//! ```text
//! cargo build --release && cargo run --release --example failover -- target/release/dister 5
//! ```

use std::cell::RefCell;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use dister::raft::Role;
use dister::{Client, Consistency};

struct Cluster {
    bin: String,
    addrs: Vec<String>,
    dir: std::path::PathBuf,
    children: Vec<Option<Child>>,
}

impl Cluster {
    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("server").args(["--id", &(i + 1).to_string(), "--listen", &self.addrs[i]]);
        cmd.arg("--data-dir").arg(self.dir.join(format!("n{}", i + 1)));
        for (j, a) in self.addrs.iter().enumerate() {
            if j != i {
                cmd.args(["--peer", &format!("{}={a}", j + 1)]);
            }
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        self.children[i] = Some(cmd.spawn()?);
        Ok(())
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn leader(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            for (i, a) in self.addrs.iter().enumerate() {
                if self.children[i].is_some()
                    && let Ok(c) = Client::connect(a, "default").await
                    && let Ok(s) = c.status().await
                    && s.role == Role::Leader
                {
                    return Ok(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("no leader")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill9(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let bin = args.get(1).cloned().unwrap_or_else(|| "target/release/dister".into());
    let rounds: usize = args.get(2).map(|r| r.parse()).transpose()?.unwrap_or(5);
    let addrs = (0..3)
        .map(|_| Ok(format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())))
        .collect::<std::io::Result<Vec<_>>>()?;
    let dir = std::env::temp_dir().join(format!("dister-failover-{}", std::process::id()));
    let mut cluster = Cluster { bin, addrs, dir, children: vec![None, None, None] };
    for i in 0..3 {
        cluster.spawn(i)?;
    }
    let mut results = Vec::new();
    for round in 0..rounds {
        let leader = cluster.leader().await?;
        let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let mut clients = Vec::new();
        for &s in &survivors {
            clients.push(Client::connect(&cluster.addrs[s], "default").await?.with_timeout(Duration::from_secs(5)));
        }
        let kill_at = Instant::now() + Duration::from_millis(300);
        let first_ack: Rc<RefCell<Option<Duration>>> = Rc::default();
        let mut tasks = Vec::new();
        let mut n = 0;
        while first_ack.borrow().is_none() && Instant::now() < kill_at + Duration::from_secs(10) {
            if cluster.children[leader].is_some() && Instant::now() >= kill_at {
                cluster.kill9(leader);
            }
            let c = clients[n % clients.len()].clone();
            let started = Instant::now();
            let first = first_ack.clone();
            n += 1;
            tasks.push(tokio::task::spawn_local(async move {
                if c.set(&format!("failover/{round}/{n}"), "x").await.is_ok() && started > kill_at {
                    let mut f = first.borrow_mut();
                    let since_kill = Instant::now() - kill_at;
                    if f.is_none_or(|d| since_kill < d) {
                        *f = Some(since_kill);
                    }
                }
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for t in tasks {
            let _ = t.await;
        }
        let took = first_ack.borrow().ok_or_else(|| anyhow::anyhow!("no write acknowledged after the kill"))?;
        println!("RESULT round={round} killed=node{} resume_ms={}", leader + 1, took.as_millis());
        results.push(took.as_millis());
        cluster.spawn(leader)?;
        // Let the restarted node catch up before the next round.
        let c = Client::connect(&cluster.addrs[survivors[0]], "default").await?;
        let _ = c.list("failover/", Consistency::Linearizable).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    results.sort_unstable();
    println!("failover resume_ms sorted: {results:?}");
    Ok(())
}
