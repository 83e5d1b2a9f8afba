//! Parsing and validating catalogue files.

mod raw;
mod rules;
#[cfg(test)]
mod tests;

use super::*;
use crate::error::{Error, Result};
use crate::fixtures::line_of;
use raw::FileRaw;
use rules::{parse_gate, parse_rules, parse_setup, parse_volatile};
use std::path::Path;

/// Parse one file. `text` is its contents; `file` names it in errors.
pub fn parse_file(file: &Path, text: &str) -> Result<Vec<MsrInfo>> {
    let err = |line: Option<usize>, message: String| Error::Fixture {
        file: file.to_path_buf(),
        line,
        message,
    };
    let raw: FileRaw = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        err(line, e.message().to_string())
    })?;
    let mut out = Vec::new();
    for m in raw.msr {
        let line = line_of(text, m.span().start);
        let mut m = m.into_inner();
        let rules = parse_rules(&mut m).map_err(|msg| {
            err(
                Some(line),
                format!("MSR {:#x} ({}): {msg}", m.index, m.name),
            )
        })?;
        let e = |msg: String| {
            err(
                Some(line),
                format!("MSR {:#x} ({}): {msg}", m.index, m.name),
            )
        };
        if m.cite.trim().is_empty() {
            return Err(e("`cite` is empty: every entry names its source".into()));
        }
        let plain_id = m.id.replace("{i}", "0");
        if !crate::check_id::is_segment(&plain_id) {
            return Err(e(format!(
                "`id` {:?} must be lowercase letters, digits and '-'",
                m.id
            )));
        }
        let volatile = m.volatile.map(parse_volatile).transpose().map_err(&e)?;
        let gate = m.gate.map(parse_gate).transpose().map_err(&e)?;
        let (reset, writes, reserved, read_fails, backends, requires) = rules;
        let setup = parse_setup(&m.setup).map_err(&e)?;
        let count = m.count.unwrap_or(1);
        let stride = m.stride.unwrap_or(1);
        if count == 0 || stride == 0 {
            return Err(e("count and stride must be at least 1".into()));
        }
        if count > 1 && !(m.name.contains("{i}") && m.id.contains("{i}")) {
            return Err(e("a range (count > 1) needs {i} in both name and id".into()));
        }
        for i in 0..count {
            let Some(index) = m.index.checked_add(i * stride) else {
                return Err(e("the range runs past index 0xffffffff".into()));
            };
            out.push(MsrInfo {
                index,
                name: m.name.replace("{i}", &i.to_string()),
                id: m.id.replace("{i}", &i.to_string()),
                cite: m.cite.clone(),
                volatile: volatile.clone(),
                gate: gate.clone(),
                host_read_may_fail: m.host_read_may_fail.clone(),
                reset: reset.clone(),
                writes: writes.clone(),
                reserved: reserved.clone(),
                read_fails: read_fails.clone(),
                backends: backends.clone(),
                requires: requires.clone(),
                setup: setup.clone(),
                source: (file.to_path_buf(), line),
            });
        }
    }
    Ok(out)
}

/// Load every `*.toml` in `dir` (sorted by name) and reject duplicate indices and ids.
pub fn load_dir(dir: &Path) -> Result<Catalogue> {
    load_files(crate::fixtures::toml_files(dir, "catalogue")?)
}

/// Load `(file, text)` pairs in order and reject duplicate indices and ids.
pub fn load_files(files: Vec<(PathBuf, String)>) -> Result<Catalogue> {
    let mut cat = Catalogue::default();
    let mut ids: BTreeMap<String, (PathBuf, usize)> = BTreeMap::new();
    for (f, text) in files {
        for m in parse_file(&f, &text)? {
            if let Some(prev) = cat.msrs.get(&m.index) {
                return Err(Error::Fixture {
                    file: f.clone(),
                    line: Some(m.source.1),
                    message: format!(
                        "duplicate index {:#x}: already defined at {}:{}",
                        m.index,
                        prev.source.0.display(),
                        prev.source.1
                    ),
                });
            }
            if let Some(prev) = ids.insert(m.id.clone(), m.source.clone()) {
                return Err(Error::Fixture {
                    file: f.clone(),
                    line: Some(m.source.1),
                    message: format!(
                        "duplicate id {:?}: already used at {}:{}",
                        m.id,
                        prev.0.display(),
                        prev.1
                    ),
                });
            }
            cat.msrs.insert(m.index, m);
        }
    }
    cat.index_order();
    Ok(cat)
}
