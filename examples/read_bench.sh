#!/usr/bin/env bash
# Issue 14's comparison in one run: loadcmp.py --reads against r-nacos, then dister in the
# default read mode, then with read_mode = "lease" (DISTER_READ_MODE). Needs wrk and rnacos
# (../shared/bench/README.md says how) and a release build: cargo build --release.
# Usage: examples/read_bench.sh [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-12}"
bench=../shared/bench/loadcmp.py
python3 "$bench" rnacos "$(command -v rnacos)" --reads --secs "$secs"
python3 "$bench" dister target/release/dister --reads --secs "$secs"
DISTER_READ_MODE=lease python3 "$bench" dister target/release/dister --reads --secs "$secs"
