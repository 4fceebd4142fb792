#!/bin/sh
# Run the examples as the asyncio docs show them and check what they print.
# usage: smoke_test.sh DIR_WITH_EXAMPLE_BINARIES
set -eu
dir=$1
out=$(mktemp -d)
server_pid=
trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$out"' EXIT

"$dir/socket_pair" > "$out/pair"
grep -qx 'Received: abc' "$out/pair" || { echo "socket_pair printed:"; cat "$out/pair"; exit 1; }

"$dir/tcp_echo_server" 0 > "$out/server" &
server_pid=$!
port=
for _ in $(seq 1 200); do          # up to 10 s for "Serving on ..."
  port=$(sed -n 's/^Serving on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$out/server")
  [ -n "$port" ] && break
  sleep 0.05
done
[ -n "$port" ] || { echo "the server did not start"; exit 1; }

timeout 30 "$dir/tcp_echo_client" "$port" > "$out/client"
expected="Data sent: 'Hello World!'
Data received: 'Hello World!'
The server closed the connection"
[ "$(cat "$out/client")" = "$expected" ] || { echo "tcp_echo_client printed:"; cat "$out/client"; exit 1; }
grep -q "^Data received: 'Hello World!'" "$out/server" || { echo "tcp_echo_server printed:"; cat "$out/server"; exit 1; }
echo "examples: all as documented"
