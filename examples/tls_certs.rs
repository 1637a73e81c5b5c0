//! Writes a throwaway CA and certificates for nodes 1 to N (each for 127.0.0.1 and localhost)
//! into a directory, to try TLS on one machine (and for `examples/tls_bench.sh`):
//!
//! ```text
//! cargo run --example tls_certs -- certs 3
//! dister server --id 1 ... --tls-cert certs/node1.pem --tls-key certs/node1.key --tls-ca certs/ca.pem
//! dister --tls-ca certs/ca.pem kv get greeting
//! ```
//!
//! A real cluster's certificates come from its own CA, naming the hosts its nodes are
//! reached at.

#[allow(dead_code)]
#[path = "../tests/common/certs.rs"]
mod certs;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "certs".into()));
    let nodes: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(3);
    std::fs::create_dir_all(&dir)?;
    let ca = certs::Ca::new("dister local CA");
    let path = ca.write(&dir, "ca");
    for i in 1..=nodes {
        ca.issue(&dir, &format!("node{i}"), false);
    }
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    tracing::info!(ca = %path.display(), nodes, dir = %dir.display(), "certificates written");
    Ok(())
}
