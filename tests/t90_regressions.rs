//! t90: regressions, each pinned by the scenario that found it.

use crate::common;

use std::time::Duration;

use common::Cluster;
use dister::raft::Role;

/// Found in review: a peer address that answers as another node (stale DNS, a reused port, a
/// typo) was accepted, so one voter could be counted several times.
///
/// 1. Five members; node 1 is misconfigured so that peers 3, 4 and 5 all point at node 2.
/// 2. Only nodes 1 and 2 run: 2 of 5 is no majority.
/// 3. For 2 s, neither becomes leader (node 1 would, if node 2's answers counted four times).
#[actix_rt::test]
async fn a_peer_answering_as_another_node_is_not_counted() {
    let mut cluster = Cluster::start_with(5, |_| {});
    for i in 2..5 {
        cluster.stop_node(i);
    }
    cluster.stop_node(0);
    let node2 = cluster.addr(1);
    for p in cluster.configs[0].peers.iter_mut().filter(|p| p.id >= 3) {
        p.addr = node2.clone();
    }
    // Node 2 may have been leader of the five; restart it so no leadership lingers.
    cluster.restart_node(1);
    cluster.start_node(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        for i in 0..2 {
            if let Some(s) = cluster.status(i).await {
                assert_ne!(s.role, Role::Leader, "node {} became leader without a majority: {s:?}", i + 1);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every address written in the tests, examples, configs and README is on loopback: the
/// leader health-checks what is registered, so an address beyond 127.0.0.0/8 in a test
/// could send probes off this machine (issue 9). `0.0.0.0` is allowed: it is only bound, in
/// the simulations. Test names that cannot resolve (`h`, `a`) are no better: use 127.x.
///
/// 1. Walk `tests/`, `examples/`, `config/` and `README.md`.
/// 2. Every IPv4 literal must be in 127.0.0.0/8, or be 0.0.0.0.
#[test]
fn the_tree_names_only_loopback_addresses() {
    fn walk(p: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                walk(&e.path(), out);
            }
        } else if p.extension().is_some_and(|x| ["rs", "md", "toml", "sh", "py", "lua"].contains(&x.to_str().unwrap()))
        {
            out.push(p.to_path_buf());
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for d in ["tests", "examples", "config", "README.md"] {
        walk(&root.join(d), &mut files);
    }
    assert!(files.len() > 20, "the walk found too little: {files:?}");
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            let chars: Vec<char> = line.chars().collect();
            let mut i = 0;
            while i < chars.len() {
                // A literal starts where no digit or dot came before.
                if chars[i].is_ascii_digit() && (i == 0 || !(chars[i - 1].is_ascii_digit() || chars[i - 1] == '.')) {
                    let end = (i..chars.len())
                        .find(|&j| !(chars[j].is_ascii_digit() || chars[j] == '.'))
                        .unwrap_or(chars.len());
                    let word: String = chars[i..end].iter().collect::<String>().trim_end_matches('.').to_string();
                    if let Ok(ip) = word.parse::<std::net::Ipv4Addr>()
                        && !ip.is_loopback()
                        && !ip.is_unspecified()
                        && f.file_name().is_none_or(|name| name != "t90_regressions.rs")
                    {
                        bad.push(format!("{}:{}: {ip}", f.display(), n + 1));
                    }
                    i = end;
                } else {
                    i += 1;
                }
            }
        }
    }
    assert!(bad.is_empty(), "addresses beyond loopback:\n{}", bad.join("\n"));
}
