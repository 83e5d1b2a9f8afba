//! The command line's handling of bad input: clear messages, non-zero exits, no panics. Most
//! need no /dev/kvm; those that do say why they skip.

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use std::process::Command;

type Outcome = Result<Completion, Failed>;
type Test = (&'static str, fn() -> Outcome);

fn kvm_msr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kvm-msr"))
}

fn check(cond: bool, msg: impl std::fmt::Display) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(Failed::from(msg.to_string()))
    }
}

fn missing_device_is_a_clear_skip_not_a_panic() -> Outcome {
    let out = kvm_msr()
        .args(["report"])
        .env("KVM_MSR_DEVICE", "/nonexistent/kvm")
        .env_remove("KVM_MSR_REQUIRE_KVM")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    check(
        out.status.code() == Some(4),
        format!("exit {:?}: {err}", out.status.code()),
    )?;
    check(err.contains("KVM is not available on this host"), &err)?;
    check(!err.contains("panicked"), &err)?;
    Ok(Completion::Completed)
}

fn missing_device_fails_when_kvm_is_required() -> Outcome {
    let out = kvm_msr()
        .args(["report", "--format", "ktap"])
        .env("KVM_MSR_DEVICE", "/nonexistent/kvm")
        .env("KVM_MSR_REQUIRE_KVM", "1")
        .output()?;
    check(
        out.status.code() == Some(1),
        format!("exit {:?}", out.status.code()),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(stdout.starts_with("KTAP version 1\n1..0\n# SKIP"), &stdout)?;
    Ok(Completion::Completed)
}

fn unopenable_device_is_an_error_not_a_panic() -> Outcome {
    // A directory cannot be opened read/write (EISDIR): any open failure must be a clean error.
    let out = kvm_msr()
        .args(["report"])
        .env("KVM_MSR_DEVICE", "/")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    check(out.status.code() != Some(0), "exit 0")?;
    check(err.starts_with("kvm-msr: "), &err)?;
    check(!err.contains("panicked"), &err)?;
    Ok(Completion::Completed)
}

/// As an unprivileged user (root drops to nobody with setpriv), /dev/kvm's mode decides.
fn permission_denied_names_mode_group_and_remedy() -> Outcome {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(Completion::ignored_with(
            "needs root to run the binary as an unprivileged user",
        ));
    }
    let dev = std::path::Path::new("/dev/kvm");
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    if !dev.exists() || !setpriv.exists() {
        return Ok(Completion::ignored_with(
            "needs /dev/kvm and /usr/bin/setpriv",
        ));
    }
    if std::fs::metadata(dev)?.mode() & 0o006 == 0o006 {
        return Ok(Completion::ignored_with(
            "/dev/kvm is world read/write: nobody can open it",
        ));
    }
    let out = Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_kvm-msr"),
            "report",
        ])
        .env_remove("KVM_MSR_REQUIRE_KVM")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.contains("kvm-msr:") {
        return Ok(Completion::ignored_with(format!(
            "the binary does not run as nobody here: {err}"
        )));
    }
    check(
        out.status.code() == Some(4),
        format!("exit {:?}: {err}", out.status.code()),
    )?;
    check(
        err.contains("permission denied opening /dev/kvm read/write: mode "),
        &err,
    )?;
    check(err.contains("or run as root"), &err)?;
    Ok(Completion::Completed)
}

fn unknown_format_is_a_usage_error() -> Outcome {
    let out = kvm_msr().args(["report", "--format", "xml"]).output()?;
    check(
        out.status.code() == Some(2),
        format!("exit {:?}", out.status.code()),
    )?;
    check(
        String::from_utf8_lossy(&out.stderr).contains("invalid value 'xml'"),
        "no mention of the bad value",
    )?;
    Ok(Completion::Completed)
}

