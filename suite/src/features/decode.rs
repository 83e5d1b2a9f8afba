//! Field tables of feature MSRs (`fixtures/decode/*.toml`): names for bits and fields, and how a
//! difference between two hosts affects migration.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use toml::Spanned;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    /// Set: the guest may rely on it. Losing it on the target blocks migration.
    Capability,
    /// Set: the guest must defend against it. Gaining it on the target blocks migration.
    Hazard,
    /// A multi-bit format: any difference blocks migration.
    Value,
    /// Reported, never blocking.
    Info,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    pub name: String,
    pub lsb: u8,
    #[serde(default = "one")]
    pub width: u8,
    pub kind: FieldKind,
}

fn one() -> u8 {
    1
}

impl Field {
    pub fn mask(&self) -> u64 {
        let m = if self.width >= 64 {
            u64::MAX
        } else {
            (1u64 << self.width) - 1
        };
        m << self.lsb
    }

    pub fn extract(&self, v: u64) -> u64 {
        (v & self.mask()) >> self.lsb
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub index: u32,
    pub name: String,
    pub cite: String,
    #[serde(default)]
    pub field: Vec<Field>,
}

impl Register {
    /// Set bits no field covers.
    pub fn unnamed_bits(&self, v: u64) -> u64 {
        self.field.iter().fold(v, |acc, f| acc & !f.mask())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRaw {
    #[serde(default)]
    register: Vec<Spanned<Register>>,
}

#[derive(Clone, Debug, Default)]
pub struct DecodeTables {
    pub registers: BTreeMap<u32, Register>,
}

use crate::fixtures::line_of;

impl DecodeTables {
    pub fn parse(file: &Path, text: &str) -> Result<Vec<(Register, usize)>> {
        let err = |line, message| Error::Fixture {
            file: file.to_path_buf(),
            line,
            message,
        };
        let raw: FileRaw = toml::from_str(text).map_err(|e| {
            err(
                e.span().map(|s| line_of(text, s.start)),
                e.message().to_string(),
            )
        })?;
        let mut out = Vec::new();
        for r in raw.register {
            let line = line_of(text, r.span().start);
            let r = r.into_inner();
            if r.cite.trim().is_empty() {
                return Err(err(
                    Some(line),
                    format!("register {:#x}: `cite` is empty", r.index),
                ));
            }
            let mut used = 0u64;
            for f in &r.field {
                if f.width == 0 || u32::from(f.lsb) + u32::from(f.width) > 64 {
                    return Err(err(
                        Some(line),
                        format!(
                            "register {:#x} field {}: bits {}+{} do not fit 64",
                            r.index, f.name, f.lsb, f.width
                        ),
                    ));
                }
                if used & f.mask() != 0 {
                    return Err(err(
                        Some(line),
                        format!(
                            "register {:#x} field {} overlaps another field",
                            r.index, f.name
                        ),
                    ));
                }
                used |= f.mask();
            }
            out.push((r, line));
        }
        Ok(out)
    }

    pub fn load_dir(dir: &Path) -> Result<DecodeTables> {
        Self::load_files(crate::fixtures::toml_files(dir, "decode tables")?)
    }

    /// Load `(file, text)` pairs in order, refusing a register defined twice.
    pub fn load_files(files: Vec<(std::path::PathBuf, String)>) -> Result<DecodeTables> {
        let mut t = DecodeTables::default();
        for (f, text) in files {
            for (r, line) in Self::parse(&f, &text)? {
                if t.registers.contains_key(&r.index) {
                    return Err(Error::Fixture {
                        file: f.clone(),
                        line: Some(line),
                        message: format!("register {:#x} defined twice", r.index),
                    });
                }
                t.registers.insert(r.index, r);
            }
        }
        Ok(t)
    }

    /// `fixtures/decode` as embedded at build time, or the given tree's.
    pub fn load_default() -> Result<DecodeTables> {
        Self::load_files(crate::fixtures::files("decode", "decode tables")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_tables_load_without_overlaps() {
        let t = DecodeTables::load_default().unwrap();
        assert!(t.registers.contains_key(&0x10a));
    }

    #[test]
    fn overlapping_fields_are_rejected_with_the_line() {
        let text = "\n[[register]]\nindex = 1\nname = \"X\"\ncite = \"c\"\nfield = [{ name = \"A\", lsb = 0, width = 4, kind = \"value\" }, { name = \"B\", lsb = 3, kind = \"capability\" }]\n";
        let e = DecodeTables::parse(Path::new("d.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("d.toml:2") && e.contains("overlaps"), "{e}");
    }

    #[test]
    fn fields_extract_their_bits() {
        let f = Field {
            name: "F".into(),
            lsb: 8,
            width: 4,
            kind: FieldKind::Value,
        };
        assert_eq!(f.extract(0xabcd), 0xb);
        assert_eq!(f.mask(), 0xf00);
    }
}
