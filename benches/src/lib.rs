//! Support for the `msr_ioctls` benchmark: the counts measured beside criterion's timings
//! (vCPU statistics, guest TSC cycles), and the summary written after criterion has finished
//! (`target/kvm-msr-bench/summary.json`, schema in `kvm_msr_suite::bench_summary`).

use kvm_msr_suite::bench_summary::{classify, sample_stats, Bench, Fingerprint, Summary, SCHEMA};
use kvm_msr_suite::kvm::stats::{Stats, VcpuStats};
use kvm_msr_suite::machine::Machine;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// KVM_MSR_BENCH_SMOKE=1: every benchmark runs briefly (CI: they build and run, no figures).
pub fn smoke() -> bool {
    std::env::var("KVM_MSR_BENCH_SMOKE").is_ok_and(|v| v == "1")
}

/// Counts per operation from one instrumented pass.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    pub exits: Option<f64>,
    pub emulated: Option<f64>,
    pub user_exits: f64,
}

impl Counts {
    /// `self - reference`, for figures net of the loop or exit they ride on.
    pub fn minus(self, r: Counts) -> Counts {
        let sub = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        Counts {
            exits: sub(self.exits, r.exits),
            emulated: sub(self.emulated, r.emulated),
            user_exits: self.user_exits - r.user_exits,
        }
    }
}

/// A vCPU's statistics, or why there are none (said once, in the summary's notes).
pub enum StatsSource {
    Open(VcpuStats),
    Absent(String),
}

impl StatsSource {
    pub fn open(m: &Machine, cap: i32) -> StatsSource {
        match VcpuStats::open(&m.vcpu, cap) {
            Ok(s) => StatsSource::Open(s),
            Err(e) => StatsSource::Absent(e.to_string()),
        }
    }

    fn snapshot(&mut self) -> Option<Stats> {
        match self {
            StatsSource::Open(s) => s.snapshot().ok(),
            StatsSource::Absent(_) => None,
        }
    }
}

/// Run `run` `runs` times on `m` (each doing `ops` operations) with the vCPU's statistics read
/// before and after; counts per operation. Userspace exits are the harness's KVM_RUN returns.
pub fn count(
    m: &mut Machine,
    stats: &mut StatsSource,
    runs: u64,
    ops: u64,
    mut run: impl FnMut(&mut Machine),
) -> Counts {
    let before = stats.snapshot();
    let runs_before = m.vcpu.kvm_runs;
    for _ in 0..runs {
        run(m);
    }
    let after = stats.snapshot();
    let d = match (before, after) {
        (Some(b), Some(a)) => Some(a.since(&b)),
        _ => None,
    };
    let per = |n: u64| n as f64 / (runs * ops) as f64;
    Counts {
        exits: d.as_ref().and_then(|d| d.get("exits")).map(per),
        emulated: d.as_ref().and_then(|d| d.get("insn_emulation")).map(per),
        user_exits: per(m.vcpu.kvm_runs - runs_before),
    }
}

/// Figures measured beside criterion, by benchmark id.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    pub per: &'static str,
    pub counts: Option<Counts>,
    pub net_of: Option<String>,
    /// Guest TSC cycles per operation, one value per run.
    pub guest_cycles: Vec<f64>,
}

#[derive(Default)]
pub struct Recorder {
    pub extras: BTreeMap<String, Extra>,
    pub notes: Vec<String>,
    pub tsc_khz: Option<u32>,
    pub stats_state: String,
}

impl Recorder {
    pub fn extra(&mut self, id: &str, per: &'static str) -> &mut Extra {
        let e = self.extras.entry(id.to_string()).or_default();
        e.per = per;
        e
    }

    /// Say something visibly now and keep it for the summary.
    pub fn note(&mut self, text: String) {
        eprintln!("kvm-msr-bench: {text}");
        self.notes.push(text);
    }
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(s[s.len() / 2])
}

/// The target directory this benchmark binary was built in (target/<profile>/deps/<exe>).
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn criterion_dir() -> PathBuf {
    std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("criterion"))
}

/// Every benchmark criterion wrote since `since`: id -> (criterion's median estimate, sample
/// statistics).
fn criterion_results(since: SystemTime) -> BTreeMap<String, Bench> {
    let mut out = BTreeMap::new();
    let mut stack = vec![criterion_dir()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "new") {
                    if let Some((id, b)) = read_new(&p, since) {
                        out.insert(id, b);
                    }
                } else {
                    stack.push(p);
                }
            }
        }
    }
    out
}

fn read_new(dir: &Path, since: SystemTime) -> Option<(String, Bench)> {
    let sample = dir.join("sample.json");
    if std::fs::metadata(&sample).ok()?.modified().ok()? < since {
        return None;
    }
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("benchmark.json")).ok()?).ok()?;
    let id = meta.get("full_id")?.as_str()?.to_string();
    let est: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("estimates.json")).ok()?).ok()?;
    let s = sample_stats(&std::fs::read_to_string(&sample).ok()?).ok()?;
    let median_ns = est
        .pointer("/median/point_estimate")
        .and_then(|v| v.as_f64())
        .unwrap_or(s.median_ns);
    Some((
        id.clone(),
        Bench {
            name: id,
            per: "call".into(),
            median_ns,
            mad_ns: s.mad_ns,
            iqr_ns: s.iqr_ns,
            samples: s.samples,
            iterations: s.iterations,
            ..Default::default()
        },
    ))
}

