#!/usr/bin/env bash
# The upstream testbed matrix in CI: every check against Debian's upstream kernels (kvm_amd under
# QEMU TCG, see ci/upstream-vm.sh), then the kernel A/B view: `kvm-msr diff` of their probes and
# `kvm-msr compare` of their reports (which checks change verdict between kernels, and why).
#
# UPSTREAM_KERNELS (default "latest 6.12 6.1") and UPSTREAM_PROFILES (default "default
# ignore-msrs fep all")
# choose the cells; two cells run at a time (one TCG vCPU each, on a 2-core machine).
# Every cell must end with 0 failed (exit 0 from ci/upstream-vm.sh), except the cells named in
# UPSTREAM_NOT_GATED, whose results are printed and reported as not gated (an issue still open
# says why). Any other exit (the VM did not boot, a module failed to load, a timeout) fails.
# Then every fuzz target runs a short campaign inside the first kernel's VM (ci/upstream-fuzz.sh);
# a finding is printed with its replayable input and named in the summary, but does not fail the
# step (a campaign is random; the verdicts gate). UPSTREAM_SKIP=1 skips the whole step (for a quick local .ci/run).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${UPSTREAM_SKIP:-0}" = 1 ]; then
  echo "# SKIP upstream testbed: UPSTREAM_SKIP=1"
  exit 0
fi
kernels=${UPSTREAM_KERNELS:-latest 6.12 6.1}
profiles=${UPSTREAM_PROFILES:-default ignore-msrs fep all}
not_gated=" ${UPSTREAM_NOT_GATED-} "

cargo build --release --locked --bin kvm-msr || exit 1
export KVM_MSR_BIN="$PWD/target/release/kvm-msr"
# Download every kernel first, one at a time (apt state per series), so the parallel cells
# below only read the cache.
for k in $kernels; do
  bash ci/upstream-vm.sh "$k" default fetch >/dev/null || echo "# fetching kernel $k failed; its cells will say why"
done

# A cell is KERNEL:PROFILE (profile names contain '-'); its folder is KERNEL-PROFILE.
cells=()
for k in $kernels; do for p in $profiles; do cells+=("$k:$p"); done; done
run_cell() { # kernel profile
  local log="target/upstream-vm/$1-$2.log"
  mkdir -p target/upstream-vm
  bash ci/upstream-vm.sh "$1" "$2" >"$log.out" 2>"$log" || true
}
i=0
while [ $i -lt ${#cells[@]} ]; do
  pids=()
  for c in "${cells[@]:$i:2}"; do
    run_cell "${c%%:*}" "${c#*:}" &
    pids+=($!)
  done
  wait "${pids[@]}"
  i=$((i + 2))
done

rc=0
summary=target/ci-upstream-summary.txt
: >"$summary"
echo "# upstream testbed (kvm_amd under QEMU TCG): one line per cell"
for cell in "${cells[@]}"; do
  k=${cell%%:*} p=${cell#*:}
  c="$k-$p"
  dir="target/upstream-vm/$k-$p"
  log="target/upstream-vm/$k-$p.log"
  line=$(tail -n 1 "$log.out" 2>/dev/null)
  cell_rc=$(cat "$dir/report.rc" 2>/dev/null || echo "none")
  release=$(sed -n 's/^upstream-vm: kernel \([^ ]*\) .*/\1/p' "$log" | head -n 1)
  gated=yes
  case "$not_gated" in *" $c "*) gated=no ;; esac
  if [ ! -s "$dir/report.json" ]; then
    echo "FAIL $c ($release): no report: $(grep '^upstream-vm:' "$log" | tail -n 1)"
    rc=1
    continue
  fi
  echo "# upstream $c ($release): $line" >>"$summary"
  if [ "$cell_rc" = 0 ]; then
    echo "ok   $c ($release): $line"
  elif [ "$gated" = no ]; then
    echo "open $c ($release): $line -- not gated yet (UPSTREAM_NOT_GATED); failures:"
    python3 - "$dir/report.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    if r["verdict"] == "fail":
        print(f"       {r['id']}: {(r.get('actual') or r.get('detail') or '')[:150]}")
PY
  else
    echo "FAIL $c ($release): $line"
    python3 - "$dir/report.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    if r["verdict"] == "fail":
        print(f"       {r['id']}: expected {r.get('expected')}; got {(r.get('actual') or r.get('detail') or '')[:200]}")
PY
    rc=1
  fi
done

# Fuzzing against upstream: every fuzz target for a short campaign inside the VM of the first
# kernel, kernel-log oracle on (UPSTREAM_FUZZ_SECONDS each, default 30; 0 skips it).
fuzz_secs=${UPSTREAM_FUZZ_SECONDS:-30}
if [ "$fuzz_secs" -gt 0 ]; then
  first=${kernels%% *}
  echo
  echo "# fuzzing against upstream ($first, ${fuzz_secs}s per target)"
  if UPSTREAM_FUZZ_SECONDS=$fuzz_secs bash ci/upstream-fuzz.sh "$first" default >target/upstream-vm/fuzz.log 2>&1; then
    grep -E '^(== |Done |upstream fuzzing)' target/upstream-vm/fuzz.log | sed 's/^/  /'
    echo "# upstream fuzz ($first): no finding" >>"$summary"
  else
    # A campaign is random: a finding is reported with its replayable input, loudly, but does
    # not gate CI (the verdicts above do). Every finding so far was turned into a seed.
    tail -n 40 target/upstream-vm/fuzz.log | sed 's/^/  /'
    echo "FINDING fuzzing against upstream ($first): see target/upstream-vm/fuzz.log; replayable inputs in target/upstream-vm/$first-default-fuzz/artifacts/"
    echo "# upstream fuzz ($first): FINDING, see target/upstream-vm/fuzz.log" >>"$summary"
  fi
fi

# The history of MSR fixes (fixtures/coverage/msr-fixes.toml) names checks that must exist on the
# newest kernel with every module parameter on (suite/tests/coverage.rs).
first=${kernels%% *}
if [ -s "target/upstream-vm/$first-all/report.json" ]; then
  echo
  echo "# msr-fixes.toml against $first-all"
  KVM_MSR_COVERAGE_REPORT="$PWD/target/upstream-vm/$first-all/report.json" \
    cargo test --locked -q -p kvm-msr-suite --test coverage >target/upstream-vm/coverage.log 2>&1 || rc=1
  tail -n 5 target/upstream-vm/coverage.log | sed 's/^/  /'
fi

# Kernel A/B: the MSR surface (probe diff) and the verdicts (report compare), newest first.
set -- $kernels
while [ $# -ge 2 ]; do
  a=$1 b=$2
  shift
  for p in default; do
    da="target/upstream-vm/$a-$p" db="target/upstream-vm/$b-$p"
    [ -s "$da/probe.json" ] && [ -s "$db/probe.json" ] || continue
    echo
    echo "# kernel A/B, $p profile: $a -> $b"
    "$KVM_MSR_BIN" diff "$da/probe.json" "$db/probe.json" | sed 's/^/  /'
    "$KVM_MSR_BIN" compare "$da/report.json" "$db/report.json" | sed 's/^/  /'
  done
done
exit "$rc"
