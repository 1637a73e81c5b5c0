#!/usr/bin/env bash
# Starts a local 3-node cluster (config/node1.toml .. node3.toml: 127.0.0.1:7071-7073, data in
# data/node1..3) in the foreground. Ctrl-C stops all three. Try, from another terminal:
#   target/release/dister --addr 127.0.0.1:7072 kv set hello world
#   target/release/dister --addr 127.0.0.1:7073 kv get hello
#   target/release/dister --addr 127.0.0.1:7071 status
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin dister
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT INT TERM
for i in 1 2 3; do
  target/release/dister server --config "config/node$i.toml" &
  pids+=($!)
done
echo "dister: 3 nodes on 127.0.0.1:7071-7073 (pids ${pids[*]}); Ctrl-C to stop" >&2
wait
