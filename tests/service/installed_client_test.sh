#!/bin/sh
# The Python client as a user installs it: `pip install --no-build-isolation`
# of clients/python into a fresh venv that sees Debian's grpcio and protobuf
# (--system-site-packages; --no-index: offline), then the client tests from
# another folder, importing the installed package, not the tree.
#   usage: installed_client_test.sh CONDUIT_BIN REPO_ROOT
set -eu
conduit=$(realpath "$1")
root=$(realpath "$2")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
/usr/bin/python3 -m venv --system-site-packages "$work/venv"
# From a copy: setuptools writes build/ and *.egg-info next to the sources.
cp -r "$root/clients/python" "$work/src"
"$work/venv/bin/pip" install --quiet --no-index --no-build-isolation "$work/src"
rm -rf "$work/src"
cd "$work"
"$work/venv/bin/python" -c 'import conduit_client, sys; assert "/clients/python" not in conduit_client.__file__, conduit_client.__file__'
exec "$work/venv/bin/python" "$root/tests/service/client_test.py" "$conduit"
