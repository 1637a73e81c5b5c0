//! t30: the wire refuses what it must: wrong group or version, a peer with another
//! `read_mode`, oversized frames, and Raft messages from connections that are not
//! configured peers.

use crate::common;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::Cluster;
use dister::raft::LogId;
use dister::wire::codec::encode_frame;
use dister::wire::{Frame, FrameCodec, Hello, MAGIC, PROTOCOL_VERSION, Request, Response, VoteRequest};
use dister::{Client, ClientError, Consistency};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

/// Opens a raw connection, sends `bytes`, and collects frames until the server closes.
async fn exchange(addr: &str, bytes: &[u8]) -> Vec<Frame> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut reader = FramedRead::new(s, FrameCodec::new(1 << 20));
    let mut frames = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(f)) = reader.next().await {
            frames.push(f);
        }
    })
    .await;
    assert!(closed.is_ok(), "server did not close the connection; got {frames:?}");
    frames
}

fn hello(group: &str, node_id: Option<u64>) -> BytesMut {
    encode_frame(Frame::Hello(Hello { group: group.into(), node_id, token: None, lease_wait_ms: None })).unwrap()
}

/// A client of another cluster group gets an error frame naming both groups, then a close.
#[actix_rt::test]
async fn wrong_group_is_refused() {
    let cluster = Cluster::start(1);
    let frames = exchange(&cluster.addr(0), &hello("other", None)).await;
    assert!(
        matches!(frames.as_slice(), [Frame::Error(m)] if m.contains("wrong group") && m.contains("other")),
        "{frames:?}"
    );
    match Client::connect(&cluster.addr(0), "other").await {
        Err(ClientError::Wire(e)) => assert!(e.to_string().contains("wrong group"), "{e}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

/// A frame of another protocol version is refused with an error frame, then a close.
#[actix_rt::test]
async fn wrong_version_is_refused() {
    let cluster = Cluster::start(1);
    let mut bytes = hello("default", None);
    bytes[6] = PROTOCOL_VERSION + 1;
    let frames = exchange(&cluster.addr(0), &bytes).await;
    assert!(matches!(frames.as_slice(), [Frame::Error(m)] if m.contains("protocol version")), "{frames:?}");
}

/// A peer claiming the node's own id is refused (ids are unique); a removed id is refused
/// too (t60 shows it).
#[actix_rt::test]
async fn own_node_id_is_refused() {
    let cluster = Cluster::start(3);
    let frames = exchange(&cluster.addr(0), &hello("default", Some(1))).await;
    assert!(matches!(frames.as_slice(), [Frame::Error(m)] if m.contains("this node's own")), "{frames:?}");
}

/// A peer that runs another `read_mode` (or leases with another `election_timeout_min_ms`)
/// is refused, saying both settings: a lease relies on every member's wait. Peers that agree
/// form the cluster (the three nodes here did).
#[actix_rt::test]
async fn a_peer_with_another_read_mode_is_refused() {
    let cluster = Cluster::start(3);
    let hello = |lease_wait_ms| {
        let hello = Hello { group: "default".into(), node_id: Some(2), token: None, lease_wait_ms };
        encode_frame(Frame::Hello(hello)).unwrap()
    };
    let frames = exchange(&cluster.addr(0), &hello(Some(300))).await;
    assert!(
        matches!(frames.as_slice(), [Frame::Error(m)]
            if m.contains("read_mode = \"lease\" with election_timeout_min_ms = 300") && m.contains("read_mode = \"index\"")),
        "{frames:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while cluster.status(0).await.unwrap().refused.wrong_read_mode != 1 {
        assert!(std::time::Instant::now() < deadline, "the refusal was not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A length prefix over the client limit (1.5 MiB by default) is refused before the body
/// is read: the server answers an error frame and closes at once, though the body never came.
#[actix_rt::test]
async fn oversized_frame_is_refused() {
    let cluster = Cluster::start(1);
    let mut bytes = hello("default", None);
    bytes.put_u32(64 * 1024 * 1024);
    bytes.put_u16(MAGIC);
    bytes.put_u8(PROTOCOL_VERSION);
    bytes.put_u8(3);
    let frames = exchange(&cluster.addr(0), &bytes).await;
    assert!(matches!(frames.first(), Some(Frame::Welcome(_))), "{frames:?}");
    assert!(matches!(frames.last(), Some(Frame::Error(m)) if m.contains("over the limit of 1573888")), "{frames:?}");
    // A write just under the limit is fine; one over it fails without harming the node.
    cluster.wait_leader(Duration::from_secs(1)).await;
    let c = Client::connect(&cluster.addr(0), "default").await.unwrap();
    c.set("big", &"x".repeat(1_500_000)).await.unwrap();
    assert!(c.set("huge", &"x".repeat(1_600_000)).await.is_err());
    let c = Client::connect(&cluster.addr(0), "default").await.unwrap();
    assert_eq!(c.get("big", Consistency::Linearizable).await.unwrap().map(|v| v.len()), Some(1_500_000));
}

/// A client connection cannot inject Raft traffic: a vote request is refused and the
/// connection closed, and the node's term does not move.
#[actix_rt::test]
async fn client_connection_cannot_send_raft_messages() {
    let cluster = Cluster::start(1);
    cluster.wait_leader(Duration::from_secs(1)).await;
    let term = cluster.status(0).await.unwrap().term;
    let mut bytes = hello("default", None);
    let vote = VoteRequest {
        term: term + 100,
        candidate: 7,
        last_log: LogId::new(term + 100, 1_000),
        pre_vote: false,
        transfer: false,
    };
    bytes.extend_from_slice(&encode_frame(Frame::Request(1, Request::Vote(vote))).unwrap());
    let frames = exchange(&cluster.addr(0), &bytes).await;
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, Frame::Response(1, Response::Error(e)) if e.to_string().contains("configured peers"))),
        "{frames:?}"
    );
    assert_eq!(cluster.status(0).await.unwrap().term, term);
}

/// Garbage instead of a handshake gets an error frame and a close, not a hang or a crash.
#[actix_rt::test]
async fn garbage_is_refused() {
    let cluster = Cluster::start(1);
    let frames = exchange(&cluster.addr(0), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(matches!(frames.as_slice(), [Frame::Error(_)]), "{frames:?}");
    // The node still serves.
    cluster.wait_leader(Duration::from_secs(1)).await;
    let c = Client::connect(&cluster.addr(0), "default").await.unwrap();
    c.set("still", "up").await.unwrap();
}

const TOKEN: &str = "a-cluster-token-of-some-length";

/// With a cluster token, peers present it and form a cluster; a client must present it too:
/// none, or a wrong one, is refused, closed and counted in `status`.
#[actix_rt::test]
async fn cluster_token_is_required_and_refusals_are_counted() {
    let cluster = Cluster::start_with(3, |c| c.cluster_token = Some(TOKEN.into()));
    let leader = cluster.wait_leader(Duration::from_secs(2)).await;
    cluster.client(leader).await.set("k", "v").await.unwrap();
    let addr = cluster.addr(0);
    let refused = |r: Result<Client, ClientError>, what: &str| match r {
        Err(ClientError::Wire(e)) => assert!(e.to_string().contains(what), "{e}"),
        Ok(_) => panic!("connection without the right token was accepted"),
        Err(e) => panic!("unexpected error {e}"),
    };
    refused(Client::connect(&addr, "default").await, "requires a token");
    refused(
        Client::connect_with_token(&addr, "default", Some("a-wrong-token-of-some-length")).await,
        "wrong cluster token",
    );
    let ok = Client::connect_with_token(&addr, "default", Some(TOKEN)).await.unwrap();
    assert_eq!(ok.get("k", Consistency::Linearizable).await.unwrap().as_deref(), Some("v"));
    let s = cluster.status(0).await.unwrap();
    assert_eq!(s.refused.bad_token, 2, "{:?}", s.refused);
}

/// Each refusal is counted under its reason: wrong group, wrong version, unknown node id,
/// Raft traffic from a client, and garbage.
#[actix_rt::test]
async fn refusals_are_counted_by_reason() {
    let cluster = Cluster::start(1);
    cluster.wait_leader(Duration::from_secs(1)).await;
    let addr = cluster.addr(0);
    exchange(&addr, &hello("other", None)).await;
    let mut v2 = hello("default", None);
    v2[6] = PROTOCOL_VERSION + 1;
    exchange(&addr, &v2).await;
    exchange(&addr, &hello("default", Some(1))).await;
    let mut raft = hello("default", None);
    let vote = VoteRequest { term: 9, candidate: 7, last_log: LogId::new(9, 9), pre_vote: false, transfer: false };
    raft.extend_from_slice(&encode_frame(Frame::Request(1, Request::Vote(vote))).unwrap());
    exchange(&addr, &raft).await;
    exchange(&addr, b"\x00\x00\x00\x08GARBAGE!").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let r = cluster.status(0).await.unwrap().refused;
        let want = (1, 1, 1, 1, 1);
        if (r.wrong_group, r.wrong_version, r.unknown_node, r.raft_from_client, r.malformed) == want {
            assert_eq!(r.bad_token, 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "counts {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Handshakes under way are bounded: past `MAX_HANDSHAKES` silent connections, the next one
/// is closed at once (not queued) and counted; once the silent ones go, clients get in again.
#[actix_rt::test]
async fn handshakes_under_way_are_bounded() {
    use dister::actors::listener::MAX_HANDSHAKES;
    let cluster = Cluster::start_with(1, |c| c.handshake_timeout_ms = 30_000);
    cluster.wait_leader(Duration::from_secs(1)).await;
    let addr = cluster.addr(0);
    let mut silent = Vec::new();
    for _ in 0..MAX_HANDSHAKES {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    // The listener has taken them all once one more is closed at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut extra = TcpStream::connect(&addr).await.unwrap();
        extra.write_all(&hello("default", None)).await.unwrap();
        let mut buf = [0u8; 64];
        let read =
            tokio::time::timeout(Duration::from_millis(500), tokio::io::AsyncReadExt::read(&mut extra, &mut buf));
        if let Ok(Ok(0) | Err(_)) = read.await {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a connection past the bound was still served");
    }
    drop(silent);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = cluster.status(0).await {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "clients never got in again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.refused.too_many_connections >= 1, "{:?}", status.refused);
}

/// Secure by default: the binary refuses to listen beyond loopback without a cluster token
/// and TLS, saying why, unless `--insecure` is given.
#[test]
fn refuses_to_listen_beyond_loopback_without_a_token_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dister"))
        .args(["server", "--listen", &format!("0.0.0.0:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("neither a cluster_token nor TLS") && err.contains("--insecure"), "{err}");
    // A token alone is not enough: it would cross the network in clear.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dister"))
        .args(["server", "--listen", &format!("0.0.0.0:{port}"), "--token", "0123456789abcdef"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("it has no TLS") && err.contains("--tls-cert"), "{err}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dister"))
        .args(["server", "--insecure", "--listen", &format!("0.0.0.0:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "--insecure node did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
