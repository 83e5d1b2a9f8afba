//! Userspace MSR exits (api.rst 7.21 KVM_CAP_X86_USER_SPACE_MSR; kvm_run KVM_EXIT_X86_RDMSR /
//! KVM_EXIT_X86_WRMSR; x86.c kvm_msr_user_space, complete_userspace_rdmsr) and the flag
//! validation of the capability and of KVM_X86_SET_MSR_FILTER, one bit at a time.

use super::{hex, Check, Context, Outcome};
use crate::check_id::{CheckId, Family};
use crate::guest::{GuestOp, OpOutcome};
use crate::kvm::filter::set_msr_filter;
use crate::kvm::Errno;
use crate::machine::{Machine, MsrExit, MsrReply};
use crate::model::filter::{Filter, Range};
use crate::msr_index::{IA32_MCG_CTL as MCG_CTL, UNKNOWN};

pub const REASON_INVAL: u32 = 1;
pub const REASON_UNKNOWN: u32 = 2;
pub const REASON_FILTER: u32 = 4;
const CAP: u32 = kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR;
const REPLY: u64 = 0x1122_3344_5566_7788;

/// A machine with the given exit-reason mask enabled; skips without the capability.
pub fn exit_machine(ctx: &Context, mask: u32) -> Result<Machine, Outcome> {
    if ctx.facts.cap("KVM_CAP_X86_USER_SPACE_MSR") <= 0 {
        return Err(Outcome::skip("KVM_CAP_X86_USER_SPACE_MSR is absent"));
    }
    let m = ctx.machine().map_err(Outcome::harness)?;
    m.vm.enable_cap(CAP, [u64::from(mask), 0, 0, 0])
        .map_err(|e| {
            Outcome::fail(
                format!("KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR, {mask:#x}) accepted"),
                format!("errno {e}"),
            )
        })?;
    Ok(m)
}

/// For every combination of reasons: an access of each kind exits exactly when its reason is in
/// the mask and #GPs otherwise (x86.c kvm_msr_user_space / kvm_msr_reason).
fn mask_matrix(ctx: &Context) -> Outcome {
    use crate::kvm::filter::set_msr_filter;
    use crate::model::filter::{Filter, Range};
    if ctx.facts.ignore_msrs() {
        return Outcome::skip("kvm.ignore_msrs=Y: the UNKNOWN access would be ignored, not exit");
    }
    // (reason, access): UNKNOWN = unknown index; INVAL = MCG_CTL write refused without MCG_CTL_P;
    // FILTER = a read the filter denies.
    let accesses = [
        (REASON_UNKNOWN, GuestOp::Rdmsr(UNKNOWN)),
        (REASON_INVAL, GuestOp::Wrmsr(MCG_CTL, 1)),
        (
            REASON_FILTER,
            GuestOp::Rdmsr(crate::msr_index::MSR_SYSCALL_MASK),
        ),
    ];
    let mut wrong = Vec::new();
    for mask in 0..8u32 {
        let mut m = match exit_machine(ctx, mask) {
            Ok(m) => m,
            Err(o) => return o,
        };
        let deny = Filter {
            flags: 0,
            ranges: vec![Range::with_allowed(
                1,
                crate::msr_index::MSR_SYSCALL_MASK,
                1,
                &[],
            )],
        };
        if let Err(e) = set_msr_filter(&m.vm.fd, &deny) {
            return Outcome::fail("the filter accepted", format!("errno {e}"));
        }
        for (reason, op) in accesses {
            let run = m.run_ops_with(&[op], &mut |_| MsrReply {
                error: false,
                data: 0,
            });
            if let Some(d) = run.death {
                return Outcome::died(d);
            }
            let exited: Vec<u32> = run.msr_exits.iter().map(|e| e.reason).collect();
            let ok = if mask & reason != 0 {
                exited == [reason] && !run.outcomes[0].is_gp()
            } else {
                exited.is_empty() && run.outcomes[0].is_gp()
            };
            if !ok {
                wrong.push(format!(
                    "mask {mask:#x}, {op}: exits {exited:?}, guest {}",
                    run.outcomes[0]
                ));
            }
        }
    }
    if wrong.is_empty() {
        Outcome::pass("for all 8 masks, each access exited exactly when its reason was enabled and #GP'd otherwise")
    } else {
        Outcome::fail(
            "an exit exactly when the access's reason is in the mask, else #GP",
            wrong.join("; "),
        )
    }
}

