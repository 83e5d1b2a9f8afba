#!/bin/bash
# ci/fuzz-build.sh [outcome|coverage]: build every fuzz target in fuzz/ and print the folder that
# holds the binaries (each is a libFuzzer program: `<folder>/host CORPUS -max_total_time=60`).
#
#   outcome (default)  `cargo build --profile campaign` (release with fat LTO: fuzz/Cargo.toml
#                      says why) and `--cfg fuzzing` in fuzz/: libFuzzer's only
#                      feedback is the targets' observable-outcome counters (fuzz_targets/common/
#                      feedback.rs). Nothing in the harness is instrumented, so libFuzzer does not
#                      spend its time on the harness's own code coverage -- which says how the
#                      suite ran, not what KVM did. The campaign build (README, "Running a
#                      campaign": the A/B that chose it).
#   coverage           `cargo fuzz build --sanitizer none`: SanitizerCoverage of the harness too
#                      (edge counters and comparison tracing). What `cargo fuzz run/cmin/tmin` use.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
case "${1:-outcome}" in
  outcome)
    RUSTFLAGS="${RUSTFLAGS:-} --cfg fuzzing" cargo build --profile campaign --locked --bins \
      --target-dir target/outcome >&2
    echo "$PWD/target/outcome/campaign"
    ;;
  coverage)
    if ! command -v cargo-fuzz >/dev/null 2>&1; then
      cargo install cargo-fuzz --locked >&2
    fi
    cargo fuzz build --sanitizer none >&2
    echo "$PWD/target/x86_64-unknown-linux-gnu/release"
    ;;
  *)
    echo "usage: ci/fuzz-build.sh [outcome|coverage]" >&2
    exit 2
    ;;
esac
