//! `kvm-msr compare`: two `report --format json` files, check by check. The kernel-regression
//! view: which checks change verdict between kernel A and kernel B (or between module
//! parameters), with each side's reason, and which exist on one side only.

use crate::error::Error;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The part of a report that a comparison reads.
#[derive(Debug, Deserialize)]
pub struct ReportFile {
    pub schema: String,
    pub host: Option<HostPart>,
    pub results: Vec<ResultPart>,
}

#[derive(Debug, Deserialize)]
pub struct HostPart {
    pub kernel_release: String,
    pub backend: String,
    #[serde(default)]
    pub kvm_params: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct ResultPart {
    pub id: String,
    pub verdict: String,
    #[serde(default)]
    pub detail: String,
    pub actual: Option<String>,
}

impl ResultPart {
    /// The verdict with its reason: the failure's actual, or the skip's or pass's detail.
    fn why(&self) -> String {
        let why = self.actual.as_deref().unwrap_or(&self.detail);
        let mut w: String = why.chars().take(160).collect();
        if why.chars().count() > 160 {
            w.push('…');
        }
        format!("{} ({w})", self.verdict)
    }
}

/// The schema `report --format json` writes (report/json.rs).
pub const SCHEMA: &str = "kvm-msr-report/1";

impl ReportFile {
    /// Parse the text of the report file `file` (named in errors).
    pub fn parse(text: &str, file: &std::path::Path) -> Result<ReportFile, Error> {
        let r: ReportFile = serde_json::from_str(text).map_err(|e| {
            let message = format!("not a `kvm-msr report --format json` file: {e}");
            Error::input(file, Some(e.line()), message)
        })?;
        if r.schema != SCHEMA {
            let message = format!("schema {:?}, expected {SCHEMA:?}", r.schema);
            return Err(Error::input(file, None, message));
        }
        Ok(r)
    }

    fn label(&self) -> String {
        match &self.host {
            Some(h) => {
                let params: Vec<String> = h
                    .kvm_params
                    .iter()
                    .filter(|(k, _)| {
                        ["ignore_msrs", "force_emulation_prefix", "enable_pmu"]
                            .contains(&k.as_str())
                    })
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!("{} {} {}", h.kernel_release, h.backend, params.join(" "))
            }
            None => "(no host: nothing ran)".into(),
        }
    }
}

/// Checks whose verdict differs, and checks on one side only.
pub struct Comparison {
    pub changed: Vec<(String, String, String)>,
    pub only_a: Vec<String>,
    pub only_b: Vec<String>,
    pub same: usize,
}

pub fn compare(a: &ReportFile, b: &ReportFile) -> Comparison {
    let ib: BTreeMap<&str, &ResultPart> = b.results.iter().map(|r| (r.id.as_str(), r)).collect();
    let ia: BTreeMap<&str, &ResultPart> = a.results.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut c = Comparison {
        changed: Vec::new(),
        only_a: Vec::new(),
        only_b: Vec::new(),
        same: 0,
    };
    for (id, ra) in &ia {
        match ib.get(id) {
            None => c.only_a.push(id.to_string()),
            Some(rb) if rb.verdict != ra.verdict => {
                c.changed.push((id.to_string(), ra.why(), rb.why()))
            }
            Some(_) => c.same += 1,
        }
    }
    c.only_b = ib
        .keys()
        .filter(|id| !ia.contains_key(*id))
        .map(|id| id.to_string())
        .collect();
    c
}

impl Comparison {
    pub fn differs(&self) -> bool {
        !(self.changed.is_empty() && self.only_a.is_empty() && self.only_b.is_empty())
    }

    pub fn to_text(&self, a: &ReportFile, b: &ReportFile, name_a: &str, name_b: &str) -> String {
        let mut s = format!("A: {name_a}: {}\nB: {name_b}: {}\n", a.label(), b.label());
        s += &format!(
            "{} checks with the same verdict, {} changed, {} only in A, {} only in B\n",
            self.same,
            self.changed.len(),
            self.only_a.len(),
            self.only_b.len()
        );
        for (id, va, vb) in &self.changed {
            s += &format!("changed  {id}\n    A: {va}\n    B: {vb}\n");
        }
        let list = |ids: &[String]| {
            let mut l = ids.iter().take(20).cloned().collect::<Vec<_>>().join(", ");
            if ids.len() > 20 {
                l += &format!(", … ({} more)", ids.len() - 20);
            }
            l
        };
        if !self.only_a.is_empty() {
            s += &format!("only in A: {}\n", list(&self.only_a));
        }
        if !self.only_b.is_empty() {
            s += &format!("only in B: {}\n", list(&self.only_b));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(kernel: &str, rows: &[(&str, &str, &str)]) -> String {
        let results: Vec<serde_json::Value> = rows
            .iter()
            .map(|(id, v, d)| serde_json::json!({"id": id, "verdict": v, "detail": d, "actual": null}))
            .collect();
        serde_json::json!({
            "schema": SCHEMA,
            "host": {"kernel_release": kernel, "backend": "svm", "kvm_params": {"ignore_msrs": "N"}},
            "results": results,
        })
        .to_string()
    }

    #[test]
    fn verdict_changes_and_one_sided_checks_are_reported() {
        let a = ReportFile::parse(
            &report(
                "6.1",
                &[
                    ("x", "pass", ""),
                    ("y", "fail", "boom"),
                    ("z", "skip", "no cap"),
                ],
            ),
            "a".as_ref(),
        )
        .unwrap();
        let b = ReportFile::parse(
            &report(
                "6.12",
                &[("x", "pass", ""), ("y", "pass", "ok"), ("w", "pass", "")],
            ),
            "b".as_ref(),
        )
        .unwrap();
        let c = compare(&a, &b);
        assert!(c.differs());
        assert_eq!(c.same, 1);
        assert_eq!(c.changed.len(), 1);
        assert_eq!(c.changed[0].0, "y");
        assert_eq!(c.only_a, vec!["z"]);
        assert_eq!(c.only_b, vec!["w"]);
        let t = c.to_text(&a, &b, "a.json", "b.json");
        assert!(t.contains("A: a.json: 6.1 svm ignore_msrs=N"), "{t}");
        assert!(t.contains("fail (boom)") && t.contains("pass (ok)"), "{t}");
        assert!(!compare(&a, &a).differs());
    }

    #[test]
    fn bad_input_names_the_file() {
        let e = ReportFile::parse("{", "r.json".as_ref()).unwrap_err();
        assert!(
            e.to_string().starts_with("r.json:1: not a `kvm-msr report"),
            "{e}"
        );
        let other = report("6.1", &[]).replace(SCHEMA, "other/1");
        let e = ReportFile::parse(&other, "r.json".as_ref()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("r.json: schema \"other/1\", expected {SCHEMA:?}")
        );
    }
}
