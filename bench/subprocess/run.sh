#!/usr/bin/env bash
# Subprocess benchmarks, peers measured in the same run:
#   spawn rate of /bin/true (stdio on pipes), sequential: Conduit's
#   subprocess_exec, Python asyncio, uvloop, and a C posix_spawn + waitpid loop;
#   pipe read throughput of `head -c BYTES /dev/zero` through subprocess_exec.
# Markdown on stdout. Build first:
#   cmake -S . -B build/bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DCONDUIT_BUILD_BENCH=ON -DCONDUIT_BUILD_TESTS=OFF
#   cmake --build build/bench --target spawn_bench spawn_posix
# Environment: BENCH_BUILD [build/bench/bench], BENCH_SPAWNS [2000], BENCH_PIPE_BYTES [1 GiB],
#   BENCH_CPU [1] (everything runs on that CPU; children included).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${BENCH_BUILD:-$ROOT/build/bench/bench}
SPAWNS=${BENCH_SPAWNS:-2000}
BYTES=${BENCH_PIPE_BYTES:-1073741824}
CPU=${BENCH_CPU:-1}
PY=/usr/bin/python3
run() { timeout 600 taskset -c "$CPU" "$@"; }

if ! $PY -c 'import uvloop' 2>/dev/null; then
  echo "note: python3-uvloop is not installed (apt-get install python3-uvloop)" >&2
fi

declare -A SPAWN PIPE
SPAWN[posix_spawn (C)]=$(run "$BUILD/spawn_posix" "$SPAWNS")
SPAWN[conduit]=$(run "$BUILD/spawn_bench" spawn "$SPAWNS")
SPAWN[asyncio]=$(run $PY "$HERE/spawn_asyncio.py" asyncio spawn "$SPAWNS")
SPAWN[uvloop]=$(run $PY "$HERE/spawn_asyncio.py" uvloop spawn "$SPAWNS")
PIPE[conduit]=$(run "$BUILD/spawn_bench" pipe "$BYTES")
PIPE[asyncio]=$(run $PY "$HERE/spawn_asyncio.py" asyncio pipe "$BYTES")
PIPE[uvloop]=$(run $PY "$HERE/spawn_asyncio.py" uvloop pipe "$BYTES")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "## Subprocess benchmark"
echo
echo "$SPAWNS sequential spawns of /bin/true with stdin/stdout/stderr on pipes; $((BYTES >> 20)) MiB read"
echo "from \`head -c\` through the stdout pipe; all on CPU $CPU; $(uname -sr)."
echo
echo "| spawner | spawns/s | vs asyncio | vs posix_spawn |"
echo "| --- | ---: | ---: | ---: |"
for name in "posix_spawn (C)" conduit asyncio uvloop; do
  echo "| $name | ${SPAWN[$name]} | $(ratio "${SPAWN[$name]}" "${SPAWN[asyncio]}") | $(ratio "${SPAWN[$name]}" "${SPAWN[posix_spawn (C)]}") |"
done
echo
echo "| reader | MiB/s | vs uvloop |"
echo "| --- | ---: | ---: |"
for name in conduit asyncio uvloop; do
  echo "| $name | ${PIPE[$name]} | $(ratio "${PIPE[$name]}" "${PIPE[uvloop]}") |"
done
