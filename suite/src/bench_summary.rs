//! The benchmarks' machine-readable summary (`target/kvm-msr-bench/summary.json`, written by
//! `cargo bench`) and the comparison of summaries from two kernels (`kvm-msr bench-compare`).
//!
//! A difference between kernels is called real only when interleaved runs say so: at least
//! [`MIN_RUNS`] runs per side, every run on one side faster than every run on the other (no
//! overlap of the per-run medians), and the change of the median of medians larger than both the
//! larger run-to-run range of the two sides and [`MIN_CHANGE`]. With n runs per side, no overlap
//! happens by chance with probability 2 / C(2n, n): 10 % for 3 runs, 2.9 % for 4, 0.8 % for 5.
//! With fewer runs the comparison says it cannot decide instead of guessing.

use crate::error::Error;
use crate::kvm::facts::HostFacts;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub const SCHEMA: &str = "kvm-msr-bench-summary/1";

/// Runs per side below which no verdict is given.
pub const MIN_RUNS: usize = 3;
/// Changes smaller than this (relative) are never called a difference: an A/A comparison of
/// interleaved runs of one kernel on the CI host moved single benchmarks by up to 0.6 % with
/// non-overlapping runs (README, Benchmarks).
pub const MIN_CHANGE: f64 = 0.01;

/// The host a summary was measured on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub kernel_release: String,
    pub backend: String,
    pub cpu_vendor: String,
    pub cpu_model_name: String,
    pub cpu_family: u32,
    pub cpu_model: u32,
    pub cpu_stepping: u32,
    pub kvm_params: BTreeMap<String, String>,
    pub backend_params: BTreeMap<String, String>,
    pub caps: BTreeMap<String, i32>,
    /// KVM_GET_TSC_KHZ of the benchmark vCPU.
    pub tsc_khz: Option<u32>,
    /// "available", or why the vCPU statistics are not.
    pub vcpu_stats: String,
}

impl Fingerprint {
    pub fn from_facts(f: &HostFacts, tsc_khz: Option<u32>, vcpu_stats: String) -> Fingerprint {
        Fingerprint {
            kernel_release: f.kernel_release.clone(),
            backend: f.backend.name().to_string(),
            cpu_vendor: format!("{:?}", f.cpu.vendor),
            cpu_model_name: f.cpu.model_name.clone(),
            cpu_family: f.cpu.family,
            cpu_model: f.cpu.model,
            cpu_stepping: f.cpu.stepping,
            kvm_params: f.kvm_params.clone(),
            backend_params: f.backend_params.clone(),
            caps: f.caps.clone(),
            tsc_khz,
            vcpu_stats,
        }
    }

    /// The fields that should be equal when two kernels are compared on one machine.
    fn machine(&self) -> [(&'static str, String); 4] {
        [
            ("backend", self.backend.clone()),
            (
                "cpu",
                format!("{} {}", self.cpu_vendor, self.cpu_model_name),
            ),
            ("kvm params", format!("{:?}", self.kvm_params)),
            ("tsc_khz", format!("{:?}", self.tsc_khz)),
        ]
    }
}

/// One benchmark's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Bench {
    /// Criterion's id, e.g. `guest_rdmsr/pat`.
    pub name: String,
    /// What one operation is ("access", "call", "round trip").
    pub per: String,
    /// Criterion's median estimate of the time per operation.
    pub median_ns: f64,
    /// Median absolute deviation and interquartile range of the per-sample times.
    pub mad_ns: f64,
    pub iqr_ns: f64,
    pub samples: u64,
    /// Operations timed in all samples together.
    pub iterations: u64,
    /// From the vCPU's KVM statistics in a separate instrumented pass, per operation, less the
    /// reference named in `net_of` where there is one.
    pub exits_per_op: Option<f64>,
    pub emulated_per_op: Option<f64>,
    /// Returns from KVM_RUN to userspace per operation (counted by the harness).
    pub user_exits_per_op: Option<f64>,
    pub net_of: Option<String>,
    /// What one operation was, from the counts: "exit", "emulated", "in-guest" (neither), each
    /// with "+userspace" when it returned to userspace; None without counts.
    pub measured: Option<String>,
    /// Guest TSC cycles per operation (median over runs) and the same in ns via KVM_GET_TSC_KHZ.
    pub guest_cycles_per_op: Option<f64>,
    pub guest_ns_per_op: Option<f64>,
}

/// The whole summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub schema: String,
    /// Seconds since the epoch when the run ended.
    pub unix_time: u64,
    /// KVM_MSR_BENCH_SMOKE=1: too short to compare.
    pub smoke: bool,
    pub host: Fingerprint,
    /// The harness's round trip (Machine::run_ops of an empty program) over the raw loop's
    /// (KVM_RUN and the exit check only). Target: at most 1.05.
    pub harness_ratio: Option<f64>,
    /// What was skipped or is worth knowing, in words.
    pub notes: Vec<String>,
    pub benchmarks: Vec<Bench>,
}

