#!/bin/sh
# Build every libFuzzer target with clang (ASan + UBSan) and run each for
# SECONDS (default 30), starting from its seed corpus (fuzz/corpus/TARGET).
# A crash fails the run: its input is kept under build/fuzz/crashes/TARGET/;
# add it to fuzz/regressions/TARGET/ with the fix, and ctest replays it in
# the normal builds from then on.
#   usage: scripts/fuzz.sh [SECONDS]
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/common.sh"
seconds=${1:-30}
case $seconds in ''|*[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac

install_missing_packages clang libclang-rt-14-dev
CC=clang CXX=clang++ build_tree "$ROOT/build/fuzz" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCONDUIT_FUZZ=ON -DCONDUIT_WERROR=ON

failed=
for target in address pem session subprocess; do
  work="$ROOT/build/fuzz/run/$target"
  crashes="$ROOT/build/fuzz/crashes/$target"
  rm -rf "$work"
  mkdir -p "$work" "$crashes"
  cp "$ROOT/fuzz/corpus/$target/"* "$work/"
  echo "=== fuzz $target for $seconds s"
  # detect_leaks=0 for the service's targets: gRPC keeps process-wide
  # state on purpose; the normal tests run under LeakSanitizer.
  leaks=1
  case $target in session|subprocess) leaks=0 ;; esac
  if ! ASAN_OPTIONS="detect_leaks=$leaks:abort_on_error=1" UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      "$ROOT/build/fuzz/fuzz/${target}_fuzzer" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 \
      -artifact_prefix="$crashes/" -print_final_stats=1 "$work" 2>"$ROOT/build/fuzz/$target.log"; then
    tail -n 40 "$ROOT/build/fuzz/$target.log" >&2
    echo "fuzz $target: FAILED; the input is in $crashes/" >&2
    failed="$failed $target"
  else
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$ROOT/build/fuzz/$target.log" | tr '\n' ' '
    echo
  fi
done
if [ -n "$failed" ]; then
  echo "fuzzing found crashes in:$failed" >&2
  exit 1
fi
echo "fuzzing: no crash in $seconds s per target"
