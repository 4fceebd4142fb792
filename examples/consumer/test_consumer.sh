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
cmake -S "$source" -B "$work/build" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" > "$work/configure.log"
cmake --build "$work/build" > "$work/build.log" || { cat "$work/build.log"; exit 1; }
"$work/build/consumer"
"$work/prefix/bin/conduit" --version
