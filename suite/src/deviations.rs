//! Known deviations of a backend from upstream KVM, recorded in `fixtures/deviations/*.toml`.
//!
//! A deviation names the check that measures it, the backend, the source that says what upstream
//! does, and why the backend differs. A failing check with a matching record is reported as a
//! deviation (apart from passes and failures); a check that passes while a record says it should
//! deviate is a failure, so a record never outlives the behaviour it describes.

use crate::error::{Error, Result};
use crate::kvm::facts::Backend;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Deviation {
    /// The check id that measures it.
    pub check: String,
    /// Backend name: vmx, svm, pvm.
    pub backend: String,
    /// What upstream KVM does, and where that is written (api.rst section or kernel function).
    pub upstream: String,
    /// Why this backend differs (its source, design, or limitation).
    pub reason: String,
    /// If set, the deviation matches only when the check reports exactly this `actual`.
    #[serde(default)]
    pub actual: Option<String>,
    #[serde(skip)]
    pub source: Option<(PathBuf, usize)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRaw {
    #[serde(default)]
    deviation: Vec<toml::Spanned<Deviation>>,
}

#[derive(Clone, Debug, Default)]
pub struct Deviations {
    pub all: Vec<Deviation>,
}

impl Deviations {
    pub fn parse(file: &Path, text: &str) -> Result<Vec<Deviation>> {
        let line_of = |off: usize| crate::fixtures::line_of(text, off);
        let raw: FileRaw = toml::from_str(text).map_err(|e| Error::Fixture {
            file: file.to_path_buf(),
            line: e.span().map(|s| line_of(s.start)),
            message: e.message().to_string(),
        })?;
        let mut out = Vec::new();
        for d in raw.deviation {
            let line = line_of(d.span().start);
            let mut d = d.into_inner();
            let bad = |m: &str| Error::Fixture {
                file: file.to_path_buf(),
                line: Some(line),
                message: format!("deviation {:?}: {m}", d.check),
            };
            if !["vmx", "svm", "pvm"].contains(&d.backend.as_str()) {
                return Err(bad("backend must be vmx, svm or pvm"));
            }
            if d.upstream.trim().is_empty() || d.reason.trim().is_empty() {
                return Err(bad(
                    "`upstream` (the cited upstream behaviour) and `reason` are required",
                ));
            }
            d.source = Some((file.to_path_buf(), line));
            out.push(d);
        }
        Ok(out)
    }

    pub fn load_dir(dir: &Path) -> Result<Deviations> {
        let mut all = Vec::new();
        for (f, text) in crate::fixtures::toml_files(dir, "deviations")? {
            all.extend(Self::parse(&f, &text)?);
        }
        Ok(Deviations { all })
    }

    pub fn load_default() -> Result<Deviations> {
        Self::load_dir(&crate::fixtures::fixtures_dir().join("deviations"))
    }

    /// The record for `check` on `backend`, if any.
    pub fn find(&self, check: &str, backend: Backend) -> Option<&Deviation> {
        self.all
            .iter()
            .find(|d| d.check == check && d.backend == backend.name())
    }
}
