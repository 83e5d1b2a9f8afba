#!/usr/bin/env bash
# Figures, not hopes: run-to-run stability of the report, long-run resource use of the fuzz
# targets, and their throughput beside the floor the kernel imposes, on this host.
#
#   ci/soak.sh [STABILITY_RUNS [SOAK_SECONDS [EXECUTIONS]]]   (defaults: 20 runs, 600 s, no cap)
#
# Stability: STABILITY_RUNS consecutive `kvm-msr report --format json` runs must give the same
# verdict for every check id; any difference is printed by check id (0 skips this part).
# Soak: every fuzz target (SOAK_TARGETS="host guest ..." picks some) runs from its seeds for
# SOAK_SECONDS, or until EXECUTIONS inputs ran (libFuzzer -runs) if that comes first, while
# /proc/<pid>/status (VmRSS) and /proc/<pid>/fd are sampled every second; after a warm-up (the
# first tenth of the run, at least 5 s) RSS may grow by less than 10 MB and the floor of open fds
# (the fewest open in a quarter of the run: VM and vCPU fds come and go with every input) by no
# more than the host target's pool and its queues can vary (96 fds). libFuzzer's corpus grows
# during a run, so -rss_limit_mb is left alone and the corpus is kept in a temp dir on tmpfs
# (/dev/shm).
# Throughput: the run is made under ci/ioctl-clock.c (LD_PRELOAD), which times every ioctl,
# close, mmap and munmap; the main thread's (libFuzzer's loop) sum is the kernel-imposed floor,
# and floor_fraction = that time / the loop's wall time = exec/s / (1 / floor time per exec).
# Where the rest goes: the main thread's waits on other threads (futex) and its user-mode CPU.
# The targets are the campaign build (ci/fuzz-build.sh outcome; SOAK_BUILD=coverage for the other).
# Without a C compiler the throughput figures are left out, with a note.
# Everything lands in $SOAK_OUT/summary.json (default target/soak). Exit status: 0 all goals met,
# 1 one missed, 4 no /dev/kvm.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
secs=${2:-600}
execs=${3:-}
out=${SOAK_OUT:-target/soak}
mkdir -p "$out"
if [ ! -e /dev/kvm ]; then
  echo "# SKIP soak: no /dev/kvm"
  exit 4
fi
cargo build --release --locked --bin kvm-msr >&2 || exit 1
rc=0

# --- stability ---------------------------------------------------------------------------------
if [ "$runs" -gt 0 ]; then
for i in $(seq 1 "$runs"); do
  ./target/release/kvm-msr report --format json >"$out/report-$i.json" 2>/dev/null
done
python3 - "$out" "$runs" <<'PY' >"$out/stability.json" || rc=1
import json, sys
out, runs = sys.argv[1], int(sys.argv[2])
verdicts = [{r["id"]: r["verdict"] for r in json.load(open(f"{out}/report-{i}.json"))["results"]}
            for i in range(1, runs + 1)]
ids = sorted(set().union(*verdicts))
unstable = {i: [v.get(i, "absent") for v in verdicts] for i in ids
            if len({v.get(i, "absent") for v in verdicts}) > 1}
json.dump({"runs": runs, "checks": len(ids), "unstable": unstable}, sys.stdout, indent=1)
sys.exit(1 if unstable else 0)
PY
python3 - "$out/stability.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"stability: {s['runs']} reports, {s['checks']} checks, {len(s['unstable'])} with differing verdicts")
for cid, seq in s["unstable"].items():
    print(f"  {cid}: {' '.join(seq)}")
PY
rm -f "$out"/report-*.json
else
  echo '{"runs": 0, "checks": 0, "unstable": {}}' >"$out/stability.json"
fi

