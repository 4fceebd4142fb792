#!/bin/sh
# docker-compose.yml, unchanged, on Docker's own orchestrator: deployed with
# `docker stack deploy` on a single-node swarm, the token as a swarm secret.
# Passes when the `tests` service's task (tests/compose/steps.sh: every
# session kind, the proxy step among them) completes, every service's health
# check says healthy, and the service answers a caller with the swarm
# secret's token and refuses one without.
#
# Uses the images scripts/compose-test.sh builds (conduit:latest and
# conduit-tests:latest): run that first. Initialises the swarm if this
# machine is in none, and then leaves it at the end; a swarm it was already
# in is left as it was. Everything it deployed is removed at the end,
# whatever happened. Skips (exit 0, saying why) where `docker info` fails.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if ! docker info > /dev/null 2>&1; then
  echo "swarm-test: skipped: docker info fails here ($(docker info 2>&1 | tail -n 1))"
  exit 0
fi
for image in conduit:latest conduit-tests:latest; do
  if ! docker image inspect "$image" > /dev/null 2>&1; then
    echo "swarm-test: no image $image: run scripts/compose-test.sh first (it builds both)" >&2
    exit 1
  fi
done

STACK="conduit-swarm-$$"
now() { date +%s; }
start=$(now)
work=$(mktemp -d)
joined=
cleanup() {
  docker stack rm "$STACK" > /dev/null 2>&1 || true
  # stack rm returns before its networks are gone; leaving the swarm
  # meanwhile can strand them. Bounded.
  for _ in $(seq 1 60); do
    [ -z "$(docker network ls -q --filter "label=com.docker.stack.namespace=$STACK")" ] && break
    sleep 1
  done
  if [ -n "$joined" ]; then docker swarm leave --force > /dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# ---- a swarm ----------------------------------------------------------------------
case $(docker info -f '{{.Swarm.LocalNodeState}}') in
  active) echo "swarm-test: using the swarm this machine is in" ;;
  inactive)
    # Loopback: a single node needs no other address (and a machine with
    # several would make init ask which).
    docker swarm init --advertise-addr 127.0.0.1 > /dev/null
    joined=1
    echo "swarm-test: initialised a single-node swarm (left at the end)"
    ;;
  *) echo "swarm-test: this machine's swarm state is $(docker info -f '{{.Swarm.LocalNodeState}}')" >&2; exit 1 ;;
esac

# ---- deploy -----------------------------------------------------------------------
# The compose file's secret, from a fresh token: the swarm stores it and
# mounts it at /run/secrets/conduit-token, readable by the image's user.
export CONDUIT_TOKEN_FILE="$work/conduit-token.txt"
openssl rand -hex 32 > "$CONDUIT_TOKEN_FILE"
# No registry: each node uses its local image (--resolve-image never).
if ! docker stack deploy --resolve-image never -c "$ROOT/docker-compose.yml" "$STACK" > "$work/deploy.txt" 2>&1; then
  echo "swarm-test: docker stack deploy failed:" >&2
  cat "$work/deploy.txt" >&2
  exit 1
fi
grep -v '^Creating\|detach\|^$' "$work/deploy.txt" | sed 's/^/swarm-test: deploy: /' || true

# ---- the tests task -------------------------------------------------------------
state=
for _ in $(seq 1 600); do
  state=$(docker service ps "${STACK}_tests" --format '{{.CurrentState}}' 2> /dev/null | head -n 1)
  case $state in Complete* | Failed* | Rejected* | Shutdown*) break ;; esac
  sleep 1
done
echo "swarm-test: the tests task's output:"
docker service logs --raw "${STACK}_tests" 2>&1 | sed 's/^/  /'
case $state in
  Complete*) echo "swarm-test: the tests task completed" ;;
  *)
    echo "swarm-test: the tests task ended as '$state'; the service's log:" >&2
    docker service logs --raw "${STACK}_conduit" 2>&1 | tail -n 40 >&2
    docker service ps --no-trunc "$STACK" >&2
    exit 1
    ;;
esac

# ---- health checks ----------------------------------------------------------------
container_of() { docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_$1" | head -n 1; }
for service in conduit echo-tcp echo-tls echo-unix udp-echo backend-http; do
  health=
  for _ in $(seq 1 60); do
    container=$(container_of "$service")
    health=$(docker inspect -f '{{.State.Health.Status}}' "$container" 2> /dev/null || echo none)
    [ "$health" = healthy ] && break
    sleep 1
  done
  [ "$health" = healthy ] || { echo "swarm-test: $service's health check says $health" >&2; exit 1; }
done
echo "swarm-test: every service's health check passes"

# ---- the secret, and the token asked of every caller ----------------------------
if ! docker exec "$(container_of conduit)" conduit sessions --via 127.0.0.1:50051 \
  --token-file /run/secrets/conduit-token > "$work/sessions.txt" 2>&1; then
  echo "swarm-test: the service's user could not use the swarm secret:" >&2
  cat "$work/sessions.txt" >&2
  exit 1
fi
if docker exec "$(container_of echo-tcp)" conduit sessions --via conduit:50051 > "$work/refused.txt" 2>&1 ||
  ! grep -q UNAUTHENTICATED "$work/refused.txt"; then
  echo "swarm-test: the service answered another container without the token:" >&2
  cat "$work/refused.txt" >&2
  exit 1
fi
echo "swarm-test: the service reads its swarm secret, and refuses another container without the token"
echo "swarm-test: passed in $(($(now) - start)) s"
