//! Health probes, as async tasks with a deadline: they never run on an actor's own time.
//! `tcp` connects through the node's transport (so a simulation can probe too); `http` GETs
//! a URL and wants a 2xx (dister's `web`: a 200); `script` runs a command and wants exit
//! status 0, dister's `custom` wants it to print `1` as well; `mysql` and `pgsql` log in
//! with the node's credentials and ping, on a connection of their own closed after it.

use std::time::Duration;

use mysql_async::prelude::Queryable as _;
use tokio::io::AsyncReadExt as _;

use crate::messages::registry::{CheckKind, ServiceNode};
use crate::transport::TransportRef;

/// What to probe, copied out of the instance so the task owns it.
#[derive(Clone, Debug)]
pub enum Probe {
    /// Connect to this `host:port`.
    Tcp(String),
    /// GET this URL; healthy on any 2xx.
    Http(String),
    /// dister's `web`: GET this URL; healthy on 200.
    Web(String),
    /// Run this with `sh -c`; healthy on exit 0.
    Script(String),
    /// dister's `custom`: run this with `sh -c`; healthy on exit 0 with `1` printed.
    Custom(String),
    /// Log in to MySQL or MariaDB and ping.
    Mysql(Database),
    /// Log in to PostgreSQL and run an empty query.
    Pgsql(Database),
}

/// Where and as whom a database check logs in. Its `Debug` leaves the password out: probes
/// may be logged.
#[derive(Clone)]
pub struct Database {
    host: String,
    port: u16,
    user: String,
    pass: String,
    database: Option<String>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl Database {
    fn of(node: &ServiceNode) -> Option<Database> {
        Some(Database {
            host: node.host.clone(),
            port: node.port,
            user: node.extra_text("user")?,
            pass: node.extra_text("pass").unwrap_or_default(),
            database: node.extra_text("database").filter(|d| !d.is_empty()),
        })
    }

    async fn mysql(&self, timeout: Duration) -> Result<(), String> {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(Some(self.pass.clone()))
            .db_name(self.database.clone())
            // The check is of host:port: never switch to a local socket the server names.
            .prefer_socket(false);
        let mut conn = tokio::time::timeout(timeout, mysql_async::Conn::new(opts))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let pinged = conn.ping().await.map_err(|e| e.to_string());
        // Closed whatever the ping said: no connection outlives its check.
        let _ = conn.disconnect().await;
        pinged
    }

    async fn pgsql(&self, timeout: Duration) -> Result<(), String> {
        let mut config = tokio_postgres::Config::new();
        config.host(&self.host).port(self.port).user(&self.user).password(&self.pass).connect_timeout(timeout);
        if let Some(db) = &self.database {
            config.dbname(db);
        }
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
        let ping = async move {
            let answered = client.simple_query("").await.map(drop).map_err(|e| e.to_string());
            // Dropping the client ends the connection: none outlives its check.
            drop(client);
            answered
        };
        let (answered, _closed) = futures::join!(ping, connection);
        answered
    }
}

/// The most a script's output is read: a check wants `1`, not a stream.
const SCRIPT_OUTPUT_LIMIT: u64 = 4_096;

impl Probe {
    /// The probe for `node`, if it has one that runs (TTL checks are beats, not probes).
    pub fn for_node(node: &ServiceNode) -> Option<Probe> {
        match node.effective_check()? {
            CheckKind::Tcp => Some(Probe::Tcp(node.addr())),
            CheckKind::Web => node.url.clone().map(Probe::Web),
            CheckKind::Http => {
                Some(Probe::Http(node.url.clone().unwrap_or_else(|| format!("http://{}/", node.addr()))))
            }
            CheckKind::Script => node.script.clone().map(Probe::Script),
            CheckKind::Custom => node.script.clone().map(Probe::Custom),
            CheckKind::Mysql => Database::of(node).map(Probe::Mysql),
            CheckKind::Pgsql => Database::of(node).map(Probe::Pgsql),
            CheckKind::Ttl => None,
        }
    }

    /// Runs the probe; `true` if the instance answered as healthy within `timeout`. A script
    /// probe fails unless `scripts_allowed`: it runs code on the leader's machine.
    pub async fn run(self, transport: TransportRef, timeout: Duration, scripts_allowed: bool) -> bool {
        let outcome = tokio::time::timeout(timeout, async move {
            match self {
                Probe::Tcp(addr) => transport.probe(&addr).await.is_ok(),
                Probe::Http(url) => get(&url, timeout).await.is_some_and(|s| s.is_success()),
                Probe::Web(url) => get(&url, timeout).await.is_some_and(|s| s == awc::http::StatusCode::OK),
                Probe::Script(cmd) if scripts_allowed => run_script(&cmd, false).await.is_some_and(|(ok, _)| ok),
                Probe::Custom(cmd) if scripts_allowed => {
                    run_script(&cmd, true).await.is_some_and(|(ok, out)| ok && out.trim_ascii() == b"1")
                }
                Probe::Script(_) | Probe::Custom(_) => false,
                Probe::Mysql(db) => judged("mysql", &db, db.mysql(timeout).await),
                Probe::Pgsql(db) => judged("pgsql", &db, db.pgsql(timeout).await),
            }
        })
        .await;
        outcome.unwrap_or(false)
    }
}

/// A database check's verdict, its failure logged (the server's message names no password).
fn judged(kind: &str, db: &Database, outcome: Result<(), String>) -> bool {
    match outcome {
        Ok(()) => true,
        Err(error) => {
            tracing::debug!(kind, host = %db.host, port = db.port, user = %db.user, %error, "database check failed");
            false
        }
    }
}

/// GETs `url`, answering its status; `None` if nothing answered.
async fn get(url: &str, timeout: Duration) -> Option<awc::http::StatusCode> {
    // A check must not be sent off to wherever the instance redirects it.
    let client = awc::Client::builder().timeout(timeout).disable_redirects().finish();
    client.get(url).send().await.ok().map(|resp| resp.status())
}

/// Runs `cmd` with `sh -c` in a process group of its own, killed whole when the check ends,
/// so nothing it started outlives its check. Answers whether it exited 0 and, if `read`, the
/// first 4 KiB of what it printed (the rest is read and dropped, so a long output is no
/// failure).
async fn run_script(cmd: &str, read: bool) -> Option<(bool, Vec<u8>)> {
    let stdout = if read { std::process::Stdio::piped() } else { std::process::Stdio::null() };
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let _group = child.id().map(ProcessGroup);
    let mut out = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        (&mut stdout).take(SCRIPT_OUTPUT_LIMIT).read_to_end(&mut out).await.ok()?;
        tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await.ok()?;
    }
    let status = child.wait().await.ok()?;
    Some((status.success(), out))
}

/// A script's process group, killed when dropped: when its check ends, or times out.
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.0) {
            // SAFETY: kill has no memory-safety preconditions; a group that is gone is ESRCH.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}
