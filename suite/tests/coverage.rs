//! Keeps fixtures/coverage/msr-fixes.toml honest: every row parses and is well formed
//! (`coverage.rows-well-formed`, no KVM needed); every check glob a row names matches a check
//! on this host, or is declared host-dependent (`coverage.checks-exist-here`, needs /dev/kvm:
//! without it the test is ignored with the reason, or fails with KVM_MSR_REQUIRE_KVM=1); and,
//! given a report JSON in KVM_MSR_COVERAGE_REPORT (e.g. the upstream testbed's), that every glob
//! matches a check id in it (`coverage.checks-exist-in-report`).

use kvm_msr_suite::check_id::{CheckId, Family};
use kvm_msr_suite::checks::{self, Context};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};

const AREAS: &[&str] = &[
    "ioctl",
    "host-initiated",
    "reserved-bits",
    "canonical",
    "feature-msrs",
    "lists",
    "filter",
    "user-exits",
    "pv",
    "hyperv",
    "x2apic",
    "mtrr-pat",
    "mce",
    "tsc",
    "pmu",
    "spec-ctrl",
    "efer",
    "debugctl",
    "save-restore",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    fix: Vec<Fix>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fix {
    commit: String,
    subject: String,
    release: Option<String>,
    area: String,
    source: String,
    #[serde(default)]
    checks: Vec<String>,
    #[serde(default)]
    checks_where: BTreeMap<String, String>,
    none: Option<String>,
    missing: Option<String>,
    #[allow(dead_code)]
    note: Option<String>,
}

fn path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/coverage/msr-fixes.toml")
}

fn load() -> Result<Vec<Fix>, String> {
    let p = path();
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(file.fix)
}

/// Problems with one row, each prefixed with its commit.
fn row_problems(f: &Fix) -> Vec<String> {
    let mut bad = Vec::new();
    let is_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if f.commit.len() != 12 || !is_hex(&f.commit) {
        bad.push("commit is not 12 lower-case hex digits".to_string());
    }
    if f.subject.trim().is_empty() || f.source.trim().is_empty() {
        bad.push("empty subject or source".into());
    }
    if !AREAS.contains(&f.area.as_str()) {
        bad.push(format!("unknown area {:?}", f.area));
    }
    if let Some(r) = &f.release {
        let ok = r.split_once('.').is_some_and(|(a, b)| {
            !a.is_empty() && !b.is_empty() && (a.to_owned() + b).bytes().all(|c| c.is_ascii_digit())
        });
        if !ok {
            bad.push(format!("release {r:?} is not MAJOR.MINOR"));
        }
    }
    let has_checks = !f.checks.is_empty() || !f.checks_where.is_empty();
    let kinds = [has_checks, f.none.is_some(), f.missing.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        bad.push("needs exactly one of checks (or checks_where), none, missing".into());
    }
    for t in f
        .none
        .iter()
        .chain(&f.missing)
        .chain(f.checks_where.values())
    {
        if t.trim().is_empty() {
            bad.push("an empty reason".into());
        }
    }
    for g in f.checks.iter().chain(f.checks_where.keys()) {
        if g.is_empty() || g.contains(char::is_whitespace) {
            bad.push(format!("malformed check glob {g:?}"));
        } else if let Some(p) = glob_problem(g) {
            bad.push(p);
        }
    }
    bad.into_iter()
        .map(|b| format!("{}: {b}", f.commit))
        .collect()
}

/// A name without `*` must be a check id (`CheckId`'s parser); a glob's family, unless its first
/// segment has a `*`, must be one, and its other characters those of ids.
fn glob_problem(g: &str) -> Option<String> {
    if !g.contains('*') {
        return g.parse::<CheckId>().err().map(|e| e.to_string());
    }
    let family = g.split('.').next().unwrap_or("");
    if !family.contains('*') {
        if let Err(e) = family.parse::<Family>() {
            return Some(format!("check glob {g:?}: {e}"));
        }
    }
    let id_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.*".contains(c);
    (!g.chars().all(id_char)).then(|| format!("check glob {g:?}: a character no check id has"))
}