impl Summary {
    pub fn get(&self, name: &str) -> Option<&Bench> {
        self.benchmarks.iter().find(|b| b.name == name)
    }

    /// Parse the text of the summary file `file` (named in errors).
    pub fn parse(text: &str, file: &std::path::Path) -> Result<Summary, Error> {
        let s: Summary = serde_json::from_str(text).map_err(|e| {
            let message = format!("not a kvm-msr benchmark summary: {e}");
            Error::input(file, Some(e.line()), message)
        })?;
        if s.schema != SCHEMA {
            let message = format!("schema {:?}, expected {SCHEMA:?}", s.schema);
            return Err(Error::input(file, None, message));
        }
        Ok(s)
    }
}

/// Classify one operation from its counts per operation (see `Bench::measured`).
pub fn classify(exits: Option<f64>, emulated: Option<f64>, user_exits: f64) -> String {
    let mut what = match (exits, emulated) {
        (Some(x), _) if x >= 0.5 => "exit".to_string(),
        (_, Some(e)) if e >= 0.5 => "emulated".to_string(),
        (Some(_), Some(_)) => "in-guest".to_string(),
        _ => "unknown".to_string(),
    };
    if user_exits >= 0.5 {
        what += "+userspace";
    }
    what
}

/// Per-iteration statistics of criterion's `sample.json` (`iters` and total `times` in ns per
/// sample).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleStats {
    pub median_ns: f64,
    pub mad_ns: f64,
    pub iqr_ns: f64,
    pub samples: u64,
    pub iterations: u64,
}

#[derive(Deserialize)]
struct CriterionSample {
    iters: Vec<f64>,
    times: Vec<f64>,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

pub fn sample_stats(sample_json: &str) -> Result<SampleStats, String> {
    let s: CriterionSample = serde_json::from_str(sample_json)
        .map_err(|e| format!("not a criterion sample.json: {e}"))?;
    if s.iters.len() != s.times.len() || s.iters.is_empty() {
        return Err(format!(
            "{} iteration counts for {} times",
            s.iters.len(),
            s.times.len()
        ));
    }
    let per = sorted(
        s.iters
            .iter()
            .zip(&s.times)
            .map(|(i, t)| t / i.max(1.0))
            .collect(),
    );
    let median = quantile(&per, 0.5);
    let dev = sorted(per.iter().map(|x| (x - median).abs()).collect());
    Ok(SampleStats {
        median_ns: median,
        mad_ns: quantile(&dev, 0.5),
        iqr_ns: quantile(&per, 0.75) - quantile(&per, 0.25),
        samples: per.len() as u64,
        iterations: s.iters.iter().sum::<f64>() as u64,
    })
}

/// How one benchmark compares across the two sides.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub name: String,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    /// (median of B's medians - median of A's) / median of A's.
    pub change: f64,
    /// The larger relative run-to-run range ((max - min) / median) of the two sides.
    pub noise: f64,
    pub verdict: Verdict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Faster,
    Slower,
    WithinNoise,
    /// Fewer than MIN_RUNS runs on a side.
    Undecided,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::Faster => "B faster",
            Verdict::Slower => "B SLOWER",
            Verdict::WithinNoise => "within noise",
            Verdict::Undecided => "undecided (too few runs)",
        }
    }
}

/// The comparison of two sets of summaries.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    pub rows: Vec<Row>,
    /// Benchmarks missing from some summary, and host differences worth knowing.
    pub warnings: Vec<String>,
}

fn median(v: &[f64]) -> f64 {
    quantile(&sorted(v.to_vec()), 0.5)
}

/// Chance that n runs per side fall apart with no overlap when nothing changed: 2 / C(2n, n).
pub fn chance_of_no_overlap(n: usize) -> f64 {
    let mut c = 1.0f64;
    for k in 0..n {
        c = c * (2 * n - k) as f64 / (k + 1) as f64;
    }
    2.0 / c
}

