//! KVM_X86_SET_MSR_FILTER on the real KVM against the model (model/filter.rs): for each filter and
//! guest access, handled in the kernel, a FILTER exit, or #GP as the model predicts; host accesses
//! never filtered; replacement, removal, invalid filters and limits (api.rst 4.97).

use super::exits::exit_machine;
use super::{Check, Context, Outcome};
use crate::check_id::{CheckId, Family};
use crate::guest::OpOutcome;
use crate::kvm::filter::set_msr_filter;
use crate::kvm::Errno;
use crate::machine::Machine;
use crate::model::filter::{Access, Filter, Range, DEFAULT_DENY, RANGE_READ, RANGE_WRITE};
use crate::model::rng::SplitMix64;
use crate::msr_index::{IA32_PAT, MSR_KERNEL_GS_BASE, MSR_SYSCALL_MASK};
use crate::oracles::filter::{access_matches_model, observe, Seen, REASON_FILTER};

const API: &str =
    "api.rst 4.97 KVM_X86_SET_MSR_FILTER; x86.c kvm_msr_allowed, kvm_vm_ioctl_set_msr_filter";
/// MSRs plain enough on every backend to compare handled accesses with an unfiltered twin.
pub(super) const SUBJECTS: &[u32] = &[MSR_SYSCALL_MASK, MSR_KERNEL_GS_BASE, IA32_PAT, 0x1fc, 0x17a];
/// The seed of the randomized cases (printed in the check id and the result).
pub const SEED: u64 = 0xf117_e5ee_d000_0001;

/// One (filter, access) through the shared oracle; a harness error ends the check.
fn one_case(
    ctx: &Context,
    f: &Filter,
    index: u32,
    access: Access,
    exits: bool,
) -> Result<Result<String, String>, Outcome> {
    access_matches_model(ctx, f, index, access, exits)
        .map(|r| {
            r.map_err(|v| {
                format!(
                    "{index:#x} {access:?}: model {}, KVM {}",
                    v.expected, v.actual
                )
            })
        })
        .map_err(Outcome::harness)
}

fn cases_outcome(results: Vec<Result<String, String>>, what: &str) -> Outcome {
    let bad: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().cloned())
        .collect();
    if bad.is_empty() {
        Outcome::pass(format!(
            "{} accesses as the model predicts ({what})",
            results.len()
        ))
    } else {
        Outcome::fail(
            format!("every access as the model predicts ({what})"),
            bad.join("; "),
        )
    }
}

fn table() -> Vec<(&'static str, Filter)> {
    let deny = |b, n, fl| Range::with_allowed(fl, b, n, &[]);
    vec![
        (
            "deny-syscall-mask-reads",
            Filter {
                flags: 0,
                ranges: vec![deny(MSR_SYSCALL_MASK, 1, RANGE_READ)],
            },
        ),
        (
            "deny-writes-in-c0000000",
            Filter {
                flags: 0,
                ranges: vec![deny(0xc000_0000, 0x200, RANGE_WRITE)],
            },
        ),
        (
            "default-deny-allow-pat",
            Filter {
                flags: DEFAULT_DENY,
                ranges: vec![Range::with_allowed(3, IA32_PAT, 1, &[IA32_PAT])],
            },
        ),
        (
            "overlap-first-wins",
            Filter {
                flags: 0,
                ranges: vec![
                    Range::with_allowed(3, 0x100, 0x200, &[0x1fc]),
                    deny(0x0, 0x2000, 3),
                ],
            },
        ),
        (
            "overlap-flag-mismatch-falls-through",
            Filter {
                flags: 0,
                ranges: vec![
                    Range::with_allowed(RANGE_WRITE, 0x0, 0x2000, &[0x17a]),
                    deny(0x0, 0x2000, RANGE_READ),
                ],
            },
        ),
        (
            "bitmap-mixed",
            Filter {
                flags: 0,
                ranges: vec![Range::with_allowed(3, 0xc000_0080, 8, &[0xc000_0084])],
            },
        ),
    ]
}

fn table_case(ctx: &Context, f: &Filter, exits: bool) -> Outcome {
    let mut results = Vec::new();
    for &i in SUBJECTS {
        for a in [Access::Read, Access::Write] {
            match one_case(ctx, f, i, a, exits) {
                Err(o) => return o,
                Ok(r) => results.push(r),
            }
        }
    }
    cases_outcome(
        results,
        if exits {
            "FILTER exits on"
        } else {
            "FILTER exits off: #GP"
        },
    )
}