/// Try each bit of a `width`-bit field alone; only the bits of `valid` may be accepted.
fn bit_walk(
    name: &str,
    width: u32,
    valid: u64,
    mut try_bit: impl FnMut(u32) -> Result<(), Errno>,
) -> Outcome {
    let wrong: Vec<String> = (0..width)
        .filter_map(|b| {
            let want_ok = valid & (1u64 << b) != 0;
            match (try_bit(b), want_ok) {
                (Ok(()), true) | (Err(Errno::EINVAL), false) => None,
                (r, _) => Some(format!("bit {b}: {r:?}")),
            }
        })
        .collect();
    if wrong.is_empty() {
        Outcome::pass(format!(
            "{name}: of its {width} bits, those of {valid:#x} accepted, every other EINVAL"
        ))
    } else {
        Outcome::fail(
            format!("{name}: only bits of {valid:#x} accepted, others EINVAL"),
            wrong.join(", "),
        )
    }
}

fn cap_flag_bits(ctx: &Context) -> Outcome {
    let m = match exit_machine(ctx, 0) {
        Ok(m) => m,
        Err(o) => return o,
    };
    bit_walk("KVM_CAP_X86_USER_SPACE_MSR args[0]", 64, 7, |b| {
        m.vm.enable_cap(CAP, [1u64 << b, 0, 0, 0])
    })
}

fn filter_flag_bits(ctx: &Context, range: bool) -> Outcome {
    if ctx.facts.cap("KVM_CAP_X86_MSR_FILTER") <= 0 {
        return Outcome::skip("KVM_CAP_X86_MSR_FILTER is absent");
    }
    let m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    if range {
        bit_walk("kvm_msr_filter_range.flags", 32, 3, |b| {
            set_msr_filter(
                &m.vm.fd,
                &Filter {
                    flags: 0,
                    ranges: vec![Range::with_allowed(1 << b, 0x10, 1, &[])],
                },
            )
        })
    } else {
        bit_walk("kvm_msr_filter.flags", 32, 1, |b| {
            set_msr_filter(
                &m.vm.fd,
                &Filter {
                    flags: 1 << b,
                    ranges: vec![Range::with_allowed(3, 0x10, 1, &[])],
                },
            )
        })
    }
}

/// A guest access that triggers an exit, completed by `reply`; returns the run.
fn one_exit(
    ctx: &Context,
    mask: u32,
    op: GuestOp,
    reply: MsrReply,
) -> Result<(crate::machine::GuestRun, Machine), Outcome> {
    let mut m = exit_machine(ctx, mask)?;
    let run = m.run_ops_with(&[op], &mut |_| reply);
    if let Some(d) = &run.death {
        return Err(Outcome::died(d));
    }
    Ok((run, m))
}

fn unknown_rdmsr(ctx: &Context) -> Outcome {
    let (run, _) = match one_exit(
        ctx,
        REASON_UNKNOWN,
        GuestOp::Rdmsr(UNKNOWN),
        MsrReply {
            error: false,
            data: REPLY,
        },
    ) {
        Ok(x) => x,
        Err(o) => return o,
    };
    if ctx.facts.ignore_msrs() {
        // kvm_get_msr_ignored_check succeeds first: no UNKNOWN exit, the guest reads 0.
        return if run.msr_exits.is_empty() && run.outcomes[0] == OpOutcome::Read(0) {
            Outcome::pass("ignore_msrs=Y: no exit, the guest read 0")
        } else {
            Outcome::fail(
                "ignore_msrs=Y: no UNKNOWN exit, the guest reads 0",
                format!("{:?} {}", run.msr_exits, run.outcomes[0]),
            )
        };
    }
    let want = MsrExit {
        write: false,
        index: UNKNOWN,
        data: 0,
        reason: REASON_UNKNOWN,
    };
    if run.msr_exits == [want] && run.outcomes[0] == OpOutcome::Read(REPLY) {
        Outcome::pass(format!(
            "one RDMSR exit (reason UNKNOWN, index {UNKNOWN:#x}); the guest's EDX:EAX = {}",
            hex(REPLY)
        ))
    } else {
        Outcome::fail(
            format!("exactly {want:x?}, then the guest reads {}", hex(REPLY)),
            format!("exits {:x?}, guest {}", run.msr_exits, run.outcomes[0]),
        )
    }
}

