#!/usr/bin/env bash
# Proxy benchmark: Conduit's no-fault proxy (`conduit proxy`, and a proxy
# made through `conduit serve --toxiproxy-api`) against toxiproxy 2.5.0's
# server, haproxy (mode tcp, one thread) and socat (a process per
# connection) as relays in front of the same echo server, in one run; then
# how exactly a latency fault delays, asked of `conduit proxy` and, as a
# latency toxic, of Conduit's and toxiproxy's APIs.
#
#   bench/proxy/run.sh > results.md        # Markdown on stdout, progress on stderr
#
# Each relay in turn, BENCH_REPEATS interleaved rounds, medians:
#   ping-pong: load_client, BENCH_CONNECTIONS connections of 1 KiB requests;
#   bulk: 4 connections of 256 KiB requests.
# The relay runs on CPU BENCH_PROXY_CPU; client and upstream (bench/echo's
# epoll_echo) on BENCH_CLIENT_CPU. The relay's CPU (utime + stime of it, its
# threads and its reaped children: socat forks one per connection) divided
# by the bytes it moved (each request's bytes both ways) gives CPU per byte.
# The API relays get their proxy by POST /proxies (toxiproxy: LOG_LEVEL=warn,
# so that its per-connection log lines are not what is measured).
# Latency: delay_probe's one-way delays (2000 x 1 KiB through one
# connection; it is both client and upstream, polling, so that a sleeping
# measurer's late wake-ups are not counted) through each latency relay
# without a fault and with BENCH_LATENCY_MS (`conduit proxy --latency`, or a
# latency toxic on the upstream stream through the API); what the fault
# added beyond the asked value and the relay's own no-fault median, at the
# median and the 99th percentile, in BENCH_REPEATS interleaved rounds.
# Beside them the floor: timer_probe's lateness of this host's timer
# wake-ups (a timerfd in epoll, as the proxy's loop waits) for the same
# delay on the relay's CPU.
#
# Needs haproxy, socat and curl (Debian packages), cc, and go (toxiproxy's
# server is built from the Go module proxy into BENCH_BUILD/go-bin once).
# Environment (defaults in brackets): BENCH_SECONDS [5] BENCH_REPEATS [3]
#   BENCH_CONNECTIONS [10] BENCH_LATENCY_MS [10] BENCH_PROXY_CPU [0]
#   BENCH_CLIENT_CPU [1] BENCH_BUILD [bench/echo/.build]
#   CONDUIT_BIN [build/src/cli/conduit] TOXIPROXY_SERVER [built as above]
#   BENCH_RELAYS [conduit conduit-api toxiproxy haproxy socat: keep haproxy,
#   the ratios' base] BENCH_LATENCY_RELAYS [conduit conduit-api toxiproxy;
#   empty: no latency runs]
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${BENCH_BUILD:-$ROOT/bench/echo/.build}
DURATION=${BENCH_SECONDS:-5}
REPEATS=${BENCH_REPEATS:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-10}
LATENCY_MS=${BENCH_LATENCY_MS:-10}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
CONDUIT_BIN=${CONDUIT_BIN:-$ROOT/build/src/cli/conduit}
CLK_TCK=$(getconf CLK_TCK)
TMP=$(mktemp -d)
UPSTREAM_PID=
RELAY_PID=
# shellcheck source=../lib.sh
. "$HERE/../lib.sh"

