//! Running checks: each in isolation (a panic is that check's failure), deviations applied.

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
    pub id: String,
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
        .find(&check.id, ctx.facts.deviation_key())
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
        .filter(|c| filters.is_empty() || filters.iter().any(|f| c.id.contains(f.as_str())))
        .collect()
}
