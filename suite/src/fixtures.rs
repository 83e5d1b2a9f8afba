//! Where the fixture data lives.

use std::path::PathBuf;

/// Environment variable that points the suite at another fixtures directory.
pub const FIXTURES_ENV: &str = "KVM_MSR_FIXTURES";

/// `$KVM_MSR_FIXTURES`, or the repository's `fixtures/` (known at build time).
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os(FIXTURES_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures")))
}

/// Every `*.toml` file in `dir`, sorted by name, with its text. `what` names the directory in
/// errors ("catalogue", "deviations", ...).
pub fn toml_files(dir: &std::path::Path, what: &str) -> crate::Result<Vec<(PathBuf, String)>> {
    let fixture_err = |file: &std::path::Path, message: String| crate::Error::Fixture {
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
