#!/usr/bin/env bash
# Fuzzing against upstream KVM: every fuzz target runs a short campaign inside the upstream
# testbed's VM (ci/upstream-vm.sh; kernel `latest` by default) with the kernel-log oracle on
# (KVM_MSR_FUZZ_KMSG=1: a new WARNING/BUG/KASAN record in the guest kernel's log is a finding).
#
#   ci/upstream-fuzz.sh [KERNEL [PROFILE]]
#
# UPSTREAM_FUZZ_SECONDS (default 60) per target. A finding comes back as a replayable input in
# target/upstream-vm/<kernel>-<profile>-fuzz/artifacts/<target>/ (`kvm-msr replay FILE --target
# TARGET` on a host with that kernel, or the same script with UPSTREAM_VM_REPORT_ARGS unused);
# each target's libFuzzer summary is printed. Exit status: 0 no finding, 1 a finding, otherwise
# ci/upstream-vm.sh's.
set -euo pipefail
cd "$(dirname "$0")/.."
kernel=${1:-latest}
profile=${2:-default}
secs=${UPSTREAM_FUZZ_SECONDS:-60}
# The campaign build (ci/fuzz-build.sh: outcome counters only); UPSTREAM_FUZZ_BUILD=coverage for
# the `cargo fuzz build` one.
bins=$(ci/fuzz-build.sh "${UPSTREAM_FUZZ_BUILD:-outcome}")
targets=$(basename -s .rs fuzz/fuzz_targets/*.rs | tr "\n" " ")
payload=target/upstream-vm/fuzz-payload
rm -rf "$payload"
mkdir -p "$payload/bin" "$payload/corpus"
for t in $targets; do
  strip -o "$payload/bin/$t" "$bins/$t"
  mkdir -p "$payload/corpus/$t"
  cp -r "fixtures/corpus/$t/." "$payload/corpus/$t/" 2>/dev/null || true
done
# Runs inside the VM (busybox sh), from /out; what it leaves in /out comes back. Each target runs
# with its campaign flags (fuzz/options/<target>, ci/fuzz-options.sh).
{
  echo "export KVM_MSR_FUZZ_KMSG=1"
  echo "rc=0"
  for t in $targets; do
    cat <<RUN
mkdir -p /out/artifacts/$t /tmp/corpus-$t
cp /fuzz/corpus/$t/* /tmp/corpus-$t/ 2>/dev/null
echo "== $t: ${secs}s from \$(ls /tmp/corpus-$t | wc -l) seeds $(ci/fuzz-options.sh "$t")"
/fuzz/bin/$t /tmp/corpus-$t $(ci/fuzz-options.sh "$t") -max_total_time=$secs \\
  -artifact_prefix=/out/artifacts/$t/ -print_final_stats=1 >/out/fuzz-$t.log 2>&1 || rc=1
tail -n 12 /out/fuzz-$t.log
RUN
  done
  echo 'exit $rc'
} >"$payload/run.sh"
set +e
UPSTREAM_VM_TIMEOUT=${UPSTREAM_VM_TIMEOUT:-$(( 600 + 2 * secs * $(echo "$targets" | wc -w) ))} \
  bash ci/upstream-vm.sh "$kernel" "$profile" fuzz
rc=$?
set -e
out="target/upstream-vm/$kernel-$profile-fuzz"
found=$(find "$out/artifacts" -type f 2>/dev/null | wc -l)
echo "upstream fuzzing on $kernel ($profile): $found finding(s); artifacts in $out/artifacts"
find "$out/artifacts" -type f 2>/dev/null | sed 's/^/  /'
exit "$rc"
