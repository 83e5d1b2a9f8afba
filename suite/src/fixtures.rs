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
