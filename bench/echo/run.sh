#!/usr/bin/env bash
# Echo benchmark: server CPU per request and idle memory of Conduit's echo
# server against a minimal epoll server in C and a plain Boost.Asio server.
#
#   bench/echo/run.sh > results.md        # Markdown on stdout, progress on stderr
#
# For each server and message size, load_client runs ping-pong over
# BENCH_CONNECTIONS connections for BENCH_SECONDS. The server's CPU time
# (utime + stime from /proc/PID/stat: all its threads, not child processes)
# used meanwhile, divided by the requests completed, gives CPU µs per request.
# The servers take turns, BENCH_REPEATS rounds of every server in a row (this
# machine's speed drifts more between minutes than between servers in one
# round); the report gives each figure's median over the rounds, and each
# ratio as the median of the rounds' own ratios.
# The server runs on CPU BENCH_SERVER_CPU, the client on BENCH_CLIENT_CPU.
# Then a fresh instance of each server gets BENCH_IDLE idle connections and
# its VmRSS is read.
#
# Environment (defaults in brackets):
#   BENCH_SECONDS [5]  BENCH_SIZES ["1024 102400"]  BENCH_CONNECTIONS [10]
#   BENCH_REPEATS [3]: rounds, each running every server once
#   BENCH_IDLE [10000]  BENCH_SERVER_CPU [0]  BENCH_CLIENT_CPU [1]
#   BENCH_BUILD [bench/echo/.build]: where the C/C++ programs are built, or
#     found prebuilt (e.g. BENCH_BUILD=build/bench after a CMake build with
#     -DCONDUIT_BUILD_BENCH=ON); a program is rebuilt only if missing or older
#     than its source.
#   CONDUIT_BIN [build/src/cli/conduit]: the Conduit CLI.
#   BENCH_SERVERS: replaces the server list below (same format, one a line).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${BENCH_BUILD:-$HERE/.build}
DURATION=${BENCH_SECONDS:-5}
SIZES=${BENCH_SIZES:-1024 102400}
CONNECTIONS=${BENCH_CONNECTIONS:-10}
REPEATS=${BENCH_REPEATS:-3}
IDLE=${BENCH_IDLE:-10000}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
CONDUIT_BIN=${CONDUIT_BIN:-$ROOT/build/src/cli/conduit}

