//! The command line's handling of bad input: clear messages, non-zero exits, no panics. These
//! need no /dev/kvm.

use std::process::Command;

fn kvm_msr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kvm-msr"))
}

#[test]
fn missing_device_is_a_clear_skip_not_a_panic() {
    let out = kvm_msr()
        .args(["report"])
        .env("KVM_MSR_DEVICE", "/nonexistent/kvm")
        .env_remove("KVM_MSR_REQUIRE_KVM")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("KVM is not available on this host"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_device_fails_when_kvm_is_required() {
    let out = kvm_msr()
        .args(["report", "--format", "ktap"])
        .env("KVM_MSR_DEVICE", "/nonexistent/kvm")
        .env("KVM_MSR_REQUIRE_KVM", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("KTAP version 1\n1..0\n# SKIP"),
        "{stdout}"
    );
}

#[test]
fn a_device_without_permission_says_what_to_do() {
    // Only meaningful for a non-root user; root opens anything, so make an unreadable node the
    // only way we can: a directory is not openable read/write either (EISDIR), which must give
    // a clean error too.
    let out = kvm_msr()
        .args(["report"])
        .env("KVM_MSR_DEVICE", "/")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.starts_with("kvm-msr: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unknown_format_is_a_usage_error() {
    let out = kvm_msr()
        .args(["report", "--format", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'xml'"));
}

#[test]
fn malformed_fixture_names_file_and_line() {
    if !std::path::Path::new("/dev/kvm").exists() {
        // Fixtures load after KVM opens; without KVM the run stops earlier (covered above).
        eprintln!("skip: needs /dev/kvm to reach fixture loading");
        return;
    }
    let dir = std::env::temp_dir().join(format!("kvm-msr-bad-fixtures-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("catalogue")).unwrap();
    std::fs::create_dir_all(dir.join("deviations")).unwrap();
    std::fs::write(
        dir.join("catalogue/x.toml"),
        "[[msr]]\nindex = 0x10\nname = \"TSC\"\nid = \"tsc\"\ncite = \"SDM\"\nbogus = 1\n",
    )
    .unwrap();
    let out = kvm_msr()
        .args(["report"])
        .env("KVM_MSR_FIXTURES", &dir)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("x.toml:6") && err.contains("unknown field `bogus`"),
        "{err}"
    );
}
