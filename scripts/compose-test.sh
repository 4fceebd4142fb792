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
# The override publishes the service on this host's loopback (the fault
# steps below reach it there).
compose() { docker-compose -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$ROOT/docker-compose.override.yml" "$@"; }
now() { date +%s; }

# ---- base images ----------------------------------------------------------------
# Images made here carry this label; a newer recipe (a higher number) remakes
# them. An image without it (pulled from a registry) is used as it is.
RECIPE=2
LABEL=org.conduit.base-recipe
needs_making() {  # IMAGE: missing, or made here by an older recipe
  docker image inspect "$1" > /dev/null 2>&1 || return 0
  made=$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1")
  case $made in
    "" | "<no value>") return 1 ;;  # not ours
    *) [ "$made" -lt "$RECIPE" ] ;;
  esac
}
import_as() {  # IMAGE < tar
  docker import -c 'CMD ["/bin/bash"]' -c "LABEL $LABEL=$RECIPE" - "$1" > /dev/null
}
make_base() {  # IMAGE: debootstrap Debian 12 minbase and import it as IMAGE
  rootfs=$(mktemp -d)
  echo "compose-test: making $1 with debootstrap (no registry here)"
  debootstrap --variant=minbase bookworm "$rootfs" "${CONDUIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
    > "$rootfs.log" 2>&1 || { tail -n 20 "$rootfs.log" >&2; rm -rf "$rootfs" "$rootfs.log"; exit 1; }
  # What a container image does without: documentation, man pages, caches
  # (debootstrap leaves the .debs it installed in apt's archive).
  rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
  # As the official images: apt keeps no downloaded package or index
  # translation, so a layer that installs holds only what it installed.
  cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
APT
  tar -C "$rootfs" -c . | import_as "$1"
  rm -rf "$rootfs" "$rootfs.log"
}
make_slim() {  # FROM TO: FROM without what a runtime image needs least (as Debian's -slim)
  echo "compose-test: making $2 from $1"
  # dpkg leaves out documentation and translations of what is installed later.
  slim=$(docker create "$1" sh -c 'rm -rf /usr/share/locale/* /usr/share/i18n/locales/* /var/cache/debconf/*-old &&
    printf "%s\n" "path-exclude /usr/share/doc/*" "path-include /usr/share/doc/*/copyright" \
      "path-exclude /usr/share/man/*" "path-exclude /usr/share/info/*" "path-exclude /usr/share/locale/*" \
      > /etc/dpkg/dpkg.cfg.d/docker-slim')
  docker start -a "$slim" > /dev/null
  docker export "$slim" | import_as "$2"
  docker rm "$slim" > /dev/null
}
base_start=$(now)
made_base=
if needs_making "$BUILD_BASE"; then make_base "$BUILD_BASE"; made_base=1; fi
if [ -n "$made_base" ] || needs_making "$RUNTIME_BASE"; then make_slim "$BUILD_BASE" "$RUNTIME_BASE"; fi
base_seconds=$(($(now) - base_start))

# ---- a fresh token for the compose file's secret ----------------------------
# Readable by the image's group (gid 10001) alone: the secret is bind-mounted
# with this file's owner and mode.
work=$(mktemp -d)
export CONDUIT_TOKEN_FILE="$work/conduit-token.txt"
openssl rand -hex 32 > "$CONDUIT_TOKEN_FILE"
chgrp 10001 "$CONDUIT_TOKEN_FILE"
chmod 640 "$CONDUIT_TOKEN_FILE"

cleanup() {
  compose down -v --remove-orphans > /dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# ---- build and run ---------------------------------------------------------------
build_start=$(now)
compose build --build-arg "BUILD_BASE=$BUILD_BASE" --build-arg "RUNTIME_BASE=$RUNTIME_BASE"
build_seconds=$(($(now) - build_start))
run_start=$(now)
status=0
timeout 900 docker-compose -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$ROOT/docker-compose.override.yml" \
  up --exit-code-from tests || status=$?
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
/usr/bin/python3 "$ROOT/tests/compose/faults.py" 127.0.0.1:50051 "$CONDUIT_TOKEN_FILE" \
  "docker network disconnect $network $(container echo-tls)" "docker kill $(container echo-tcp)"
run_seconds=$(($(now) - run_start))

size=$(docker image inspect -f '{{.Size}}' conduit:latest)
echo "compose-test: passed; image conduit:latest $((size / 1000000)) MB, base images ${base_seconds} s, build ${build_seconds} s, run ${run_seconds} s"
