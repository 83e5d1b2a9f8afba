#!/usr/bin/env bash
# Figures, not hopes: run-to-run stability of the report, and long-run resource use of the fuzz
# targets, on this host.
#
#   ci/soak.sh [STABILITY_RUNS [SOAK_SECONDS]]     (defaults: 20 runs, 600 s per target)
#
# Stability: STABILITY_RUNS consecutive `kvm-msr report --format json` runs must give the same
# verdict for every check id; any difference is printed by check id.
# Soak: every fuzz target runs SOAK_SECONDS from its seeds while /proc/<pid>/status (VmRSS) and
# /proc/<pid>/fd are sampled every second; after a warm-up (the first tenth of the run, at least
# 5 s) RSS may grow by less than 10 MB and the floor of open fds (the fewest open in a quarter of
# the run: VM and vCPU fds come and go with every input) by no more than the host target's pool
# stock can vary (16 vCPUs). libFuzzer's corpus grows
# during a run, so -rss_limit_mb is left alone and the corpus is kept in memory-only temp dirs.
# Everything lands in target/soak/summary.json. Exit status: 0 all goals met, 1 one missed,
# 4 no /dev/kvm.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
secs=${2:-600}
out=target/soak
mkdir -p "$out"
if [ ! -e /dev/kvm ]; then
  echo "# SKIP soak: no /dev/kvm"
  exit 4
fi
cargo build --release --locked --bin kvm-msr >&2 || exit 1
rc=0

# --- stability ---------------------------------------------------------------------------------
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

# --- soak --------------------------------------------------------------------------------------
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked >&2 || exit 1
fi
(cd fuzz && cargo fuzz build --sanitizer none >&2) || exit 1
warm=$(( secs / 10 > 5 ? secs / 10 : 5 ))
: >"$out/soak.jsonl"
for t in $(cd fuzz && cargo fuzz list); do
  work=$(mktemp -d)
  cp -r "fixtures/corpus/$t/." "$work/" 2>/dev/null || true
  log="$out/soak-$t.log"
  "fuzz/target/x86_64-unknown-linux-gnu/release/$t" "$work" -max_total_time="$secs" \
    -print_final_stats=1 >"$log" 2>&1 &
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
  python3 - "$t" "$samples" "$log" "$warm" "$frc" <<'PY' >>"$out/soak.jsonl"
import json, re, sys
t, samples, log, warm, frc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
rows = [tuple(map(int, l.split())) for l in open(samples) if l.strip()]
after = [r for r in rows if r[0] >= warm] or rows[-1:]
text = open(log, errors="replace").read()
num = lambda k: int(m.group(1)) if (m := re.search(rf"stat::{k}:\s+(\d+)", text)) else None
s = {
    "target": t, "exit": frc, "seconds": rows[-1][0] if rows else 0,
    "executions": num("number_of_executed_units"), "exec_per_s": num("average_exec_per_sec"),
    "rss_kb_after_warmup": after[0][1], "rss_kb_end": after[-1][1],
    "rss_growth_mb": round((max(r[1] for r in after) - after[0][1]) / 1024, 1),
    # VM and vCPU fds come and go with every input: a leak shows as a rising floor, so compare
    # the fewest fds open in the first and in the last quarter after warm-up.
    "fds_floor_early": min(r[2] for r in after[:max(1, len(after) // 4)]),
    "fds_floor_late": min(r[2] for r in after[-max(1, len(after) // 4):]),
}
# The host target's pool keeps a varying stock of vCPUs (up to READY + IDLE_RAN_MAX + BATCH = 16
# in suite/src/fuzzing/pool.rs), so its floor may move by that much; a leak of one fd per input
# would pass it within seconds.
s["ok"] = frc == 0 and s["rss_growth_mb"] < 10 and s["fds_floor_late"] <= s["fds_floor_early"] + 16
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
    print(f"soak {s['target']}: {s['executions']} executions in {s['seconds']} s ({s['exec_per_s']}/s), "
          f"RSS +{s['rss_growth_mb']} MB after warm-up, fd floor {s['fds_floor_early']} -> {s['fds_floor_late']}, "
          f"exit {s['exit']}: {'ok' if s['ok'] else 'GOAL MISSED'}")
sys.exit(0 if all(s["ok"] for s in soak) else 1)
PY
echo "summary: $out/summary.json"
exit "$rc"
