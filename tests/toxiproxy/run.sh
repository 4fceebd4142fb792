#!/bin/sh
# toxiproxy's Go client (v2.5.0, from the Go module proxy, unmodified) against
# `conduit serve --toxiproxy-api`: starts the service on free ports, runs
# client_check.go against it, stops the service by its PID.
#   usage: run.sh CONDUIT_BINARY
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
CONDUIT=$1
command -v go >/dev/null || { echo "error: go is missing (the tests build toxiproxy's client with it)" >&2; exit 1; }
TMP=$(mktemp -d)
PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
"$CONDUIT" serve --listen 127.0.0.1:0 --toxiproxy-api 127.0.0.1:0 --quiet >"$TMP/out" 2>"$TMP/err" &
PID=$!
API=
for _ in $(seq 1 100); do
  API=$(sed -n 's/^toxiproxy-api //p' "$TMP/out")
  [ -n "$API" ] && break
  kill -0 "$PID" 2>/dev/null || { cat "$TMP/err" >&2; exit 1; }
  sleep 0.1
done
[ -n "$API" ] || { echo "error: the service did not print its toxiproxy-api address" >&2; cat "$TMP/err" >&2; exit 1; }
cd "$HERE"
GOFLAGS=-mod=mod go run . "$API"