/// A guest WRMSR of `data` to `index` exits once with `reason`, carrying the data, and retires
/// once userspace completes it.
fn one_write_exit(ctx: &Context, reason: u32, index: u32, data: u64) -> Outcome {
    let (run, _) = match one_exit(
        ctx,
        reason,
        GuestOp::Wrmsr(index, data),
        MsrReply {
            error: false,
            data: 0,
        },
    ) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let want = MsrExit {
        write: true,
        index,
        data,
        reason,
    };
    if run.msr_exits == [want] && run.outcomes[0] == OpOutcome::Wrote {
        Outcome::pass(format!(
            "one WRMSR exit (reason {reason:#x}) carrying the written data; the WRMSR retired"
        ))
    } else {
        Outcome::fail(
            format!("exactly {want:x?}, then the WRMSR retires"),
            format!("exits {:x?}, guest {}", run.msr_exits, run.outcomes[0]),
        )
    }
}

fn unknown_wrmsr(ctx: &Context) -> Outcome {
    if ctx.facts.ignore_msrs() {
        return Outcome::skip(
            "kvm.ignore_msrs=Y: unknown MSRs never exit (covered by exits.unknown.rdmsr)",
        );
    }
    one_write_exit(ctx, REASON_UNKNOWN, UNKNOWN, 0xabc)
}

fn error_injects_gp(ctx: &Context) -> Outcome {
    if ctx.facts.ignore_msrs() {
        return Outcome::skip("kvm.ignore_msrs=Y: unknown MSRs never exit");
    }
    let mut m = match exit_machine(ctx, REASON_UNKNOWN) {
        Ok(m) => m,
        Err(o) => return o,
    };
    let run = m.run_ops_with(
        &[GuestOp::Rdmsr(UNKNOWN), GuestOp::Wrmsr(UNKNOWN, 1)],
        &mut |_| MsrReply {
            error: true,
            data: REPLY,
        },
    );
    if let Some(d) = run.death {
        return Outcome::died(d);
    }
    if run.msr_exits.len() == 2 && run.outcomes.iter().all(|o| o.is_gp()) {
        Outcome::pass("error=1 made both the RDMSR and the WRMSR #GP")
    } else {
        Outcome::fail(
            "two exits, and #GP on RDMSR and on WRMSR",
            format!("exits {:x?}, guest {:?}", run.msr_exits, run.outcomes),
        )
    }
}

fn reason_disabled_gp(ctx: &Context) -> Outcome {
    if ctx.facts.ignore_msrs() {
        return Outcome::skip("kvm.ignore_msrs=Y: unknown MSRs read 0 instead of faulting");
    }
    let (run, _) = match one_exit(
        ctx,
        REASON_FILTER | REASON_INVAL,
        GuestOp::Rdmsr(UNKNOWN),
        MsrReply {
            error: false,
            data: REPLY,
        },
    ) {
        Ok(x) => x,
        Err(o) => return o,
    };
    if run.msr_exits.is_empty() && run.outcomes[0].is_gp() {
        Outcome::pass("no exit; the guest got #GP")
    } else {
        Outcome::fail(
            "no exit (UNKNOWN not enabled) and #GP",
            format!("exits {:x?}, guest {}", run.msr_exits, run.outcomes[0]),
        )
    }
}

fn inval_exit(ctx: &Context) -> Outcome {
    // MCG_CTL without MCG_CTL_P rejects a non-zero guest write with 1, not UNSUPPORTED
    // (x86.c set_msr_mce), so kvm_msr_reason maps it to INVAL.
    one_write_exit(ctx, REASON_INVAL, MCG_CTL, 1)
}

