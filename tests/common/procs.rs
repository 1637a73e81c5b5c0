//! Real `dister` processes for the process-level tests: started on free loopback ports with
//! their HTTP API, killed with SIGKILL, restarted from their data directories, always
//! killed when the test ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dister::client::Dial;
use dister::raft::Role;
use dister::{Client, Consistency};

/// Processes killed when the test ends, however it ends.
pub struct Procs {
    children: Vec<Option<Child>>,
    /// Each node's wire address.
    pub addrs: Vec<String>,
    /// Each node's HTTP address.
    pub http: Vec<String>,
    /// How many nodes founded the cluster (with `--peer`); the others were added later and
    /// start with their own arguments.
    founders: usize,
    /// Arguments of the nodes added later, by index.
    added: BTreeMap<usize, Vec<String>>,
    /// `RUST_LOG` of every node.
    log_filter: String,
    /// Arguments every founding node starts with, by index (TLS files).
    args: Vec<Vec<String>>,
    /// How the harness reaches the nodes.
    dial: Dial,
    dir: tempfile::TempDir,
}

impl Procs {
    /// Starts `n` nodes, each with its HTTP API on.
    pub fn start(n: usize) -> Procs {
        Procs::start_logging(n, "info")
    }

    /// Starts `n` nodes, each with its HTTP API on, logging what `filter` (`RUST_LOG`) asks.
    pub fn start_logging(n: usize, filter: &str) -> Procs {
        Procs::start_with(n, filter, tempfile::tempdir().unwrap(), |_| Vec::new(), Dial::new("default"))
    }

    /// Starts `n` nodes in `dir`, node `i` with `args(i)` added to its command line, the
    /// harness reaching them as `dial` says.
    pub fn start_with(
        n: usize,
        filter: &str,
        dir: tempfile::TempDir,
        args: impl Fn(usize) -> Vec<String>,
        dial: Dial,
    ) -> Procs {
        let addrs: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", super::free_port())).collect();
        let http: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", super::free_port())).collect();
        let mut p = Procs {
            children: (0..n).map(|_| None).collect(),
            addrs,
            http,
            founders: n,
            added: BTreeMap::new(),
            log_filter: filter.to_string(),
            args: (0..n).map(args).collect(),
            dial,
            dir,
        };
        for i in 0..n {
            p.spawn(i);
        }
        p
    }

    /// The directory holding the nodes' data and logs (and whatever a test puts there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{}", i + 1))
    }

    /// The command that starts node `i`.
    pub fn command(&self, i: usize) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dister"));
        cmd.arg("server").args(["--id", &(i + 1).to_string()]).arg("--data-dir").arg(self.data_dir(i));
        cmd.args(["--listen", &self.addrs[i], "--http", &self.http[i]]);
        if let Some(args) = self.added.get(&i) {
            cmd.args(args);
            return cmd;
        }
        cmd.args(&self.args[i]);
        for (j, a) in self.addrs.iter().enumerate().take(self.founders) {
            if j != i {
                cmd.args(["--peer", &format!("{}={a}", j + 1)]);
            }
        }
        cmd
    }

    /// Starts one more node, id the next, with `args` instead of the founders' `--peer`s
    /// (`--join ADDR`, `--no-bootstrap`); returns its index.
    pub fn add(&mut self, args: &[&str]) -> usize {
        let i = self.addrs.len();
        self.addrs.push(format!("127.0.0.1:{}", super::free_port()));
        self.http.push(format!("127.0.0.1:{}", super::free_port()));
        self.children.push(None);
        self.added.insert(i, args.iter().map(|a| a.to_string()).collect());
        self.spawn(i);
        i
    }

    /// Starts node `i` again with `extra` arguments added (`--force-new-cluster`).
    pub fn spawn_with(&mut self, i: usize, extra: &[&str]) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log(i)).unwrap();
        let mut cmd = self.command(i);
        cmd.args(extra).stdout(Stdio::null()).stderr(log).env("RUST_LOG", &self.log_filter);
        self.children[i] = Some(cmd.spawn().expect("spawn dister"));
    }

    /// SIGTERM, then waits for the process to end; answers whether it exited cleanly.
    pub fn sigterm(&mut self, i: usize) -> bool {
        let Some(mut c) = self.children[i].take() else { return false };
        let sent = Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
        assert!(sent.success(), "kill -TERM failed");
        c.wait().unwrap().success()
    }

    /// Sends node `i` the signal `sig` (`HUP`), leaving it running.
    pub fn signal(&self, i: usize, sig: &str) {
        let c = self.children[i].as_ref().expect("node runs");
        let sent = Command::new("kill").args([&format!("-{sig}"), &c.id().to_string()]).status().unwrap();
        assert!(sent.success(), "kill -{sig} failed");
    }

    /// Whether node `i` runs (as far as this harness knows).
    pub fn is_running(&self, i: usize) -> bool {
        self.children[i].is_some()
    }

    /// Starts node `i` from its data directory.
    pub fn spawn(&mut self, i: usize) {
        self.spawn_with(i, &[]);
    }

    /// Node `i`'s log file.
    pub fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{}.log", i + 1))
    }

    /// SIGKILL: no shutdown code runs, nothing not yet fsynced survives.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Node `i`'s role, if it answers.
    pub async fn role(&self, i: usize) -> Option<Role> {
        let c = Client::dial(&self.addrs[i], &self.dial).await.ok()?;
        c.with_timeout(Duration::from_secs(1)).status().await.ok().map(|s| s.role)
    }

    /// Waits for a node that says it leads.
    pub async fn leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            for i in 0..self.addrs.len() {
                if self.is_running(i) && self.role(i).await == Some(Role::Leader) {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader within {within:?}; logs: {}", dump(self.dir.path()));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every acknowledged write reads back (linearizable) through the leader, and every
    /// node's own copy holds them once it has caught up.
    pub async fn check(&self, acked: &BTreeMap<String, String>) {
        let leader = self.leader(Duration::from_secs(10)).await;
        let c = Client::dial(&self.addrs[leader], &self.dial).await.unwrap();
        let all: BTreeMap<String, String> = c.list("", Consistency::Linearizable).await.unwrap().into_iter().collect();
        let missing: Vec<_> = acked.iter().filter(|(k, v)| all.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged writes lost, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)]
        );
        for i in 0..self.addrs.len() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let local: Option<BTreeMap<String, String>> = match Client::dial(&self.addrs[i], &self.dial).await {
                    Ok(c) => c.list("", Consistency::Stale).await.ok().map(|l| l.into_iter().collect()),
                    Err(_) => None,
                };
                if local.as_ref().is_some_and(|l| acked.iter().all(|(k, v)| l.get(k) == Some(v))) {
                    break;
                }
                assert!(Instant::now() < deadline, "node {} did not catch up; logs: {}", i + 1, dump(self.dir.path()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The last lines of every node's log.
pub fn dump(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("\n== {:?}\n{}", e.path(), tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
        }
    }
    out
}

impl Procs {
    /// The last lines of every node's log.
    pub fn logs(&self) -> String {
        dump(self.dir.path())
    }

    /// Every node's whole log, one after another.
    pub fn whole_logs(&self) -> String {
        (0..self.addrs.len()).map(|i| std::fs::read_to_string(self.log(i)).unwrap_or_default()).collect()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill9(i);
        }
    }
}
