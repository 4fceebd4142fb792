#!/bin/sh
# The C++ sources in the layout .clang-format gives (clang-format 14, Debian
# 12's). With --check: change nothing, list what differs and fail if any does
# (CI runs this first); without: rewrite the files in place.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
FORMAT=${CLANG_FORMAT:-clang-format-14}
command -v "$FORMAT" >/dev/null || { echo "error: $FORMAT is missing (apt-get install clang-format-14)" >&2; exit 2; }
files=$(git ls-files '*.cpp' '*.hpp')
if [ "${1:-}" = "--check" ]; then
  if ! "$FORMAT" --dry-run --Werror $files; then
    echo "error: these files differ from .clang-format's layout; run scripts/format.sh to fix them" >&2
    exit 1
  fi
  echo "format: $(echo "$files" | wc -l) files as .clang-format says"
else
  "$FORMAT" -i $files
fi
