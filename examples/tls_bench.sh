#!/usr/bin/env bash
# What TLS costs, on a throwaway local 3-node cluster (fsync before ack, a cluster token):
#   examples/tls_bench.sh [SECS] [ROUNDS]
# runs ROUNDS (default 3) rounds, each starting the cluster afresh in plain text and then with
# TLS on both ports, and benching each for SECS seconds (default 20): wire writes (240
# clients, 100,000 keys) and Nacos config publishes over HTTP (240 clients). Prints every run.
set -euo pipefail
secs=${1:-20}
rounds=${2:-3}
# shellcheck source=examples/bench_cluster.sh
source "$(dirname "$0")/bench_cluster.sh"
cargo run --release --quiet --example tls_certs -- "$D/certs" 3 2>/dev/null
token=bench-token-0123456789
tls=0
start_args() {
  printf '%s ' --token "$token"
  # `i` is the node `start` starts.
  # shellcheck disable=SC2154
  if [ "$tls" = 1 ]; then
    printf '%s ' --tls-cert "$D/certs/node$i.pem" --tls-key "$D/certs/node$i.key" --tls-ca "$D/certs/ca.pem"
  fi
}
fresh_cluster() {
  for i in 1 2 3; do [ -n "${pids[$i]:-}" ] && kill "${pids[$i]}" 2>/dev/null && wait "${pids[$i]}" 2>/dev/null; done
  rm -rf "$D"/n*
  for i in 1 2 3; do start "$i"; done
  sleep 2
}
http=127.0.0.1:${H[0]},127.0.0.1:${H[1]},127.0.0.1:${H[2]}
for r in $(seq "$rounds"); do
  for tls in 0 1; do
    fresh_cluster
    ca=()
    [ "$tls" = 1 ] && ca=(--tls-ca "$D/certs/ca.pem")
    echo "round $r: tls=$tls"
    $B --token "$token" "${ca[@]}" bench --nodes "$nodes" --clients 240 --secs "$secs" --keys 100000
    $B --token "$token" "${ca[@]}" bench --workload nacos-publish --nodes "$http" --clients 240 --secs "$secs"
  done
done
