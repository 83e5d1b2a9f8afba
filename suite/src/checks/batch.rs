//! KVM_GET_MSRS / KVM_SET_MSRS batch semantics (api.rst 4.18, 4.19; x86.c msr_io, __msr_io).

use super::{Check, Context, Outcome};
use crate::check_id::{CheckId, Family};
use crate::kvm::raw::{MsrEntry, MsrOp, MAX_IO_MSRS};
use crate::kvm::Errno;
use crate::msr_index::*;
use crate::oracles;

const API_4_18: &str =
    "api.rst 4.18 KVM_GET_MSRS: \"Returns: number of msrs successfully returned\"";
const API_4_19: &str = "api.rst 4.19 KVM_SET_MSRS: \"Returns: number of msrs successfully set\"; entries are set one by one and it stops at the first failure";
const MSR_IO: &str = "x86.c msr_io: nmsrs >= MAX_IO_MSRS (256) -> -E2BIG";

fn entries(indices: &[u32]) -> Vec<MsrEntry> {
    indices
        .iter()
        .map(|&index| MsrEntry { index, data: 0 })
        .collect()
}

fn nmsrs_zero(ctx: &Context, op: MsrOp) -> Outcome {
    let m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    let io = m.vcpu.msr_io(op, &[], 0);
    match io.result {
        Ok(0) => Outcome::pass("nmsrs=0 returns 0"),
        r => Outcome::fail("0 (no entries processed)", format!("{r:?}")),
    }
}

fn over_limit(ctx: &Context, op: MsrOp, system: bool) -> Outcome {
    let e = entries(&vec![IA32_PAT; MAX_IO_MSRS as usize]);
    let io = if system {
        ctx.sys().msr_io(op, &e, MAX_IO_MSRS)
    } else {
        match ctx.machine() {
            Ok(m) => m.vcpu.msr_io(op, &e, MAX_IO_MSRS),
            Err(e) => return Outcome::harness(e),
        }
    };
    match io.result {
        Err(Errno::E2BIG) => Outcome::pass(format!("nmsrs={MAX_IO_MSRS} -> E2BIG")),
        r => Outcome::fail("E2BIG", format!("{r:?}")),
    }
}

fn at_limit(ctx: &Context, op: MsrOp) -> Outcome {
    let m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    let Some(pat) = m.vcpu.get_msr(IA32_PAT) else {
        return Outcome::fail("PAT readable", "KVM_GET_MSRS of PAT failed");
    };
    let n = (MAX_IO_MSRS - 1) as usize;
    let e: Vec<MsrEntry> = (0..n)
        .map(|_| MsrEntry {
            index: IA32_PAT,
            data: pat,
        })
        .collect();
    let io = m.vcpu.msr_io(op, &e, n as u32);
    match io.result {
        Ok(k) if k == n => Outcome::pass(format!("{n} entries processed")),
        r => Outcome::fail(format!("Ok({n})"), format!("{r:?}")),
    }
}

/// A GET batch whose third entry fails for a reason ignore_msrs cannot hide: an x2APIC register
/// while the local APIC is in xAPIC mode (lapic.c kvm_x2apic_msr_read returns 1).
struct GetBatch {
    count: Result<usize, Errno>,
    sent: Vec<MsrEntry>,
    back: Vec<MsrEntry>,
}

const SENTINEL_FAIL: u64 = 0x5a5a_0000_0000_0003;
const SENTINEL_LATER: u64 = 0x5a5a_0000_0000_0004;

fn get_batch(ctx: &Context) -> Result<GetBatch, Outcome> {
    let m = ctx.machine().map_err(Outcome::harness)?;
    let sent = vec![
        MsrEntry {
            index: IA32_PAT,
            data: 0,
        },
        MsrEntry {
            index: IA32_MCG_STATUS,
            data: 0,
        },
        MsrEntry {
            index: X2APIC_TPR,
            data: SENTINEL_FAIL,
        },
        MsrEntry {
            index: MSR_SYSCALL_MASK,
            data: SENTINEL_LATER,
        },
    ];
    let io = m.vcpu.msr_io(MsrOp::Get, &sent, sent.len() as u32);
    Ok(GetBatch {
        count: io.result,
        sent,
        back: io.entries().to_vec(),
    })
}