fn malformed_fixture_names_file_and_line() -> Outcome {
    // `list` loads the catalogue without /dev/kvm.
    let dir = std::env::temp_dir().join(format!("kvm-msr-bad-fixtures-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("catalogue"))?;
    std::fs::write(
        dir.join("catalogue/x.toml"),
        "[[msr]]\nindex = 0x10\nname = \"TSC\"\nid = \"tsc\"\ncite = \"SDM\"\nbogus = 1\n",
    )?;
    let out = kvm_msr()
        .args(["list"])
        .env("KVM_MSR_FIXTURES", &dir)
        .output()?;
    std::fs::remove_dir_all(&dir)?;
    let err = String::from_utf8_lossy(&out.stderr);
    check(
        out.status.code() == Some(2),
        format!("exit {:?}: {err}", out.status.code()),
    )?;
    check(
        err.contains("x.toml:6") && err.contains("unknown field `bogus`"),
        &err,
    )?;
    Ok(Completion::Completed)
}

fn list_filters_and_needs_no_kvm() -> Outcome {
    let out = kvm_msr()
        .args(["list", "--brief", "0x277"])
        .env("KVM_MSR_DEVICE", "/nonexistent/kvm")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.code() == Some(0),
        format!("exit {:?}", out.status.code()),
    )?;
    check(
        text.contains("IA32_PAT") && text.ends_with("1 MSRs\n"),
        &text,
    )?;
    let none = kvm_msr().args(["list", "no-such-msr"]).output()?;
    check(
        none.status.code() == Some(2),
        "an empty selection is exit 2",
    )?;
    Ok(Completion::Completed)
}

fn diff_exit_codes_follow_the_verdict() -> Outcome {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/probe-minimal.json");
    let same = kvm_msr().args(["diff", data, data]).output()?;
    check(
        same.status.code() == Some(0),
        format!("identical probes: exit {:?}", same.status.code()),
    )?;
    // The target loses an index-list MSR: not compatible.
    let mut b: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data)?)?;
    b["host"]["msr_index_list"] = serde_json::json!([0x277]);
    let path = std::env::temp_dir().join(format!("kvm-msr-probe-b-{}.json", std::process::id()));
    std::fs::write(&path, b.to_string())?;
    let out = kvm_msr().arg("diff").arg(data).arg(&path).output()?;
    std::fs::remove_file(&path)?;
    let text = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.code() == Some(1),
        format!("exit {:?}: {text}", out.status.code()),
    )?;
    check(text.contains("BLOCKS index list: 0x10"), &text)?;
    // The target loses ARCH_CAPABILITIES.RDCL_NO (bit 0): not compatible, and the bit is named.
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data)?)?;
    c["features"][0]["value"] = serde_json::json!(0x20);
    let path = std::env::temp_dir().join(format!("kvm-msr-probe-c-{}.json", std::process::id()));
    std::fs::write(&path, c.to_string())?;
    let out = kvm_msr().arg("diff").arg(data).arg(&path).output()?;
    std::fs::remove_file(&path)?;
    let text = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.code() == Some(1),
        format!("exit {:?}: {text}", out.status.code()),
    )?;
    check(
        text.contains("BLOCKS feature IA32_ARCH_CAPABILITIES.RDCL_NO: 0x1 -> 0x0 (lost on B)"),
        &text,
    )?;
    let bad = kvm_msr()
        .args(["diff", data, "/nonexistent.json"])
        .output()?;
    check(bad.status.code() == Some(2), "a missing file is exit 2")?;
    check(
        String::from_utf8_lossy(&bad.stderr).contains("/nonexistent.json"),
        "names the file",
    )?;
    Ok(Completion::Completed)
}

/// A benchmark summary with one benchmark's median.
fn bench_summary(dir: &std::path::Path, name: &str, median_ns: f64) -> std::io::Result<String> {
    let s = serde_json::json!({
        "schema": kvm_msr_suite::bench_summary::SCHEMA,
        "unix_time": 0, "smoke": false, "harness_ratio": 1.02, "notes": [],
        "host": {"kernel_release": "6.18", "backend": "pvm", "cpu_vendor": "Amd",
                 "cpu_model_name": "AMD EPYC", "cpu_family": 25, "cpu_model": 1, "cpu_stepping": 1,
                 "kvm_params": {}, "backend_params": {}, "caps": {}, "tsc_khz": 2445402,
                 "vcpu_stats": "available"},
        "benchmarks": [{"name": "guest_rdmsr/pat", "per": "access", "median_ns": median_ns,
                        "mad_ns": 1.0, "iqr_ns": 2.0, "samples": 10, "iterations": 100,
                        "exits_per_op": 0.0, "emulated_per_op": 1.0, "user_exits_per_op": 0.0,
                        "net_of": "guest_reference/empty-loop", "guest_cycles_per_op": 5700.0,
                        "guest_ns_per_op": 2330.0}]
    });
    let path = dir.join(name);
    std::fs::write(&path, s.to_string())?;
    Ok(path.display().to_string())
}

