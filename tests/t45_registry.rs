//! t45: the service registry at work on a 3-node cluster: health checks against real local
//! servers, a leader change during checks, ephemeral instances that stop beating, and
//! balancing that follows weights and never returns an unavailable instance.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, retry};
use dister::messages::registry::{CheckKind, Health, InstanceKey, Service, ServiceNode, Strategy};
use dister::{ApiError, Client, ClientError, Consistency};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn fast(c: &mut dister::Config) {
    c.check_interval_ms = 100;
    c.ephemeral_unhealthy_after_ms = 600;
    c.ephemeral_remove_after_ms = 1_200;
}

/// A TCP server the test can stop and start again on the same port.
struct TcpServer {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TcpServer {
    async fn start(port: u16) -> TcpServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let task = tokio::task::spawn_local(async move {
            while let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        });
        TcpServer { port, task: Some(task) }
    }

    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal HTTP server answering every GET with 200 or 503, as `up` says.
async fn http_server(up: Arc<AtomicBool>) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::task::spawn_local(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let up = up.clone();
            tokio::task::spawn_local(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let status = if up.load(Ordering::SeqCst) { "200 OK" } else { "503 Service Unavailable" };
                let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, task)
}

fn checked(port: u16, check: CheckKind) -> ServiceNode {
    ServiceNode {
        check: Some(check),
        interval_ms: Some(100),
        timeout_ms: Some(300),
        ..ServiceNode::new("127.0.0.1", port)
    }
}

/// Polls `service`'s instance health through `c` until it is `want`.
async fn wait_health(c: &Client, service: &str, port: u16, want: Health, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let s = c.get_service(service, Consistency::Linearizable).await.ok().flatten();
        let h = s.as_ref().and_then(|s| s.nodes.iter().find(|n| n.port == port)).map(|n| n.health);
        if h == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{service}:{port} still {h:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// TCP and HTTP checks follow real local servers: healthy while they answer, unhealthy when
/// they stop (and balance stops returning them), healthy again when they come back.
#[actix_rt::test]
async fn checks_follow_real_tcp_and_http_servers() {
    let cluster = Cluster::start_with(3, fast);
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let c = cluster.client((leader + 1) % 3).await;
    let mut tcp = TcpServer::start(0).await;
    let up = Arc::new(AtomicBool::new(true));
    let (http_port, _http) = http_server(up.clone()).await;
    let mut http_node = checked(http_port, CheckKind::Http);
    http_node.url = Some(format!("http://127.0.0.1:{http_port}/health"));
    let services = vec![
        Service {
            name: "db".into(),
            kind: "tcp".into(),
            nodes: vec![checked(tcp.port, CheckKind::Tcp)],
            extra: Default::default(),
        },
        Service { name: "web".into(), kind: "http".into(), nodes: vec![http_node], extra: Default::default() },
    ];
    retry(Duration::from_secs(5), || c.set_services(services.clone())).await.unwrap();

    wait_health(&c, "db", tcp.port, Health::Healthy, Duration::from_secs(3)).await;
    wait_health(&c, "web", http_port, Health::Healthy, Duration::from_secs(3)).await;
    assert_eq!(c.balance("db", Strategy::Weighted).await.unwrap().port, tcp.port);

    tcp.stop();
    up.store(false, Ordering::SeqCst);
    wait_health(&c, "db", tcp.port, Health::Unhealthy, Duration::from_secs(3)).await;
    wait_health(&c, "web", http_port, Health::Unhealthy, Duration::from_secs(3)).await;
    // Balance reads this node's copy: give it the time to apply what the leader wrote.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match c.balance("db", Strategy::Weighted).await {
            Err(ClientError::Api(ApiError::NotFound(m))) => {
                assert!(m.contains("no healthy, enabled instance"), "{m}");
                break;
            }
            other => assert!(Instant::now() < deadline, "balance returned {other:?} for an unhealthy service"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let _tcp = TcpServer::start(tcp.port).await;
    up.store(true, Ordering::SeqCst);
    wait_health(&c, "db", tcp.port, Health::Healthy, Duration::from_secs(3)).await;
    wait_health(&c, "web", http_port, Health::Healthy, Duration::from_secs(3)).await;
}

/// While nothing changes, checks write nothing: the log does not grow.
#[actix_rt::test]
async fn steady_health_writes_nothing() {
    let cluster = Cluster::start_with(3, fast);
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let c = cluster.client(leader).await;
    let tcp = TcpServer::start(0).await;
    let svc = Service {
        name: "db".into(),
        kind: "tcp".into(),
        nodes: vec![checked(tcp.port, CheckKind::Tcp)],
        extra: Default::default(),
    };
    c.set_services(vec![svc]).await.unwrap();
    wait_health(&c, "db", tcp.port, Health::Healthy, Duration::from_secs(3)).await;
    let before = cluster.status(leader).await.unwrap().last_log_index;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let after = cluster.status(leader).await.unwrap().last_log_index;
    assert_eq!(before, after, "ten probes of a steady instance grew the log");
}

/// When the leader goes, the new leader takes over the checks: a server that stops after the
/// change is marked unhealthy by the new leader.
#[actix_rt::test]
async fn a_new_leader_takes_over_the_checks() {
    let mut cluster = Cluster::start_with(3, fast);
    let old = cluster.wait_leader(Duration::from_secs(2)).await;
    let mut tcp = TcpServer::start(0).await;
    let svc = Service {
        name: "db".into(),
        kind: "tcp".into(),
        nodes: vec![checked(tcp.port, CheckKind::Tcp)],
        extra: Default::default(),
    };
    cluster.client(old).await.set_services(vec![svc]).await.unwrap();
    let c = cluster.client((old + 1) % 3).await;
    wait_health(&c, "db", tcp.port, Health::Healthy, Duration::from_secs(3)).await;
    cluster.stop_node(old);
    let new = cluster.wait_leader(Duration::from_secs(3)).await;
    assert_ne!(new, old);
    tcp.stop();
    let t = Instant::now();
    wait_health(&c, "db", tcp.port, Health::Unhealthy, Duration::from_secs(3)).await;
    eprintln!("new leader marked the stopped server unhealthy in {:?}", t.elapsed());
}

/// An ephemeral instance lives by its beats: beating keeps it healthy (beats sent to a
/// follower reach the leader); silent past the TTL it is marked unhealthy, past the removal
/// time it is removed (and its service, which only it made). A beat for an unknown instance
/// is a clear error.
#[actix_rt::test]
async fn ephemeral_instances_expire_without_beats() {
    let cluster = Cluster::start_with(3, fast);
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let c = cluster.client((leader + 1) % 3).await;
    let node = ServiceNode { ephemeral: true, ..ServiceNode::new("127.0.0.1", 7001) };
    retry(Duration::from_secs(5), || c.register_instance("api", "http", node.clone())).await.unwrap();
    let key = InstanceKey { service: "api".into(), host: "127.0.0.1".into(), port: 7001 };
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        c.beat(key.clone()).await.unwrap();
        let s = c.get_service("api", Consistency::Linearizable).await.unwrap().unwrap();
        assert_eq!(s.nodes[0].health, Health::Healthy, "a beating instance was marked unhealthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let silent = Instant::now();
    wait_health(&c, "api", 7001, Health::Unhealthy, Duration::from_secs(3)).await;
    let unhealthy_after = silent.elapsed();
    let deadline = Instant::now() + Duration::from_secs(3);
    while c.get_service("api", Consistency::Linearizable).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "silent ephemeral instance was not removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let removed_after = silent.elapsed();
    assert!(unhealthy_after >= Duration::from_millis(500), "marked unhealthy too early: {unhealthy_after:?}");
    assert!(removed_after >= Duration::from_millis(1_100), "removed too early: {removed_after:?}");
    match c.beat(key.clone()).await {
        Err(ClientError::Api(ApiError::NotFound(m))) => assert!(m.contains("not registered"), "{m}"),
        other => panic!("beat for a removed instance answered {other:?}"),
    }
    // Registered again right after its removal, it starts afresh: healthy, and removed again
    // once it falls silent (found in review: a stale "removing" mark kept it forever).
    retry(Duration::from_secs(5), || c.register_instance("api", "http", node.clone())).await.unwrap();
    let s = c.get_service("api", Consistency::Linearizable).await.unwrap().unwrap();
    assert_eq!(s.nodes[0].health, Health::Healthy, "a re-registration is a sign of life");
    let deadline = Instant::now() + Duration::from_secs(4);
    while c.get_service("api", Consistency::Linearizable).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "a re-registered, silent ephemeral instance was never removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Balancing never returns an unhealthy, disabled or weightless instance, and its picks
/// follow the weights (within a tolerance over many draws); round-robin takes turns.
#[actix_rt::test]
async fn balance_follows_weights_and_skips_unavailable_instances() {
    let cluster = Cluster::start_with(3, fast);
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    let c = cluster.client((leader + 1) % 3).await;
    let closed = common::free_port();
    let nodes = vec![
        ServiceNode { weight: 1.0, ..ServiceNode::new("127.0.0.1", 8001) },
        ServiceNode { weight: 3.0, ..ServiceNode::new("127.0.0.2", 8002) },
        ServiceNode { weight: 5.0, enabled: false, ..ServiceNode::new("127.0.0.3", 8003) },
        ServiceNode { weight: 0.0, ..ServiceNode::new("127.0.0.4", 8004) },
        ServiceNode { weight: 5.0, ..checked(closed, CheckKind::Tcp) },
    ];
    let svc = Service { name: "web".into(), kind: "http".into(), nodes, extra: Default::default() };
    retry(Duration::from_secs(5), || c.set_services(vec![svc.clone()])).await.unwrap();
    wait_health(&c, "web", closed, Health::Unhealthy, Duration::from_secs(3)).await;
    let n = 4_000;
    let mut heavy = 0;
    for _ in 0..n {
        let pick = c.balance("web", Strategy::Weighted).await.unwrap();
        assert!([8001, 8002].contains(&pick.port), "picked an unavailable instance: {pick:?}");
        heavy += usize::from(pick.port == 8002);
    }
    let share = heavy as f64 / n as f64;
    assert!((share - 0.75).abs() < 0.04, "weight 3 of 4 drew {share:.3} of the picks");
    let turns: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(c.balance("web", Strategy::RoundRobin).await.unwrap().port);
        }
        v
    };
    assert!(turns.windows(2).all(|w| w[0] != w[1]), "round-robin repeated: {turns:?}");
}

/// A script check runs its command and follows its exit status, where the config allows
/// scripts; where it does not, a script-checked instance is refused when it is set (it would
/// run code on the leader's machine), and nothing is written.
#[actix_rt::test]
async fn script_checks_follow_exit_status_only_where_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("up");
    std::fs::write(&flag, b"").unwrap();
    let script = format!("test -f {}", flag.display());
    let node = |port| ServiceNode { script: Some(script.clone()), ..checked(port, CheckKind::Script) };

    let allowed = Cluster::start_with(1, |c| {
        fast(c);
        c.allow_script_checks = true;
    });
    allowed.wait_leader(Duration::from_secs(1)).await;
    let c = allowed.client(0).await;
    c.set_services(vec![Service {
        name: "job".into(),
        kind: "script".into(),
        nodes: vec![node(1)],
        extra: Default::default(),
    }])
    .await
    .unwrap();
    wait_health(&c, "job", 1, Health::Healthy, Duration::from_secs(3)).await;
    std::fs::remove_file(&flag).unwrap();
    wait_health(&c, "job", 1, Health::Unhealthy, Duration::from_secs(3)).await;
    std::fs::write(&flag, b"").unwrap();
    wait_health(&c, "job", 1, Health::Healthy, Duration::from_secs(3)).await;

    let refused = Cluster::start_with(1, fast);
    refused.wait_leader(Duration::from_secs(1)).await;
    let c = refused.client(0).await;
    let e = c
        .set_services(vec![Service {
            name: "job".into(),
            kind: "script".into(),
            nodes: vec![node(1)],
            extra: Default::default(),
        }])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("service \"job\", node 127.0.0.1:1") && e.contains("allow_script_checks is off"), "{e}");
    assert_eq!(c.get_service("job", Consistency::Linearizable).await.unwrap(), None, "nothing was written");
}
