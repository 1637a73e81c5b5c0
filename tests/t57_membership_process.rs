//! t57: membership with the real binary: a node started with `--join` becomes a voter,
//! `dister member list` shows it, `dister leader transfer` hands over, SIGTERM on the leader
//! hands over before exiting, `dister member remove` removes, and `--force-new-cluster`
//! brings a lone survivor back with its data.

use std::process::Command;
use std::time::{Duration, Instant};

use dister::{Client, Consistency};
use serde_json::Value;

use crate::common::procs::Procs;

/// Runs the CLI against `addr`; answers exit code and stdout, stderr.
fn cli(addr: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dister")).args(["--addr", addr]).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// `dister member list --json` through `addr`, until `ok` holds of it.
async fn members_until(procs: &Procs, addr: &str, what: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, _) = cli(addr, &["member", "list", "--json"]);
        if code == 0
            && let Ok(Value::Array(list)) = serde_json::from_str::<Value>(&out)
            && ok(&list)
        {
            return list;
        }
        assert!(Instant::now() < deadline, "member list never showed {what}: {out}\n{}", procs.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn voters(list: &[Value]) -> Vec<u64> {
    list.iter().filter(|m| m["role"] == "voter").filter_map(|m| m["id"].as_u64()).collect()
}

async fn set(addr: &str, key: &str) {
    let c = Client::connect(addr, "default").await.unwrap().with_timeout(Duration::from_secs(5));
    crate::common::retry(Duration::from_secs(10), || c.set(key, "v")).await.unwrap();
}

#[actix_rt::test]
async fn join_list_transfer_sigterm_remove_and_force_new_cluster() {
    let mut procs = Procs::start(3);
    let leader = procs.leader(Duration::from_secs(10)).await;
    set(&procs.addrs[leader], "before-join").await;
    let follower = (leader + 1) % 3;
    let join = procs.addrs[follower].clone();
    let node4 = procs.add(&["--join", &join]);
    let list = members_until(&procs, &procs.addrs[leader], "four voters", |l| voters(l) == [1, 2, 3, 4]).await;
    let me = list.iter().find(|m| m["id"] == 4).unwrap();
    assert_eq!(me["addr"], Value::from(procs.addrs[node4].clone()), "{list:?}");
    assert!(me["match_index"].as_u64().is_some() && me["reachable"] == true, "from the leader: {list:?}");
    let (code, text, _) = cli(&procs.addrs[node4], &["member", "list"]);
    assert_eq!(code, 0);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.lines().all(|l| l.contains("voter")), "{text}");

    // Hand over by hand, to node 4.
    let (code, out, err) = cli(&procs.addrs[follower], &["leader", "transfer", "4"]);
    assert_eq!((code, out.trim()), (0, "4"), "{err}");
    // The old leader answers once it handed over; the target may still be counting votes.
    assert_eq!(procs.leader(Duration::from_secs(5)).await, node4, "the transfer's target did not take over");

    // SIGTERM on the leader: it hands over before it exits.
    assert!(procs.sigterm(node4), "the leader did not exit cleanly");
    let log = std::fs::read_to_string(procs.log(node4)).unwrap();
    assert!(log.contains("handed leadership over"), "{log}");
    let leader = procs.leader(Duration::from_secs(5)).await;
    set(&procs.addrs[leader], "after-sigterm").await;

    // Remove node 4 for good; a bad removal is refused with a clear error.
    let (code, _, err) = cli(&procs.addrs[leader], &["member", "remove", "4"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&procs.addrs[leader], &["member", "remove", "9"]);
    assert_ne!(code, 0);
    assert!(err.contains("not a member"), "{err}");
    members_until(&procs, &procs.addrs[leader], "three voters", |l| voters(l) == [1, 2, 3]).await;

    // Most of the cluster is gone for good: the survivor starts anew with its data.
    let survivor = (leader + 1) % 3;
    set(&procs.addrs[leader], "before-loss").await;
    for i in 0..3 {
        procs.kill9(i);
    }
    procs.spawn_with(survivor, &["--force-new-cluster"]);
    let list = members_until(&procs, &procs.addrs[survivor], "one voter", |l| l.len() == 1).await;
    assert_eq!(voters(&list), [survivor as u64 + 1]);
    let c = Client::connect(&procs.addrs[survivor], "default").await.unwrap();
    for key in ["before-join", "after-sigterm", "before-loss"] {
        let got = crate::common::retry(Duration::from_secs(10), || c.get(key, Consistency::Linearizable)).await;
        assert_eq!(got.unwrap().as_deref(), Some("v"), "{key} lost");
    }
    set(&procs.addrs[survivor], "alone").await;
}