log() { echo "$*" >&2; }
cleanup() {
  [[ -n $RELAY_PID ]] && stop_process "$RELAY_PID"
  [[ -n $UPSTREAM_PID ]] && stop_process "$UPSTREAM_PID"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

for tool in haproxy socat curl cc; do
  command -v "$tool" > /dev/null || { log "bench/proxy: needs $tool (apt-get install $tool)"; exit 2; }
done
[[ -x $CONDUIT_BIN ]] || { log "bench/proxy: no conduit at $CONDUIT_BIN (build it, or set CONDUIT_BIN)"; exit 2; }
mkdir -p "$BUILD"
TOXIPROXY_SERVER=${TOXIPROXY_SERVER:-$BUILD/go-bin/server}
if [[ ! -x $TOXIPROXY_SERVER ]]; then
  command -v go > /dev/null || { log "bench/proxy: needs go to build toxiproxy's server (or set TOXIPROXY_SERVER)"; exit 2; }
  log "building toxiproxy 2.5.0's server from the Go module proxy"
  GOBIN=$(dirname "$TOXIPROXY_SERVER") GOFLAGS=-mod=mod go install github.com/Shopify/toxiproxy/v2/cmd/server@v2.5.0
fi
for program in load_client epoll_echo; do
  if [[ ! -x $BUILD/$program || $ROOT/bench/echo/$program.c -nt $BUILD/$program ]]; then
    cc -O2 -Wall -Wextra -o "$BUILD/$program" "$ROOT/bench/echo/$program.c"
  fi
done
cc -O2 -Wall -Wextra -o "$TMP/delay_probe" "$HERE/delay_probe.c"
cc -O2 -Wall -Wextra -o "$TMP/timer_probe" "$HERE/timer_probe.c"

# All the CPU a relay used: its own and its threads' (utime, stime) and its
# reaped children's (cutime, cstime).
all_ticks() {
  local stat fields
  stat=$(<"/proc/$1/stat")
  read -ra fields <<<"${stat##*) }"
  echo $((fields[11] + fields[12] + fields[13] + fields[14]))
}

# wait_port PORT: until something accepts on 127.0.0.1:PORT (10 s at most).
wait_port() {
  local i
  for ((i = 0; i < 200; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# ---- the upstream: bench/echo's epoll server, beside the client ----
taskset -c "$CLIENT_CPU" "$BUILD/epoll_echo" 0 > "$TMP/upstream.out" &
UPSTREAM_PID=$!
for _ in $(seq 1 200); do
  UPSTREAM_PORT=$(sed -n 's/^listening \([0-9]*\)$/\1/p' "$TMP/upstream.out")
  [[ -n $UPSTREAM_PORT ]] && break
  sleep 0.05
done

# api_post API PATH JSON: a toxiproxy API call that must succeed.
api_post() {
  curl -sf -X POST "http://$1$2" -d "$3" > /dev/null || { log "POST $2 to $1 failed"; return 1; }
}

# start_relay NAME PORT [UPSTREAM_PORT]: the relay on PROXY_CPU, listening on
# PORT; an API relay's address is left in API.
start_relay() {
  local name=$1 port=$2 upstream=${3:-$UPSTREAM_PORT} api_port i
  API=
  case $name in
    conduit)
      taskset -c "$PROXY_CPU" "$CONDUIT_BIN" proxy --listen "tcp://127.0.0.1:$port" \
        --upstream "tcp://127.0.0.1:$upstream" --quiet > /dev/null 2> "$TMP/relay.err" & ;;
    conduit-api)
      taskset -c "$PROXY_CPU" "$CONDUIT_BIN" serve --listen 127.0.0.1:0 --toxiproxy-api 127.0.0.1:0 --quiet \
        > "$TMP/relay.out" 2> "$TMP/relay.err" & ;;
    toxiproxy)
      api_port=$(free_port)
      API=127.0.0.1:$api_port
      LOG_LEVEL=warn taskset -c "$PROXY_CPU" "$TOXIPROXY_SERVER" -host 127.0.0.1 -port "$api_port" \
        > "$TMP/relay.out" 2> "$TMP/relay.err" & ;;
    haproxy)
      cat > "$TMP/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen relay
  bind 127.0.0.1:$port
  server upstream 127.0.0.1:$UPSTREAM_PORT
EOF
      taskset -c "$PROXY_CPU" haproxy -db -f "$TMP/haproxy.cfg" > /dev/null 2> "$TMP/relay.err" & ;;
    socat)
      taskset -c "$PROXY_CPU" socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork,nodelay" \
        "TCP:127.0.0.1:$UPSTREAM_PORT,nodelay" 2> "$TMP/relay.err" & ;;
  esac
  RELAY_PID=$!
  if [[ $name == conduit-api ]]; then
    for ((i = 0; i < 200; i++)); do
      API=$(sed -n 's/^toxiproxy-api \(.*\)$/\1/p' "$TMP/relay.out")
      [[ -n $API ]] && break
      sleep 0.05
    done
  fi
  if [[ -n $API ]]; then
    wait_port "${API##*:}" || { log "$name's API did not listen: $(cat "$TMP/relay.err")"; return 1; }
    # Both APIs answer 201 once the proxy listens. (No test connection: in
    # the latency runs the probe's listener must see the probe's only.)
    api_post "$API" /proxies \
      "{\"name\":\"relay\",\"listen\":\"127.0.0.1:$port\",\"upstream\":\"127.0.0.1:$upstream\"}" || return 1
    return 0
  fi
  wait_port "$port" || { log "$name did not listen: $(cat "$TMP/relay.err")"; return 1; }
}

stop_relay() {
  stop_process "$RELAY_PID"
  RELAY_PID=
}

