//! Replacing an MSR filter is all or nothing (api.rst 4.97 KVM_X86_SET_MSR_FILTER; x86.c
//! kvm_vm_ioctl_set_msr_filter builds the new filter completely -- kvm_add_msr_filter per range --
//! and swaps it in with rcu_replace_pointer only when every range was accepted, freeing it
//! otherwise; the same in 6.1, 6.12 and 7.2). A rejected replacement whose bad part comes after
//! valid ranges leaves every range and the default action of the old filter deciding; a valid
//! one takes effect whole, with no range of the old one left over.

use super::exits::exit_machine;
use super::filter::SUBJECTS;
use super::{Check, Context, Outcome};
use crate::check_id::{CheckId, Family};
use crate::kvm::filter::{set_msr_filter, set_msr_filter_unreadable};
use crate::kvm::Errno;
use crate::machine::Machine;
use crate::model::filter::{Access, Filter, Range, DEFAULT_DENY, RANGE_READ, RANGE_WRITE};
use crate::msr_index::{IA32_PAT, MSR_KERNEL_GS_BASE, MSR_SYSCALL_MASK};
use crate::oracles::filter::{observe, Seen, REASON_FILTER};

const CITE: &str = "api.rst 4.97 KVM_X86_SET_MSR_FILTER; x86.c kvm_vm_ioctl_set_msr_filter (new filter built whole, kvm_free_msr_filter on the first error, rcu_replace_pointer only on success), kvm_add_msr_filter, kvm_msr_allowed (6.1, 6.12, 7.2)";
use crate::msr_index::IA32_MCG_STATUS as MCG_STATUS;
use crate::msr_index::IA32_POWER_CTL as POWER_CTL;

/// The filter in force: default deny; five ranges of both access kinds, allowing and denying,
/// overlapping (the first matching range wins), each the one that decides at least one probe
/// (see the unit test).
pub(crate) fn old_filter() -> Filter {
    Filter {
        flags: DEFAULT_DENY,
        ranges: vec![
            Range::with_allowed(RANGE_READ, MSR_SYSCALL_MASK, 1, &[]),
            Range::with_allowed(RANGE_READ, 0xc000_0100, 0x10, &[MSR_KERNEL_GS_BASE]),
            Range::with_allowed(3, 0xc000_0080, 0x100, &[MSR_SYSCALL_MASK]),
            Range::with_allowed(RANGE_READ | RANGE_WRITE, IA32_PAT, 1, &[IA32_PAT]),
            Range::with_allowed(RANGE_READ, 0x100, 0x100, &[MCG_STATUS]),
        ],
    }
}

/// A valid filter deciding every probe the other way from `old_filter` (default allow).
pub(crate) fn new_filter() -> Filter {
    Filter {
        flags: 0,
        ranges: vec![
            Range::with_allowed(RANGE_READ, 0xc000_0080, 0x100, &[MSR_SYSCALL_MASK]),
            Range::with_allowed(RANGE_WRITE, 0xc000_0080, 0x100, &[MSR_KERNEL_GS_BASE]),
            Range::with_allowed(RANGE_READ, 0x100, 0x200, &[POWER_CTL]),
            Range::with_allowed(RANGE_WRITE, 0x100, 0x200, &[MCG_STATUS, POWER_CTL]),
        ],
    }
}

/// Every guest access the checks probe.
pub(crate) fn probes() -> Vec<(u32, Access)> {
    SUBJECTS
        .iter()
        .flat_map(|&i| [(i, Access::Read), (i, Access::Write)])
        .collect()
}

/// A rejected replacement: the filter, the range whose bitmap pointer is NULL (if any), and the
/// errno with its source.
struct Invalid {
    name: &'static str,
    filter: Filter,
    unreadable: Option<usize>,
    errno: Errno,
    why: &'static str,
}

fn with_range(mut f: Filter, r: Range) -> Filter {
    f.ranges.push(r);
    f
}

