//! Check ids survive being text: every id a check has parses back (`CheckId`'s `FromStr`) to the
//! same id and prints the same text, and no two checks share one.
//! `check-ids.round-trip-here`: the checks of this host (without /dev/kvm, the checks every host
//! has, `Context::without_kvm`; with KVM_MSR_REQUIRE_KVM=1 a missing KVM fails instead), and every
//! `guest` check has its `guest-fep` twin. `check-ids.round-trip-in-report`: every id of the JSON
//! report in KVM_MSR_IDS_REPORT (e.g. another host's, or the testbed's).

use kvm_msr_suite::check_id::{CheckId, Family};
use kvm_msr_suite::checks::{self, Context};
use kvm_msr_suite::report::compare::ReportFile;
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use std::collections::HashSet;

/// Problems with `ids` as text: one that does not parse back to itself, or one seen twice.
fn round_trip_problems<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut bad = Vec::new();
    for text in ids {
        match text.parse::<CheckId>() {
            Ok(id) if id.to_string() == text => {}
            Ok(id) => bad.push(format!("{text:?} parses back as {id}")),
            Err(e) => bad.push(e.to_string()),
        }
        if !seen.insert(text) {
            bad.push(format!("{text:?} is the id of two checks"));
        }
    }
    bad
}

fn verdict(what: String, bad: Vec<String>) -> Result<Completion, Failed> {
    if bad.is_empty() {
        Ok(Completion::Completed)
    } else {
        Err(format!("{what}:\n{}", bad.join("\n")).into())
    }
}

fn round_trip_here() -> Result<Completion, Failed> {
    let ctx = match Context::load() {
        Ok(c) => c,
        Err(e)
            if e.is_kvm_unavailable()
                && std::env::var("KVM_MSR_REQUIRE_KVM").as_deref() != Ok("1") =>
        {
            Context::without_kvm().map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string().into()),
    };
    let ids: Vec<CheckId> = checks::all(&ctx).into_iter().map(|c| c.id).collect();
    let texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let mut bad = round_trip_problems(texts.iter().map(String::as_str));
    let all: HashSet<&CheckId> = ids.iter().collect();
    let twins: HashSet<CheckId> = ids
        .iter()
        .filter_map(CheckId::forced_emulation_twin)
        .collect();
    for id in &ids {
        if id
            .forced_emulation_twin()
            .is_some_and(|t| !all.contains(&t))
        {
            bad.push(format!("{id} has no guest-fep twin"));
        }
        if id.family() == Family::GuestFep && !twins.contains(id) {
            bad.push(format!("{id} is the twin of no guest check"));
        }
    }
    verdict(format!("{} ids on this host", ids.len()), bad)
}

fn round_trip_in_report() -> Result<Completion, Failed> {
    let Some(report) = std::env::var_os("KVM_MSR_IDS_REPORT") else {
        return Ok(Completion::ignored_with(
            "KVM_MSR_IDS_REPORT is not set (a `kvm-msr report --format json`, e.g. target/upstream-vm/latest-all/report.json)",
        ));
    };
    let name = report.to_string_lossy();
    let text = std::fs::read_to_string(&report).map_err(|e| format!("{name}: {e}"))?;
    let parsed =
        ReportFile::parse(&text, std::path::Path::new(&report)).map_err(|e| e.to_string())?;
    let ids: Vec<&str> = parsed.results.iter().map(|r| r.id.as_str()).collect();
    if ids.is_empty() {
        return Err("the report has no results".into());
    }
    let what = format!("{} ids in {name}", ids.len());
    verdict(what, round_trip_problems(ids))
}

fn main() {
    assert!(round_trip_problems(["host.efer.reset", "filter.limits"]).is_empty());
    assert_eq!(
        round_trip_problems(["host.efer.reset", "host.efer.reset"]).len(),
        1
    );
    assert_eq!(
        round_trip_problems(["host.EFER.reset", "hots.efer.reset"]).len(),
        2
    );
    let args = Arguments::from_args();
    let trials = vec![
        Trial::ignorable_test("check-ids.round-trip-here", round_trip_here),
        Trial::ignorable_test("check-ids.round-trip-in-report", round_trip_in_report),
    ];
    libtest_mimic::run(&args, trials).exit();
}