fn bench_compare_decides_from_interleaved_runs() -> Outcome {
    let dir = std::env::temp_dir().join(format!("kvm-msr-bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let a: Vec<String> = [2400.0, 2410.0, 2395.0]
        .iter()
        .enumerate()
        .map(|(i, m)| bench_summary(&dir, &format!("a{i}.json"), *m))
        .collect::<Result<_, _>>()?;
    let slower: Vec<String> = [2900.0, 2950.0, 2920.0]
        .iter()
        .enumerate()
        .map(|(i, m)| bench_summary(&dir, &format!("b{i}.json"), *m))
        .collect::<Result<_, _>>()?;
    let same: Vec<String> = [2405.0, 2390.0, 2412.0]
        .iter()
        .enumerate()
        .map(|(i, m)| bench_summary(&dir, &format!("c{i}.json"), *m))
        .collect::<Result<_, _>>()?;
    let run = |b: &[String]| {
        kvm_msr()
            .arg("bench-compare")
            .args(&a)
            .arg("--")
            .args(b)
            .output()
    };
    let out = run(&slower)?;
    let text = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.code() == Some(1),
        format!("slower B: exit {:?}: {text}", out.status.code()),
    )?;
    check(
        text.contains("guest_rdmsr/pat") && text.contains("B SLOWER"),
        &text,
    )?;
    let out = run(&same)?;
    let text = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.code() == Some(0),
        format!("same B: exit {:?}: {text}", out.status.code()),
    )?;
    check(text.contains("within noise"), &text)?;
    // Bad input: a file that is not a summary, a missing file, no `--`.
    let bad = kvm_msr()
        .args(["bench-compare", &a[0], "--", "/nonexistent.json"])
        .output()?;
    let err = String::from_utf8_lossy(&bad.stderr);
    check(bad.status.code() == Some(2), format!("missing file: {err}"))?;
    check(
        err.contains("/nonexistent.json") && !err.contains("panicked"),
        &err,
    )?;
    std::fs::write(dir.join("not.json"), "{\"schema\": 3}")?;
    let not = dir.join("not.json").display().to_string();
    let bad = kvm_msr()
        .args(["bench-compare", &a[0], "--", &not])
        .output()?;
    let err = String::from_utf8_lossy(&bad.stderr);
    check(
        bad.status.code() == Some(2),
        format!("not a summary: {err}"),
    )?;
    check(err.contains("not.json"), &err)?;
    let bad = kvm_msr().args(["bench-compare", &a[0]]).output()?;
    check(bad.status.code() == Some(2), "no B side is a usage error")?;
    std::fs::remove_dir_all(&dir)?;
    Ok(Completion::Completed)
}

/// A reader that stops early (`kvm-msr list | head -c 100`) closes the pipe: the command must end
/// quietly with its own status, not panic on EPIPE. Needs no /dev/kvm (`list` and `compare`).
fn closed_stdout_is_not_a_panic() -> Outcome {
    use std::io::Read;
    use std::process::Stdio;
    for args in [vec!["list"], vec!["list", "--json"]] {
        let mut child = kvm_msr()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut first = [0u8; 64];
        child.stdout.take().expect("piped").read_exact(&mut first)?; // then the pipe closes
        let out = child.wait_with_output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        check(!err.contains("panicked"), format!("{args:?}: {err}"))?;
        check(
            out.status.code() == Some(0),
            format!(
                "{args:?}: exit {:?} (signal or error): {err}",
                out.status.code()
            ),
        )?;
    }
    Ok(Completion::Completed)
}

