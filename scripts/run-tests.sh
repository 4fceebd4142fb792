#!/bin/sh
# Install what is missing, check the sources' layout (scripts/format.sh), build
# with warnings as errors, and run every test:
# once in a normal build and once under AddressSanitizer + UBSan; then fuzz
# every libFuzzer target for 30 s (scripts/fuzz.sh), and run docker-compose.yml
# under Docker Engine where there is one, with Compose (scripts/compose-test.sh)
# and on a swarm (scripts/swarm-test.sh).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/common.sh"

install_missing_packages

echo "=== source layout (.clang-format)"
"$ROOT/scripts/format.sh" --check

for variant in normal asan; do
  case $variant in
    normal) flags="-DCMAKE_BUILD_TYPE=RelWithDebInfo" ;;
    asan)   flags="-DCMAKE_BUILD_TYPE=Debug -DCONDUIT_SANITIZE=ON" ;;
  esac
  echo "=== $variant build"
  build_tree "$ROOT/build/ci-$variant" -DCONDUIT_WERROR=ON $flags
  echo "=== $variant tests"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir "$ROOT/build/ci-$variant" --output-on-failure -j2 --timeout 120
done

echo "=== docker-compose under Docker Engine"
"$ROOT/scripts/compose-test.sh"
echo "=== the same file on a single-node swarm (docker stack deploy)"
"$ROOT/scripts/swarm-test.sh"

echo "=== fuzzing, ${CONDUIT_FUZZ_SECONDS:-30} s per target"
"$ROOT/scripts/fuzz.sh" "${CONDUIT_FUZZ_SECONDS:-30}"