fn get_stops(ctx: &Context) -> Outcome {
    let b = match get_batch(ctx) {
        Ok(b) => b,
        Err(o) => return o,
    };
    match b.count {
        Ok(2) => {
            Outcome::pass("returned 2: PAT and MCG_STATUS read, x2APIC TPR (xAPIC mode) failed")
        }
        r => Outcome::fail(
            "Ok(2): the index of the failing x2APIC TPR entry",
            format!("{r:?}"),
        ),
    }
}

fn get_failed_zeroed(ctx: &Context) -> Outcome {
    let b = match get_batch(ctx) {
        Ok(b) => b,
        Err(o) => return o,
    };
    if b.count != Ok(2) {
        return Outcome::skip(format!("precondition: the batch must stop at entry 2 (got {:?}; see ioctl.get-msrs.count-is-first-failure)", b.count));
    }
    // Before 1cec2034980a "KVM: x86: Funnel all fancy MSR return value handling into a common
    // helper" (6.12) only a KVM_MSR_RET_INVALID failure zeroed the data; the x2APIC read outside
    // x2APIC mode returns 1 (lapic.c kvm_x2apic_msr_read), so its entry came back as sent.
    let zeroes = ctx
        .facts
        .kernel_version()
        .is_none_or(|k| k >= crate::catalogue::KernelVersion(6, 12));
    match (zeroes, b.back[2].data) {
        (true, 0) => Outcome::pass(format!("failing entry's data {SENTINEL_FAIL:#x} became 0")),
        (false, SENTINEL_FAIL) => Outcome::pass(format!(
            "failing entry's data {SENTINEL_FAIL:#x} left as sent (kernel before 6.12, 1cec2034980a)"
        )),
        (true, v) => Outcome::fail("0 in the failing entry", format!("{v:#x}")),
        (false, v) => Outcome::fail(
            format!("the failing entry left as sent, {SENTINEL_FAIL:#x} (before 1cec2034980a, 6.12, a read that returns 1 does not zero the data)"),
            format!("{v:#x}"),
        ),
    }
}

fn get_later_untouched(ctx: &Context) -> Outcome {
    let b = match get_batch(ctx) {
        Ok(b) => b,
        Err(o) => return o,
    };
    if b.count != Ok(2) {
        return Outcome::skip(format!(
            "precondition: the batch must stop at entry 2 (got {:?})",
            b.count
        ));
    }
    if b.back[3] == b.sent[3] {
        Outcome::pass("the entry after the failure came back exactly as sent")
    } else {
        Outcome::fail(format!("{:#x?}", b.sent[3]), format!("{:#x?}", b.back[3]))
    }
}

/// SET batch vs the same writes one at a time on an identical twin vCPU: the count equals the
/// index of the first entry the twin rejects, and both end in the same state.
fn set_stops(ctx: &Context) -> Outcome {
    let (a, twin) = match (ctx.machine(), ctx.machine()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Outcome::harness(e),
    };
    // An x2APIC register while the local APIC is in xAPIC mode fails on every backend, whatever
    // ignore_msrs says (lapic.c kvm_x2apic_msr_write returns 1).
    let batch = [
        MsrEntry {
            index: IA32_MCG_STATUS,
            data: 0x1,
        },
        MsrEntry {
            index: MSR_SYSCALL_MASK,
            data: 0x4700,
        },
        MsrEntry {
            index: X2APIC_TPR,
            data: 0x10,
        },
        MsrEntry {
            index: MSR_KERNEL_GS_BASE,
            data: 0x1000,
        },
    ];
    match oracles::set_batch_matches_single(&ctx.catalogue, &a, &twin, &batch, &[]) {
        Err(v) => Outcome::fail(v.expected, format!("{} ({})", v.actual, v.oracle)),
        Ok(c) if c.first_rejected != 2 => Outcome::fail(
            "the one-by-one twin rejects entry 2 (x2APIC TPR in xAPIC mode, lapic.c kvm_x2apic_msr_write)",
            format!("first rejected entry {}", c.first_rejected),
        ),
        Ok(c) => Outcome::pass(format!("returned {}; later entries untouched (same state as 2 single writes)", c.first_rejected)),
    }
}

fn vm_fd_get_msrs(ctx: &Context) -> Outcome {
    let m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    let io = crate::kvm::raw::msr_io(&m.vm.fd, MsrOp::Get, &entries(&[IA32_PAT]), 1);
    match io.result {
        Err(Errno::ENOTTY) => Outcome::pass("ENOTTY"),
        r => Outcome::fail("ENOTTY (not a VM ioctl)", format!("{r:?}")),
    }
}

