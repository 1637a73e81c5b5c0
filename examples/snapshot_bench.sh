#!/usr/bin/env bash
# Snapshot figures on a throwaway local 3-node cluster (data in a temp directory, removed at
# the end):
#   examples/snapshot_bench.sh cost [SNAPSHOT_ENTRIES]   # write throughput and p99 over
#       100,000 keys with a snapshot every SNAPSHOT_ENTRIES entries (default 10000; 0: never)
#   examples/snapshot_bench.sh restart [SECS]            # SECS of writes over 1,000,000 keys,
#       then kill -9 of a node: resident memory, disk, and the time until it serves a read
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin dister
B=target/release/dister
mode=${1:-cost}
D=$(mktemp -d)
P=(17171 17172 17173)
pids=()
start() {
  local i=$1 peers=()
  for j in 1 2 3; do [ "$j" != "$i" ] && peers+=(--peer "$j=127.0.0.1:${P[$((j-1))]}"); done
  $B server --id "$i" --data-dir "$D/n$i" --listen "127.0.0.1:${P[$((i-1))]}" "${peers[@]}" \
    --snapshot-entries "${SNAPSHOT_ENTRIES:-10000}" 2>>"$D/n$i.log" &
  pids[$i]=$!
}
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"; }
trap stop EXIT INT TERM
nodes=127.0.0.1:17171,127.0.0.1:17172,127.0.0.1:17173
case $mode in
  cost)
    SNAPSHOT_ENTRIES=${2:-10000}
    for i in 1 2 3; do start "$i"; done
    sleep 2
    echo "snapshot_entries=$SNAPSHOT_ENTRIES"
    $B bench --nodes "$nodes" --clients 240 --secs 20 --keys 100000
    ;;
  restart)
    for i in 1 2 3; do start "$i"; done
    sleep 2
    $B bench --nodes "$nodes" --clients 240 --secs "${2:-60}" --keys 1000000 --value-size 64
    $B --addr 127.0.0.1:17173 status --json | grep -E '"commit_index"|"snapshot_index"|"snapshot_bytes"'
    echo "node3 rss_kib=$(ps -o rss= -p "${pids[3]}") disk=$(du -sh "$D/n3" | cut -f1)"
    $B --addr 127.0.0.1:17171 kv set restart-probe yes >/dev/null
    sleep 1
    kill -9 "${pids[3]}"; wait "${pids[3]}" 2>/dev/null || true
    t0=$(date +%s%N)
    start 3
    until [ "$($B --addr 127.0.0.1:17173 kv get restart-probe --stale 2>/dev/null)" = yes ]; do sleep 0.01; done
    echo "restart_to_read_ms=$(( ($(date +%s%N) - t0) / 1000000 ))"
    ;;
  *) echo "usage: $0 cost [SNAPSHOT_ENTRIES] | restart [SECS]" >&2; exit 2 ;;
esac
