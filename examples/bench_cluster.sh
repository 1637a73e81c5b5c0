# Sourced by the bench scripts: a throwaway local 3-node cluster of the release binary, wire
# on 127.0.0.1:17171-17173, HTTP on 127.0.0.1:18171-18173, data in a temp directory removed at
# exit. `start I` starts node I (adding what a `start_args` function prints, if the script
# defines one); `pids[I]` is its process; `$nodes` lists the wire addresses for `dister bench`.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --quiet --bin dister
B=target/release/dister
D=$(mktemp -d)
P=(17171 17172 17173)
H=(18171 18172 18173)
pids=()
start() {
  local i=$1 peers=() extra=()
  for j in 1 2 3; do [ "$j" != "$i" ] && peers+=(--peer "$j=127.0.0.1:${P[$((j-1))]}"); done
  if declare -F start_args >/dev/null; then read -ra extra <<<"$(start_args)"; fi
  $B server --id "$i" --data-dir "$D/n$i" --listen "127.0.0.1:${P[$((i-1))]}" --http "127.0.0.1:${H[$((i-1))]}" \
    "${peers[@]}" ${extra[@]+"${extra[@]}"} 2>>"$D/n$i.log" &
  pids[$i]=$!
}
# Every background job goes: the nodes and whatever the script started beside them.
stop() {
  # shellcheck disable=SC2046
  kill "${pids[@]}" $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$D"
}
trap stop EXIT
trap 'exit 130' INT TERM
nodes=127.0.0.1:17171,127.0.0.1:17172,127.0.0.1:17173
