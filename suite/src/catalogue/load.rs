//! Parsing and validating catalogue files.

use super::*;
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRaw {
    #[serde(default)]
    msr: Vec<Spanned<MsrRaw>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MsrRaw {
    index: u32,
    name: String,
    id: String,
    cite: String,
    volatile: Option<VolatileRaw>,
    gate: Option<GateRaw>,
    host_read_may_fail: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolatileRaw {
    rule: String,
    cite: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GateRaw {
    /// Any of these CPUID features.
    cpuid: Option<Vec<String>>,
    mcg_cap_bit: Option<u8>,
    host_only: Option<bool>,
    /// "exempt", "advertised-zero" or "fails".
    host: String,
    cite: String,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

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
        let m = m.into_inner();
        let e = |msg: String| {
            err(
                Some(line),
                format!("MSR {:#x} ({}): {msg}", m.index, m.name),
            )
        };
        if m.cite.trim().is_empty() {
            return Err(e("`cite` is empty: every entry names its source".into()));
        }
        if m.id.is_empty()
            || !m
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(e(format!(
                "`id` {:?} must be lowercase letters, digits and '-'",
                m.id
            )));
        }
        let volatile = match m.volatile {
            None => None,
            Some(v) => {
                let rule = match v.rule.as_str() {
                    "monotonic" => Volatility::Monotonic,
                    "changes" => Volatility::Changes,
                    other => {
                        return Err(e(format!(
                            "volatile.rule {other:?}: expected \"monotonic\" or \"changes\""
                        )))
                    }
                };
                if v.cite.trim().is_empty() {
                    return Err(e("volatile.cite is empty".into()));
                }
                Some(VolatileRule { rule, cite: v.cite })
            }
        };
        let gate = match m.gate {
            None => None,
            Some(g) => {
                let conds = usize::from(g.cpuid.is_some())
                    + usize::from(g.mcg_cap_bit.is_some())
                    + usize::from(g.host_only == Some(true));
                if conds != 1 {
                    return Err(e(
                        "gate needs exactly one of `cpuid`, `mcg_cap_bit`, `host_only = true`"
                            .into(),
                    ));
                }
                let condition = if let Some(names) = g.cpuid {
                    let mut known = Vec::new();
                    for n in &names {
                        match crate::kvm::cpuid::feature(n) {
                            Some(f) => known.push(f.name),
                            None => return Err(e(format!("gate.cpuid names unknown feature {n:?} (see kvm/cpuid.rs FEATURES)"))),
                        }
                    }
                    GateCondition::AnyCpuid(known)
                } else if let Some(b) = g.mcg_cap_bit {
                    if b > 63 {
                        return Err(e(format!(
                            "gate.mcg_cap_bit {b} is not a bit of a 64-bit MSR"
                        )));
                    }
                    GateCondition::McgCapBit(b)
                } else {
                    GateCondition::HostOnly
                };
                let host = match g.host.as_str() {
                    "exempt" => HostWhenClosed::Exempt,
                    "advertised-zero" => HostWhenClosed::AdvertisedZero,
                    "fails" => HostWhenClosed::Fails,
                    other => {
                        return Err(e(format!(
                            "gate.host {other:?}: expected exempt, advertised-zero or fails"
                        )))
                    }
                };
                if g.cite.trim().is_empty() {
                    return Err(e("gate.cite is empty".into()));
                }
                Some(Gate {
                    condition,
                    host,
                    cite: g.cite,
                })
            }
        };
        out.push(MsrInfo {
            index: m.index,
            name: m.name,
            id: m.id,
            cite: m.cite,
            volatile,
            gate,
            host_read_may_fail: m.host_read_may_fail,
            source: (file.to_path_buf(), line),
        });
    }
    Ok(out)
}

/// Load every `*.toml` in `dir` (sorted by name) and reject duplicate indices and ids.
pub fn load_dir(dir: &Path) -> Result<Catalogue> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::Fixture {
        file: dir.to_path_buf(),
        line: None,
        message: format!("cannot read the catalogue directory: {e}"),
    })?;
    let mut files: Vec<_> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut cat = Catalogue::default();
    let mut ids: BTreeMap<String, (PathBuf, usize)> = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| Error::Fixture {
            file: f.clone(),
            line: None,
            message: e.to_string(),
        })?;
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
    Ok(cat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn parse(text: &str) -> Result<Vec<MsrInfo>> {
        parse_file(Path::new("t.toml"), text)
    }

    fn err_text(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_a_complete_entry() {
        let m = parse(
            r#"
[[msr]]
index = 0x10
name = "IA32_TIME_STAMP_COUNTER"
id = "tsc"
cite = "SDM"
volatile = { rule = "monotonic", cite = "SDM 18.17" }
gate = { cpuid = ["RDTSCP", "RDPID"], host = "exempt", cite = "x86.c" }
"#,
        )
        .unwrap();
        assert_eq!(m[0].index, 0x10);
        assert_eq!(m[0].source.1, 2);
        assert_eq!(m[0].volatile.as_ref().unwrap().rule, Volatility::Monotonic);
        assert_eq!(
            m[0].gate.as_ref().unwrap().condition,
            GateCondition::AnyCpuid(vec!["RDTSCP", "RDPID"])
        );
    }

    #[rstest]
    #[case::unknown_key(
        "[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\ncolour = 1\n",
        "t.toml:6",
        "unknown field `colour`"
    )]
    #[case::malformed_number(
        "[[msr]]\nindex = 0xzz\nname = \"A\"\nid = \"a\"\ncite = \"x\"\n",
        "t.toml:2",
        ""
    )]
    #[case::no_citation(
        "[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \" \"\n",
        "t.toml:1",
        "cite"
    )]
    #[case::missing_citation(
        "[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\n",
        "t.toml:1",
        "missing field `cite`"
    )]
    #[case::bad_rule("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\nvolatile = { rule = \"often\", cite = \"c\" }\n", "t.toml:1", "often")]
    #[case::unknown_feature("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\ngate = { cpuid = [\"WARP\"], host = \"exempt\", cite = \"c\" }\n", "t.toml:1", "WARP")]
    #[case::gate_without_cite("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\ngate = { host_only = true, host = \"exempt\", cite = \"\" }\n", "t.toml:1", "gate.cite")]
    #[case::bad_id(
        "[[msr]]\nindex = 1\nname = \"A\"\nid = \"A B\"\ncite = \"x\"\n",
        "t.toml:1",
        "id"
    )]
    fn rejects_bad_entries_naming_file_and_line(
        #[case] text: &str,
        #[case] place: &str,
        #[case] what: &str,
    ) {
        let e = err_text(text);
        assert!(e.starts_with(place), "{e}");
        assert!(e.contains(what), "{e}");
    }

    #[test]
    fn rejects_duplicate_indices_across_files() {
        let dir = std::env::temp_dir().join(format!("kvm-msr-cat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.toml"),
            "[[msr]]\nindex = 0x10\nname = \"A\"\nid = \"a\"\ncite = \"x\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("b.toml"),
            "\n[[msr]]\nindex = 0x10\nname = \"B\"\nid = \"b\"\ncite = \"x\"\n",
        )
        .unwrap();
        let e = load_dir(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            e.contains("b.toml:2") && e.contains("duplicate index 0x10") && e.contains("a.toml:1"),
            "{e}"
        );
    }

    #[test]
    fn the_shipped_catalogue_loads() {
        let c = Catalogue::load_default().unwrap();
        assert!(!c.msrs.is_empty());
    }
}