fn system_set_msrs(ctx: &Context) -> Outcome {
    let io = ctx.sys().msr_io(MsrOp::Set, &entries(&[IA32_PAT]), 1);
    match io.result {
        Err(Errno::EINVAL) => Outcome::pass("EINVAL"),
        r => Outcome::fail(
            "EINVAL (KVM_SET_MSRS is not a system ioctl)",
            format!("{r:?}"),
        ),
    }
}

pub fn checks(_ctx: &Context) -> Vec<Check> {
    let mut v = Vec::new();
    for (op, name, cite) in [
        (MsrOp::Get, "get-msrs", API_4_18),
        (MsrOp::Set, "set-msrs", API_4_19),
    ] {
        v.push(Check::new(
            CheckId::new(Family::Ioctl, name).then("nmsrs-zero"),
            None,
            "nmsrs=0 processes nothing and returns 0",
            format!("{cite}; x86.c __msr_io loop"),
            move |c| nmsrs_zero(c, op),
        ));
        v.push(Check::new(
            CheckId::new(Family::Ioctl, name).then("e2big-at-256"),
            None,
            "nmsrs=256 is rejected with E2BIG",
            MSR_IO,
            move |c| over_limit(c, op, false),
        ));
        v.push(Check::new(
            CheckId::new(Family::Ioctl, name).then("accepts-255"),
            None,
            "nmsrs=255 (the limit) is processed whole",
            MSR_IO,
            move |c| at_limit(c, op),
        ));
    }
    v.push(Check::new(
        CheckId::fixed(Family::Ioctl, "get-msrs.count-is-first-failure"),
        None,
        "GET stops at the first failing entry and returns its index",
        format!(
            "{API_4_18}; x86.c __msr_io; lapic.c kvm_x2apic_msr_read returns 1 outside x2APIC mode"
        ),
        get_stops,
    ));
    v.push(Check::new(
        CheckId::fixed(Family::Ioctl, "get-msrs.failed-entry-zeroed"),
        None,
        "GET zeroes the data of the entry that failed",
        "x86.c kvm_do_msr_access: a failed read sets *data = 0; msr_io copies the array back",
        get_failed_zeroed,
    ));
    v.push(Check::new(
        CheckId::fixed(Family::Ioctl, "get-msrs.later-entries-untouched"),
        None,
        "GET leaves entries after the failure as the caller sent them",
        "x86.c __msr_io stops at the failure; msr_io copies the whole array back",
        get_later_untouched,
    ));
    v.push(Check::new(CheckId::fixed(Family::Ioctl, "set-msrs.count-is-first-failure"), None, "SET returns the index of the first entry a one-by-one twin rejects and leaves later entries unwritten", format!("{API_4_19}; lapic.c kvm_x2apic_msr_write returns 1 outside x2APIC mode"), set_stops));
    v.push(Check::new(
        CheckId::fixed(Family::Ioctl, "system-get-msrs.e2big-at-256"),
        None,
        "system-level KVM_GET_MSRS with nmsrs=256 -> E2BIG",
        format!("api.rst 4.18 (system ioctl form); {MSR_IO} (kvm_get_feature_msrs uses msr_io)"),
        |c| {
            if c.facts.cap("KVM_CAP_GET_MSR_FEATURES") <= 0 {
                return Outcome::skip(
                    "KVM_CAP_GET_MSR_FEATURES is absent: no system-level KVM_GET_MSRS",
                );
            }
            over_limit(c, MsrOp::Get, true)
        },
    ));
    v.push(Check::new(
        CheckId::fixed(Family::Ioctl, "system-set-msrs.rejected"),
        None,
        "KVM_SET_MSRS on /dev/kvm fails with EINVAL",
        "api.rst 4.19 (vcpu ioctl only); x86.c kvm_arch_dev_ioctl default case -EINVAL",
        system_set_msrs,
    ));
    v.push(Check::new(
        CheckId::fixed(Family::Ioctl, "vm-get-msrs.rejected"),
        None,
        "KVM_GET_MSRS on a VM fd fails with ENOTTY",
        "api.rst 4.18 (system and vcpu ioctl only); x86.c kvm_arch_vm_ioctl default case -ENOTTY",
        vm_fd_get_msrs,
    ));
    v
}
