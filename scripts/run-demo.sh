#!/bin/sh
# Install what is missing, build, and run the demo: a Conduit echo server and
# a Conduit echo client exchanging a message over TCP and a Unix socket.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/common.sh"

install_missing_packages
build_tree "$ROOT/build/release" -DCMAKE_BUILD_TYPE=Release -DCONDUIT_BUILD_TESTS=OFF
bin="$ROOT/build/release/src/cli/conduit"

work=$(mktemp -d)
server_pid=
trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"' EXIT INT TERM

"$bin" echo-server --listen tcp://127.0.0.1:0 --listen "unix://$work/echo.sock" -v \
  > "$work/listening" 2> "$work/server.log" &
server_pid=$!
for _ in $(seq 1 100); do
  [ "$(grep -c '^listening' "$work/listening")" -ge 2 ] && break
  sleep 0.05
done
cat "$work/listening"
tcp_url=$(sed -n 's/^listening \(tcp:.*\)/\1/p' "$work/listening")

echo "--- echo-client over $tcp_url"
"$bin" echo-client --connect "$tcp_url" --message "Hello from Conduit!"
echo
echo "--- echo-client over unix://$work/echo.sock, 1000 rounds of 1 KiB"
"$bin" echo-client --connect "unix://$work/echo.sock" --size 1024 --count 1000 --json

kill "$server_pid"
wait "$server_pid" 2>/dev/null || true
server_pid=
echo "--- the server's event log (-v)"
head -n 8 "$work/server.log"