fn random_filter(rng: &mut SplitMix64) -> Filter {
    let n = 1 + rng.below(4) as usize;
    let ranges = (0..n)
        .map(|_| {
            let base = [0x0u32, 0x100, 0x170, 0x270, 0xc000_0080][rng.below(5) as usize];
            let nmsrs = 1 + rng.below(0x200) as u32;
            let flags = 1 + rng.below(3) as u32;
            let mut r = Range::with_allowed(flags, base, nmsrs, &[]);
            for b in r.bitmap.iter_mut() {
                *b = rng.next_u64() as u8;
            }
            r
        })
        .collect();
    Filter {
        flags: u32::from(rng.chance(50)),
        ranges,
    }
}

fn randomized(ctx: &Context) -> Outcome {
    if ctx.facts.cap("KVM_CAP_X86_MSR_FILTER") <= 0 {
        return Outcome::skip("KVM_CAP_X86_MSR_FILTER is absent");
    }
    let mut rng = SplitMix64::new(SEED);
    let mut results = Vec::new();
    for _ in 0..24 {
        let f = random_filter(&mut rng);
        let i = SUBJECTS[rng.below(SUBJECTS.len() as u64) as usize];
        let a = if rng.chance(50) {
            Access::Read
        } else {
            Access::Write
        };
        match one_case(ctx, &f, i, a, true) {
            Err(o) => return o,
            Ok(r) => results.push(r.map_err(|e| format!("{e} with {f:x?}"))),
        }
    }
    cases_outcome(results, &format!("seed {SEED:#x}"))
}

fn deny_everything() -> Filter {
    Filter {
        flags: DEFAULT_DENY,
        ranges: vec![Range::with_allowed(3, 0, 1, &[])],
    }
}

fn host_unaffected(ctx: &Context) -> Outcome {
    let m = match exit_machine(ctx, REASON_FILTER) {
        Ok(m) => m,
        Err(o) => return o,
    };
    if let Err(e) = set_msr_filter(&m.vm.fd, &deny_everything()) {
        return Outcome::fail("a deny-everything filter accepted", format!("errno {e}"));
    }
    let w = m.vcpu.set_msr(MSR_SYSCALL_MASK, 0x4700);
    let r = m.vcpu.get_msr(MSR_SYSCALL_MASK);
    if w && r == Some(0x4700) {
        Outcome::pass("KVM_SET_MSRS and KVM_GET_MSRS worked under a deny-everything filter")
    } else {
        Outcome::fail(
            "host accesses unaffected by the filter",
            format!("write {w}, read {r:x?}"),
        )
    }
}

fn replace_remove_invalid(ctx: &Context) -> Outcome {
    let mut m = match exit_machine(ctx, REASON_FILTER) {
        Ok(m) => m,
        Err(o) => return o,
    };
    let deny_one = |i| Filter {
        flags: 0,
        ranges: vec![Range::with_allowed(3, i, 1, &[])],
    };
    let mut steps = Vec::new();
    fn step(steps: &mut Vec<String>, name: &str, m: &mut Machine, i: u32, want: Seen) -> bool {
        let seen = observe(m, i, Access::Read);
        let ok = matches!((&seen, want), (Ok(Seen::Handled(_)), Seen::Handled(_)))
            || seen.as_ref().ok() == Some(&want);
        steps.push(format!("{name}: {i:#x} {seen:?}"));
        ok
    }
    let handled = Seen::Handled(OpOutcome::Read(0));
    let mut ok = set_msr_filter(&m.vm.fd, &deny_one(MSR_SYSCALL_MASK)).is_ok();
    ok &= step(
        &mut steps,
        "filter A",
        &mut m,
        MSR_SYSCALL_MASK,
        Seen::FilterExit,
    );
    ok &= set_msr_filter(&m.vm.fd, &deny_one(MSR_KERNEL_GS_BASE)).is_ok();
    ok &= step(
        &mut steps,
        "replaced by B",
        &mut m,
        MSR_SYSCALL_MASK,
        handled,
    );
    ok &= step(
        &mut steps,
        "replaced by B",
        &mut m,
        MSR_KERNEL_GS_BASE,
        Seen::FilterExit,
    );
    let invalid = set_msr_filter(
        &m.vm.fd,
        &Filter {
            flags: 2,
            ranges: vec![],
        },
    );
    ok &= invalid == Err(Errno::EINVAL);
    steps.push(format!("invalid filter: {invalid:?}"));
    ok &= step(
        &mut steps,
        "B still in force",
        &mut m,
        MSR_KERNEL_GS_BASE,
        Seen::FilterExit,
    );
    ok &= set_msr_filter(&m.vm.fd, &Filter::allow_all()).is_ok();
    ok &= step(&mut steps, "removed", &mut m, MSR_KERNEL_GS_BASE, handled);
    if ok {
        Outcome::pass(steps.join("; "))
    } else {
        Outcome::fail("A denies; B replaces it on the next access; an invalid filter is EINVAL and B stays; allow-all removes filtering", steps.join("; "))
    }
}

