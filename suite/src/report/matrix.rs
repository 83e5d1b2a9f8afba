//! The MSR x check matrix: every check about one MSR, grouped under it.

use super::Report;
use crate::check_id::CheckId;
use crate::runner::{CheckResult, Verdict};
use serde::Serialize;
use std::collections::BTreeMap;

/// One row: an MSR and its checks.
#[derive(Clone, Debug, Serialize)]
pub struct Row<'a> {
    /// The id's subject, e.g. `pat`.
    pub subject: String,
    /// Check name without the subject (e.g. `host.write.type-2`) -> result.
    pub checks: BTreeMap<String, Cell<'a>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cell<'a> {
    pub verdict: Verdict,
    /// Why it skipped or deviated, or expected vs actual for a failure.
    pub note: String,
    #[serde(skip)]
    pub result: &'a CheckResult,
}

/// `family.subject.rest` -> (subject, `family.rest`).
fn split(id: &CheckId) -> (String, String) {
    let mut segments = id.segments();
    let subject = segments.next().unwrap_or("").to_string();
    let rest: Vec<&str> = segments.collect();
    (subject, format!("{}.{}", id.family(), rest.join(".")))
}

fn note(r: &CheckResult) -> String {
    match r.verdict {
        Verdict::Pass => String::new(),
        Verdict::Skip | Verdict::Deviation => r.detail.clone(),
        Verdict::Fail => format!(
            "expected {}; got {}",
            r.expected.as_deref().unwrap_or("-"),
            r.actual.as_deref().unwrap_or(&r.detail)
        ),
    }
}

/// Rows keyed by MSR index, for every result that names an MSR.
pub fn rows(r: &Report) -> BTreeMap<u32, Row<'_>> {
    let mut m: BTreeMap<u32, Row<'_>> = BTreeMap::new();
    for res in &r.results {
        let Some(index) = res.msr else { continue };
        let (subject, check) = split(&res.id);
        let row = m.entry(index).or_insert_with(|| Row {
            subject: subject.clone(),
            checks: BTreeMap::new(),
        });
        row.checks.insert(
            check,
            Cell {
                verdict: res.verdict,
                note: note(res),
                result: res,
            },
        );
    }
    m
}

/// Text rendering: one block per MSR; passes on one line, everything else with its note.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    if let Some(h) = &r.host {
        out.push_str(&format!("host: {}\n\n", h.summary()));
    }
    for (index, row) in rows(r) {
        let count = |v: Verdict| row.checks.values().filter(|c| c.verdict == v).count();
        out.push_str(&format!(
            "{index:#x} {}  ({} pass, {} fail, {} deviation, {} skip)\n",
            row.subject,
            count(Verdict::Pass),
            count(Verdict::Fail),
            count(Verdict::Deviation),
            count(Verdict::Skip)
        ));
        let passed: Vec<&str> = row
            .checks
            .iter()
            .filter(|(_, c)| c.verdict == Verdict::Pass)
            .map(|(k, _)| k.as_str())
            .collect();
        if !passed.is_empty() {
            out.push_str(&format!("    pass       {}\n", passed.join(", ")));
        }
        for (k, c) in row
            .checks
            .iter()
            .filter(|(_, c)| c.verdict != Verdict::Pass)
        {
            out.push_str(&format!("    {:<10} {k}: {}\n", c.verdict.name(), c.note));
        }
    }
    let unattached = r.results.iter().filter(|x| x.msr.is_none()).count();
    out.push_str(&format!(
        "\n({unattached} checks are not about one MSR; see --format table)\n{}\n",
        r.summary_line()
    ));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_split_into_subject_and_check() {
        assert_eq!(
            super::split(&"host.pat.write.type-2".parse().unwrap()),
            ("pat".into(), "host.write.type-2".into())
        );
        assert_eq!(
            super::split(&"guest.tsc.matches-host".parse().unwrap()),
            ("tsc".into(), "guest.matches-host".into())
        );
    }
}
