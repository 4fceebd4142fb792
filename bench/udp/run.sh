#!/usr/bin/env bash
# UDP echo benchmark: datagrams/s and server CPU per datagram for Conduit's
# udp-echo server, a Python asyncio server and a uvloop one, measured in one
# run (server on CPU 0, load client on CPU 1). Markdown on stdout.
# Environment: CONDUIT_BIN [build/bench/src/cli/conduit], BENCH_SECONDS [3],
#   BENCH_SIZES ["64 1024"], BENCH_WINDOW [32].
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CONDUIT_BIN=${CONDUIT_BIN:-$ROOT/build/bench/src/cli/conduit}
DURATION=${BENCH_SECONDS:-3}
SIZES=${BENCH_SIZES:-64 1024}
WINDOW=${BENCH_WINDOW:-32}
PY=/usr/bin/python3
TMP=$(mktemp -d)
SERVER_PID=
trap '[[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$TMP"' EXIT
cc -O2 -Wall -Wextra -o "$TMP/udp_load" "$HERE/udp_load.c"
CLK_TCK=$(getconf CLK_TCK)

cpu_ticks() {
  local stat fields
  stat=$(<"/proc/$1/stat")
  read -ra fields <<<"${stat##*) }"
  echo $((fields[11] + fields[12]))
}

declare -A RATE CPU_US
NAMES=(conduit asyncio uvloop)
for name in "${NAMES[@]}"; do
  case $name in
    conduit) cmd=("$CONDUIT_BIN" udp-echo server --listen udp://127.0.0.1:0 --quiet) ;;
    *) cmd=($PY "$HERE/udp_echo_asyncio.py" "$name") ;;
  esac
  taskset -c 0 "${cmd[@]}" > "$TMP/out" 2> "$TMP/err" &
  SERVER_PID=$!
  port=
  for _ in $(seq 1 200); do
    port=$(sed -n 's/^listening \(udp:\/\/127\.0\.0\.1:\)\{0,1\}\([0-9]*\)$/\2/p' "$TMP/out")
    [[ -n $port ]] && break
    sleep 0.05
  done
  [[ -n $port ]] || { echo "$name did not start" >&2; cat "$TMP/err" >&2; exit 1; }
  for size in $SIZES; do
    before=$(cpu_ticks "$SERVER_PID")
    out=$(timeout $((DURATION + 30)) taskset -c 1 "$TMP/udp_load" "$port" "$size" "$WINDOW" "$DURATION")
    after=$(cpu_ticks "$SERVER_PID")
    echoes=${out#echoes=}; echoes=${echoes%% *}
    secs=${out##*seconds=}
    RATE[$name|$size]=$(awk -v e="$echoes" -v s="$secs" 'BEGIN { printf "%.0f", e / s }')
    CPU_US[$name|$size]=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v e="$echoes" 'BEGIN { printf "%.2f", t / hz * 1e6 / e }')
    echo "$name $size: $out" >&2
  done
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
done

echo "## UDP echo benchmark"
echo
echo "$WINDOW datagrams in flight for $DURATION s per row; server on CPU 0, client on CPU 1; $(uname -sr)."
echo
echo "| server | size | datagrams/s | server CPU µs/datagram | CPU ratio vs uvloop |"
echo "| --- | ---: | ---: | ---: | ---: |"
for name in "${NAMES[@]}"; do
  for size in $SIZES; do
    ratio=$(awk -v a="${CPU_US[$name|$size]}" -v b="${CPU_US[uvloop|$size]}" 'BEGIN { printf "%.2f", a / b }')
    echo "| $name | $size | ${RATE[$name|$size]} | ${CPU_US[$name|$size]} | $ratio |"
  done
done
