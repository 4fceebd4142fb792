#!/bin/sh
# toxiproxy's Go client (v2.5.0, from the Go module proxy, unmodified) against
# `conduit serve --toxiproxy-api`: starts the service on free ports, runs
# client_check.go against it, stops the service by its PID.
#   usage: run.sh CONDUIT_BINARY
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
CONDUIT=$1
# Go as installed by its own tarball, when it is not on PATH.
command -v go >/dev/null || [ ! -x /usr/local/go/bin/go ] || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "error: go is missing (the tests build toxiproxy's client with it)" >&2; exit 1; }
. "$HERE/service.sh"
start_service "$CONDUIT"
cd "$HERE"
GOFLAGS=-mod=mod go run . "$API"