pub fn compare(a: &[Summary], b: &[Summary]) -> Comparison {
    let mut cmp = Comparison::default();
    let all: Vec<&Summary> = a.iter().chain(b).collect();
    if all.iter().any(|s| s.smoke) {
        cmp.warnings.push(
            "a summary comes from a smoke run (KVM_MSR_BENCH_SMOKE=1): too short to compare".into(),
        );
    }
    if let Some(first) = all.first() {
        for s in &all[1..] {
            for ((what, x), (_, y)) in first.host.machine().iter().zip(s.host.machine().iter()) {
                if x != y {
                    cmp.warnings.push(format!(
                        "the summaries differ in {what} ({x} vs {y}): compare kernels on one machine"
                    ));
                }
            }
        }
    }
    cmp.warnings.dedup();
    let mut names: Vec<&str> = all
        .iter()
        .flat_map(|s| s.benchmarks.iter().map(|b| b.name.as_str()))
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        let side = |s: &[Summary]| -> Option<Vec<f64>> {
            s.iter().map(|s| s.get(name).map(|b| b.median_ns)).collect()
        };
        let (Some(va), Some(vb)) = (side(a), side(b)) else {
            cmp.warnings
                .push(format!("{name}: not in every summary, left out"));
            continue;
        };
        let (ma, mb) = (median(&va), median(&vb));
        let range = |v: &[f64], m: f64| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
            (hi - lo) / m
        };
        let change = (mb - ma) / ma;
        let noise = range(&va, ma).max(range(&vb, mb));
        let max_a = va.iter().copied().fold(f64::MIN, f64::max);
        let min_a = va.iter().copied().fold(f64::MAX, f64::min);
        let max_b = vb.iter().copied().fold(f64::MIN, f64::max);
        let min_b = vb.iter().copied().fold(f64::MAX, f64::min);
        let beyond = change.abs() > noise.max(MIN_CHANGE);
        let verdict = if va.len() < MIN_RUNS || vb.len() < MIN_RUNS {
            Verdict::Undecided
        } else if max_b < min_a && beyond {
            Verdict::Faster
        } else if min_b > max_a && beyond {
            Verdict::Slower
        } else {
            Verdict::WithinNoise
        };
        cmp.rows.push(Row {
            name: name.to_string(),
            a: va,
            b: vb,
            change,
            noise,
            verdict,
        });
    }
    cmp
}

fn ns(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} ms", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2} us", v / 1e3)
    } else {
        format!("{v:.0} ns")
    }
}

impl Comparison {
    /// True when some benchmark differs beyond the noise.
    pub fn differs(&self) -> bool {
        self.rows
            .iter()
            .any(|r| matches!(r.verdict, Verdict::Faster | Verdict::Slower))
    }

