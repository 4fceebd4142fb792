#!/bin/sh
# Run a command in a private mount namespace whose /etc/hosts also maps
# conduit-dual.test to ::1 and 127.0.0.1, so create_connection's
# try-every-address path runs against a real resolver (needs root).
set -eu
hosts=$(mktemp)
trap 'rm -f "$hosts"' EXIT
cat /etc/hosts > "$hosts"
printf '::1 conduit-dual.test\n127.0.0.1 conduit-dual.test\n' >> "$hosts"
unshare -m sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$hosts" "$@"
