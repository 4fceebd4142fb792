#!/bin/sh
# Run the examples as the asyncio docs show them and check what they print.
# usage: smoke_test.sh DIR_WITH_EXAMPLE_BINARIES
set -eu
dir=$1
out=$(mktemp -d)
server_pid=
udp_pid=
trap 'for p in $server_pid $udp_pid; do kill "$p" 2>/dev/null; done; rm -rf "$out"' EXIT

# wait_for_port FILE: the port of the "Serving on 127.0.0.1:PORT" line FILE
# gets, waiting up to 10 s for it.
wait_for_port() {
  for _ in $(seq 1 200); do
    port=$(sed -n 's/^Serving on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$1")
    [ -n "$port" ] && { echo "$port"; return 0; }
    sleep 0.05
  done
  return 1
}

"$dir/socket_pair" > "$out/pair"
grep -qx 'Received: abc' "$out/pair" || { echo "socket_pair printed:"; cat "$out/pair"; exit 1; }

"$dir/tcp_echo_server" 0 > "$out/server" &
server_pid=$!
port=$(wait_for_port "$out/server") || { echo "the server did not start"; exit 1; }

timeout 30 "$dir/tcp_echo_client" "$port" > "$out/client"
expected="Data sent: 'Hello World!'
Data received: 'Hello World!'
The server closed the connection"
[ "$(cat "$out/client")" = "$expected" ] || { echo "tcp_echo_client printed:"; cat "$out/client"; exit 1; }
grep -q "^Data received: 'Hello World!'" "$out/server" || { echo "tcp_echo_server printed:"; cat "$out/server"; exit 1; }

"$dir/udp_echo_server" 0 > "$out/udp_server" &
udp_pid=$!
port=$(wait_for_port "$out/udp_server") || { echo "the UDP server did not start"; exit 1; }
timeout 30 "$dir/udp_echo_client" "$port" > "$out/udp_client"
expected="Send: Hello World!
Received: Hello World!
Close the socket
Connection closed"
[ "$(cat "$out/udp_client")" = "$expected" ] || { echo "udp_echo_client printed:"; cat "$out/udp_client"; exit 1; }
grep -q "^Received 'Hello World!' from 127.0.0.1:" "$out/udp_server" || { echo "udp_echo_server printed:"; cat "$out/udp_server"; exit 1; }

"$dir/subprocess_date" > "$out/date"
grep -Eqx 'Current date: [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]{8}' "$out/date" || { echo "subprocess_date printed:"; cat "$out/date"; exit 1; }
echo "examples: all as documented"
