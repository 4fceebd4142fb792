#!/bin/sh
# Install what is missing, build, and run the main job: the Conduit service
# (`conduit serve` on 127.0.0.1:50051, or $CONDUIT_LISTEN) with a working
# echo demo on it: an echo server on TCP and a Unix socket, echo clients
# direct and through the service (--via), and a server session (the service
# listens, this script's echo-server --via echoes). The service then keeps serving
# until Ctrl-C; set CONDUIT_DEMO_ONLY=1 to stop after the demo.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/common.sh"

install_missing_packages
build_tree "$ROOT/build/release" -DCMAKE_BUILD_TYPE=Release -DCONDUIT_BUILD_TESTS=OFF
bin="$ROOT/build/release/src/cli/conduit"
listen=${CONDUIT_LISTEN:-127.0.0.1:50051}

work=$(mktemp -d)
server_pid=
service_pid=
via_pid=
trap 'for p in $via_pid $server_pid $service_pid; do kill "$p" 2>/dev/null; done; rm -rf "$work"' EXIT INT TERM

# wait_lines FILE N: until FILE has N "listening" lines (at most 10 s).
wait_lines() {
  for _ in $(seq 1 200); do
    [ "$(grep -c '^listening' "$1" 2>/dev/null)" -ge "$2" ] && return 0
    sleep 0.05
  done
  echo "not listening after 10 s:" >&2
  cat "$1" "$1.err" >&2 2>/dev/null || true
  exit 1
}

"$bin" serve --listen "$listen" > "$work/service" 2> "$work/service.err" &
service_pid=$!
wait_lines "$work/service" 1
service=$(sed -n 's/^listening //p' "$work/service")
echo "conduit serve: listening on $service"

"$bin" echo-server --listen tcp://127.0.0.1:0 --listen "unix://$work/echo.sock" -v \
  > "$work/listening" 2> "$work/server.log" &
server_pid=$!
wait_lines "$work/listening" 2
cat "$work/listening"
tcp_url=$(sed -n 's/^listening \(tcp:.*\)/\1/p' "$work/listening")

echo "--- echo-client over $tcp_url"
"$bin" echo-client --connect "$tcp_url" --message "Hello from Conduit!"
echo
echo "--- the same through the service at $service (--via)"
"$bin" echo-client --via "$service" --connect "$tcp_url" --message "Hello through the service!"
echo
echo "--- echo-client over unix://$work/echo.sock, 1000 rounds of 1 KiB"
"$bin" echo-client --connect "unix://$work/echo.sock" --size 1024 --count 1000 --json
echo "--- a server session: the service listens, echo-server --via echoes"
"$bin" echo-server --via "$service" --listen tcp://127.0.0.1:0 --exit-after 1 --json \
  > "$work/via-listening" 2> "$work/via-listening.err" &
via_pid=$!
wait_lines "$work/via-listening" 1
via_url=$(sed -n 's/^listening //p' "$work/via-listening")
echo "listening $via_url (the service's socket)"
"$bin" echo-client --connect "$via_url" --message "Hello via a server session!"
echo
wait "$via_pid"
via_pid=
tail -n 1 "$work/via-listening"

echo "--- the policy at work: listening on every interface needs the service's --allow-listen"
if "$bin" echo-server --via "$service" --listen tcp://0.0.0.0:0 --exit-after 1; then
  echo "error: the service let a session listen on every interface" >&2
  exit 1
fi

kill "$server_pid"
wait "$server_pid" 2>/dev/null || true
server_pid=
echo "--- the echo server's event log (-v)"
head -n 8 "$work/server.log"
echo "--- the service's session log"
cat "$work/service.err"

if [ "${CONDUIT_DEMO_ONLY:-}" = 1 ]; then exit 0; fi
echo "--- conduit serve keeps serving on $service (Ctrl-C to stop)"
wait "$service_pid"