# --- soak --------------------------------------------------------------------------------------
# The campaign build (ci/fuzz-build.sh: outcome counters only); SOAK_BUILD=coverage measures the
# `cargo fuzz build` one instead.
bins=$(ci/fuzz-build.sh "${SOAK_BUILD:-outcome}") || exit 1
warm=$(( secs / 10 > 5 ? secs / 10 : 5 ))
clock=""
if command -v cc >/dev/null 2>&1 && cc -O2 -Wall -shared -fPIC -o "$out/ioctl-clock.so" ci/ioctl-clock.c -ldl; then
  clock=$(realpath "$out/ioctl-clock.so")
else
  echo "# throughput figures left out: no C compiler (cc) to build ci/ioctl-clock.c"
fi
# The corpus lives in memory: libFuzzer writes every new unit to it, and on a disk file system
# (here /tmp is ext4) the open/write/close of those files took 10-15 % of the host target's loop.
shm=/dev/shm
if [ ! -d "$shm" ] || [ ! -w "$shm" ] || [ "$(stat -f -c %T "$shm" 2>/dev/null)" != tmpfs ]; then
  shm=${TMPDIR:-/tmp}
  echo "# note: no writable tmpfs at /dev/shm; the corpus goes to $shm (exec/s include its file system)"
fi
: >"$out/soak.jsonl"
for t in ${SOAK_TARGETS:-$(basename -s .rs fuzz/fuzz_targets/*.rs)}; do
  work=$(mktemp -d -p "$shm" kvm-msr-soak.XXXXXX)
  cp -r "fixtures/corpus/$t/." "$work/" 2>/dev/null || true
  log="$out/soak-$t.log"
  # The target's campaign flags (fuzz/options/<target>), as README's campaign runs it.
  flags=$(ci/fuzz-options.sh "$t")
  rm -f "$out/clock-$t".* "$out/callback-$t"
  KVM_MSR_FUZZ_CALLBACK_CLOCK="$(realpath "$out")/callback-$t" \
  IOCTL_CLOCK_OUT="$(realpath "$out")/clock-$t" LD_PRELOAD="$clock" \
    "$bins/$t" "$work" $flags -max_total_time="$secs" \
    ${execs:+-runs="$execs"} -print_final_stats=1 >"$log" 2>&1 &
  pid=$!
  samples="$out/soak-$t.samples"
  : >"$samples"
  start=$(date +%s)
  while kill -0 "$pid" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/{print $2}' "/proc/$pid/status" 2>/dev/null)
    fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
    [ -n "$rss" ] && echo "$(( $(date +%s) - start )) $rss $fds" >>"$samples"
    sleep 1
  done
  wait "$pid"
  frc=$?
  rm -rf "$work"
  python3 - "$t" "$samples" "$log" "$warm" "$frc" "$out/clock-$t.$pid" "$out/callback-$t" "$flags" <<'PY' >>"$out/soak.jsonl"
import json, os, re, sys
t, samples, log, warm, frc, clock, callback, flags = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7], sys.argv[8]
rows = [tuple(map(int, l.split())) for l in open(samples) if l.strip()]
after = [r for r in rows if r[0] >= warm] or rows[-1:]
text = open(log, errors="replace").read()
num = lambda k: int(m.group(1)) if (m := re.search(rf"stat::{k}:\s+(\d+)", text)) else None
s = {
    "target": t, "flags": flags, "exit": frc, "seconds": rows[-1][0] if rows else 0,
    "executions": num("number_of_executed_units"), "exec_per_s": num("average_exec_per_sec"),
    "rss_kb_after_warmup": after[0][1], "rss_kb_end": after[-1][1],
    "rss_growth_mb": round((max(r[1] for r in after) - after[0][1]) / 1024, 1),
    # VM and vCPU fds come and go with every input: a leak shows as a rising floor, so compare
    # the fewest fds open in the first and in the last quarter after warm-up.
    "fds_floor_early": min(r[2] for r in after[:max(1, len(after) // 4)]),
    "fds_floor_late": min(r[2] for r in after[-max(1, len(after) // 4):]),
}
# The host target's pool keeps a varying stock of vCPUs (NEVER_RAN_STOCK + READY + IDLE_RAN_MAX =
# 32 + 8 + 4 = 44 in suite/src/fuzzing/pool/, up to GRAVES_MAX = 16 burials the supplier has not
# reached yet, and up to REAPER_QUEUE = 16 VMs waiting for the reaper with a VM fd and a vCPU fd
# each), so its floor may move by up to ~92; a leak of one fd per input (thousands a second) would
# pass that within a second.
s["ok"] = frc == 0 and s["rss_growth_mb"] < 10 and s["fds_floor_late"] <= s["fds_floor_early"] + 96
# Throughput beside the floor (ci/ioctl-clock.c): KVM ioctls are named by their number (type 0xAE).
KVM_NR = {0x01: "KVM_CREATE_VM", 0x02: "KVM_GET_MSR_INDEX_LIST", 0x03: "KVM_CHECK_EXTENSION",
          0x04: "KVM_GET_VCPU_MMAP_SIZE", 0x05: "KVM_GET_SUPPORTED_CPUID", 0x0a: "KVM_GET_MSR_FEATURE_INDEX_LIST",
          0x41: "KVM_CREATE_VCPU", 0x46: "KVM_SET_USER_MEMORY_REGION", 0x47: "KVM_SET_TSS_ADDR",
          0x80: "KVM_RUN", 0x81: "KVM_GET_REGS", 0x82: "KVM_SET_REGS", 0x83: "KVM_GET_SREGS",
          0x84: "KVM_SET_SREGS", 0x88: "KVM_GET_MSRS", 0x89: "KVM_SET_MSRS", 0x90: "KVM_SET_CPUID2",
          0x91: "KVM_GET_CPUID2", 0x9c: "KVM_X86_SETUP_MCE", 0x9f: "KVM_GET_VCPU_EVENTS",
          0xa0: "KVM_SET_VCPU_EVENTS", 0xa3: "KVM_ENABLE_CAP", 0xab: "KVM_GET_ONE_REG",
          0xac: "KVM_SET_ONE_REG", 0xc6: "KVM_X86_SET_MSR_FILTER", 0xce: "KVM_GET_STATS_FD"}
def call_name(req):
    if not req.startswith("0x"):
        return req
    r = int(req, 16)
    return KVM_NR.get(r & 0xff, f"KVM nr {r & 0xff:#x}") if (r >> 8) & 0xff == 0xAE else f"ioctl {r:#x}"
if os.path.exists(clock) and s["executions"]:
    rows = [l.split() for l in open(clock)]
    first, last = next((int(r[1]), int(r[2])) for r in rows if r[0] == "span")
    wall = max(last - first, 1) / 1e9
    calls = {}
    for who, req, n, ns in (r for r in rows if r[0] in ("main", "other")):
        c = calls.setdefault((who, call_name(req)), [0, 0])
        c[0] += int(n); c[1] += int(ns)
    n = s["executions"]
    main = {k[1]: v for k, v in calls.items() if k[0] == "main"}
    # futex: the main thread waiting on another thread (the vCPU supplier), and waking it up
    # (futex-wake: when nothing is ready, or a contended lock): the harness's threading, not
    # kernel-imposed.
    waits_s = main.pop("futex", [0, 0])[1] / 1e9
    wakes_s = main.pop("futex-wake", [0, 0])[1] / 1e9
    cpu = next(([int(r[1]) / 1e9, int(r[2]) / 1e9] for r in rows if r[0] == "cpu"), None)
    floor_s = sum(v[1] for v in main.values()) / 1e9
    kvm_calls = sum(v[0] for k, v in main.items() if k.startswith("KVM"))
    s["throughput"] = {
        "loop_wall_s": round(wall, 2),
        "exec_per_s_loop": round(n / wall),
        "kvm_ioctls_per_exec": round(kvm_calls / n, 2),
        "kvm_ioctls_per_exec_other_threads": round(sum(v[0] for k, v in calls.items() if k[0] == "other" and k[1].startswith("KVM")) / n, 2),
        "floor_us_per_exec": round(floor_s / n * 1e6, 1),
        "floor_exec_per_s": round(n / floor_s) if floor_s else None,
        "floor_fraction": round(floor_s / wall, 3),
        # Where the rest of the loop's wall time goes: waiting on other threads, and the main
        # thread's user-mode CPU time (harness, oracles, libFuzzer) over the whole process.
        "wait_fraction": round(waits_s / wall, 3),
        "wake_fraction": round(wakes_s / wall, 3),
        "user_cpu_fraction": round(cpu[0] / wall, 3) if cpu else None,
        "calls": {k: {"per_exec": round(v[0] / n, 3), "mean_us": round(v[1] / v[0] / 1e3, 2),
                      "share_of_wall": round(v[1] / 1e9 / wall, 3)}
                  for k, v in sorted(main.items(), key=lambda kv: -kv[1][1]) if v[1] / 1e9 / wall >= 0.001},
    }
    # The target's own time per input (fuzz_targets/common/callback_clock.rs): the loop's time
    # outside it is libFuzzer's (mutation, feature collection, corpus upkeep, decoding the input);
    # inside it, what is not a timed call is the harness's own work. A target whose harness cost
    # nothing would reach floor / (floor + libFuzzer's time) of the floor.
    if os.path.exists(callback):
        _, inputs, ns = open(callback).read().split()
        inside_s = int(ns) / 1e9
        outside_s = max(wall - inside_s, 0)
        s["throughput"].update({
            "libfuzzer_fraction": round(outside_s / wall, 3),
            "harness_fraction": round(max(inside_s - floor_s - waits_s - wakes_s, 0) / wall, 3),
            "floor_fraction_with_free_harness": round(floor_s / (floor_s + outside_s), 3),
        })
print(json.dumps(s))
PY
  rm -f "$samples"
done
python3 - "$out" <<'PY' || rc=1
import json, sys
out = sys.argv[1]
soak = [json.loads(l) for l in open(f"{out}/soak.jsonl")]
stab = json.load(open(f"{out}/stability.json"))
json.dump({"stability": stab, "soak": soak}, open(f"{out}/summary.json", "w"), indent=1)
for s in soak:
    print(f"soak {s['target']}{' (' + s['flags'] + ')' if s.get('flags') else ''}: "
          f"{s['executions']} executions in {s['seconds']} s ({s['exec_per_s']}/s), "
          f"RSS +{s['rss_growth_mb']} MB after warm-up, fd floor {s['fds_floor_early']} -> {s['fds_floor_late']}, "
          f"exit {s['exit']}: {'ok' if s['ok'] else 'GOAL MISSED'}")
    if tp := s.get("throughput"):
        print(f"  throughput {s['target']}: {tp['exec_per_s_loop']} exec/s, {tp['kvm_ioctls_per_exec']} KVM ioctls/exec "
              f"(+{tp['kvm_ioctls_per_exec_other_threads']} on other threads), kernel floor {tp['floor_us_per_exec']} us/exec "
              f"= {tp['floor_exec_per_s']} exec/s; the target reaches {100 * tp['floor_fraction']:.1f}% of it "
              f"(goal 90%{'' if tp['floor_fraction'] >= 0.9 else ': not met'})")
        print(f"    the rest of the loop: {round(100 * tp['wait_fraction'])}% waiting on other threads, "
              f"{round(100 * tp.get('wake_fraction', 0))}% waking them, "
              f"user-mode CPU {round(100 * (tp['user_cpu_fraction'] or 0))}% (harness and libFuzzer)")
        if "libfuzzer_fraction" in tp:
            print(f"    split at the target's entry: libFuzzer's own loop {round(100 * tp['libfuzzer_fraction'])}%, "
                  f"the harness's own work {round(100 * tp['harness_fraction'])}%; with a harness that cost "
                  f"nothing the target would reach {round(100 * tp['floor_fraction_with_free_harness'])}% of the floor")
        print("    " + ", ".join(f"{k} {v['per_exec']}/exec x {v['mean_us']} us" for k, v in tp["calls"].items()))
sys.exit(0 if all(s["ok"] for s in soak) else 1)
PY
echo "summary: $out/summary.json"
exit "$rc"
