#!/bin/sh
# docker-compose.yml for real: Docker Engine builds the image and runs the
# topology, the `tests` service drives every session kind, then the fault
# steps (tests/compose/faults.py) cut one host off the network and kill
# another, Docker's way. Everything it started is removed at the end,
# whatever happened (docker-compose down -v).
#
# With no registry, the base images the Dockerfile names are made here when
# missing: Debian 12 debootstrapped (minbase) and `docker import`-ed under
# those names, then cached by Docker between runs.
#
# Skips (exit 0, saying why) where `docker info` fails. Prints the image's
# size, the build time and the run time at the end.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/common.sh"

if ! docker info > /dev/null 2>&1; then
  echo "compose-test: skipped: docker info fails here ($(docker info 2>&1 | tail -n 1))"
  exit 0
fi
install_missing_packages debootstrap

BUILD_BASE=${CONDUIT_BUILD_BASE:-debian:bookworm}
RUNTIME_BASE=${CONDUIT_RUNTIME_BASE:-debian:bookworm-slim}
PROJECT="conduit-test-$$"
compose() { docker-compose -p "$PROJECT" -f "$ROOT/docker-compose.yml" "$@"; }
now() { date +%s; }

# ---- base images ----------------------------------------------------------------
make_base() {  # IMAGE: debootstrap Debian 12 minbase and import it as IMAGE
  rootfs=$(mktemp -d)
  echo "compose-test: making $1 with debootstrap (no registry here)"
  debootstrap --variant=minbase bookworm "$rootfs" "${CONDUIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
    > "$rootfs.log" 2>&1 || { tail -n 20 "$rootfs.log" >&2; rm -rf "$rootfs" "$rootfs.log"; exit 1; }
  # What a container image does without: documentation, man pages, caches.
  rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' - "$1" > /dev/null
  rm -rf "$rootfs" "$rootfs.log"
}
for image in "$BUILD_BASE" "$RUNTIME_BASE"; do
  if ! docker image inspect "$image" > /dev/null 2>&1; then
    if [ "$image" = "$RUNTIME_BASE" ] && docker image inspect "$BUILD_BASE" > /dev/null 2>&1; then
      docker tag "$BUILD_BASE" "$image"  # one debootstrapped base serves both
    else
      make_base "$image"
    fi
  fi
done

# ---- the token the compose file's secret reads ----------------------------------
token_file="$ROOT/conduit-token.txt"
made_token=
if [ ! -f "$token_file" ]; then
  openssl rand -hex 32 > "$token_file"
  chmod 600 "$token_file"
  made_token=1
fi

cleanup() {
  compose down -v --remove-orphans > /dev/null 2>&1 || true
  [ -n "$made_token" ] && rm -f "$token_file"
}
trap cleanup EXIT INT TERM

# ---- build and run ---------------------------------------------------------------
build_start=$(now)
compose build --build-arg "BUILD_BASE=$BUILD_BASE" --build-arg "RUNTIME_BASE=$RUNTIME_BASE"
build_seconds=$(($(now) - build_start))
run_start=$(now)
status=0
timeout 900 docker-compose -p "$PROJECT" -f "$ROOT/docker-compose.yml" up --exit-code-from tests || status=$?
if [ "$status" -ne 0 ]; then
  echo "compose-test: the tests service exited with $status; the service's log:" >&2
  compose logs --no-color conduit | tail -n 40 >&2
  exit 1
fi

# ---- what only a real engine shows ----------------------------------------------
# The topology again, without the tests service, for the fault steps from
# this host (the service's port is published on 127.0.0.1:50051).
compose up -d conduit echo-tcp echo-tls echo-unix udp-echo peer
container() { compose ps -q "$1"; }
for _ in $(seq 1 120); do
  [ "$(docker inspect -f '{{.State.Health.Status}}' "$(container conduit)" 2>/dev/null)" = healthy ] && break
  sleep 0.5
done
health=$(docker inspect -f '{{.State.Health.Status}}' "$(container conduit)")
[ "$health" = healthy ] || { echo "compose-test: the service's HEALTHCHECK says $health" >&2; exit 1; }
echo "compose-test: the image's HEALTHCHECK passes"
# The non-root user reads the secret and writes the socket volume.
compose exec -T conduit sh -c 'test "$(id -u)" != 0 && test -r /run/secrets/conduit-token && touch /run/conduit-sockets/.w && rm /run/conduit-sockets/.w'
echo "compose-test: the service runs as $(compose exec -T conduit id -un), reads its secret, writes the socket volume"
# The service answers another container by its name.
compose exec -T echo-tcp conduit health --via conduit:50051 > /dev/null
echo "compose-test: the service answers another container as conduit:50051"

network=$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}' "$(container echo-tls)")
python3 "$ROOT/tests/compose/faults.py" 127.0.0.1:50051 "$token_file" \
  "docker network disconnect $network $(container echo-tls)" "docker kill $(container echo-tcp)"
run_seconds=$(($(now) - run_start))

size=$(docker image inspect -f '{{.Size}}' conduit:latest)
echo "compose-test: passed; image conduit:latest $((size / 1000000)) MB, build ${build_seconds} s, run ${run_seconds} s"
