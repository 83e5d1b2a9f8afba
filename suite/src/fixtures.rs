//! Where the fixture data comes from: embedded in the binary at build time (suite/build.rs), or
//! a fixtures tree given with `--fixtures DIR` or KVM_MSR_FIXTURES, for people editing fixtures.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

include!(concat!(env!("OUT_DIR"), "/embedded_fixtures.rs"));

/// Environment variable that points the suite at another fixtures directory.
pub const FIXTURES_ENV: &str = "KVM_MSR_FIXTURES";

static OVERRIDE: OnceLock<PathBuf> = OnceLock::new();

/// Use the fixtures tree at `dir` instead of the embedded one (the command line's `--fixtures`);
/// it wins over KVM_MSR_FIXTURES. Only the first call counts.
pub fn set_override(dir: PathBuf) {
    let _ = OVERRIDE.set(dir);
}

/// The fixtures tree given by `--fixtures` or KVM_MSR_FIXTURES, if any.
pub fn override_dir() -> Option<PathBuf> {
    OVERRIDE
        .get()
        .cloned()
        .or_else(|| std::env::var_os(FIXTURES_ENV).map(PathBuf::from))
}

/// The given fixtures tree, or the repository's `fixtures/` (known at build time): for data the
/// binary does not embed (the fuzzers' seed corpora) and for tests.
pub fn fixtures_dir() -> PathBuf {
    override_dir()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures")))
}

/// The `*.toml` files of fixtures subdirectory `sub` ("catalogue", "deviations", "decode"):
/// from the given tree if there is one (named by their real path), else the embedded copies
/// (named relative to the fixtures root, e.g. `catalogue/amd.toml`).
pub fn files(sub: &str, what: &str) -> crate::Result<Vec<(PathBuf, String)>> {
    if let Some(dir) = override_dir() {
        return toml_files(&dir.join(sub), what);
    }
    Ok(EMBEDDED
        .iter()
        .filter(|(p, _)| Path::new(p).parent() == Some(Path::new(sub)))
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect())
}

/// Every `*.toml` file in `dir`, sorted by name, with its text. `what` names the directory in
/// errors ("catalogue", "deviations", ...).
pub fn toml_files(dir: &Path, what: &str) -> crate::Result<Vec<(PathBuf, String)>> {
    let fixture_err = |file: &Path, message: String| crate::Error::Fixture {
        file: file.to_path_buf(),
        line: None,
        message,
    };
    let rd = std::fs::read_dir(dir)
        .map_err(|e| fixture_err(dir, format!("cannot read the {what} directory: {e}")))?;
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            std::fs::read_to_string(&f)
                .map(|t| (f.clone(), t))
                .map_err(|e| fixture_err(&f, e.to_string()))
        })
        .collect()
}

/// The 1-based line of a byte offset in `text` (for fixture errors).
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_fixture_file_is_embedded() {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures"));
        for sub in ["catalogue", "deviations", "decode"] {
            let on_disk = super::toml_files(&root.join(sub), sub).unwrap();
            let embedded: Vec<_> = super::EMBEDDED
                .iter()
                .filter(|(p, _)| p.starts_with(&format!("{sub}/")))
                .collect();
            assert_eq!(on_disk.len(), embedded.len(), "{sub}");
            for ((path, text), (name, etext)) in on_disk.iter().zip(embedded) {
                assert!(path.ends_with(name), "{} vs {name}", path.display());
                assert_eq!(text, etext, "{name} differs from its embedded copy");
            }
        }
    }
}