/// `replay --help` names exactly the fuzz targets that exist (from the list the code uses).
fn replay_help_lists_every_fuzz_target() -> Outcome {
    let out = kvm_msr().args(["replay", "--help"]).output()?;
    let help = String::from_utf8_lossy(&out.stdout);
    let listed = help
        .split("[possible values: ")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .unwrap_or("");
    let names: Vec<&str> = listed.split(", ").collect();
    let code = kvm_msr_suite::fuzzing::Target::names();
    check(
        names == code,
        format!("help lists {names:?}, the code has {code:?}"),
    )?;
    Ok(Completion::Completed)
}

/// The binary carries its fixtures: copied into an empty folder and run from there, with no
/// KVM_MSR_FIXTURES, `list` works and names its sources relative to the fixtures root, and
/// `report --list` too where /dev/kvm is usable (the check list needs the host's MSR lists).
fn copied_binary_carries_its_fixtures() -> Outcome {
    let dir = std::env::temp_dir().join(format!("kvm-msr-copied-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bin = dir.join("kvm-msr");
    std::fs::copy(env!("CARGO_BIN_EXE_kvm-msr"), &bin)?;
    let run = |args: &[&str]| {
        Command::new(&bin)
            .args(args)
            .current_dir(&dir)
            .env_remove("KVM_MSR_FIXTURES")
            .output()
    };
    let result = (|| {
        let list = run(&["list", "--json"])?;
        let text = String::from_utf8_lossy(&list.stdout);
        check(list.status.success(), String::from_utf8_lossy(&list.stderr))?;
        let entries: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Failed::from(format!("list --json: {e}")))?;
        let sources: Vec<&str> = entries
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["source"][0].as_str()).collect())
            .unwrap_or_default();
        check(!sources.is_empty(), "list --json named no source")?;
        check(
            sources.iter().all(|s| s.starts_with("catalogue/")),
            format!(
                "sources not relative to the fixtures root: {:?}",
                &sources[..3.min(sources.len())]
            ),
        )?;
        if !std::path::Path::new("/dev/kvm").exists() {
            return Ok(Completion::ignored_with(
                "listed from the copy; report --list needs /dev/kvm, absent here",
            ));
        }
        let report = run(&["report", "--list"])?;
        check(
            report.status.success() && report.stdout.len() > 1000,
            format!(
                "report --list from the copy: exit {:?}: {}",
                report.status.code(),
                String::from_utf8_lossy(&report.stderr)
            ),
        )?;
        Ok(Completion::Completed)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A kernel-log record with a splat marker, logged while the checks run, fails the report's
/// kernel-log verdict (root only: it writes the record to /dev/kmsg itself; KVM needed).
fn kernel_splat_during_report_is_a_failure() -> Outcome {
    let writable = std::fs::OpenOptions::new().write(true).open("/dev/kmsg");
    let Ok(mut kmsg) = writable else {
        return Ok(Completion::ignored_with(
            "cannot write /dev/kmsg (not root): no record to plant",
        ));
    };
    if !std::path::Path::new("/dev/kvm").exists() {
        return Ok(Completion::ignored_with("no /dev/kvm: no report to watch"));
    }
    let mut child = kvm_msr()
        .args(["report", "--format", "json", "--jobs", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut b = Vec::new();
        stdout.read_to_end(&mut b).map(|_| b)
    });
    // Plant records once the report has /dev/kmsg open, and keep planting while it runs: a
    // record written between the watcher's open and its seek to the end is not new to it, and
    // on a loaded machine that window can be long (a single record after a fixed delay flaked).
    let fd_dir = format!("/proc/{}/fd", child.id());
    let watching = || {
        std::fs::read_dir(&fd_dir).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                std::fs::read_link(e.path()).is_ok_and(|t| t == std::path::Path::new("/dev/kmsg"))
            })
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !watching() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    use std::io::Write;
    // Addressed to the child, so a fuzz campaign or report running beside this test ignores it.
    let record = format!(
        "<4>WARNING: {}{}: a planted record\n",
        kvm_msr_suite::oracles::kmsg::PLANTED_TAG,
        child.id()
    );
    for _ in 0..20 {
        if child.try_wait()?.is_some() {
            break;
        }
        kmsg.write_all(record.as_bytes())?;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = child.wait()?;
    let out = std::process::Output {
        status,
        stdout: reader.join().expect("stdout reader")?,
        stderr: Vec::new(),
    };
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Failed::from(format!("report --format json: {e}")))?;
    let verdict = report["results"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|r| r["id"] == "kernel-log.no-splat-while-checks-ran")
        })
        .cloned()
        .unwrap_or_default();
    check(
        verdict["verdict"] == "fail"
            && verdict["actual"]
                .as_str()
                .is_some_and(|a| a.contains("a planted record")),
        format!("kernel-log verdict: {verdict}"),
    )?;
    check(
        out.status.code() == Some(1),
        format!("exit {:?}", out.status.code()),
    )?;
    Ok(Completion::Completed)
}

