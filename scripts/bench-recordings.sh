#!/usr/bin/env bash
# Recording replication benchmark on a shaped link (root needed).
#
# Runs `tandem bench --recordings` inside a network namespace whose loopback is
# limited to RATE_MBIT (default 400 Mbit/s) by tc tbf, so "uncapped" is compared
# with a real link speed (the benchmark measures the link with a plain TCP copy in
# the same namespace). The namespace is removed on exit, also on failure or Ctrl-C.
#
#   sudo scripts/bench-recordings.sh [--cap-kbps 80000] [--recording-mb 100] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE_MBIT="${RATE_MBIT:-400}"
NS="tdm-benchrec-$$"
cleanup() { ip netns del "$NS" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
cargo build --release -q -p tandem
ip netns add "$NS"
ip -n "$NS" link set lo up
tc -n "$NS" qdisc add dev lo root tbf rate "${RATE_MBIT}mbit" burst 512kb latency 20ms
echo "bench-recordings: loopback of namespace $NS shaped to ${RATE_MBIT} Mbit/s" >&2
ip netns exec "$NS" ./target/release/tandem bench --recordings "$@"
