#!/usr/bin/env bash
# The service's overhead, measured in one run: BENCH_SESSIONS echo clients at
# once, each ping-ponging BENCH_ROUNDS messages of 1 KiB, directly against
# Conduit's echo-server and through `conduit serve` (--via); then one client
# moving 100 KiB messages through the service. Reports messages/s, the
# service's CPU per message, and bulk throughput. Markdown on stdout.
# Environment: CONDUIT_BIN [build/bench/src/cli/conduit], BENCH_SESSIONS [10],
#   BENCH_ROUNDS [5000], BENCH_BULK_ROUNDS [2000].
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${CONDUIT_BIN:-$ROOT/build/bench/src/cli/conduit}
SESSIONS=${BENCH_SESSIONS:-10}
ROUNDS=${BENCH_ROUNDS:-5000}
BULK=${BENCH_BULK_ROUNDS:-2000}
TMP=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"' EXIT
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() {
  local stat fields
  stat=$(<"/proc/$1/stat")
  read -ra fields <<<"${stat##*) }"
  echo $((fields[11] + fields[12]))
}
wait_listening() {
  for _ in $(seq 1 200); do
    if line=$(grep -m1 '^listening ' "$1"); then echo "${line#listening }"; return; fi
    sleep 0.05
  done
  echo "not listening: $1" >&2; exit 1
}

"$BIN" echo-server --listen tcp://127.0.0.1:0 --quiet > "$TMP/echo" & PIDS+=($!); ECHO_PID=$!
"$BIN" serve --listen 127.0.0.1:0 --quiet > "$TMP/serve" 2>/dev/null & PIDS+=($!); SERVE_PID=$!
ECHO=$(wait_listening "$TMP/echo")
SERVE=$(wait_listening "$TMP/serve")

# run_clients LABEL PID ARGS...: SESSIONS clients at once; sets RATE and CPU_US
# (CPU of PID per message).
run_clients() {
  local pid=$1 before after start end i
  shift
  before=$(cpu_ticks "$pid")
  start=$(date +%s.%N)
  local clients=()
  for ((i = 0; i < SESSIONS; i++)); do
    timeout 300 "$BIN" echo-client "$@" --size 1024 --count "$ROUNDS" --quiet & clients+=($!)
  done
  for c in "${clients[@]}"; do wait "$c"; done
  end=$(date +%s.%N)
  after=$(cpu_ticks "$pid")
  local total=$((SESSIONS * ROUNDS))
  RATE=$(awk -v n=$total -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", n / (b - a) }')
  CPU_US=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n=$total 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
}

run_clients "$ECHO_PID" --connect "$ECHO"
DIRECT_RATE=$RATE DIRECT_CPU=$CPU_US
run_clients "$SERVE_PID" --via "$SERVE" --connect "$ECHO"
VIA_RATE=$RATE VIA_CPU=$CPU_US

start=$(date +%s.%N)
timeout 300 "$BIN" echo-client --via "$SERVE" --connect "$ECHO" --size 102400 --count "$BULK" --quiet
end=$(date +%s.%N)
BULK_MIBS=$(awk -v n="$BULK" -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", 2 * n * 102400 / (b - a) / 1048576 }')

echo "## Service benchmark"
echo
echo "$SESSIONS sessions at once, $ROUNDS ping-pong rounds of 1 KiB each, everything on this 2-core machine; $(uname -sr)."
echo
echo "| path | messages/s | CPU µs/message |"
echo "| --- | ---: | ---: |"
echo "| direct TCP (echo-server's CPU) | $DIRECT_RATE | $DIRECT_CPU |"
echo "| through conduit serve (service's CPU) | $VIA_RATE | $VIA_CPU |"
echo
echo "Bulk: one session, $BULK rounds of 100 KiB each way through the service: $BULK_MIBS MiB/s (both directions counted)."
