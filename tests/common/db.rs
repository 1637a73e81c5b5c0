//! Real database servers for the health-check tests: Debian's MariaDB and PostgreSQL
//! (installed by `tests/db/setup.sh`), each started on a free loopback port with a throwaway
//! data directory and a user `dister` of its own password, and stopped when the test ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// The password of the `dister` user on every server started here.
pub const PASSWORD: &str = "s3cret-Pa55";

/// The database the `dister` user may use on every server started here.
pub const DATABASE: &str = "shop";

/// Installs the servers once per test process.
fn setup() {
    static ONCE: Once = Once::new();
    super::setup_once(&ONCE, "tests/db/setup.sh", "Debian's mariadb-server and postgresql (root or sudo)");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn id_of(flag: &str, user: &str) -> u32 {
    let out = Command::new("id").args([flag, user]).output().expect("run id");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("no user {user}"))
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd` until it succeeds, at most 30 s: a server listens before it takes logins.
fn run_until_ready(cmd: &mut Command, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until something accepts connections on `port`, at most 30 s.
fn wait_listening(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A database server this test started; stopped when dropped.
pub struct DbServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl DbServer {
    /// A MariaDB server, with user `dister` (password [`PASSWORD`]) owning [`DATABASE`].
    pub fn mariadb() -> DbServer {
        setup();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let socket = dir.path().join("sock");
        let port = super::free_port();
        let as_root: &[&str] = if is_root() { &["--user=root"] } else { &[] };
        run(
            Command::new("mariadb-install-db")
                .args(["--no-defaults", "--auth-root-authentication-method=normal", "--skip-test-db"])
                .arg(format!("--datadir={}", data.display()))
                .args(as_root),
            "mariadb-install-db",
        );
        let log = dir.path().join("server.log");
        let child =
            Command::new(if Path::new("/usr/sbin/mariadbd").exists() { "/usr/sbin/mariadbd" } else { "mariadbd" })
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--port={port}"))
                .args(["--bind-address=127.0.0.1", "--skip-name-resolve", "--innodb-buffer-pool-size=16M"])
                .arg(format!("--log-error={}", log.display()))
                .args(as_root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start mariadbd");
        let server = DbServer { child: Some(child), port, _dir: dir };
        wait_listening(port, "mariadbd", &log);
        let sql = format!(
            "CREATE USER 'dister'@'%' IDENTIFIED BY '{PASSWORD}'; CREATE DATABASE {DATABASE}; \
             GRANT ALL ON {DATABASE}.* TO 'dister'@'%';"
        );
        run(
            Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", socket.display()))
                .args(["-uroot", "-e", &sql]),
            "creating the mariadb user",
        );
        server
    }

    /// A PostgreSQL server whose superuser is `dister` (password [`PASSWORD`]), with
    /// [`DATABASE`]; run as the `postgres` user when the test runs as root (PostgreSQL refuses
    /// root).
    pub fn postgres() -> DbServer {
        setup();
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("postgresql is installed")
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("postgres").exists())
            .expect("a postgres binary");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        let ids = is_root().then(|| (id_of("-u", "postgres"), id_of("-g", "postgres")));
        if let Some((uid, gid)) = ids {
            for p in [dir.path(), pwfile.as_path()] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
            }
        }
        let command = |program: PathBuf| {
            let mut cmd = Command::new(program);
            if let Some((uid, gid)) = ids {
                use std::os::unix::process::CommandExt as _;
                cmd.uid(uid).gid(gid);
            }
            cmd
        };
        run(
            command(bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-A", "scram-sha-256", "-U", "dister", "--no-sync"])
                .arg(format!("--pwfile={}", pwfile.display())),
            "initdb",
        );
        let port = super::free_port();
        let log = dir.path().join("server.log");
        let child = command(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", "fsync=off", "-k"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start postgres");
        let server = DbServer { child: Some(child), port, _dir: dir };
        wait_listening(port, "postgres", &log);
        run_until_ready(
            Command::new(bin.join("psql"))
                .env("PGPASSWORD", PASSWORD)
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "dister", "-d", "postgres", "-q", "-c"])
                .arg(format!("CREATE DATABASE {DATABASE}")),
            "creating the postgres database",
        );
        server
    }

    /// Kills the server (SIGKILL, as when its machine dies) and waits for it to end.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server (SIGTERM, and waits for it to end).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill has no preconditions; the pid is our child's, not yet reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for DbServer {
    fn drop(&mut self) {
        self.stop();
    }
}