fn invalid_replacements() -> Vec<Invalid> {
    let b = new_filter;
    // Valid ranges away from every probe, to put a bad one in the 16th (last) slot.
    let mut sixteen = b();
    for i in 0..11 {
        sixteen
            .ranges
            .push(Range::with_allowed(3, 0x4000_0000 + i * 0x10, 1, &[]));
    }
    sixteen.ranges.push(Range::with_allowed(3, 0, 0x3001, &[]));
    let mut emptied = b();
    emptied.flags = DEFAULT_DENY;
    for r in &mut emptied.ranges {
        r.nmsrs = 0;
    }
    vec![
        Invalid {
            name: "filter-flags",
            filter: Filter { flags: 1 << 1, ..b() },
            unreadable: None,
            errno: Errno::EINVAL,
            why: "flags outside KVM_MSR_FILTER_DEFAULT_DENY (checked before any range)",
        },
        Invalid {
            name: "range-flags-zero",
            filter: with_range(b(), Range::with_allowed(0, 0x10, 1, &[])),
            unreadable: None,
            errno: Errno::EINVAL,
            why: "kvm_add_msr_filter: a non-empty range with flags 0 (5th range)",
        },
        Invalid {
            name: "range-flags-unknown",
            filter: with_range(b(), Range::with_allowed(RANGE_READ | 4, 0x10, 1, &[])),
            unreadable: None,
            errno: Errno::EINVAL,
            why: "kvm_add_msr_filter: range flags outside READ|WRITE (5th range)",
        },
        Invalid {
            name: "bitmap-too-large-last",
            filter: sixteen,
            unreadable: None,
            errno: Errno::EINVAL,
            why: "kvm_add_msr_filter: BITS_TO_LONGS(0x3001) longs exceed KVM_MSR_FILTER_MAX_BITMAP_SIZE (16th range, after 15 valid ones)",
        },
        Invalid {
            name: "bitmap-unreadable",
            filter: with_range(b(), Range::with_allowed(3, 0x10, 1, &[])),
            unreadable: Some(4),
            errno: Errno::EFAULT,
            why: "kvm_add_msr_filter: memdup_user of a NULL bitmap -> PTR_ERR (5th range, after 4 copied ones)",
        },
        Invalid {
            name: "default-deny-ranges-empty",
            filter: emptied,
            unreadable: None,
            errno: Errno::EINVAL,
            why: "kvm_vm_ioctl_set_msr_filter: default deny with every range nmsrs 0 (flags and bitmaps still set)",
        },
    ]
}

/// Probe every access; a problem for each that `f` (the model) decides otherwise: allowed ->
/// handled in the kernel, denied -> a FILTER exit.
fn probe_all(m: &mut Machine, f: &Filter, phase: &str, problems: &mut Vec<String>) {
    for (index, access) in probes() {
        let want_allowed = f.allows(index, access);
        let seen = observe(m, index, access);
        let ok = match &seen {
            Ok(Seen::Handled(_)) => want_allowed,
            Ok(Seen::FilterExit) => !want_allowed,
            _ => false,
        };
        if !ok {
            let want = if want_allowed {
                "handled"
            } else {
                "FILTER exit"
            };
            problems.push(format!(
                "{phase}: {index:#x} {access:?} {seen:?}, wanted {want}"
            ));
        }
    }
}

fn install_old(ctx: &Context, problems: &mut Vec<String>) -> Result<Machine, Outcome> {
    if ctx.facts.cap("KVM_CAP_X86_MSR_FILTER") <= 0 {
        return Err(Outcome::skip("KVM_CAP_X86_MSR_FILTER is absent"));
    }
    let mut m = exit_machine(ctx, REASON_FILTER)?;
    if let Err(e) = set_msr_filter(&m.vm.fd, &old_filter()) {
        return Err(Outcome::fail(
            "the five-range filter accepted",
            format!("errno {e}"),
        ));
    }
    probe_all(&mut m, &old_filter(), "old filter", problems);
    Ok(m)
}

