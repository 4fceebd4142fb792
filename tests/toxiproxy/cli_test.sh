#!/bin/sh
# toxiproxy-cli (v2.5.0, built from the Go module proxy, unmodified) run as a
# user runs it against `conduit serve --toxiproxy-api`: create, list, add,
# update and remove a toxic, toggle, delete; each command's output checked.
#   usage: cli_test.sh CONDUIT_BINARY BUILD_DIR
set -eu
CONDUIT=$1
GOBIN=$(cd "$2" && pwd)/go-bin
export GOBIN GOFLAGS=-mod=mod
# Go as installed by its own tarball, when it is not on PATH.
command -v go >/dev/null || [ ! -x /usr/local/go/bin/go ] || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "error: go is missing (the test builds toxiproxy-cli with it)" >&2; exit 1; }
[ -x "$GOBIN/cli" ] || go install github.com/Shopify/toxiproxy/v2/cmd/cli@v2.5.0
. "$(cd "$(dirname "$0")" && pwd)/service.sh"
start_service "$CONDUIT"

failures=0
# expect DESCRIPTION PATTERN COMMAND...: the command succeeds and prints PATTERN.
expect() {
  what=$1 pattern=$2
  shift 2
  if ! out=$("$GOBIN/cli" --host "http://$API" "$@" 2>&1) || ! printf '%s\n' "$out" | grep -Eq "$pattern"; then
    echo "FAIL: $what: toxiproxy-cli $*: $out" >&2
    failures=$((failures + 1))
  fi
}
expect "create" "Created new proxy web" create --listen 127.0.0.1:0 --upstream 127.0.0.1:9 web
expect "list" "^web[[:space:]]+127\.0\.0\.1:[0-9]+[[:space:]]+127\.0\.0\.1:9[[:space:]]+enabled" list
expect "toxic add" "Added downstream latency toxic 'latency_downstream'" toxic add --type latency --attribute latency=100 --downstream web
expect "toxic update" "Updated toxic 'latency_downstream'" toxic update --toxicName latency_downstream --attribute latency=50 web
expect "inspect" "latency_downstream.*type=latency.*latency=50" inspect web
expect "toggle" "Proxy web is now disabled" toggle web
expect "list disabled" "^web.*disabled" list
expect "toggle back" "Proxy web is now enabled" toggle web
expect "toxic remove" "Removed toxic 'latency_downstream'" toxic remove --toxicName latency_downstream web
expect "delete" "Deleted proxy web" delete web
if "$GOBIN/cli" --host "http://$API" inspect web >/dev/null 2>&1; then
  echo "FAIL: inspect after delete succeeded" >&2
  failures=$((failures + 1))
fi
[ "$failures" -eq 0 ] || { echo "$failures checks failed" >&2; exit 1; }
echo "toxiproxy-cli: every check passed"
