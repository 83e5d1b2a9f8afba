#!/usr/bin/env bash
# Benches and fuzz targets must build; the benches run in smoke mode (they must run, not meet a
# number; without /dev/kvm they say so and exit 0); each fuzz target replays its seeds and runs
# briefly.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --workspace --locked --no-run
KVM_MSR_BENCH_SMOKE=1 cargo bench --workspace --locked 2>&1 | grep -v '^Benchmarking\|^$'
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
cd fuzz
cargo fuzz build --sanitizer none
if [ -e /dev/kvm ]; then
  for target in $(cargo fuzz list); do
    seeds="../fixtures/corpus/$target"
    work="$(mktemp -d)"
    cp -r "$seeds"/. "$work"/ 2>/dev/null || true
    echo "fuzz: $target for ${FUZZ_SECONDS:-20}s from $(ls "$work" | wc -l) seeds"
    cargo fuzz run --sanitizer none "$target" "$work" -- -max_total_time="${FUZZ_SECONDS:-20}" -print_final_stats=1 2>&1 | tail -n 20
    rm -rf "$work"
  done
fi
cd ..
# Figures: 3 reports must agree check by check; each fuzz target soaks 60 s within its RSS and fd
# goals (ci/soak.sh; README "Stability and soak" has the longer runs).
if [ -e /dev/kvm ]; then
  bash ci/soak.sh 3 60
fi