# load NAME WORKLOAD ROUND: one load run through the started relay on PORT.
declare -A MBPS NS_PER_BYTE REQ_PER_S
load() {
  local name=$1 workload=$2 round=$3 port=$4 connections size before after out i
  case $workload in
    ping-pong) connections=$CONNECTIONS size=1024 ;;
    bulk) connections=4 size=262144 ;;
  esac
  before=$(all_ticks "$RELAY_PID")
  out=$(taskset -c "$CLIENT_CPU" "$BUILD/load_client" --host 127.0.0.1 --port "$port" \
    --connections "$connections" --size "$size" --duration "$DURATION") || true
  # socat's children exit with their connections: let them be reaped.
  for ((i = 0; i < 40; i++)); do
    [[ -z $(pgrep -P "$RELAY_PID" || true) ]] && break
    sleep 0.05
  done
  after=$(all_ticks "$RELAY_PID")
  if ! [[ $out =~ requests=([0-9]+)\ seconds=([0-9.]+)\ errors=0 ]]; then
    log "  $name $workload: no clean result ($out)"
    return
  fi
  local requests=${BASH_REMATCH[1]} seconds=${BASH_REMATCH[2]}
  local key="$name|$workload|$round"
  REQ_PER_S[$key]=$(awk -v r="$requests" -v s="$seconds" 'BEGIN { printf "%.0f", r / s }')
  MBPS[$key]=$(awk -v r="$requests" -v z="$size" -v s="$seconds" 'BEGIN { printf "%.1f", r * z * 2 / s / 1e6 }')
  NS_PER_BYTE[$key]=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v r="$requests" -v z="$size" \
    'BEGIN { printf "%.3f", t / hz * 1e9 / (r * z * 2) }')
  log "  $name $workload: ${REQ_PER_S[$key]} req/s, ${MBPS[$key]} MB/s, ${NS_PER_BYTE[$key]} ns CPU per byte"
}

read -ra RELAYS <<<"${BENCH_RELAYS:-conduit conduit-api toxiproxy haproxy socat}"
WORKLOADS=(ping-pong bulk)
for ((round = 1; round <= REPEATS; round++)); do
  for name in "${RELAYS[@]}"; do
    port=$(free_port)
    log "round $round/$REPEATS: $name"
    start_relay "$name" "$port" || continue
    for workload in "${WORKLOADS[@]}"; do load "$name" "$workload" "$round" "$port"; done
    stop_relay
  done
done

