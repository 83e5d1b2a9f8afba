//! Running checks: each in isolation (a panic is that check's failure), deviations applied.

use crate::check_id::{CheckId, Family};
use crate::checks::{Check, Context, Outcome};
use crate::deviations::Deviation;
use serde::Serialize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// A recorded, cited backend deviation from upstream.
    Deviation,
    Skip,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Deviation => "deviation",
            Verdict::Skip => "skip",
        }
    }
}

/// A check's verdict with everything a report needs.
#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub id: CheckId,
    #[serde(serialize_with = "ser_msr")]
    pub msr: Option<u32>,
    pub summary: String,
    pub cite: String,
    pub verdict: Verdict,
    /// Pass detail, skip reason, or a note on a failure.
    pub detail: String,
    pub expected: Option<String>,
    pub actual: Option<String>,
    pub deviation: Option<Deviation>,
    #[serde(serialize_with = "ser_dur")]
    pub duration: Duration,
}

fn ser_msr<S: serde::Serializer>(m: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(i) => s.serialize_str(&format!("{i:#x}")),
        None => s.serialize_none(),
    }
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Run one check and apply the deviation records.
pub fn run_check(check: &Check, ctx: &Context) -> CheckResult {
    let start = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| (check.run)(ctx))).unwrap_or_else(|p| {
        Outcome::fail(
            "the check to run to completion",
            format!("check panicked: {}", panic_text(p)),
        )
    });
    let duration = start.elapsed();
    let deviation = ctx
        .deviations
        .find(&check.id, crate::deviations::HostKey::of(&ctx.facts))
        .cloned();
    let mut r = CheckResult {
        id: check.id.clone(),
        msr: check.msr,
        summary: check.summary.clone(),
        cite: check.cite.clone(),
        verdict: Verdict::Pass,
        detail: String::new(),
        expected: None,
        actual: None,
        deviation: None,
        duration,
    };
    match (outcome, deviation) {
        (Outcome::Skip { reason }, _) => {
            r.verdict = Verdict::Skip;
            r.detail = reason;
        }
        (Outcome::Pass { detail }, None) => r.detail = detail,
        (Outcome::Pass { detail }, Some(d)) => {
            r.verdict = Verdict::Fail;
            let (f, l) = d.source.clone().unwrap_or_default();
            r.detail = format!(
                "stale deviation: {}:{} records that this check deviates on {}, but it passed ({detail}); remove the record",
                f.display(),
                l,
                d.backend
            );
            r.deviation = Some(d);
        }
        (Outcome::Fail { expected, actual }, None) => {
            r.verdict = Verdict::Fail;
            r.expected = Some(expected);
            r.actual = Some(actual);
        }
        (Outcome::Fail { expected, actual }, Some(d)) => {
            if d.covers(&actual) {
                r.verdict = Verdict::Deviation;
                r.detail = d.reason.clone();
            } else {
                r.verdict = Verdict::Fail;
                r.detail = format!("deviates differently from the record: {}", d.expects());
            }
            r.expected = Some(expected);
            r.actual = Some(actual);
            r.deviation = Some(d);
        }
    }
    r
}

/// Checks whose id contains any of `filters` (all when empty).
pub fn select<'a>(checks: &'a [Check], filters: &[String]) -> Vec<&'a Check> {
    checks
        .iter()
        .filter(|c| {
            let id = c.id.to_string();
            filters.is_empty() || filters.iter().any(|f| id.contains(f.as_str()))
        })
        .collect()
}

/// Run `selected` on `jobs` worker threads (panics caught per check), results in order.
pub fn run_checks(ctx: &Context, selected: &[&Check], jobs: usize) -> Vec<CheckResult> {
    let jobs = jobs.clamp(1, selected.len().max(1));
    let mut slots: Vec<Option<CheckResult>> = vec![None; selected.len()];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs)
            .map(|w| {
                s.spawn(move || {
                    (w..selected.len())
                        .step_by(jobs)
                        .map(|i| (i, run_check(selected[i], ctx)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, r) in h.join().expect("worker threads catch check panics") {
                slots[i] = Some(r);
            }
        }
    });
    slots
        .into_iter()
        .map(|r| r.expect("every check ran"))
        .collect()
}

/// The id of the kernel-log verdict `run_watched` adds.
pub const KERNEL_LOG: CheckId = CheckId::fixed(Family::KernelLog, "no-splat-while-checks-ran");

const KERNEL_LOG_CITE: &str = "a KVM operation must not make the kernel log a WARNING, BUG, Oops, general protection fault, KASAN or UBSAN report, nor taint it (Documentation/admin-guide/tainted-kernels.rst)";

/// `run_checks` with the kernel log watched (/dev/kmsg, oracles::kmsg): a new WARNING/BUG/...
/// record or taint change while the checks ran fails the checks that reproduce it when run again
/// one at a time, and the run's own kernel-log verdict names them (or says none reproduced it).
/// Without read access to /dev/kmsg that verdict is a skip saying so.
pub fn run_watched(ctx: &Context, selected: &[&Check], jobs: usize) -> Vec<CheckResult> {
    use crate::oracles::kmsg::KmsgWatch;
    let watch = KmsgWatch::new();
    let start = Instant::now();
    let mut results = run_checks(ctx, selected, jobs);
    let mut verdict = CheckResult {
        id: KERNEL_LOG,
        msr: None,
        summary: "the kernel logs no WARNING/BUG/Oops/KASAN/UBSAN record and stays untainted while the checks run".into(),
        cite: KERNEL_LOG_CITE.into(),
        verdict: Verdict::Pass,
        detail: String::new(),
        expected: None,
        actual: None,
        deviation: None,
        duration: start.elapsed(),
    };
    match watch {
        Err(e) => {
            verdict.verdict = Verdict::Skip;
            verdict.detail = format!("cannot read /dev/kmsg ({e}): a kernel splat while the checks ran would go unseen; run as root or with CAP_SYSLOG (sysctl kernel.dmesg_restrict)");
        }
        Ok(mut w) => match w.check() {
            Ok(()) => {
                verdict.detail = format!(
                    "no new record of that kind, taint unchanged, while {} checks ran",
                    selected.len()
                )
            }
            Err(v) => {
                // Attribute: run every check again on its own, watching each.
                let mut blamed = Vec::new();
                for (i, c) in selected.iter().enumerate() {
                    let Ok(mut one) = KmsgWatch::new() else { break };
                    let _ = run_check(c, ctx);
                    if let Err(again) = one.check() {
                        let r = &mut results[i];
                        r.verdict = Verdict::Fail;
                        r.detail = "the kernel logged a splat while this check ran (found when the checks were run again one at a time)".into();
                        r.expected = Some(format!("no kernel splat ({KERNEL_LOG_CITE})"));
                        r.actual = Some(again.actual);
                        blamed.push(c.id.to_string());
                    }
                }
                verdict.verdict = Verdict::Fail;
                verdict.expected = Some(v.expected);
                verdict.actual = Some(v.actual);
                verdict.detail = if blamed.is_empty() {
                    "no check reproduced it when run again one at a time".into()
                } else {
                    format!("reproduced by: {}", blamed.join(", "))
                };
            }
        },
    }
    verdict.duration = start.elapsed();
    results.push(verdict);
    results
}
