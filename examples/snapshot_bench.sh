#!/usr/bin/env bash
# Snapshot figures on a throwaway local 3-node cluster (data in a temp directory, removed at
# the end):
#   examples/snapshot_bench.sh cost [SNAPSHOT_ENTRIES]   # write throughput and p99 over
#       100,000 keys with a snapshot every SNAPSHOT_ENTRIES entries (default 10000; 0: never)
#   examples/snapshot_bench.sh memory [SECS]             # SECS (default 100) of writes over
#       1,000,000 keys of 16 bytes with 64-byte values (each written at least once): a node's
#       resident memory beyond its idle size per key, beyond the key and value bytes; its
#       disk; then kill -9 of it and the time until it serves a read again
#   examples/snapshot_bench.sh steady [ENTRIES]          # ENTRIES (default 10,000,000) writes
#       over 100,000 keys: resident memory and disk of a node after every minute (they must
#       level off), then the restart time after kill -9
set -euo pipefail
mode=${1:-cost}
start_args() { echo --snapshot-entries "${SNAPSHOT_ENTRIES:-10000}"; }
# shellcheck source=examples/bench_cluster.sh
source "$(dirname "$0")/bench_cluster.sh"
# kill -9 of node 3, then the time until it answers a read of a key written just before.
restart_probe() {
  $B --addr 127.0.0.1:17171 kv set restart-probe yes >/dev/null
  sleep 1
  kill -9 "${pids[3]}"; wait "${pids[3]}" 2>/dev/null || true
  local t0; t0=$(date +%s%N)
  start 3
  until [ "$($B --addr 127.0.0.1:17173 kv get restart-probe --stale 2>/dev/null)" = yes ]; do sleep 0.01; done
  echo "restart_to_read_ms=$(( ($(date +%s%N) - t0) / 1000000 ))"
}
case $mode in
  cost)
    SNAPSHOT_ENTRIES=${2:-10000}
    for i in 1 2 3; do start "$i"; done
    sleep 2
    echo "snapshot_entries=$SNAPSHOT_ENTRIES"
    $B bench --nodes "$nodes" --clients 240 --secs 20 --keys 100000
    ;;
  memory)
    for i in 1 2 3; do start "$i"; done
    sleep 3
    idle=$(ps -o rss= -p "${pids[3]}")
    $B bench --nodes "$nodes" --clients 240 --secs "${2:-100}" --keys 1000000 --key-size 16 --value-size 64
    sleep 5
    rss=$(ps -o rss= -p "${pids[3]}")
    $B --addr 127.0.0.1:17173 snapshot save "$D/backup.snap" >/dev/null
    keys=$($B snapshot status "$D/backup.snap" --json | sed -n 's/.*"keys": *\([0-9]*\).*/\1/p')
    echo "node3 idle_rss_kib=$idle rss_kib=$rss keys=$keys disk=$(du -sh "$D/n3" | cut -f1)"
    echo "bytes_per_key_beyond_key_and_value=$(( (rss - idle) * 1024 / keys - 80 ))"
    restart_probe
    ;;
  steady)
    total=${2:-10000000}
    for i in 1 2 3; do start "$i"; done
    sleep 3
    echo "start: rss_kib=$(ps -o rss= -p "${pids[3]}") disk_kib=$(du -sk "$D/n3" | cut -f1)"
    while :; do
      $B bench --nodes "$nodes" --clients 240 --secs 60 --keys 100000 --key-size 16 --value-size 64 | sed 's/^workload=[^ ]* clients=[0-9]* key_size=[0-9]* value_size=[0-9]* /  /'
      commit=$($B --addr 127.0.0.1:17173 status --json | sed -n 's/.*"commit_index": *\([0-9]*\).*/\1/p')
      echo "entries=$commit rss_kib=$(ps -o rss= -p "${pids[3]}") disk_kib=$(du -sk "$D/n3" | cut -f1) segments=$(ls "$D/n3" | grep -c '\.seg$')"
      [ "$commit" -ge "$total" ] && break
    done
    restart_probe
    ;;
  *) echo "usage: $0 cost [SNAPSHOT_ENTRIES] | memory [SECS] | steady [ENTRIES]" >&2; exit 2 ;;
esac