/// `report --list` needs no /dev/kvm: it lists the checks every host has (harness, catalogued)
/// and says on stderr what it leaves out; with KVM, every one of them is in the full list.
fn report_list_needs_no_kvm() -> Outcome {
    let out = kvm_msr()
        .args(["report", "--list"])
        .env("KVM_MSR_DEVICE", "/nonexistent")
        .output()?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    check(
        out.status.code() == Some(0),
        format!("exit {:?}: {err}", out.status.code()),
    )?;
    check(err.contains("listed where KVM can be opened"), &err)?;
    let ids: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for want in [
        "harness.guest-hang.reported",
        "host.apic-base.reset",
        "guest.apic-base.reset",
    ] {
        check(
            ids.contains(&want),
            format!("{want} missing from the list without KVM"),
        )?;
    }
    if !std::path::Path::new("/dev/kvm").exists() {
        return Ok(Completion::Completed);
    }
    let full = kvm_msr().args(["report", "--list"]).output()?;
    let full = String::from_utf8_lossy(&full.stdout);
    let all: std::collections::BTreeSet<&str> = full
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let extra: Vec<&&str> = ids.iter().filter(|i| !all.contains(**i)).collect();
    check(
        extra.is_empty(),
        format!("listed without KVM but not with it: {extra:?}"),
    )?;
    Ok(Completion::Completed)
}

fn main() {
    let args = Arguments::from_args();
    let tests: Vec<Test> = vec![
        (
            "missing_device_is_a_clear_skip_not_a_panic",
            missing_device_is_a_clear_skip_not_a_panic,
        ),
        (
            "missing_device_fails_when_kvm_is_required",
            missing_device_fails_when_kvm_is_required,
        ),
        (
            "unopenable_device_is_an_error_not_a_panic",
            unopenable_device_is_an_error_not_a_panic,
        ),
        (
            "permission_denied_names_mode_group_and_remedy",
            permission_denied_names_mode_group_and_remedy,
        ),
        (
            "unknown_format_is_a_usage_error",
            unknown_format_is_a_usage_error,
        ),
        (
            "malformed_fixture_names_file_and_line",
            malformed_fixture_names_file_and_line,
        ),
        (
            "list_filters_and_needs_no_kvm",
            list_filters_and_needs_no_kvm,
        ),
        ("report_list_needs_no_kvm", report_list_needs_no_kvm),
        (
            "diff_exit_codes_follow_the_verdict",
            diff_exit_codes_follow_the_verdict,
        ),
        (
            "bench_compare_decides_from_interleaved_runs",
            bench_compare_decides_from_interleaved_runs,
        ),
        ("closed_stdout_is_not_a_panic", closed_stdout_is_not_a_panic),
        (
            "replay_help_lists_every_fuzz_target",
            replay_help_lists_every_fuzz_target,
        ),
        (
            "copied_binary_carries_its_fixtures",
            copied_binary_carries_its_fixtures,
        ),
        (
            "kernel_splat_during_report_is_a_failure",
            kernel_splat_during_report_is_a_failure,
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| Trial::ignorable_test(name, f))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
