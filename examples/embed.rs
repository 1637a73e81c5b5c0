//! Embedding dister in an actix application: start a `Node` in-process and talk to its actors
//! by typed messages, through the `NodeHandle` helpers or straight to an actor's address; open
//! its HTTP port when the application wants it.
//!
//! ```text
//! cargo run --example embed
//! ```

use std::time::Duration;

use dister::messages::client::GetElectionStatus;
use dister::messages::kv::{GetKey, ListKeys};
use dister::raft::Role;
use dister::{Config, Consistency, Node};

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let data_dir = std::env::temp_dir().join(format!("dister-embed-{}", std::process::id()));
    // A standalone node on a free port; with peers listed it would join a cluster.
    let config = Config { listen: "127.0.0.1:0".into(), data_dir: data_dir.clone(), ..Config::default() };
    let node = Node::start(config).await?;
    let handle = node.handle();
    println!("node listening on {}", node.local_addr());

    // A single node elects itself at once; ask Election directly.
    loop {
        let status = handle.cluster().election().send(GetElectionStatus).await?;
        if status.role == Role::Leader {
            println!("node {} leads term {}", status.id, status.term);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Writes go through the log: replicated, fsynced, applied, then answered.
    let reply =
        handle.kv().set(vec![("app/name".into(), "demo".into()), ("app/mode".into(), "embedded".into())]).await?;
    println!("two keys set in one entry at log index {}", reply.index);

    // A linearizable read through the handle (ReadIndex, then DataMap) ...
    let name = handle.kv().get("app/name".into(), Consistency::Linearizable).await?;
    println!("app/name = {name:?}");
    // ... or a message to DataMap itself: `min_applied` 0 reads the local copy at once.
    let mode = handle.kv().data_map().send(GetKey { key: "app/mode".into(), min_applied: 0 }).await?;
    let all = handle.kv().data_map().send(ListKeys { prefix: "app/".into(), min_applied: reply.index }).await?;
    println!("app/mode = {mode:?}; all under app/: {all:?}");

    // The HTTP port is the application's to open: dister's API, the Nacos API and the
    // console, over the same actors.
    let http = dister::api::serve(handle.clone(), "127.0.0.1:0")?;
    let mut answer = awc::Client::default()
        .get(format!("http://{}/kv?k=app/name", http.addr))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let body = answer.body().await?;
    println!("GET http://{}/kv?k=app/name: {}", http.addr, String::from_utf8_lossy(&body));
    http.handle.stop(true).await;

    node.stop();
    std::fs::remove_dir_all(&data_dir)?;
    Ok(())
}
