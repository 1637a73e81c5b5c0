//! Failover benchmark: how long after the leader goes does the cluster acknowledge writes
//! again? Starts three `dister server` processes, and for each round: finds the leader,
//! starts one write every 10 ms through the survivors, makes the leader go, and measures the
//! time from then to the acknowledgement of the first write started after it (`resume_ms`),
//! the longest any write started around it took (`max_write_ms`), and how many failed; then
//! brings the node back and lets it catch up. How the leader goes (`MODE`):
//! - `kill9`: SIGKILL (its connections reset);
//! - `sigstop`: SIGSTOP, frozen without a word (SIGCONT after the round);
//! - `sigterm`: SIGTERM (it hands leadership over, then exits);
//! - `transfer`: `leader transfer` through a survivor (it stays up).
//!
//! `join` instead times a fourth node started with `--join` after 20,000 writes, from its
//! start until the leader lists it as a voter.
//!
//! ```text
//! cargo build --release && cargo run --release --example failover -- target/release/dister 5 [MODE]
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
        if i >= 3 {
            cmd.args(["--join", &self.addrs[0]]);
        } else {
            for (j, a) in self.addrs.iter().enumerate().take(3) {
                if j != i {
                    cmd.args(["--peer", &format!("{}={a}", j + 1)]);
                }
            }
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        self.children[i] = Some(cmd.spawn()?);
        Ok(())
    }

    fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        let pid = self.children[i].as_ref().map(Child::id).ok_or_else(|| anyhow::anyhow!("node {i} not running"))?;
        Command::new("kill").args([signal, &pid.to_string()]).status()?;
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
    let mode = args.get(3).cloned().unwrap_or_else(|| "kill9".into());
    let dir = std::env::temp_dir().join(format!("dister-failover-{}", std::process::id()));
    let mut cluster = Cluster { bin, addrs, dir, children: vec![None, None, None] };
    for i in 0..3 {
        cluster.spawn(i)?;
    }
    if mode == "join" {
        return join(&mut cluster, rounds).await;
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
        let worst: Rc<RefCell<(Duration, usize)>> = Rc::default();
        let mut tasks = Vec::new();
        let mut n = 0;
        let mut gone = false;
        // Writes go on for a second after the first acknowledgement, to see the slowest.
        let mut until = kill_at + Duration::from_secs(10);
        while Instant::now() < until {
            if !gone && Instant::now() >= kill_at {
                gone = true;
                match mode.as_str() {
                    "kill9" => cluster.kill9(leader),
                    "sigstop" => cluster.signal(leader, "-STOP")?,
                    "sigterm" => cluster.signal(leader, "-TERM")?,
                    "transfer" => {
                        let c = clients[0].clone();
                        tokio::task::spawn_local(async move { c.transfer_leadership(None).await });
                    }
                    other => anyhow::bail!("unknown mode {other:?}: kill9, sigstop, sigterm, transfer, join"),
                }
            }
            if first_ack.borrow().is_some() {
                until = until.min(Instant::now() + Duration::from_secs(1));
            }
            let c = clients[n % clients.len()].clone();
            let started = Instant::now();
            let (first, worst) = (first_ack.clone(), worst.clone());
            n += 1;
            tasks.push(tokio::task::spawn_local(async move {
                let ok = c.set(&format!("failover/{round}/{n}"), "x").await.is_ok();
                let took = started.elapsed();
                let around = started + Duration::from_secs(2) > kill_at;
                let mut w = worst.borrow_mut();
                if around && ok {
                    w.0 = w.0.max(took);
                } else if around {
                    w.1 += 1;
                }
                if ok && started > kill_at {
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
        let (max_write, failed) = *worst.borrow();
        println!(
            "RESULT mode={mode} round={round} leader=node{} resume_ms={} max_write_ms={} failed={failed}",
            leader + 1,
            took.as_millis(),
            max_write.as_millis()
        );
        results.push(took.as_millis());
        match mode.as_str() {
            "sigstop" => {
                cluster.signal(leader, "-CONT")?;
            }
            "transfer" => {}
            _ => {
                cluster.kill9(leader);
                cluster.spawn(leader)?;
            }
        }
        // Let the restarted node catch up before the next round.
        let c = Client::connect(&cluster.addrs[survivors[0]], "default").await?;
        let _ = c.list("failover/", Consistency::Linearizable).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    results.sort_unstable();
    println!("{mode} resume_ms sorted: {results:?} median {}", results[results.len() / 2]);
    Ok(())
}

/// Times `rounds` nodes joining one after the other (ids 4, 5, ...), each after 20,000 more
/// writes, from the process's start until the leader lists it as a voter.
async fn join(cluster: &mut Cluster, rounds: usize) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for round in 0..rounds {
        let leader = cluster.leader().await?;
        let c = Client::connect(&cluster.addrs[leader], "default").await?.with_timeout(Duration::from_secs(10));
        let mut pending = Vec::new();
        for k in 0..20_000 {
            let c = c.clone();
            pending.push(tokio::task::spawn_local(async move { c.set(&format!("join/{round}/{k}"), "value").await }));
            if pending.len() >= 256 {
                for p in pending.drain(..) {
                    p.await??;
                }
            }
        }
        for p in pending {
            p.await??;
        }
        let i = cluster.addrs.len();
        cluster.addrs.push(format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()));
        cluster.children.push(None);
        let started = Instant::now();
        cluster.spawn(i)?;
        let id = i as u64 + 1;
        loop {
            let s = c.status().await?;
            if s.members.iter().any(|m| m.id == id && m.role == dister::raft::members::MemberRole::Voter) {
                break;
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "node {id} never became a voter");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = started.elapsed();
        let last = c.status().await?.last_log_index;
        println!("RESULT mode=join round={round} node={id} log_entries={last} join_to_voter_ms={}", took.as_millis());
        results.push(took.as_millis());
    }
    results.sort_unstable();
    println!("join_to_voter_ms sorted: {results:?} median {}", results[results.len() / 2]);
    Ok(())
}
