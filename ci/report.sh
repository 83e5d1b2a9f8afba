#!/usr/bin/env bash
# The conformance report in KTAP (what kernel CI consumes). Exit 4 (nothing could run, no
# /dev/kvm) is accepted only where /dev/kvm is absent. Leaves a one-line summary in
# target/ci-summary.txt for .ci/run to print last.
set -uo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin kvm-msr || exit 1
out="$(mktemp)"
./target/release/kvm-msr report --format ktap | tee "$out"
rc=${PIPESTATUS[0]}
totals="$(grep '^# Totals:' "$out" | tail -n 1)"
rm -f "$out"
if [ -n "$totals" ]; then
  field() { sed -E "s/.* $1:([0-9]+).*/\1/" <<<"$totals"; }
  pass=$(field pass)
  fail=$(field fail)
  skip=$(field skip)
  dev=$(field xfail)
  {
    echo "# $dev checks are recorded backend deviations (fixtures/deviations), reported apart from passes"
    echo "conformance: $pass passed, $fail failed, $skip skipped"
  } > target/ci-summary.txt
fi
if [ "$rc" -eq 4 ] && [ ! -e /dev/kvm ]; then
  echo "# no /dev/kvm: report skipped"
  exit 0
fi
exit "$rc"
