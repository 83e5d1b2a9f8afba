use super::rules::parse_host_mode;
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
#[case::dotted_id(
    "[[msr]]\nindex = 1\nname = \"A\"\nid = \"a.b\"\ncite = \"x\"\n",
    "t.toml:1",
    "`id` \"a.b\""
)]
#[case::dotted_write_name("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\nwrite = [{ name = \"w.x\", value = 1, cite = \"c\" }]\n", "t.toml:1", "write name \"w.x\"")]
#[case::empty_write_name("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\nwrite = [{ name = \"\", value = 1, cite = \"c\" }]\n", "t.toml:1", "write name \"\"")]
#[case::bad_kernel_version("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\nwrite = [{ name = \"w\", value = 1, cite = \"c\", when = [{ kernel_before = \"6\", outcome = \"rejected\", cite = \"c\" }] }]\n", "t.toml:1", "MAJOR.MINOR")]
#[case::bad_hyperv_gate("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\ngate = { hyperv = \"vmbus\", host = \"exempt\", cite = \"c\" }\n", "t.toml:1", "vmbus")]
#[case::host_until_without_cite("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\ngate = { host_only = true, host = \"exempt\", cite = \"c\", host_until = { kernel = \"6.13\", host = \"fails\", cite = \"\" } }\n", "t.toml:1", "host_until.cite")]
#[case::unknown_cpuid_condition("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\nwrite = [{ name = \"w\", value = 1, cite = \"c\", when = [{ kvm_cpuid_none = [\"WARP\"], outcome = \"rejected\", cite = \"c\" }] }]\n", "t.toml:1", "WARP")]
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
fn write_unsupported_is_a_host_mode() {
    // IA32_XSS from 338543cbe033 (6.18); host_until itself is covered below.
    assert_eq!(
        parse_host_mode("write-unsupported"),
        Ok(HostWhenClosed::WriteUnsupported)
    );
}

#[test]
fn version_conditions_follow_the_running_kernel() {
    let m = parse(
        r#"
[[msr]]
index = 0x10a
name = "A"
id = "a"
cite = "x"
gate = { cpuid = ["ARCH_CAPABILITIES"], host = "advertised-zero", cite = "new", host_until = { kernel = "6.13", host = "exempt", cite = "old" } }
write = [{ name = "w", value = 0, outcome = "unsupported", cite = "new", when = [{ kernel_before = "6.13", outcome = "rejected", cite = "old" }] }]
"#,
    )
    .unwrap();
    let g = m[0].gate.as_ref().unwrap();
    let (old, new) = (
        KernelVersion::parse("6.12.118+deb13-amd64"),
        KernelVersion::parse("7.2.13"),
    );
    assert_eq!(old, Some(KernelVersion(6, 12)));
    assert_eq!(g.host_on(old), HostWhenClosed::Exempt);
    assert_eq!(g.host_on(new), HostWhenClosed::AdvertisedZero);
    assert_eq!(g.host_on(None), HostWhenClosed::AdvertisedZero);
    assert_eq!(g.host_cite(old), "old");
    let rc = |kernel| RuleContext {
        backend: Backend::Svm,
        kernel,
        kvm_cpuid: None,
        guest_vendor: None,
        path: AccessPath::Guest,
        emulated: false,
    };
    assert_eq!(
        m[0].writes[0].outcome_for(rc(old)).0,
        WriteOutcome::Rejected
    );
    assert_eq!(
        m[0].writes[0].outcome_for(rc(new)).0,
        WriteOutcome::Unsupported
    );
    assert_eq!(
        m[0].writes[0].outcome_for(rc(None)).0,
        WriteOutcome::Unsupported
    );
    assert!(KernelVersion::parse("unknown").is_none());
}

#[test]
fn hyperv_gates_open_with_the_hyperv_interface() {
    let gate = |hv: &str| {
        parse(&format!("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\ngate = {{ hyperv = \"{hv}\", host = \"exempt\", cite = \"c\" }}\n"))
            .unwrap()[0]
            .gate
            .clone()
            .unwrap()
    };
    let kvm_leaves = crate::kvm::CpuidTable {
        entries: Vec::new(),
    };
    let mut hv = kvm_leaves.clone();
    hv.set_hyperv_interface();
    for name in ["interface", "syndbg"] {
        let g = gate(name);
        assert_eq!(
            g.state(Some(&kvm_leaves), None, false, false),
            GateState::Closed,
            "{name}"
        );
        assert_eq!(
            g.state(Some(&hv), None, false, false),
            GateState::Open,
            "{name}"
        );
        assert_eq!(
            g.state(None, None, false, false),
            GateState::Closed,
            "{name}"
        );
    }
    let synic = gate("synic");
    assert_eq!(
        synic.state(Some(&hv), None, false, false),
        GateState::Closed
    );
    assert_eq!(synic.state(Some(&hv), None, false, true), GateState::Open);
    assert_eq!(
        synic.state(Some(&kvm_leaves), None, false, true),
        GateState::Closed
    );
}

