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
# What that left beside the sources (build/, *.egg-info) is what a user's
# `pip install ./clients/python` leaves in the tree: the tree ignores it,
# and no compiled Python is tracked (issue 20, item 9).
if git -C "$root" rev-parse --git-dir > /dev/null 2>&1; then
  left=$(cd "$work/src" && find . -mindepth 1 -maxdepth 1 \( -name build -o -name '*.egg-info' \) | sed 's|^\./||')
  [ -n "$left" ] || { echo "pip left no build/ or *.egg-info: the check checks nothing" >&2; exit 1; }
  for path in $left; do
    git -C "$root" check-ignore -q --no-index "clients/python/$path/x" || { echo "clients/python/$path is not ignored" >&2; exit 1; }
  done
  tracked=$(git -C "$root" ls-files '*.pyc' '*__pycache__*')
  [ -z "$tracked" ] || { echo "compiled Python is tracked: $tracked" >&2; exit 1; }
fi
rm -rf "$work/src"
cd "$work"
"$work/venv/bin/python" -c 'import conduit_client, sys; assert "/clients/python" not in conduit_client.__file__, conduit_client.__file__'
exec "$work/venv/bin/python" "$root/tests/service/client_test.py" "$conduit"