# ---- latency accuracy ----
# delays NAME [LATENCY_MS]: the probe listens on one free port as the upstream
# of relay NAME on another, and times 2000 pieces; with LATENCY_MS, the relay
# delays the upstream stream that much (conduit proxy's flag, or a toxic).
delays() {
  local name=$1 latency=${2:-} up relay probe flags=()
  up=$(free_port)
  relay=$(free_port)
  taskset -c "$CLIENT_CPU" "$TMP/delay_probe" "$up" "$relay" 2000 1024 > "$TMP/probe.out" &
  probe=$!
  if [[ $name == conduit ]]; then
    [[ -n $latency ]] && flags=(--latency "${latency}ms" --direction up)
    taskset -c "$PROXY_CPU" "$CONDUIT_BIN" proxy --listen "tcp://127.0.0.1:$relay" --upstream "tcp://127.0.0.1:$up" \
      --quiet "${flags[@]}" > /dev/null 2> "$TMP/relay.err" &
    RELAY_PID=$!
  else
    start_relay "$name" "$relay" "$up" || { stop_process "$probe"; return 1; }
    if [[ -n $latency ]]; then
      api_post "$API" /proxies/relay/toxics \
        "{\"type\":\"latency\",\"stream\":\"upstream\",\"attributes\":{\"latency\":$latency}}" || return 1
    fi
  fi
  wait "$probe" || log "delay_probe failed through $name: $(cat "$TMP/relay.err")"
  stop_relay
  cat "$TMP/probe.out"
}
read -ra LATENCY_RELAYS <<<"${BENCH_LATENCY_RELAYS-conduit conduit-api toxiproxy}"
declare -A DELAY
((${#LATENCY_RELAYS[@]} > 0)) || REPEATS_LATENCY=0
for ((round = 1; round <= ${REPEATS_LATENCY-$REPEATS}; round++)); do
  for name in "${LATENCY_RELAYS[@]}"; do
    log "latency round $round/$REPEATS: $name, no fault and ${LATENCY_MS} ms"
    DELAY[$name|base|$round]=$(delays "$name")
    DELAY[$name|fault|$round]=$(delays "$name" "$LATENCY_MS")
  done
  DELAY[timer|$round]=$(taskset -c "$PROXY_CPU" "$TMP/timer_probe" 2000 "$((LATENCY_MS * 1000))")
done
field() { sed -n "s/.*$1=\([0-9]*\).*/\1/p" <<<"$2"; }

# ---- report ----
echo "## Proxy benchmark"
echo
echo "Relays in front of one epoll echo server; relay on CPU $PROXY_CPU, load client and upstream on CPU" \
  "$CLIENT_CPU; $DURATION s per row, medians of $REPEATS interleaved rounds; $(uname -sr)."
echo "CPU per byte: the relay's CPU time over the bytes it relayed (each request both ways); ratio:" \
  "against haproxy in the same round, the median of the rounds' ratios (each round's in brackets)."
echo
echo "| relay | workload | req/s | MB/s | CPU ns/byte | ratio vs haproxy |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for name in "${RELAYS[@]}"; do
  for workload in "${WORKLOADS[@]}"; do
    rates=() mbps=() ns=() ratios=()
    for ((round = 1; round <= REPEATS; round++)); do
      key="$name|$workload|$round"
      [[ -n ${NS_PER_BYTE[$key]-} ]] || continue
      rates+=("${REQ_PER_S[$key]}") mbps+=("${MBPS[$key]}") ns+=("${NS_PER_BYTE[$key]}")
      base="haproxy|$workload|$round"
      if [[ -n ${NS_PER_BYTE[$base]-} ]]; then
        ratios+=("$(awk -v a="${NS_PER_BYTE[$key]}" -v b="${NS_PER_BYTE[$base]}" 'BEGIN { printf "%.2f", a / b }')")
      fi
    done
    if ((${#ns[@]} == 0)); then
      echo "| $name | $workload | n/a | n/a | n/a | n/a |"
      continue
    fi
    ratio=n/a
    ((${#ratios[@]} > 0)) && ratio="$(median "${ratios[@]}") (${ratios[*]})"
    rate=$(median "${rates[@]}")
    echo "| $name | $workload | ${rate%.*} | $(median "${mbps[@]}") | $(median "${ns[@]}") | $ratio |"
  done
done
((${#LATENCY_RELAYS[@]} > 0)) || exit 0
echo
echo "Latency fault: one-way delays of 2000 pieces of 1 KiB (the probe is client and upstream, polling) through" \
  "each relay without a fault and with ${LATENCY_MS} ms on the upstream stream (\`conduit proxy --latency\`, or a" \
  "latency toxic through the API), µs, medians of $REPEATS interleaved rounds. Beyond: the faulted delay minus the" \
  "asked value and minus the relay's own no-fault p50 in the same round."
echo
echo "| relay | no fault p50 | no fault p99 | ${LATENCY_MS} ms p50 | p90 | p99 | max | beyond, at p50 | at p99 |" \
  "p99 beyond minus the round's timer p99 |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
asked=$((LATENCY_MS * 1000))
for name in "${LATENCY_RELAYS[@]}"; do
  cols=(bp50 bp99 p50 p90 p99 max x50 x99 over)
  declare -A V=()
  for c in "${cols[@]}"; do V[$c]=""; done
  for ((round = 1; round <= REPEATS; round++)); do
    base=${DELAY[$name|base|$round]-} fault=${DELAY[$name|fault|$round]-}
    [[ -n $(field p50 "$base") && -n $(field p50 "$fault") ]] || continue
    V[bp50]+=" $(field p50 "$base")" V[bp99]+=" $(field p99 "$base")"
    V[p50]+=" $(field p50 "$fault")" V[p90]+=" $(field p90 "$fault")"
    V[p99]+=" $(field p99 "$fault")" V[max]+=" $(field max "$fault")"
    V[x50]+=" $(($(field p50 "$fault") - asked - $(field p50 "$base")))"
    V[x99]+=" $(($(field p99 "$fault") - asked - $(field p50 "$base")))"
    V[over]+=" $(($(field p99 "$fault") - asked - $(field p50 "$base") - $(field p99 "${DELAY[timer|$round]}")))"
  done
  if [[ -z ${V[p50]} ]]; then
    echo "| $name | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |"
    continue
  fi
  row="| $name"
  for c in "${cols[@]}"; do
    # shellcheck disable=SC2086
    row+=" | $(median ${V[$c]})"
  done
  echo "$row (rounds:${V[over]}) |"
done
timer50=() timer99=() timermax=()
for ((round = 1; round <= REPEATS; round++)); do
  timer50+=("$(field p50 "${DELAY[timer|$round]}")") timer99+=("$(field p99 "${DELAY[timer|$round]}")")
  timermax+=("$(field max "${DELAY[timer|$round]}")")
done
echo
echo "The floor: how late this host wakes a thread from a ${LATENCY_MS} ms timer (timerfd in epoll, timer slack" \
  "1 ns, on the relay's CPU; 2000 times a round), µs, medians of the rounds: p50 $(median "${timer50[@]}")," \
  "p99 $(median "${timer99[@]}") (rounds: ${timer99[*]}), max $(median "${timermax[@]}")."