fn limits(ctx: &Context) -> Outcome {
    let m = match exit_machine(ctx, REASON_FILTER) {
        Ok(m) => m,
        Err(o) => return o,
    };
    let big = |n| Filter {
        flags: 0,
        ranges: vec![Range::with_allowed(3, 0, n, &[])],
    };
    let max = set_msr_filter(&m.vm.fd, &big(0x3000));
    let over = set_msr_filter(&m.vm.fd, &big(0x3001));
    // 16 ranges; the last one alone covers SYSCALL_MASK, so it must be in effect.
    let mut ranges: Vec<Range> = (0..15)
        .map(|i| Range::with_allowed(3, 0x10 + i, 1, &[0x10 + i]))
        .collect();
    ranges.push(Range::with_allowed(RANGE_READ, MSR_SYSCALL_MASK, 1, &[]));
    let sixteen = set_msr_filter(&m.vm.fd, &Filter { flags: 0, ranges });
    let mut m = m;
    let seen = observe(&mut m, MSR_SYSCALL_MASK, Access::Read);
    let actual = format!(
        "0x3000 MSRs: {max:?}; 0x3001: {over:?}; 16 ranges: {sixteen:?}, 16th range: {seen:?}"
    );
    if max.is_ok() && over == Err(Errno::EINVAL) && sixteen.is_ok() && seen == Ok(Seen::FilterExit)
    {
        Outcome::pass(actual)
    } else {
        Outcome::fail("a 0x600-byte bitmap (0x3000 MSRs) accepted, one long more EINVAL; 16 ranges accepted, the 16th in effect", actual)
    }
}

fn x2apic_never_filtered(ctx: &Context) -> Outcome {
    let mut m = match exit_machine(ctx, REASON_FILTER) {
        Ok(m) => m,
        Err(o) => return o,
    };
    if !m
        .vcpu
        .set_msr(crate::msr_index::IA32_APIC_BASE, 0xfee0_0d00)
    {
        return Outcome::fail("x2APIC mode (APIC_BASE = 0xfee00d00)", "refused");
    }
    let f = Filter {
        flags: DEFAULT_DENY,
        ranges: vec![Range::with_allowed(3, 0x800, 0x100, &[])],
    };
    if let Err(e) = set_msr_filter(&m.vm.fd, &f) {
        return Outcome::fail(
            "a filter denying 0x800-0x8ff accepted (and ignored)",
            format!("errno {e}"),
        );
    }
    match observe(&mut m, 0x808, Access::Read) {
        Ok(Seen::Handled(OpOutcome::Read(_))) => {
            Outcome::pass("x2APIC TPR read handled in the kernel despite the filter")
        }
        r => Outcome::fail(
            "the x2APIC TPR read handled in the kernel",
            format!("{r:?}"),
        ),
    }
}

pub fn checks(_ctx: &Context) -> Vec<Check> {
    let mut v = Vec::new();
    for (name, f) in table() {
        for exits in [true, false] {
            let f2 = f.clone();
            let suffix = if exits { "exit" } else { "gp" };
            v.push(Check::new(
                CheckId::new(Family::Filter, "table")
                    .then(name)
                    .then(suffix),
                None,
                format!(
                    "filter {name}: guest accesses handled, {} as the model predicts",
                    if exits { "FILTER-exited" } else { "#GP" }
                ),
                API,
                move |c| {
                    if c.facts.cap("KVM_CAP_X86_MSR_FILTER") <= 0 {
                        return Outcome::skip("KVM_CAP_X86_MSR_FILTER is absent");
                    }
                    table_case(c, &f2, exits)
                },
            ));
        }
    }
    v.push(Check::new(
        CheckId::new(Family::Filter, "random").then(format!("seed-{SEED:x}")),
        None,
        "24 random filters and accesses behave as the model predicts (seed in the id)",
        API,
        randomized,
    ));
    v.push(Check::new(
        CheckId::fixed(Family::Filter, "host-unaffected"),
        None,
        "host KVM_GET/SET_MSRS are never filtered",
        format!("{API}: the filter applies to guest accesses only"),
        host_unaffected,
    ));
    v.push(Check::new(CheckId::fixed(Family::Filter, "replace-remove-invalid"), None, "a new filter takes effect on the next access, an invalid one is EINVAL and leaves the old one, allow-all removes filtering", API, replace_remove_invalid));
    v.push(Check::new(
        CheckId::fixed(Family::Filter, "limits"),
        None,
        "bitmap size limit (0x600 bytes) and 16 ranges",
        format!("{API}; KVM_MSR_FILTER_MAX_BITMAP_SIZE, KVM_MSR_FILTER_MAX_RANGES"),
        limits,
    ));
    v.push(Check::new(
        CheckId::fixed(Family::Filter, "x2apic-never-filtered"),
        Some(0x808),
        "x2APIC MSRs 0x800-0x8ff are never filtered",
        format!("{API}: \"x2APIC MSRs are always allowed\""),
        x2apic_never_filtered,
    ));
    v
}
