#!/bin/sh
# The compose file's `tests` service: every step through the service, each
# bounded in time: the CLI's --via, every session kind from the Python
# client, then an unmodified aiohttp client on the remote loop reaching
# backend-http, which only the service's network has. Any failure exits
# non-zero (`docker-compose up --exit-code-from tests` passes it on; under
# `docker stack deploy` the task fails).
#
# It first waits, bounded, for what it uses to answer: Compose also waits
# for the health checks (depends_on), but a swarm ignores depends_on.
set -eu
T=/run/secrets/conduit-token
SERVICE=conduit:50051

ready() {
  conduit health --via $SERVICE --token-file $T --timeout 2 > /dev/null 2>&1 &&
    conduit echo-client --connect tcp://echo-tcp:7007 --timeout 2 --quiet 2> /dev/null &&
    conduit echo-client --connect tls://echo-tls:7443 --insecure --timeout 2 --quiet 2> /dev/null &&
    conduit udp-echo client --connect udp://udp-echo:7009 --count 1 --timeout 2 --quiet 2> /dev/null &&
    conduit echo-client --via $SERVICE --token-file $T --connect unix:///run/conduit-sockets/echo.sock \
      --timeout 2 --quiet 2> /dev/null &&
    printf 'GET /marker.txt HTTP/1.0\r\n\r\n' |
    conduit connect --via $SERVICE --token-file $T --timeout 2 tcp://backend-http:8080 2> /dev/null |
      grep -q conduit-backend-marker
}
tries=0
until ready; do
  tries=$((tries + 1))
  if [ $tries -ge 90 ]; then
    echo "tests: the services did not all answer within 90 tries (one a second)" >&2
    exit 1
  fi
  sleep 1
done
echo "tests: every service answers (after $tries retries)"

timeout 30 conduit health --via $SERVICE --token-file $T
timeout 30 conduit echo-client --via $SERVICE --token-file $T --connect tcp://echo-tcp:7007 --count 100 --size 4096
timeout 30 conduit echo-client --via $SERVICE --token-file $T --connect tls://echo-tls:7443 --insecure --message over-tls
timeout 30 conduit echo-client --via $SERVICE --token-file $T --connect unix:///run/conduit-sockets/echo.sock \
  --message over-unix
timeout 30 conduit run-subprocess --via $SERVICE --token-file $T -- /bin/date
timeout 30 conduit udp-echo client --via $SERVICE --token-file $T --connect udp://udp-echo:7009 --count 100
timeout 30 conduit echo-server --via $SERVICE --token-file $T --listen tcp://0.0.0.0:7100 --exit-after 1 --json
timeout 120 python3 /opt/conduit/tests/compose/integration.py $SERVICE $T
timeout 60 python3 -m conduit_client --via $SERVICE --token-file $T /opt/conduit/tests/compose/hidden_backend.py \
  http://backend-http:8080/marker.txt
echo "all integration steps passed"