#[test]
fn ranges_expand_to_their_members() {
    let m = parse("[[msr]]\nindex = 0x400\ncount = 3\nstride = 4\nname = \"IA32_MC{i}_CTL\"\nid = \"mc{i}-ctl\"\ncite = \"SDM\"\n").unwrap();
    let got: Vec<(u32, &str)> = m.iter().map(|x| (x.index, x.id.as_str())).collect();
    assert_eq!(
        got,
        [(0x400, "mc0-ctl"), (0x404, "mc1-ctl"), (0x408, "mc2-ctl")]
    );
}

#[test]
fn write_rules_pick_the_first_matching_condition() {
    let m = parse(
        r#"
[[msr]]
index = 0x175
name = "IA32_SYSENTER_ESP"
id = "sysenter-esp"
cite = "SDM"
[[msr.write]]
name = "high"
value = 0x123456789abc
cite = "x86.c"
when = [{ backend = "svm", guest_vendor = "amd", outcome = "low32", cite = "svm.c" }]
"#,
    )
    .unwrap();
    let w = &m[0].writes[0];
    let rc = |backend, v| RuleContext {
        kernel: None,
        kvm_cpuid: None,
        backend,
        guest_vendor: Some(v),
        path: AccessPath::Guest,
        emulated: false,
    };
    assert_eq!(
        w.outcome_for(rc(Backend::Svm, GuestVendor::Amd)).0,
        WriteOutcome::Low32
    );
    assert_eq!(
        w.outcome_for(rc(Backend::Svm, GuestVendor::Intel)).0,
        WriteOutcome::Same
    );
    assert_eq!(
        w.outcome_for(rc(Backend::Vmx, GuestVendor::Amd)).0,
        WriteOutcome::Same
    );
    assert!(w.vendor_dependent());
}

#[test]
fn supported_cpuid_and_emulation_conditions_match() {
    let text = concat!(
        "[[msr]]\nindex = 0xc0000100\nname = \"IA32_FS_BASE\"\nid = \"fs-base\"\ncite = \"SDM\"\n",
        "write = [{ name = \"la57-only\", value = 0x0012_3456_789a_bcd0, cpuid_clear = [\"LA57\"], cite = \"x86.c\", when = [",
        "{ kvm_cpuid_none = [\"LA57\"], outcome = \"rejected\", cite = \"48\" }, ",
        "{ emulated = true, outcome = \"canonical\", cite = \"fep\" }] }]\n",
    );
    let m = parse(text).unwrap();
    let w = &m[0].writes[0];
    assert_eq!(w.cpuid_clear, ["LA57"]);
    let la57 = crate::kvm::cpuid::feature("LA57").unwrap();
    let mut with = crate::kvm::CpuidTable {
        entries: vec![kvm_bindings::kvm_cpuid_entry2 {
            function: 7,
            ..Default::default()
        }],
    };
    let without = with.clone();
    assert!(with.set(la57, true));
    let rc = |t, path, emulated| RuleContext {
        backend: Backend::Svm,
        kernel: None,
        kvm_cpuid: t,
        guest_vendor: None,
        path,
        emulated,
    };
    let o = |t, path, e| w.outcome_for(rc(t, path, e)).0;
    assert_eq!(
        o(Some(&without), AccessPath::Host, false),
        WriteOutcome::Rejected
    );
    assert_eq!(o(Some(&with), AccessPath::Host, false), WriteOutcome::Same);
    // No supported CPUID to judge by: the condition does not match.
    assert_eq!(o(None, AccessPath::Host, false), WriteOutcome::Same);
    assert_eq!(
        o(Some(&with), AccessPath::Guest, true),
        WriteOutcome::Canonical
    );
    assert_eq!(o(Some(&with), AccessPath::Guest, false), WriteOutcome::Same);
    // `emulated` is about the guest's instruction: a host write never matches it.
    assert_eq!(o(Some(&with), AccessPath::Host, true), WriteOutcome::Same);
}

#[rstest]
#[case::uncited_write("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\nwrite = [{ name = \"v\", value = 1, cite = \"\" }]\n", "write \"v\".cite")]
#[case::bad_outcome("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\nwrite = [{ name = \"v\", value = 1, outcome = \"maybe\", cite = \"c\" }]\n", "maybe")]
#[case::range_without_placeholder(
    "[[msr]]\nindex = 1\ncount = 2\nname = \"A\"\nid = \"a\"\ncite = \"x\"\n",
    "{i}"
)]
#[case::bad_backend("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\nbackends = { only = [\"tcg\"], cite = \"c\" }\n", "tcg")]
fn rejects_bad_rules(#[case] text: &str, #[case] what: &str) {
    let e = err_text(text);
    assert!(e.starts_with("t.toml:1"), "{e}");
    assert!(e.contains(what), "{e}");
}

#[test]
fn the_shipped_catalogue_loads() {
    let c = Catalogue::load_default().unwrap();
    assert!(!c.msrs.is_empty());
}
