use super::*;

const SHAPES: &[&str] = &[
    "filter.limits",
    "cpuid.same-table-accepted-after-run",
    "guest.tsc.matches-host",
    "host.msr-0x4b564d05.readable-fresh",
    "guest.misc-enable.quirk-misc-enable-no-mwait-off.mwait-drives-cpuid",
    "guest-fep.sysenter-cs.write.high-dword",
    "save-restore.efer.written.lme",
    "filter.random.seed-c0ffee",
    "kernel-log.no-splat-while-checks-ran",
];

#[test]
fn every_family_parses_back() {
    for f in Family::ALL {
        assert_eq!(f.as_str().parse::<Family>(), Ok(f));
        let id = CheckId::new(f, "x");
        assert_eq!(id.to_string().parse::<CheckId>(), Ok(id));
    }
}

#[test]
fn text_round_trips() {
    for s in SHAPES {
        let id: CheckId = s.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(id.to_string(), *s);
        assert_eq!(id.to_string().parse::<CheckId>().as_ref(), Ok(&id));
    }
}

#[test]
fn constructors_spell_the_same_ids() {
    const FIXED: CheckId = CheckId::fixed(Family::GuestFep, "sysenter-cs.write.high-dword");
    let built = CheckId::new(Family::GuestFep, "sysenter-cs")
        .then("write")
        .then("high-dword");
    assert_eq!(FIXED, built);
    assert_eq!(built.to_string(), "guest-fep.sysenter-cs.write.high-dword");
    assert_eq!(
        CheckId::msr(Family::Host, "efer", "reset").to_string(),
        "host.efer.reset"
    );
    assert_eq!(
        CheckId::new(Family::Filter, "limits").to_string(),
        "filter.limits"
    );
    assert_eq!(built.family(), Family::GuestFep);
    assert_eq!(
        format!("[{:<15}]", CheckId::fixed(Family::Tsc, "x")),
        "[tsc.x          ]"
    );
    assert_eq!(
        built.segments().collect::<Vec<_>>(),
        ["sysenter-cs", "write", "high-dword"]
    );
}

#[test]
fn forced_emulation_twin_is_for_guest_checks_only() {
    let g = CheckId::msr(Family::Guest, "tsc", "matches-host");
    let twin = g.forced_emulation_twin().unwrap();
    assert_eq!(twin.to_string(), "guest-fep.tsc.matches-host");
    assert_eq!(twin.family(), Family::GuestFep);
    assert_eq!(twin.forced_emulation_twin(), None);
    assert_eq!(
        CheckId::msr(Family::Host, "tsc", "reset").forced_emulation_twin(),
        None
    );
}

#[test]
fn malformed_text_is_refused_with_the_reason() {
    for (text, why) in [
        ("", "no '.'"),
        ("guest", "no '.'"),
        ("guest.", "empty segment"),
        (".tsc.reset", "unknown family \"\""),
        ("guest..reset", "empty segment"),
        ("guest.tsc.", "empty segment"),
        ("gust.tsc.reset", "unknown family \"gust\""),
        ("Guest.tsc.reset", "unknown family"),
        ("guest.TSC.reset", "segment \"TSC\""),
        ("guest.tsc_adjust.reset", "segment \"tsc_adjust\""),
        ("guest.tsc.matches host", "segment \"matches host\""),
        ("guest.tsc.*", "segment \"*\""),
    ] {
        let e = text.parse::<CheckId>().unwrap_err().to_string();
        assert!(e.contains(why), "{text:?}: {e}");
        assert!(e.starts_with(&format!("invalid check id {text:?}")), "{e}");
    }
}

#[test]
fn segments_are_checked_one_by_one() {
    assert!(is_segment("msr-0x10"));
    assert!(!is_segment(""));
    assert!(!is_segment("a.b"));
    assert!(!is_segment("a{i}"));
    assert_eq!(path_problem("a.b-c.0"), None);
    assert_eq!(path_problem("a..b"), Some(SegmentProblem::Empty));
    assert_eq!(path_problem(".a"), Some(SegmentProblem::Empty));
    assert_eq!(path_problem("a."), Some(SegmentProblem::Empty));
    assert_eq!(path_problem("a.B"), Some(SegmentProblem::BadChar));
}

#[test]
#[should_panic(expected = "check id guest.tsc.a.b: segment \"a.b\"")]
fn then_refuses_a_dotted_segment() {
    let _ = CheckId::new(Family::Guest, "tsc").then("a.b");
}

#[test]
#[should_panic(expected = "an empty segment")]
fn new_refuses_an_empty_subject() {
    let _ = CheckId::new(Family::Host, "");
}

#[test]
#[should_panic(expected = "CheckId::fixed")]
fn fixed_refuses_a_bad_literal() {
    // In a `const` this is a compile error; called at run time it panics the same way.
    let path = std::hint::black_box("tsc.Reset");
    let _ = CheckId::fixed(Family::Host, path);
}

#[test]
fn serde_uses_the_text() {
    let id = CheckId::fixed(Family::Cpuid, "same-table-accepted-after-run");
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(json, "\"cpuid.same-table-accepted-after-run\"");
    assert_eq!(serde_json::from_str::<CheckId>(&json).unwrap(), id);
    let e = serde_json::from_str::<CheckId>("\"cpuid.Same\"").unwrap_err();
    assert!(e.to_string().contains("invalid check id"), "{e}");
}
