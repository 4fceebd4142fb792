#!/bin/sh
# Install the build tree BUILD into a scratch prefix, then configure, build
# and run examples/consumer against it with find_package(conduit).
# usage: test_consumer.sh BUILD_DIR CONSUMER_SOURCE_DIR [CXX_FLAGS]
# (CXX_FLAGS: what the installed library was built with, e.g. sanitizers.)
set -eu
build=$1
source=$2
flags=${3:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" > "$work/install.log"
test -x "$work/prefix/bin/conduit"
# The installed headers are the public API alone: no conduit/detail, no
# internals (main.cpp includes each of these).
installed=$(cd "$work/prefix/include/conduit" && find . -type f | sort | tr '\n' ' ')
expected="./datagram_proxy.hpp ./errors.hpp ./event_loop.hpp ./faults.hpp ./opener.hpp ./protocols.hpp ./proxy.hpp ./server.hpp ./socket_address.hpp ./stream_proxy.hpp ./tls.hpp ./transports.hpp "
if [ "$installed" != "$expected" ]; then
  echo "installed headers: $installed" >&2
  echo "expected:          $expected" >&2
  exit 1
fi
cmake -S "$source" -B "$work/build" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" > "$work/configure.log"
cmake --build "$work/build" > "$work/build.log" || { cat "$work/build.log"; exit 1; }
"$work/build/consumer"
"$work/prefix/bin/conduit" --version