fn rejected_keeps_old(ctx: &Context, bad: &Invalid) -> Outcome {
    let mut problems = Vec::new();
    let mut m = match install_old(ctx, &mut problems) {
        Ok(m) => m,
        Err(o) => return o,
    };
    let set = match bad.unreadable {
        Some(r) => set_msr_filter_unreadable(&m.vm.fd, &bad.filter, r),
        None => set_msr_filter(&m.vm.fd, &bad.filter),
    };
    if set != Err(bad.errno) {
        problems.push(format!(
            "replacement: {set:?}, wanted Err({}) ({})",
            bad.errno, bad.why
        ));
    }
    probe_all(
        &mut m,
        &old_filter(),
        "after the rejected replacement",
        &mut problems,
    );
    Outcome::unless(
        problems,
        format!("the replacement refused with errno {} ({}); every range and the default of the old filter still deciding", bad.errno, bad.why),
        format!("errno {}; {} accesses still decided by the old filter", bad.errno, probes().len()),
    )
}

fn valid_replaces_whole(ctx: &Context) -> Outcome {
    let mut problems = Vec::new();
    let mut m = match install_old(ctx, &mut problems) {
        Ok(m) => m,
        Err(o) => return o,
    };
    if let Err(e) = set_msr_filter(&m.vm.fd, &new_filter()) {
        return Outcome::fail("the replacement accepted", format!("errno {e}"));
    }
    probe_all(
        &mut m,
        &new_filter(),
        "after the replacement",
        &mut problems,
    );
    Outcome::unless(
        problems,
        "every access decided by the new filter, each the opposite of the old one's decision (no old range or default left over)",
        format!("{} accesses now decided by the new filter", probes().len()),
    )
}

pub fn checks(_ctx: &Context) -> Vec<Check> {
    let mut v = Vec::new();
    for bad in invalid_replacements() {
        let id = CheckId::new(Family::Filter, "rejected-keeps-old").then(bad.name);
        let summary = format!(
            "a replacement refused ({}) leaves every range of the five-range filter in force",
            bad.why
        );
        v.push(Check::new(id, None, summary, CITE, move |c| {
            rejected_keeps_old(c, &bad)
        }));
    }
    v.push(Check::new(
        CheckId::fixed(Family::Filter, "valid-replacement-whole"),
        None,
        "a valid replacement decides every access; no range or default of the old filter lingers",
        CITE,
        valid_replaces_whole,
    ));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks can fail: the new filter decides every probe the other way, and each range
    /// of the old filter (and its default) is the one deciding some probe.
    #[test]
    fn old_and_new_disagree_everywhere_and_every_old_range_decides() {
        let (old, new) = (old_filter(), new_filter());
        assert_eq!(old.validate(), Ok(()));
        assert_eq!(new.validate(), Ok(()));
        for (i, a) in probes() {
            assert_ne!(old.allows(i, a), new.allows(i, a), "{i:#x} {a:?}");
        }
        for k in 0..old.ranges.len() {
            let mut without = old.clone();
            without.ranges.remove(k);
            assert!(
                probes()
                    .iter()
                    .any(|&(i, a)| without.allows(i, a) != old.allows(i, a)),
                "range {k} decides no probe"
            );
        }
        let mut allow_default = old.clone();
        allow_default.flags = 0;
        assert!(probes()
            .iter()
            .any(|&(i, a)| allow_default.allows(i, a) != old.allows(i, a)));
    }

    #[test]
    fn invalid_replacements_are_invalid_for_the_model_too() {
        for bad in invalid_replacements() {
            assert!(bad.filter.ranges.len() <= 16, "{}", bad.name);
            if bad.unreadable.is_none() {
                assert_eq!(bad.filter.validate(), Err(bad.errno), "{}", bad.name);
            } else {
                assert_eq!(bad.filter.validate(), Ok(()), "{}", bad.name);
            }
        }
    }
}
