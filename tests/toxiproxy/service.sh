# Sourced by the toxiproxy tests: start_service CONDUIT starts `conduit serve
# --toxiproxy-api` on free loopback ports and sets API (HOST:PORT); the
# service is stopped by its PID when the test exits.
TMP=$(mktemp -d)
PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
start_service() {
  "$1" serve --listen 127.0.0.1:0 --toxiproxy-api 127.0.0.1:0 --quiet >"$TMP/out" 2>"$TMP/err" &
  PID=$!
  API=
  for _ in $(seq 1 100); do
    API=$(sed -n 's/^toxiproxy-api //p' "$TMP/out")
    [ -n "$API" ] && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "error: the service did not print its toxiproxy-api address" >&2
  cat "$TMP/err" >&2
  exit 1
}
