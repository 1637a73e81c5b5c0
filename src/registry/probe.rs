//! Health probes, as async tasks with a deadline: they never run on an actor's own time.
//! `tcp` connects through the node's transport (so a simulation can probe too); `http` GETs
//! a URL and wants a 2xx; `script` runs a command and wants exit status 0.

use std::time::Duration;

use crate::messages::registry::{CheckKind, ServiceNode};
use crate::transport::TransportRef;

/// What to probe, copied out of the instance so the task owns it.
#[derive(Clone, Debug)]
pub enum Probe {
    /// Connect to this `host:port`.
    Tcp(String),
    /// GET this URL.
    Http(String),
    /// Run this with `sh -c`.
    Script(String),
}

impl Probe {
    /// The probe for `node`, if it has one that runs (TTL checks are beats, not probes).
    pub fn for_node(node: &ServiceNode) -> Option<Probe> {
        match node.effective_check()? {
            CheckKind::Tcp => Some(Probe::Tcp(node.addr())),
            CheckKind::Http => {
                Some(Probe::Http(node.url.clone().unwrap_or_else(|| format!("http://{}/", node.addr()))))
            }
            CheckKind::Script => node.script.clone().map(Probe::Script),
            CheckKind::Ttl => None,
        }
    }

    /// Runs the probe; `true` if the instance answered as healthy within `timeout`. A script
    /// probe fails unless `scripts_allowed`: it runs code on the leader's machine.
    pub async fn run(self, transport: TransportRef, timeout: Duration, scripts_allowed: bool) -> bool {
        let outcome = tokio::time::timeout(timeout, async move {
            match self {
                Probe::Tcp(addr) => transport.probe(&addr).await.is_ok(),
                Probe::Http(url) => {
                    // A check must not be sent off to wherever the instance redirects it.
                    let client = awc::Client::builder().timeout(timeout).disable_redirects().finish();
                    match client.get(url.as_str()).send().await {
                        Ok(resp) => resp.status().is_success(),
                        Err(_) => false,
                    }
                }
                Probe::Script(cmd) if scripts_allowed => {
                    let child = tokio::process::Command::new("sh")
                        .arg("-c")
                        .arg(&cmd)
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .status();
                    matches!(child.await, Ok(status) if status.success())
                }
                Probe::Script(_) => false,
            }
        })
        .await;
        outcome.unwrap_or(false)
    }
}