fn not_completed_not_lost(ctx: &Context) -> Outcome {
    if ctx.facts.ignore_msrs() {
        return Outcome::skip("kvm.ignore_msrs=Y: unknown MSRs never exit");
    }
    // Userspace re-enters without writing anything: KVM set error = 0 and data = 0 on exit, so
    // the RDMSR completes with 0, once.
    let mut m = match exit_machine(ctx, REASON_UNKNOWN) {
        Ok(m) => m,
        Err(o) => return o,
    };
    let run = m.run_ops_with(&[GuestOp::Rdmsr(UNKNOWN)], &mut |e| MsrReply {
        error: false,
        data: e.data,
    });
    match (run.death, run.msr_exits.len(), run.outcomes[0]) {
        (None, 1, OpOutcome::Read(0)) => {
            Outcome::pass("re-entering completed the RDMSR with 0; no repeated exit")
        }
        (d, n, o) => Outcome::fail(
            "one exit; the next KVM_RUN completes the RDMSR with 0",
            format!("{n} exits, guest {o}, death {d:?}"),
        ),
    }
}

pub fn checks(_ctx: &Context) -> Vec<Check> {
    const API: &str =
        "api.rst 7.21 KVM_CAP_X86_USER_SPACE_MSR; api.rst kvm_run KVM_EXIT_X86_RDMSR/WRMSR";
    vec![
                Check::new(CheckId::fixed(Family::Exits, "reason-mask-matrix"), None, "for every INVAL/UNKNOWN/FILTER mask, exactly the accesses whose reason is enabled exit; the others #GP", format!("{API}; x86.c kvm_msr_user_space, kvm_msr_reason"), mask_matrix),
        Check::new(CheckId::fixed(Family::Exits, "cap.flag-bits"), None, "KVM_CAP_X86_USER_SPACE_MSR accepts only INVAL|UNKNOWN|FILTER, one bit at a time", format!("{API}; x86.c kvm_vm_ioctl_enable_cap: args[0] & ~KVM_MSR_EXIT_REASON_VALID_MASK -> -EINVAL"), cap_flag_bits),
        Check::new(CheckId::fixed(Family::Exits, "filter.flag-bits"), None, "KVM_X86_SET_MSR_FILTER accepts only KVM_MSR_FILTER_DEFAULT_DENY in flags", "api.rst 4.97; x86.c kvm_vm_ioctl_set_msr_filter: flags & ~KVM_MSR_FILTER_VALID_MASK -> -EINVAL", |c| filter_flag_bits(c, false)),
        Check::new(CheckId::fixed(Family::Exits, "filter.range-flag-bits"), None, "KVM_X86_SET_MSR_FILTER accepts only READ|WRITE in a range's flags", "api.rst 4.97; x86.c kvm_add_msr_filter: flags & ~KVM_MSR_FILTER_RANGE_VALID_MASK -> -EINVAL", |c| filter_flag_bits(c, true)),
        Check::new(CheckId::fixed(Family::Exits, "unknown.rdmsr"), Some(UNKNOWN), "an unknown MSR read exits with reason UNKNOWN and the data userspace gives lands in EDX:EAX", format!("{API}; x86.c kvm_msr_user_space, complete_userspace_rdmsr"), unknown_rdmsr),
        Check::new(CheckId::fixed(Family::Exits, "unknown.wrmsr"), Some(UNKNOWN), "an unknown MSR write exits with its data and retires", format!("{API}; x86.c kvm_msr_user_space"), unknown_wrmsr),
        Check::new(CheckId::fixed(Family::Exits, "error-injects-gp"), Some(UNKNOWN), "error = 1 from userspace makes RDMSR and WRMSR #GP", format!("{API}: \"error ... if set, KVM injects #GP\"; x86.c complete_emulated_msr_access"), error_injects_gp),
        Check::new(CheckId::fixed(Family::Exits, "unknown.disabled-gp"), Some(UNKNOWN), "without the UNKNOWN reason the guest gets #GP instead of an exit", format!("{API}; x86.c kvm_msr_user_space: reason not in the mask -> #GP"), reason_disabled_gp),
        Check::new(CheckId::fixed(Family::Exits, "inval.refused-write"), Some(MCG_CTL), "a known MSR written with a value KVM refuses exits with reason INVAL", format!("{API}; x86.c kvm_msr_reason: failures other than UNSUPPORTED/FILTERED are INVAL; set_msr_mce"), inval_exit),
        Check::new(CheckId::fixed(Family::Exits, "not-completed-is-not-lost"), Some(UNKNOWN), "an exit userspace re-enters without completing is completed by the next KVM_RUN", format!("{API}: userspace must re-enter KVM_RUN to complete the access"), not_completed_not_lost),
    ]
}
