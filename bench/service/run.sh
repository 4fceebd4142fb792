#!/usr/bin/env bash
# The service's cost per message against its floor, in one run.
#
# Three servers, each driven by the same `conduit echo-client` runs:
#   direct  Conduit's echo-server, the clients connecting to it themselves;
#   floor   bench/service/floor_server: a gRPC server answering each write
#           at once, with no transport behind it (the least gRPC can cost);
#   handoff floor_server --handoff: the floor with each message handed to a
#           session thread and back, as the service hands it between gRPC's
#           threads and its loop (what the hand-off alone costs);
#   service `conduit serve`, the clients going --via it to the echo-server.
# Two loads: BENCH_SESSIONS clients at once ping-ponging BENCH_ROUNDS
# messages of 1 KiB, and one client moving BENCH_BULK_ROUNDS messages of
# 100 KiB. Repetitions (BENCH_REPS) are interleaved (direct, floor,
# service, then again) and the medians reported, since this shared 2-core
# machine's speed drifts within a run. The figure of merit: the service's
# CPU per message over floor's + direct's, target at most 1.2.
# Environment: BENCH_BUILD [build/bench] (a -DCONDUIT_BUILD_BENCH=ON tree).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${BENCH_BUILD:-$ROOT/build/bench}
BIN=$BUILD/src/cli/conduit
FLOOR_BIN=$BUILD/bench/floor_server
SESSIONS=${BENCH_SESSIONS:-10}
ROUNDS=${BENCH_ROUNDS:-3000}
BULK=${BENCH_BULK_ROUNDS:-1000}
REPS=${BENCH_REPS:-3}
for b in "$BIN" "$FLOOR_BIN"; do [ -x "$b" ] || { echo "missing $b: build with -DCONDUIT_BUILD_BENCH=ON" >&2; exit 2; }; done
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
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

"$BIN" echo-server --listen tcp://127.0.0.1:0 --quiet > "$TMP/echo" & PIDS+=($!); ECHO_PID=$!
"$BIN" serve --listen 127.0.0.1:0 --quiet > "$TMP/serve" 2>/dev/null & PIDS+=($!); SERVE_PID=$!
"$FLOOR_BIN" > "$TMP/floor" & PIDS+=($!); FLOOR_PID=$!
"$FLOOR_BIN" --handoff > "$TMP/handoff" & PIDS+=($!); HANDOFF_PID=$!
ECHO=$(wait_listening "$TMP/echo")
SERVE=$(wait_listening "$TMP/serve")
FLOOR=$(wait_listening "$TMP/floor")
HANDOFF=$(wait_listening "$TMP/handoff")

# measure NAME LOAD: one run; appends "rate server_us client_us" to $TMP/NAME-LOAD.
measure() {
  local name=$1 load=$2 pid args clients count size start end before after i
  case $name in
    direct) pid=$ECHO_PID; args=(--connect "$ECHO") ;;
    floor) pid=$FLOOR_PID; args=(--via "$FLOOR" --connect "$ECHO") ;;
    handoff) pid=$HANDOFF_PID; args=(--via "$HANDOFF" --connect "$ECHO") ;;
    service) pid=$SERVE_PID; args=(--via "$SERVE" --connect "$ECHO") ;;
  esac
  if [ "$load" = 1k ]; then clients=$SESSIONS count=$ROUNDS size=1024; else clients=1 count=$BULK size=102400; fi
  before=$(cpu_ticks "$pid")
  start=$(date +%s.%N)
  local waits=()
  for ((i = 0; i < clients; i++)); do
    /usr/bin/time -f "%U %S" -o "$TMP/client-$i" timeout 300 "$BIN" echo-client "${args[@]}" --size "$size" --count "$count" --quiet &
    waits+=($!)
  done
  for w in "${waits[@]}"; do wait "$w"; done
  end=$(date +%s.%N)
  after=$(cpu_ticks "$pid")
  local total=$((clients * count)) client_s
  client_s=$(cat "$TMP"/client-* | awk '{ s += $1 + $2 } END { print s }')
  rm -f "$TMP"/client-*
  awk -v n=$total -v a="$start" -v b="$end" -v t=$((after - before)) -v hz="$CLK_TCK" -v c="$client_s" \
    'BEGIN { printf "%.0f %.2f %.2f\n", n / (b - a), t / hz * 1e6 / n, c * 1e6 / n }' >> "$TMP/$name-$load"
}

for ((rep = 0; rep < REPS; rep++)); do
  for load in 1k 100k; do
    for name in direct floor handoff service; do measure "$name" "$load"; done
  done
done

col() { awk -v c="$2" '{ print $c }' "$TMP/$1" | median; }
echo "## Service benchmark"
echo
echo "Medians of $REPS interleaved runs on this 2-core machine ($(uname -sr)). 1 KiB: $SESSIONS sessions at"
echo "once, $ROUNDS ping-pong rounds each; 100 KiB: one session, $BULK rounds. CPU per message: the"
echo "server's (echo-server, floor_server, floor_server --handoff or conduit serve), and all the clients' together."
echo
echo "| load | path | messages/s | MiB/s | server CPU µs/msg | client CPU µs/msg |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for load in 1k 100k; do
  size=$([ "$load" = 1k ] && echo 1024 || echo 102400)
  for name in direct floor handoff service; do
    rate=$(col "$name-$load" 1)
    mibs=$(awk -v r="$rate" -v s="$size" 'BEGIN { printf "%.1f", 2 * r * s / 1048576 }')
    echo "| $load | $name | $rate | $mibs | $(col "$name-$load" 2) | $(col "$name-$load" 3) |"
  done
done
echo
for load in 1k 100k; do
  awk -v s="$(col "service-$load" 2)" -v f="$(col "floor-$load" 2)" -v d="$(col "direct-$load" 2)" -v l="$load" \
    'BEGIN { printf "%s: the service costs %.2fx floor + direct (%.2f / (%.2f + %.2f) µs per message)\n", l, s / (f + d), s, f, d }'
  awk -v h="$(col "handoff-$load" 2)" -v f="$(col "floor-$load" 2)" -v s="$(col "service-$load" 2)" -v d="$(col "direct-$load" 2)" -v l="$load" \
    'BEGIN { printf "%s: the hand-off alone costs %.2f µs per message (handoff %.2f - floor %.2f), %.0f%% of what the service costs over floor + direct\n", l, h - f, h, f, 100 * (h - f) / (s - f - d) }'
done
