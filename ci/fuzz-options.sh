#!/usr/bin/env bash
# ci/fuzz-options.sh TARGET: print the libFuzzer flags of TARGET's campaigns, from
# fuzz/options/TARGET (one flag per line, '#' comments; why each was chosen is written there).
# Nothing for a target without such a file: libFuzzer's defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 1 ] || [ ! -f "fuzz/fuzz_targets/$1.rs" ]; then
  echo "usage: ci/fuzz-options.sh TARGET (one of: $(basename -s .rs fuzz/fuzz_targets/*.rs | tr '\n' ' '))" >&2
  exit 2
fi
f="fuzz/options/$1"
[ -f "$f" ] || exit 0
flags=$(sed -e 's/#.*//' -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$f" | { grep -v '^$' || true; } | tr '\n' ' ')
echo "${flags% }"