/// `*` matches any run of characters; everything else literally; the whole id must match.
fn glob_match(glob: &str, id: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return glob == id;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !id.starts_with(first) || id.len() < first.len() + last.len() || !id.ends_with(last) {
        return false;
    }
    let mut rest = &id[first.len()..id.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

fn rows_well_formed() -> Result<Completion, Failed> {
    let fixes = load()?;
    let mut bad: Vec<String> = fixes.iter().flat_map(row_problems).collect();
    let mut seen = HashSet::new();
    for f in &fixes {
        if !seen.insert(&f.commit) {
            bad.push(format!("{}: listed twice", f.commit));
        }
    }
    if bad.is_empty() {
        Ok(Completion::Completed)
    } else {
        Err(bad.join("\n").into())
    }
}

fn require_kvm() -> bool {
    std::env::var("KVM_MSR_REQUIRE_KVM").is_ok_and(|v| v == "1")
}

fn checks_exist_here() -> Result<Completion, Failed> {
    let fixes = load()?;
    let ctx = match Context::load() {
        Ok(c) => c,
        Err(e) if e.is_kvm_unavailable() && !require_kvm() => {
            return Ok(Completion::ignored_with(format!(
                "coverage ids not checked against this host: {e}"
            )))
        }
        Err(e) => return Err(e.to_string().into()),
    };
    let ids: Vec<String> = checks::all(&ctx)
        .into_iter()
        .map(|c| c.id.to_string())
        .collect();
    let matches = |g: &str| ids.iter().any(|id| glob_match(g, id));
    let mut bad = Vec::new();
    let mut elsewhere = Vec::new();
    for f in &fixes {
        for g in &f.checks {
            if !matches(g) {
                bad.push(format!("{}: {g} matches no check on this host", f.commit));
            }
        }
        for (g, when) in &f.checks_where {
            if !matches(g) {
                elsewhere.push(format!("{g} ({when})"));
            }
        }
    }
    if !bad.is_empty() {
        return Err(bad.join("\n").into());
    }
    if elsewhere.is_empty() {
        Ok(Completion::Completed)
    } else {
        Ok(Completion::ignored_with(format!(
            "every `checks` glob matches here; not instantiated on this host (set KVM_MSR_COVERAGE_REPORT to a report from a host that has them): {}",
            elsewhere.join(", ")
        )))
    }
}

fn checks_exist_in_report() -> Result<Completion, Failed> {
    let Some(report) = std::env::var_os("KVM_MSR_COVERAGE_REPORT") else {
        return Ok(Completion::ignored_with(
            "KVM_MSR_COVERAGE_REPORT is not set (e.g. target/upstream-vm/latest-all/report.json)",
        ));
    };
    let fixes = load()?;
    let text = std::fs::read_to_string(&report)
        .map_err(|e| format!("{}: {e}", report.to_string_lossy()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let ids: Vec<&str> = json["results"]
        .as_array()
        .ok_or("the report has no results array")?
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    let bad: Vec<String> = fixes
        .iter()
        .flat_map(|f| {
            f.checks
                .iter()
                .chain(f.checks_where.keys())
                .filter(|g| !ids.iter().any(|id| glob_match(g, id)))
                .map(move |g| format!("{}: {g} matches no check in the report", f.commit))
        })
        .collect();
    if bad.is_empty() {
        Ok(Completion::Completed)
    } else {
        Err(bad.join("\n").into())
    }
}

fn main() {
    assert!(glob_match(
        "host.*.write.non-canonical*",
        "host.lstar.write.non-canonical"
    ));
    assert!(glob_match("a*b*c", "axxbyyc") && !glob_match("a*b*c", "axxcyyb"));
    assert!(!glob_match("lists.k7-*", "lists.k8") && glob_match("x", "x"));
    for good in [
        "host.efer.reset",
        "*.hwcr.write.x",
        "guest.hv-*.gate-closed",
        "filter.limits",
    ] {
        assert_eq!(glob_problem(good), None, "{good}");
    }
    for bad in [
        "hots.efer.reset",
        "host.efer_x.reset",
        "hots.*",
        "host.*.Reset",
        "host",
    ] {
        assert!(glob_problem(bad).is_some(), "{bad}");
    }
    let args = Arguments::from_args();
    let trials = vec![
        Trial::ignorable_test("coverage.rows-well-formed", rows_well_formed),
        Trial::ignorable_test("coverage.checks-exist-here", checks_exist_here),
        Trial::ignorable_test("coverage.checks-exist-in-report", checks_exist_in_report),
    ];
    libtest_mimic::run(&args, trials).exit();
}
