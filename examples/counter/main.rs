//! Extending dister without touching its core: a replicated counter actor on a 3-node
//! cluster, all in this one process.
//!
//! ```text
//! cargo run --example counter
//! ```

mod counter_actor;

use actix::Actor;
use counter_actor::{Counters, NAMESPACE, add, value_of};
use dister::messages::apply::StateMachineRef;
use dister::wire::Write;
use dister::{Config, Consistency, Node, PeerConfig};

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let dir = tempfile_dir()?;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    let mut nodes = Vec::new();
    for i in 0..3 {
        let config = Config {
            id: i as u64 + 1,
            listen: format!("127.0.0.1:{}", ports[i]),
            data_dir: dir.join(format!("node{}", i + 1)),
            peers: (0..3)
                .filter(|&j| j != i)
                .map(|j| PeerConfig { id: j as u64 + 1, addr: format!("127.0.0.1:{}", ports[j]) })
                .collect(),
            ..Config::default()
        };
        // The one line that adds the feature: an actor for the namespace, for applies and queries.
        let counters = Counters::default().start();
        let node = Node::builder(config)
            .state_machine(NAMESPACE, StateMachineRef::of(&counters), Some(counters.recipient()))
            .start()
            .await?;
        nodes.push(node);
    }
    // Writes through node 1 (forwarded to the leader if it is not), reads through node 3.
    let h1 = nodes[0].handle();
    let h3 = nodes[2].handle();
    let mut value = String::new();
    for by in [5, 10, -3] {
        let reply = loop {
            match h1.cluster().write(Write { namespace: NAMESPACE.into(), data: add("visits", by) }).await {
                Ok(r) => break r,
                Err(e) if e.is_retryable() => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                Err(e) => return Err(e.into()),
            }
        };
        value = String::from_utf8_lossy(&reply.output).into_owned();
        println!("add {by:>3} -> visits = {value} (log index {})", reply.index);
    }
    let read = h3.cluster().query(NAMESPACE.into(), value_of("visits"), Consistency::Linearizable).await?;
    println!("node 3 reads visits = {}", String::from_utf8_lossy(&read));
    assert_eq!(read, value.as_bytes());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("dister-counter-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
