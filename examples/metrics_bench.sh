#!/usr/bin/env bash
# What recording metrics costs the write path, on a throwaway local 3-node cluster:
#   examples/metrics_bench.sh [SECS] [ROUNDS]
# runs ROUNDS (default 3) pairs of SECS-second (default 20) write benches (240 clients,
# fsync before ack, 100,000 keys), one with every node's /metrics scraped every second and
# one without, alternating, and prints each run's throughput and latency.
set -euo pipefail
secs=${1:-20}
rounds=${2:-3}
# shellcheck source=examples/bench_cluster.sh
source "$(dirname "$0")/bench_cluster.sh"
for i in 1 2 3; do start "$i"; done
sleep 2
scraper() {
  while :; do
    for h in "${H[@]}"; do curl -s -o /dev/null "http://127.0.0.1:$h/metrics" || true; done
    sleep 1
  done
}
for r in $(seq "$rounds"); do
  echo "round $r: without scraping"
  $B bench --nodes "$nodes" --clients 240 --secs "$secs" --keys 100000
  scraper & spid=$!
  echo "round $r: scraping every node every second"
  $B bench --nodes "$nodes" --clients 240 --secs "$secs" --keys 100000
  kill "$spid"; wait "$spid" 2>/dev/null || true
done
curl -s "http://127.0.0.1:${H[0]}/metrics" | grep -E '^dister_(server_is_leader|disk_wal_fsync_duration_seconds_(count|sum)) '