    pub fn to_text(&self, runs_a: usize, runs_b: usize) -> String {
        let mut out = String::new();
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        let _ = writeln!(
            out,
            "{:<38} {:>11} {:>11} {:>8} {:>7}  verdict",
            "benchmark", "A median", "B median", "change", "noise"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<38} {:>11} {:>11} {:>+7.1}% {:>6.1}%  {}",
                r.name,
                ns(median(&r.a)),
                ns(median(&r.b)),
                100.0 * r.change,
                100.0 * r.noise,
                r.verdict.text()
            );
        }
        let n = runs_a.min(runs_b);
        let _ = writeln!(
            out,
            "{runs_a} run(s) of A, {runs_b} of B. A difference counts when each side has at least {MIN_RUNS} runs, the runs of A and B do not overlap, and the change exceeds the larger run-to-run range (noise) and {:.0}%.",
            100.0 * MIN_CHANGE
        );
        if n >= MIN_RUNS {
            let _ = writeln!(
                out,
                "With {n} runs per side, no overlap happens by chance {:.1}% of the time per benchmark; interleave 5 runs per side (A B A B ...) for 0.8%.",
                100.0 * chance_of_no_overlap(n)
            );
        } else {
            let _ = writeln!(
                out,
                "Too few runs to tell a change from run-to-run noise: interleave at least {MIN_RUNS} (better 5) runs per side."
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(medians: &[(&str, f64)]) -> Summary {
        Summary {
            schema: SCHEMA.into(),
            benchmarks: medians
                .iter()
                .map(|(n, m)| Bench {
                    name: n.to_string(),
                    median_ns: *m,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn sample_stats_are_per_iteration() {
        let s =
            sample_stats(r#"{"sampling_mode":"Linear","iters":[1,2,3,4],"times":[10,40,30,80]}"#)
                .unwrap();
        // per iteration: 10, 20, 10, 20 -> median 15, deviations all 5.
        assert_eq!(s.median_ns, 15.0);
        assert_eq!(s.mad_ns, 5.0);
        assert_eq!(s.iterations, 10);
        assert_eq!(s.samples, 4);
        assert_eq!(s.iqr_ns, 10.0);
        assert!(sample_stats(r#"{"iters":[1],"times":[]}"#).is_err());
        assert!(sample_stats("[]").is_err());
    }

    #[test]
    fn separated_runs_beyond_noise_are_a_difference() {
        let a = [
            summary(&[("x", 100.0)]),
            summary(&[("x", 102.0)]),
            summary(&[("x", 101.0)]),
        ];
        let b = [
            summary(&[("x", 120.0)]),
            summary(&[("x", 121.0)]),
            summary(&[("x", 119.0)]),
        ];
        let c = compare(&a, &b);
        assert_eq!(c.rows[0].verdict, Verdict::Slower);
        assert!((c.rows[0].change - 0.1881).abs() < 1e-3);
        assert!(c.differs());
        assert_eq!(compare(&b, &a).rows[0].verdict, Verdict::Faster);
    }

    #[test]
    fn overlapping_runs_are_noise_even_with_a_changed_median() {
        let a = [
            summary(&[("x", 100.0)]),
            summary(&[("x", 130.0)]),
            summary(&[("x", 101.0)]),
        ];
        let b = [
            summary(&[("x", 110.0)]),
            summary(&[("x", 112.0)]),
            summary(&[("x", 140.0)]),
        ];
        let c = compare(&a, &b);
        assert_eq!(c.rows[0].verdict, Verdict::WithinNoise);
        assert!(!c.differs());
    }

    #[test]
    fn separated_but_smaller_than_the_spread_is_noise() {
        // No overlap, but a 2% change against a 3% run-to-run range.
        let a = [
            summary(&[("x", 100.0)]),
            summary(&[("x", 97.0)]),
            summary(&[("x", 99.0)]),
        ];
        let b = [
            summary(&[("x", 101.0)]),
            summary(&[("x", 101.5)]),
            summary(&[("x", 101.2)]),
        ];
        assert_eq!(compare(&a, &b).rows[0].verdict, Verdict::WithinNoise);
        // No overlap and beyond a tiny range, but under MIN_CHANGE.
        let a = [
            summary(&[("x", 100.0)]),
            summary(&[("x", 100.1)]),
            summary(&[("x", 100.05)]),
        ];
        let b = [
            summary(&[("x", 100.6)]),
            summary(&[("x", 100.65)]),
            summary(&[("x", 100.7)]),
        ];
        assert_eq!(compare(&a, &b).rows[0].verdict, Verdict::WithinNoise);
    }

    #[test]
    fn fewer_than_three_runs_per_side_is_undecided_and_says_so() {
        let c = compare(&[summary(&[("x", 100.0)])], &[summary(&[("x", 200.0)])]);
        assert_eq!(c.rows[0].verdict, Verdict::Undecided);
        assert!(!c.differs());
        assert!(c.to_text(1, 1).contains("interleave at least 3"));
        let two = [summary(&[("x", 100.0)]), summary(&[("x", 101.0)])];
        let other = [summary(&[("x", 200.0)]), summary(&[("x", 201.0)])];
        assert_eq!(compare(&two, &other).rows[0].verdict, Verdict::Undecided);
    }

    #[test]
    fn missing_benchmarks_and_other_machines_are_warnings() {
        let mut other = summary(&[("x", 1.0)]);
        other.host.cpu_model_name = "another CPU".into();
        let c = compare(&[summary(&[("x", 1.0), ("y", 2.0)])], &[other]);
        assert_eq!(c.rows.len(), 1);
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("y: not in every summary")));
        assert!(c.warnings.iter().any(|w| w.contains("differ in cpu")));
    }

    #[test]
    fn operations_are_classified_by_their_counts() {
        assert_eq!(classify(Some(0.0), Some(0.99), 0.0), "emulated");
        assert_eq!(classify(Some(1.0), Some(16.0), 0.0), "exit");
        assert_eq!(classify(Some(1.0), Some(3.0), 1.0), "exit+userspace");
        assert_eq!(classify(Some(0.0), Some(0.0), 0.0), "in-guest");
        assert_eq!(classify(None, None, 0.0), "unknown");
    }

    #[test]
    fn chance_of_no_overlap_matches_the_binomial() {
        assert!((chance_of_no_overlap(3) - 0.1).abs() < 1e-9);
        assert!((chance_of_no_overlap(5) - 2.0 / 252.0).abs() < 1e-9);
    }

    #[test]
    fn parse_rejects_other_files_with_the_file_named() {
        let e = Summary::parse("{}", "a.json".as_ref()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("a.json:1: not a kvm-msr benchmark summary: "),
            "{e}"
        );
        let mut s = summary(&[]);
        s.schema = "other".into();
        let e = Summary::parse(&serde_json::to_string(&s).unwrap(), "b.json".as_ref()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("b.json: schema \"other\", expected {SCHEMA:?}")
        );
        let ok = Summary::parse(
            &serde_json::to_string(&summary(&[("x", 1.0)])).unwrap(),
            "c".as_ref(),
        )
        .unwrap();
        assert_eq!(ok.get("x").unwrap().median_ns, 1.0);
    }
}
