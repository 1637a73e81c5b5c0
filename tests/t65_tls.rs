//! t65: TLS on a cluster of real processes: both ports serve TLS only, the CLI checks the
//! node by the CA, peers prove themselves with certificates from it (an expired or foreign one
//! is refused, and the refusal logged naming the peer), and renewed certificates are taken on
//! SIGHUP without a restart.

use crate::common;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::certs::Ca;
use common::procs::Procs;
use dister::client::{ClientTls, Dial};
use dister::tls::{Tls, TlsFiles};
use dister::wire::{Hello, handshake};

const TOKEN: &str = "tls-test-token-0123456789";

fn cli(addr: &str, args: &[&str], envs: &[(&str, &std::path::Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dister"));
    cmd.args(["--addr", addr, "--token", TOKEN]).args(args).env_remove("DISTER_TLS_CA");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run dister")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits until node `i`'s log has a line holding every one of `words`; answers it.
fn logged(procs: &Procs, i: usize, words: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(procs.log(i)).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| words.iter().all(|w| l.to_lowercase().contains(&w.to_lowercase()))) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "node {} never logged {words:?}: {}", i + 1, procs.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The certificate a TLS port presents, DER.
async fn served_certificate(tls: &ClientTls, addr: &str) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tls.connect(addr, tcp).await.expect("tls handshake");
    stream.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

/// A 3-node cluster started with `--tls-cert/--tls-key/--tls-ca`, node 3's certificate
/// expired.
///
/// 1. Nodes 1 and 2 elect a leader; node 3 cannot join them: its peers log that TLS with
///    peer 3 failed, its certificate expired, and that they refused its connections.
/// 2. The CLI writes and reads with `--tls-ca` (and with `DISTER_TLS_CA`); without it the
///    connection is refused and the node logs why.
/// 3. The HTTP port answers HTTPS checked by the CA, and refuses plain HTTP.
/// 4. A connection that says it is a peer is refused without a certificate, with one from
///    another CA (the node logs the refusal with the connection's address), and with one from
///    the cluster's CA for another host than the member it claims to be.
/// 5. Node 3 gets a valid certificate and a SIGHUP: it now serves the new certificate on both
///    ports, joins, and holds every write acknowledged before.
#[actix_rt::test]
async fn a_cluster_with_tls_serves_tls_only_and_takes_renewed_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("dister test CA");
    let ca_path = ca.write(dir.path(), "ca");
    let nodes: Vec<_> = (1..=3).map(|i| ca.issue(dir.path(), &format!("node{i}"), i == 3)).collect();
    let args = |i: usize| {
        let mut a: Vec<String> = vec!["--token".into(), TOKEN.into()];
        for (flag, path) in [("--tls-cert", &nodes[i].cert), ("--tls-key", &nodes[i].key), ("--tls-ca", &ca_path)] {
            a.push(flag.into());
            a.push(path.display().to_string());
        }
        a
    };
    let client_tls = ClientTls::from_ca_file(&ca_path).unwrap();
    let dial = Dial::new("default").token(Some(TOKEN)).tls(Some(client_tls.clone()));
    let procs = Procs::start_with(3, "info", dir, args, dial);

    // 1. A majority of two; the third refused both ways.
    let leader = procs.leader(Duration::from_secs(15)).await;
    assert_ne!(leader, 2, "node 3 cannot have been elected: nobody takes its connections");
    let line = logged(&procs, leader, &["tls with peer failed", "peer=3", "expired"]);
    assert!(line.contains(&procs.addrs[2]), "the line names the peer's address: {line}");
    logged(&procs, leader, &["tls handshake failed", "remote=127.0.0.1:", "expired"]);

    // 2. The CLI over TLS.
    let addr = procs.addrs[leader].clone();
    let ca_arg = ca_path.display().to_string();
    let o = cli(&addr, &["--tls-ca", &ca_arg, "kv", "set", "greeting", "hello"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let other = procs.addrs[1 - leader.min(1)].clone();
    let o = cli(&other, &["kv", "get", "greeting"], &[("DISTER_TLS_CA", &ca_path)]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "hello");
    let o = cli(&addr, &["kv", "get", "greeting"], &[]);
    assert_eq!(o.status.code(), Some(1), "plain text to a TLS port: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("answered in TLS"), "{}", text(&o));
    let refused = logged(&procs, leader, &["tls handshake failed", "remote=", "corrupt message"]);
    assert!(refused.contains("WARN"), "{refused}");
    let mut acked = BTreeMap::from([("greeting".to_string(), "hello".to_string())]);

    // 3. HTTPS only.
    let http = procs.http[leader].clone();
    let https = awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(client_tls.config()))
        .timeout(Duration::from_secs(5))
        .finish();
    let resp = https.get(format!("https://{http}/health")).send().await.expect("https");
    assert_eq!(resp.status().as_u16(), 200);
    let mut resp = https
        .post(format!("https://{http}/kv"))
        .bearer_auth(TOKEN)
        .send_json(&serde_json::json!({"over-https": "yes"}))
        .await
        .expect("https write");
    let body = resp.body().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{body:?}");
    acked.insert("over-https".into(), "yes".into());
    let plain = awc::Client::builder().timeout(Duration::from_secs(5)).finish();
    assert!(plain.get(format!("http://{http}/health")).send().await.is_err(), "plain HTTP on the HTTPS port");

    // 4. A peer must present a certificate, and one from the cluster's CA.
    let peer_hello =
        Hello { group: "default".into(), node_id: Some(9), token: Some(TOKEN.into()), lease_wait_ms: None };
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let secured = client_tls.connect(&addr, tcp).await.unwrap();
    let err = handshake::connect(secured, peer_hello.clone(), Duration::from_secs(5), 1024).await.unwrap_err();
    assert!(err.to_string().contains("presented no certificate"), "{err}");
    let intruder_dir = tempfile::tempdir().unwrap();
    let intruder = Ca::new("another CA").issue(intruder_dir.path(), "intruder", false);
    let files = TlsFiles { cert: intruder.cert.clone(), key: intruder.key.clone(), ca: ca_path.clone() };
    let foreign = Tls::load(files).unwrap();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let from = tcp.local_addr().unwrap().to_string();
    let attempt = async {
        let secured = foreign.connect(&addr, Box::new(tcp)).await?;
        handshake::connect(secured, peer_hello, Duration::from_secs(5), 1024).await.map_err(std::io::Error::other)
    };
    assert!(attempt.await.is_err(), "a certificate from another CA is refused");
    logged(&procs, leader, &["tls handshake failed", &format!("remote={from}"), "issuer"]);
    // The cluster's CA, but for another host: it cannot speak for a member at 127.0.0.1.
    let elsewhere = ca.issue_for(intruder_dir.path(), "elsewhere", &["elsewhere.example"], false);
    let files = TlsFiles { cert: elsewhere.cert.clone(), key: elsewhere.key.clone(), ca: ca_path.clone() };
    let impostor = Tls::load(files).unwrap();
    let member = (leader + 1) % 3 + 1;
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let secured = impostor.connect(&addr, Box::new(tcp)).await.unwrap();
    let hello =
        Hello { group: "default".into(), node_id: Some(member as u64), token: Some(TOKEN.into()), lease_wait_ms: None };
    let Err(err) = handshake::connect(secured, hello, Duration::from_secs(5), 1024).await else {
        panic!("a certificate for another host was taken as member {member}");
    };
    assert!(err.to_string().contains("does not name"), "{err}");

    // 5. Renewed on SIGHUP: node 3 joins with its new certificate.
    let renewed = ca.issue(procs.dir(), "node3", false);
    assert_eq!(renewed.cert, nodes[2].cert, "the files node 3 was started with");
    procs.signal(2, "HUP");
    logged(&procs, 2, &["tls files reloaded"]);
    assert_eq!(served_certificate(&client_tls, &procs.addrs[2]).await, renewed.der, "wire port");
    assert_eq!(served_certificate(&client_tls, &procs.http[2]).await, renewed.der, "HTTP port");
    procs.check(&acked).await;
    let o = cli(&procs.addrs[2], &["--tls-ca", &ca_arg, "kv", "get", "over-https"], &[]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "yes", "{}", text(&o));

    // A reload that cannot read its files keeps the certificate in use.
    std::fs::write(&renewed.key, "not a key").unwrap();
    procs.signal(2, "HUP");
    logged(&procs, 2, &["tls files not reloaded"]);
    assert_eq!(served_certificate(&client_tls, &procs.addrs[2]).await, renewed.der);
}

/// Bad TLS files stop the server at start with the file named; a CLI given a CA file that
/// is not one says so (exit 2).
#[test]
fn bad_tls_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("dister test CA");
    let ca_path = ca.write(dir.path(), "ca");
    let node = ca.issue(dir.path(), "node1", false);
    let other = ca.issue(dir.path(), "node2", false);
    let missing = dir.path().join("missing.pem");
    let run = |cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path| {
        let port = common::free_port();
        Command::new(env!("CARGO_BIN_EXE_dister"))
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path().join(format!("data-{port}")))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .arg("--tls-ca")
            .arg(ca)
            .output()
            .unwrap()
    };
    let o = run(&missing, &node.key, &ca_path);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.pem"), "{}", text(&o));
    let o = run(&node.cert, &other.key, &ca_path);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("node1.pem and"), "the key does not match: {}", text(&o));
    let o = run(&node.cert, &node.key, &node.key);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("node1.key"), "a key is no CA: {}", text(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_dister")).args(["server", "--tls-cert"]).arg(&node.cert).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "the three go together: {}", text(&o));
    let o = cli("127.0.0.1:1", &["--tls-ca", &node.key.display().to_string(), "kv", "get", "x"], &[]);
    assert_eq!(o.status.code(), Some(2), "a key is no CA: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("node1.key"), "{}", text(&o));
    let o = cli("127.0.0.1:1", &["kv", "get", "x"], &[("DISTER_TLS_CA", &missing)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.pem"), "{}", text(&o));
}

/// rustls only: nothing links OpenSSL.
#[test]
fn no_openssl_is_linked() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    for name in ["openssl-sys", "native-tls"] {
        assert!(!lock.contains(&format!("name = \"{name}\"")), "{name} is in Cargo.lock");
    }
}