fn fmt_ns(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.2} ms", v / 1e6)
    } else if v.abs() >= 1e3 {
        format!("{:.2} us", v / 1e3)
    } else {
        format!("{v:.0} ns")
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    // A net count of -0.001 is 0 within the pass's resolution; print it as 0.00, not -0.00.
    v.map(|x| f(if x.abs() < 0.005 { 0.0 } else { x }))
        .unwrap_or_else(|| "-".into())
}

/// Build the summary from criterion's files and the extras, write it, print the table.
pub fn finish(rec: &Recorder, facts: &kvm_msr_suite::kvm::facts::HostFacts, since: SystemTime) {
    let timed = criterion_results(since);
    if timed.is_empty() {
        eprintln!("kvm-msr-bench: no benchmark ran (filtered out or --list): no summary written");
        return;
    }
    let mut benches: Vec<Bench> = timed.into_values().collect();
    for b in &mut benches {
        if let Some(x) = rec.extras.get(&b.name) {
            b.per = x.per.to_string();
            if let Some(c) = x.counts {
                b.exits_per_op = c.exits;
                b.emulated_per_op = c.emulated;
                b.user_exits_per_op = Some(c.user_exits);
                b.measured = Some(classify(c.exits, c.emulated, c.user_exits));
            }
            b.net_of = x.net_of.clone();
            b.guest_cycles_per_op = median(&x.guest_cycles);
            b.guest_ns_per_op = b
                .guest_cycles_per_op
                .zip(rec.tsc_khz)
                .map(|(c, khz)| c * 1e6 / f64::from(khz));
        }
    }
    let get = |n: &str| benches.iter().find(|b| b.name == n).map(|b| b.median_ns);
    let harness_ratio = get("harness/run_ops-empty")
        .zip(get("harness/raw-loop"))
        .map(|(h, r)| h / r);
    let summary = Summary {
        schema: SCHEMA.into(),
        unix_time: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        smoke: smoke(),
        host: Fingerprint::from_facts(facts, rec.tsc_khz, rec.stats_state.clone()),
        harness_ratio,
        notes: rec.notes.clone(),
        benchmarks: benches,
    };
    print!("{}", table(&summary));
    let dir = target_dir().join("kvm-msr-bench");
    let path = dir.join("summary.json");
    let written = std::fs::create_dir_all(&dir).and_then(|_| {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&summary).expect("a summary serializes"),
        )
    });
    match written {
        Ok(()) => println!("summary: {}", path.display()),
        Err(e) => eprintln!("kvm-msr-bench: cannot write {}: {e}", path.display()),
    }
}

/// The human-readable table: wall clock beside guest cycles and counts.
pub fn table(s: &Summary) -> String {
    let empty_loop = s.get("guest_reference/empty-loop").map(|b| b.median_ns);
    let mut out = format!(
        "\nkvm-msr benchmarks · kernel {} · backend {} · {} · TSC {} kHz · vCPU stats {}\n",
        s.host.kernel_release,
        s.host.backend,
        s.host.cpu_model_name,
        opt(s.host.tsc_khz.map(f64::from), |v| format!("{v:.0}")),
        s.host.vcpu_stats
    );
    out += &format!(
        "{:<36} {:>10} {:>7} {:>10} {:>10} {:>11} {:>7} {:>7} {:>7}  measured\n",
        "benchmark", "median", "MAD", "net/op", "guest ns", "guest cyc", "exits", "user", "emul"
    );
    for b in &s.benchmarks {
        let net = match (
            b.name.starts_with("guest_rdmsr/") || b.name.starts_with("guest_wrmsr/"),
            empty_loop,
        ) {
            (true, Some(e)) => fmt_ns(b.median_ns - e),
            _ => "-".into(),
        };
        out += &format!(
            "{:<36} {:>10} {:>6.1}% {:>10} {:>10} {:>11} {:>7} {:>7} {:>7}  {}\n",
            b.name,
            fmt_ns(b.median_ns),
            100.0 * b.mad_ns / b.median_ns,
            net,
            opt(b.guest_ns_per_op, fmt_ns),
            opt(b.guest_cycles_per_op, |v| format!("{v:.0}")),
            opt(b.exits_per_op, |v| format!("{v:.2}")),
            opt(b.user_exits_per_op, |v| format!("{v:.2}")),
            opt(b.emulated_per_op, |v| format!("{v:.2}")),
            b.measured.as_deref().unwrap_or("-"),
        );
    }
    out += "Per access (guest_*): wall time of one KVM_RUN of the loop / iterations; net/op less guest_reference/empty-loop.\n";
    out += "exits, user (returns to userspace) and emul (emulated instructions) per op from the vCPU's KVM statistics in a separate pass, net of the empty loop for guest_rdmsr/wrmsr.\n";
    if let Some(r) = s.harness_ratio {
        out += &format!("harness round trip / raw KVM_RUN loop: {r:.3} (target <= 1.05)\n");
    }
    for n in &s.notes {
        out += &format!("note: {n}\n");
    }
    out
}