# The servers, one "name|command" a line. A command is eval'd when started
# (so it may use $BUILD and $CONDUIT_BIN, quoted). It either contains the
# token PORT, replaced by a free port (ready once the port accepts
# connections), or listens on port 0 and prints "listening PORT" or
# "listening tcp://HOST:PORT" on stdout (ready once it has). Ratios are
# relative to the server named $BASELINE.
BASELINE="epoll (C)"
# shellcheck disable=SC2016 # expanded by eval when each server starts
SERVERS=${BENCH_SERVERS:-'epoll (C)|"$BUILD/epoll_echo" 0
asio (plain)|"$BUILD/asio_echo" 0
conduit|"$CONDUIT_BIN" echo-server --listen tcp://127.0.0.1:0 --quiet
conduit --buffered|"$CONDUIT_BIN" echo-server --listen tcp://127.0.0.1:0 --quiet --buffered'}

CLK_TCK=$(getconf CLK_TCK)
TMP=$(mktemp -d)
SERVER_PID=
CLIENT_PID=
NOTES=()
# shellcheck source=../lib.sh
. "$HERE/../lib.sh"

log() { echo "$*" >&2; }

cleanup() {
  if [[ -n $CLIENT_PID ]]; then stop_process "$CLIENT_PID"; fi
  if [[ -n $SERVER_PID ]]; then stop_process "$SERVER_PID"; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# build NAME SOURCE COMPILER [FLAGS...]: compile bench/echo/SOURCE to $BUILD/NAME.
build() {
  local out=$BUILD/$1 src=$HERE/$2
  shift 2
  if [[ -x $out && ! $src -nt $out ]]; then return; fi
  log "building $out"
  "$@" -o "$out" "$src"
}

# start_server COMMAND: start it on $SERVER_CPU and wait (at most 10 s) until
# it listens. Sets SERVER_PID and SERVER_PORT.
start_server() {
  local cmd=$1 port=0 line i
  if [[ $cmd == *PORT* ]]; then
    port=$(free_port)
    cmd=${cmd//PORT/$port}
  fi
  # exec: the PID we get is the server's own (taskset execs it too).
  (eval "exec taskset -c $SERVER_CPU $cmd") >"$TMP/server.out" 2>"$TMP/server.err" &
  SERVER_PID=$!
  for ((i = 0; i < 200; i++)); do
    if ! alive "$SERVER_PID"; then
      log "server exited early: $cmd"
      cat "$TMP/server.err" >&2
      return 1
    fi
    if ((port == 0)); then
      if line=$(grep -m1 '^listening ' "$TMP/server.out"); then
        SERVER_PORT=${line##*[: ]} # after the last ':' or ' '
        return 0
      fi
    elif (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      SERVER_PORT=$port
      return 0
    fi
    sleep 0.05
  done
  log "server not listening after 10 s: $cmd"
  return 1
}

stop_server() {
  stop_process "$SERVER_PID"
  SERVER_PID=
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }

# bench_load NAME SIZE ROUND: one load run against the started server; stores
# REQ_PER_S[NAME|SIZE|ROUND] and CPU_US[NAME|SIZE|ROUND].
declare -A REQ_PER_S CPU_US
bench_load() {
  local name=$1 size=$2 round=$3 before after out
  before=$(cpu_ticks "$SERVER_PID")
  out=$(timeout $((${DURATION%.*} + 60)) taskset -c "$CLIENT_CPU" "$BUILD/load_client" \
    --host 127.0.0.1 --port "$SERVER_PORT" --connections "$CONNECTIONS" --size "$size" \
    --duration "$DURATION") || true
  after=$(cpu_ticks "$SERVER_PID")
  if ! [[ $out =~ requests=([0-9]+)\ seconds=([0-9.]+)\ errors=([0-9]+) ]]; then
    NOTES+=("$name, size $size: no result from load_client")
    return
  fi
  local requests=${BASH_REMATCH[1]} seconds=${BASH_REMATCH[2]} errors=${BASH_REMATCH[3]}
  if ((errors > 0)); then NOTES+=("$name, size $size: load_client reported $errors errors"); fi
  if ((requests == 0)); then
    NOTES+=("$name, size $size: no request completed")
    return
  fi
  REQ_PER_S[$name|$size|$round]=$(awk -v r="$requests" -v s="$seconds" 'BEGIN { printf "%.0f", r / s }')
  CPU_US[$name|$size|$round]=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v r="$requests" \
    'BEGIN { printf "%.2f", t / hz * 1e6 / r }')
  log "  size $size: $requests requests in $seconds s, server CPU $((after - before)) ticks" \
    "(${CPU_US[$name|$size|$round]} µs/req)"
}

# bench_idle NAME: holds $IDLE idle connections to the started server and
# stores RSS_BEFORE[NAME], RSS_IDLE[NAME] (KiB) and CONNECTED[NAME].
declare -A RSS_BEFORE RSS_IDLE CONNECTED
bench_idle() {
  local name=$1 hold fds_before line i connected=0
  RSS_BEFORE[$name]=$(rss_kib "$SERVER_PID")
  fds_before=$(fd_count "$SERVER_PID")
  # load_client holds the connections until its stdin closes: a FIFO we keep
  # open for writing (and close in the client, or it would never see EOF).
  mkfifo "$TMP/idle.stdin"
  exec {hold}<>"$TMP/idle.stdin"
  taskset -c "$CLIENT_CPU" "$BUILD/load_client" --host 127.0.0.1 --port "$SERVER_PORT" \
    --idle "$IDLE" --hold 120 <"$TMP/idle.stdin" >"$TMP/idle.out" 2>"$TMP/idle.err" {hold}>&- &
  CLIENT_PID=$!
  # Connecting takes at most 30 s (load_client's own bound).
  for ((i = 0; i < 700; i++)); do
    if line=$(grep -m1 '^idle_connected=' "$TMP/idle.out"); then
      connected=${line#*=}
      break
    fi
    alive "$CLIENT_PID" || break
    sleep 0.05
  done
  # The client is connected once the kernel completes the handshake; wait
  # (at most 10 s) for the server to have accepted every connection too.
  for ((i = 0; i < 200; i++)); do
    alive "$SERVER_PID" || break
    (($(fd_count "$SERVER_PID") - fds_before >= connected)) && break
    sleep 0.05
  done
  sleep 0.5 # and for it to finish setting up the last ones
  if alive "$SERVER_PID"; then
    RSS_IDLE[$name]=$(rss_kib "$SERVER_PID")
    CONNECTED[$name]=$connected
  else
    NOTES+=("$name: server died during the idle test")
  fi
  if ((connected != IDLE)); then
    NOTES+=("$name: only $connected of $IDLE idle connections: $(head -c 300 "$TMP/idle.err")")
  fi
  exec {hold}>&-
  stop_process "$CLIENT_PID"
  CLIENT_PID=
  rm -f "$TMP/idle.stdin"
}

# --- setup

# 10,000 idle connections need that many descriptors in the server and in the
# client. Raising the hard limit needs privileges; the soft limit can go up to it.
if ! ulimit -n 65536 2>/dev/null; then
  ulimit -n "$(ulimit -Hn)"
  log "note: cannot raise ulimit -n to 65536; using the hard limit, $(ulimit -n)"
fi

mkdir -p "$BUILD"
build load_client load_client.c cc -O2 -Wall -Wextra
build epoll_echo epoll_echo.c cc -O2 -Wall -Wextra
build asio_echo asio_echo.cpp c++ -std=c++20 -O2 -Wall -Wextra -pthread

# --- runs

NAMES=()
declare -A COMMAND
mapfile -t ENTRIES <<<"$SERVERS"
for entry in "${ENTRIES[@]}"; do
  [[ -n $entry ]] || continue
  name=${entry%%|*}
  cmd=${entry#*|}
  eval "set -- $cmd"
  if ! command -v "$1" >/dev/null; then
    NOTES+=("$name: skipped, $1 not found (build it first)")
    log "skipping $name: $1 not found"
    continue
  fi
  NAMES+=("$name")
  COMMAND[$name]=$cmd
done

for ((round = 1; round <= REPEATS; round++)); do
  for name in "${NAMES[@]}"; do
    log "round $round/$REPEATS, $name: load, ${DURATION} s per size"
    if ! start_server "${COMMAND[$name]}"; then
      NOTES+=("$name: did not start in round $round (see stderr)")
      stop_server
      continue
    fi
    for size in $SIZES; do bench_load "$name" "$size" "$round"; done
    alive "$SERVER_PID" || NOTES+=("$name: server died during the load runs of round $round")
    stop_server
  done
done

for name in "${NAMES[@]}"; do
  log "$name: $IDLE idle connections"
  if start_server "${COMMAND[$name]}"; then # fresh, so the load runs' buffers do not count
    bench_idle "$name"
  fi
  stop_server
done

# --- report

echo "## Echo benchmark"
echo
echo "$CONNECTIONS connections ping-ponging for $DURATION s per row; server on CPU $SERVER_CPU," \
  "client on CPU $CLIENT_CPU; $(uname -sr), $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)."
echo "Medians of $REPEATS interleaved rounds; ratio: server CPU per request relative to $BASELINE at" \
  "the same size in the same round, the median of the rounds' ratios (each round's ratio in brackets)."
echo
echo "| server | size | req/s | server CPU µs/req | ratio vs epoll |"
echo "| --- | ---: | ---: | ---: | ---: |"
for name in "${NAMES[@]}"; do
  for size in $SIZES; do
    cpus=() rates=() ratios=()
    for ((round = 1; round <= REPEATS; round++)); do
      key="$name|$size|$round"
      [[ -n ${CPU_US[$key]-} ]] || continue
      cpus+=("${CPU_US[$key]}")
      rates+=("${REQ_PER_S[$key]}")
      if [[ -n ${CPU_US[$BASELINE|$size|$round]-} ]]; then
        ratios+=("$(awk -v a="${CPU_US[$key]}" -v b="${CPU_US[$BASELINE|$size|$round]}" 'BEGIN { printf "%.3f", a / b }')")
      fi
    done
    cpu=n/a rate=n/a ratio=n/a
    ((${#cpus[@]} > 0)) && cpu=$(median "${cpus[@]}") && rate=$(median "${rates[@]}")
    ((${#ratios[@]} > 0)) && ratio="$(median "${ratios[@]}") (${ratios[*]})"
    echo "| $name | $size | ${rate%.*} | $cpu | $ratio |"
  done
done
echo
echo "| server | idle connections | RSS before (MiB) | RSS with them (MiB) | KiB per connection |"
echo "| --- | ---: | ---: | ---: | ---: |"
for name in "${NAMES[@]}"; do
  if [[ -z ${RSS_IDLE[$name]-} ]]; then
    echo "| $name | n/a | n/a | n/a | n/a |"
    continue
  fi
  awk -v n="$name" -v c="${CONNECTED[$name]}" -v b="${RSS_BEFORE[$name]}" -v a="${RSS_IDLE[$name]}" \
    'BEGIN { printf "| %s | %d | %.1f | %.1f | %s |\n", n, c, b / 1024, a / 1024,
             (c > 0 ? sprintf("%.2f", (a - b) / c) : "n/a") }'
done
if ((${#NOTES[@]} > 0)); then
  echo
  for note in "${NOTES[@]}"; do echo "- $note"; done
fi
