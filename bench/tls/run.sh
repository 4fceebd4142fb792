#!/usr/bin/env bash
# TLS echo against plain TCP, one run: Conduit's echo-server on CPU 0 over
# tcp:// and tls://, driven by Conduit's echo-client on CPU 1 (one connection,
# ping-pong, --count rounds of --size bytes). Reports requests/s, server CPU
# per request and the TLS/TCP ratio. Markdown on stdout.
# Environment: CONDUIT_BIN [build/bench/src/cli/conduit], BENCH_ROUNDS_1K [20000],
#   BENCH_ROUNDS_100K [2000].
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${CONDUIT_BIN:-$ROOT/build/bench/src/cli/conduit}
declare -A ROUNDS=([1024]=${BENCH_ROUNDS_1K:-20000} [102400]=${BENCH_ROUNDS_100K:-2000})
TMP=$(mktemp -d)
SERVER_PID=
trap '[[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$TMP"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() {
  local stat fields
  stat=$(<"/proc/$1/stat")
  read -ra fields <<<"${stat##*) }"
  echo $((fields[11] + fields[12]))
}

declare -A RATE CPU_US
for scheme in tcp tls; do
  taskset -c 0 "$BIN" echo-server --listen "$scheme://127.0.0.1:0" --cert "$TMP/cert.pem" --key "$TMP/key.pem" \
    --quiet > "$TMP/out" &
  SERVER_PID=$!
  url=
  for _ in $(seq 1 200); do
    url=$(sed -n 's/^listening //p' "$TMP/out")
    [[ -n $url ]] && break
    sleep 0.05
  done
  [[ -n $url ]] || { echo "the $scheme server did not start" >&2; exit 1; }
  url=${url/127.0.0.1/localhost}
  for size in 1024 102400; do
    before=$(cpu_ticks "$SERVER_PID")
    start=$(date +%s.%N)
    timeout 300 taskset -c 1 "$BIN" echo-client --connect "$url" --cafile "$TMP/cert.pem" --size "$size" \
      --count "${ROUNDS[$size]}" --quiet
    end=$(date +%s.%N)
    after=$(cpu_ticks "$SERVER_PID")
    RATE[$scheme|$size]=$(awk -v n="${ROUNDS[$size]}" -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", n / (b - a) }')
    CPU_US[$scheme|$size]=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="${ROUNDS[$size]}" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
  done
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
done

echo "## TLS echo benchmark"
echo
echo "One connection, ping-pong; server on CPU 0, client on CPU 1; TLS 1.3 with a P-256 certificate; $(uname -sr)."
echo
echo "| size | TCP req/s | TLS req/s | TCP server µs/req | TLS server µs/req | TLS/TCP CPU |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
for size in 1024 102400; do
  ratio=$(awk -v a="${CPU_US[tls|$size]}" -v b="${CPU_US[tcp|$size]}" 'BEGIN { printf "%.2f", a / b }')
  echo "| $size | ${RATE[tcp|$size]} | ${RATE[tls|$size]} | ${CPU_US[tcp|$size]} | ${CPU_US[tls|$size]} | $ratio |"
done
