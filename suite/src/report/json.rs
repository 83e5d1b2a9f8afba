//! The JSON report: every verdict with the host fingerprint.

use super::Report;

pub fn render(r: &Report) -> String {
    let v = serde_json::json!({
        "schema": super::compare::SCHEMA,
        "host": r.host,
        "unavailable": r.unavailable,
        "counts": r.counts(),
        "exit_code": r.exit_code(),
        "results": r.results,
        "matrix": super::matrix::rows(r)
            .into_iter()
            .map(|(i, row)| (format!("{i:#x}"), row))
            .collect::<std::collections::BTreeMap<_, _>>(),
    });
    let mut s = serde_json::to_string_pretty(&v).expect("report serializes");
    s.push('\n');
    s
}
