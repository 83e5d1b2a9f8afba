//! Regression checks for upstream fixes that no other family covered
//! (fixtures/coverage/msr-fixes.toml maps every fix to its checks). Each check names the commit
//! it guards in its cite.

use super::mce::{set_up, support};
use super::{hex, Check, Context, Outcome};
use crate::catalogue::KernelVersion;
use crate::check_id::{CheckId, Family};
use crate::guest::long_mode::long_mode_sregs;
use crate::guest::{GuestOp, OpOutcome};
use crate::kvm::{cpuid, CpuidPolicy, CpuidTable, Errno, Vcpu, Vm, VmConfig};

use crate::msr_index::IA32_MC0_CTL2 as MC0_CTL2;
/// MCG_CAP.MCG_CMCI_P (SDM vol. 3B 16.3.1.1).
const MCG_CMCI_P: u64 = 1 << 10;
/// MCi_CTL2.CMCI_EN and the corrected-error threshold (SDM vol. 3B 16.5.1).
const CMCI_EN: u64 = 1 << 30;
const THRESHOLD: u64 = 0x7fff;
const BANKS: u64 = 4;

const CTL2_CITE: &str = "281b52780b57 'KVM: x86: Add emulation for MSR_IA32_MCx_CTL2 MSRs.'; x86.c set_msr_mce/get_msr_mce MSR_IA32_MC0_CTL2: a bank beyond MCG_CAP's count -> 1; without MCG_CMCI_P the guest faults and the host may write only 0; bits other than CMCI_EN (30) and the threshold (14:0) -> 1; SDM vol. 3B 16.5.1";

/// Without MCG_CMCI_P the CTL2 registers exist for the host only (reads 0, writes of 0), and
/// the guest faults on them.
fn ctl2_without_cmci(ctx: &Context) -> Outcome {
    if let Err(o) = support(ctx) {
        return o;
    }
    let mut m = match set_up(ctx, BANKS) {
        Ok(m) => m,
        Err(o) => return o,
    };
    let mut bad = Vec::new();
    let read = m.vcpu.get_msr(MC0_CTL2);
    if read != Some(0) {
        bad.push(format!("host read {read:x?}"));
    }
    if !m.vcpu.set_msr(MC0_CTL2, 0) {
        bad.push("host write of 0 refused".into());
    }
    if m.vcpu.set_msr(MC0_CTL2, CMCI_EN) {
        bad.push("host write of CMCI_EN accepted".into());
    }
    let beyond = MC0_CTL2 + BANKS as u32;
    if let Some(v) = m.vcpu.get_msr(beyond) {
        bad.push(format!(
            "MC{BANKS}_CTL2 (beyond the banks) reads {}",
            hex(v)
        ));
    }
    let run = m.run_ops(&[GuestOp::Rdmsr(MC0_CTL2), GuestOp::Wrmsr(MC0_CTL2, 0)]);
    if let Some(d) = run.death {
        return Outcome::died(d);
    }
    for (what, o) in ["RDMSR", "WRMSR 0"].iter().zip(&run.outcomes) {
        if !o.is_gp() {
            bad.push(format!("guest {what}: {o}"));
        }
    }
    Outcome::unless(
        bad,
        "host reads 0 and may write only 0; no CTL2 beyond the banks; the guest's RDMSR and WRMSR #GP",
        "host: reads 0, 0 accepted, CMCI_EN refused, no bank beyond; guest: #GP",
    )
}

/// With MCG_CMCI_P the guest may use CMCI_EN and the threshold, and no other bit.
fn ctl2_with_cmci(ctx: &Context) -> Outcome {
    let caps = match support(ctx) {
        Ok((_, caps)) => caps,
        Err(o) => return o,
    };
    if caps & MCG_CMCI_P == 0 {
        return Outcome::skip(
            "KVM_X86_GET_MCE_CAP_SUPPORTED lacks MCG_CMCI_P (vmx.c adds it; svm.c and PVM may not)",
        );
    }
    let mut m = match set_up(ctx, BANKS | MCG_CMCI_P) {
        Ok(m) => m,
        Err(o) => return o,
    };
    let value = CMCI_EN | 1;
    let mut bad = Vec::new();
    if !m.vcpu.set_msr(MC0_CTL2, value) || m.vcpu.get_msr(MC0_CTL2) != Some(value) {
        bad.push(format!("host write of {} not kept", hex(value)));
    }
    if m.vcpu.set_msr(MC0_CTL2, 1 << 31) {
        bad.push("host write of bit 31 accepted".into());
    }
    let run = m.run_ops(&[
        GuestOp::Rdmsr(MC0_CTL2),
        GuestOp::Wrmsr(MC0_CTL2, THRESHOLD),
        GuestOp::Wrmsr(MC0_CTL2, 1 << 31),
        GuestOp::Rdmsr(MC0_CTL2),
    ]);
    if let Some(d) = run.death {
        return Outcome::died(d);
    }
    let o = &run.outcomes;
    if o[0] != OpOutcome::Read(value) {
        bad.push(format!("guest RDMSR {}", o[0]));
    }
    if o[1] != OpOutcome::Wrote {
        bad.push(format!("guest WRMSR threshold {}", o[1]));
    }
    if !o[2].is_gp() {
        bad.push(format!("guest WRMSR bit 31 {}", o[2]));
    }
    if o[3] != OpOutcome::Read(THRESHOLD) {
        bad.push(format!("guest RDMSR after {}", o[3]));
    }
    Outcome::unless(
        bad,
        "CMCI_EN and the threshold writable by host and guest and read back; bit 31 refused (#GP)",
        "host and guest write CMCI_EN/threshold and read them back; bit 31 refused",
    )
}

use crate::msr_index::MSR_MISC_FEATURES_ENABLES as MISC_FEATURES_ENABLES;
use crate::msr_index::MSR_PLATFORM_INFO as PLATFORM_INFO;
const CPUID_FAULT_SUPPORTED: u64 = 1 << 31;
const CPUID_FAULT_ENABLED: u64 = 1;
/// 1ded7a57b805 is in 6.13 (Debian 6.1 and 6.12 still have the check in kvm_set_msr_common).
const ORDER_FREE_FROM: KernelVersion = KernelVersion(6, 13);

/// Restoring MSRs in any order: from 6.13 the host may clear PLATFORM_INFO.CPUID_FAULT while
/// MISC_FEATURES_ENABLES.CPUID_FAULT is set; before, kvm_set_msr_common refused it.
fn cpuid_fault_any_order(ctx: &Context) -> Outcome {
    let m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    if !m.vcpu.set_msr(PLATFORM_INFO, CPUID_FAULT_SUPPORTED)
        || !m.vcpu.set_msr(MISC_FEATURES_ENABLES, CPUID_FAULT_ENABLED)
    {
        return Outcome::fail(
            "host writes of PLATFORM_INFO.CPUID_FAULT, then MISC_FEATURES_ENABLES.CPUID_FAULT, to succeed",
            format!(
                "PLATFORM_INFO {:x?}, MISC_FEATURES_ENABLES {:x?}",
                m.vcpu.get_msr(PLATFORM_INFO),
                m.vcpu.get_msr(MISC_FEATURES_ENABLES)
            ),
        );
    }
    let cleared = m.vcpu.set_msr(PLATFORM_INFO, 0);
    let after = m.vcpu.get_msr(PLATFORM_INFO);
    let old = ctx
        .facts
        .kernel_version()
        .is_some_and(|k| k < ORDER_FREE_FROM);
    let actual = format!(
        "write of 0 {}, PLATFORM_INFO reads {after:x?}",
        if cleared { "accepted" } else { "refused" }
    );
    match (old, cleared, after) {
        (false, true, Some(0)) => Outcome::pass(actual),
        (true, false, Some(CPUID_FAULT_SUPPORTED)) => {
            Outcome::pass(format!("{actual} (kernel before 6.13: the ordering check)"))
        }
        (false, ..) => Outcome::fail(
            "the host write of 0 accepted and read back (1ded7a57b805, 6.13)",
            actual,
        ),
        (true, ..) => Outcome::fail(
            "before 6.13 the write refused and PLATFORM_INFO unchanged",
            actual,
        ),
    }
}

/// IA32_APIC_BASE (SDM vol. 3A 12.4.4): EN (bit 11), EXTD (bit 10, x2APIC mode).
use crate::msr_index::IA32_APIC_BASE as APIC_BASE;
const APIC_BASE_EN: u64 = 1 << 11;
const APIC_BASE_EXTD: u64 = 1 << 10;
/// The local APIC ID register's offset in the register page (SDM vol. 3A table 12-1).
const APIC_ID: usize = 0x20;
/// A vCPU id whose xAPIC format (id << 24) differs from its x2APIC format (id).
const APIC_VCPU_ID: u64 = 5;
/// 052c3b99cbc8 is in 6.3; Debian's 6.1.192 lacks it (lapic.c kvm_lapic_set_base re-derives the
/// ID only when EN changes or EXTD is set).
const XAPIC_ID_REINIT_FROM: KernelVersion = KernelVersion(6, 3);

const XAPIC_ID_CITE: &str = "052c3b99cbc8 'KVM: x86: Reinitialize xAPIC ID when userspace forces x2APIC => xAPIC' (6.3): lapic.c __kvm_apic_set_base: on an EXTD change with EN kept, kvm_apic_set_xapic_id(apic, vcpu->vcpu_id), i.e. APIC_ID = vcpu_id << 24 (6.12, 7.2); kvm_apic_set_base lets only the host make that switch (the guest's is refused: SDM vol. 3A 12.12.5, x2APIC -> xAPIC needs EN cleared first). Before 6.3 (6.1.192: kvm_lapic_set_base) the x2APIC ID written by kvm_apic_set_x2apic_id (vcpu_id, unshifted) stayed. api.rst 4.57 KVM_GET_LAPIC: without KVM_CAP_X2APIC_API the xAPIC ID is in bits 31:24";

/// Host-initiated x2APIC -> xAPIC through IA32_APIC_BASE (EN kept, EXTD cleared): the xAPIC ID
/// register is re-derived from the vCPU id, read back with KVM_GET_LAPIC.
fn xapic_id_after_x2apic(ctx: &Context) -> Outcome {
    let x2apic = cpuid::feature("X2APIC").expect("in cpuid::FEATURES");
    if !ctx.facts.supported_cpuid.has(x2apic) {
        return Outcome::skip("KVM_GET_SUPPORTED_CPUID lacks X2APIC: the host may not set EXTD (lapic.c kvm_apic_set_base reserves it)");
    }
    // VmConfig::default() has the split irqchip: an in-kernel LAPIC for KVM_GET_LAPIC.
    let (_vm, vcpu) = match vm_with_vcpu(ctx, APIC_VCPU_ID, ctx.facts.supported_cpuid.clone()) {
        Ok(x) => x,
        Err(e) => return Outcome::harness(e),
    };
    let id_reg = |v: &Vcpu| v.get_lapic().map(|l| l.reg(APIC_ID));
    let shown = |r: Result<u32, Errno>| {
        r.map_or_else(
            |e| format!("KVM_GET_LAPIC errno {e}"),
            |id| format!("{id:#x}"),
        )
    };
    let Some(base) = vcpu.get_msr(APIC_BASE) else {
        return Outcome::fail("a host read of IA32_APIC_BASE", "failed");
    };
    let xapic_id = (APIC_VCPU_ID as u32) << 24;
    let at_reset = id_reg(&vcpu);
    if at_reset != Ok(xapic_id) || base & (APIC_BASE_EN | APIC_BASE_EXTD) != APIC_BASE_EN {
        return Outcome::fail(
            format!("at reset: xAPIC mode (EN, no EXTD) and APIC_ID {xapic_id:#x} (lapic.c kvm_lapic_reset)"),
            format!("IA32_APIC_BASE {}, APIC_ID {}", hex(base), shown(at_reset)),
        );
    }
    let to_x2apic = vcpu.set_msr(APIC_BASE, base | APIC_BASE_EXTD);
    let to_xapic = vcpu.set_msr(APIC_BASE, base);
    let after = id_reg(&vcpu);
    let old = ctx
        .facts
        .kernel_version()
        .is_some_and(|k| k < XAPIC_ID_REINIT_FROM);
    let (want, why) = if old {
        (APIC_VCPU_ID as u32, "before 6.3 the x2APIC ID stays")
    } else {
        (xapic_id, "vcpu_id << 24 (052c3b99cbc8, 6.3)")
    };
    let actual = format!(
        "EN|EXTD {}, back to EN {}, APIC_ID {}",
        if to_x2apic { "accepted" } else { "refused" },
        if to_xapic { "accepted" } else { "refused" },
        shown(after)
    );
    if to_x2apic && to_xapic && after == Ok(want) {
        Outcome::pass(actual)
    } else {
        Outcome::fail(
            format!("both host writes accepted and APIC_ID {want:#x}: {why}"),
            actual,
        )
    }
}

/// A VM with the default configuration and one vCPU with this id and CPUID.
fn vm_with_vcpu(ctx: &Context, id: u64, t: CpuidTable) -> crate::Result<(Vm, Vcpu)> {
    let vm = Vm::new(ctx.sys(), &VmConfig::default())?;
    let vcpu = vm.create_vcpu(id, &CpuidPolicy::Table(t))?;
    Ok((vm, vcpu))
}

/// 184bd464bdb6 is in 6.13 and, backported, in 6.12.113; Debian's 6.1.192 lacks it.
const SREGS_EFER_FROM: KernelVersion = KernelVersion(6, 13);
const SREGS_EFER_612_SUBLEVEL: u32 = 113;

const SREGS_EFER_CITE: &str = "184bd464bdb6 'KVM: x86: Check EFER validity on KVM_SET_SREGS*' (6.13, Cc: stable, in 6.12.113): kvm_is_valid_sregs ends with kvm_valid_efer(vcpu, sregs->efer), whose __kvm_valid_efer refuses EFER.LME/LMA without the guest's CPUID.80000001:EDX.LM, so __set_sregs_common returns -EINVAL before changing any state (regs.c in 6.12.118 and 7.2); before it (6.1.192: x86.c kvm_is_valid_sregs checks CR0/CR4/LMA consistency only) the EFER was taken as given. api.rst 4.14 KVM_SET_SREGS";

/// The same long-mode KVM_SET_SREGS on two vCPUs that differ only in CPUID.80000001:EDX.LM: the
/// one with LM takes it, the one without must refuse it with EINVAL and keep its EFER.
fn sregs_efer_vs_cpuid(ctx: &Context) -> Outcome {
    let lm = cpuid::feature("LM").expect("in cpuid::FEATURES");
    if !ctx.facts.supported_cpuid.has(lm) {
        return Outcome::skip("KVM_GET_SUPPORTED_CPUID lacks LM: no long mode to refuse");
    }
    let mut without = ctx.facts.supported_cpuid.clone();
    without.set(lm, false);
    let set = |t: CpuidTable| -> Result<(Option<Errno>, u64, bool), Outcome> {
        let (_vm, vcpu) = vm_with_vcpu(ctx, 0, t).map_err(Outcome::harness)?;
        let has_lm = vcpu.effective_cpuid.as_ref().is_some_and(|c| c.has(lm));
        let s = vcpu
            .fd
            .get_sregs()
            .map_err(|e| Outcome::harness(crate::Error::ioctl("KVM_GET_SREGS", e)))?;
        let errno = vcpu
            .fd
            .set_sregs(&long_mode_sregs(s))
            .err()
            .map(Errno::from);
        let efer = vcpu
            .fd
            .get_sregs()
            .map_err(|e| Outcome::harness(crate::Error::ioctl("KVM_GET_SREGS", e)))?
            .efer;
        Ok((errno, efer, has_lm))
    };
    let (with_lm, (errno, efer, kept_lm)) =
        match (set(ctx.facts.supported_cpuid.clone()), set(without)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(o), _) | (_, Err(o)) => return o,
        };
    if kept_lm {
        return Outcome::skip("KVM_GET_CPUID2 still shows LM after KVM_SET_CPUID2 without it");
    }
    if with_lm.0.is_some() {
        return Outcome::fail(
            "the long-mode sregs accepted on the vCPU with LM (the control)",
            format!("errno {:?}", with_lm.0),
        );
    }
    let actual = format!(
        "without LM: KVM_SET_SREGS {}, EFER then {}",
        errno.map_or("accepted".into(), |e| format!("errno {e}")),
        hex(efer)
    );
    let fixed = match (ctx.facts.kernel_version(), ctx.facts.kernel_sublevel()) {
        (Some(k), _) if k >= SREGS_EFER_FROM => Some(true),
        (Some(KernelVersion(6, 12)), Some(sub)) => Some(sub >= SREGS_EFER_612_SUBLEVEL),
        (Some(KernelVersion(6, 1)), _) => Some(false),
        _ => None,
    };
    match fixed {
        Some(true) if errno == Some(Errno::EINVAL) && efer == 0 => Outcome::pass(actual),
        Some(true) => Outcome::fail(
            "without LM: EINVAL and EFER left at its reset value 0 (184bd464bdb6)",
            actual,
        ),
        Some(false) if errno.is_none() => Outcome::pass(format!(
            "{actual} (kernel without 184bd464bdb6: the EFER is not checked)"
        )),
        Some(false) => Outcome::fail(
            "without 184bd464bdb6 (6.1, 6.12 before .113) KVM_SET_SREGS accepts the EFER",
            actual,
        ),
        None => Outcome::skip(format!(
            "kernel {}: whether its stable line has 184bd464bdb6 is not known here ({actual})",
            ctx.facts.kernel_release
        )),
    }
}

use crate::msr_index::IA32_EFER as EFER;
/// EFER.LME (SDM vol. 3A 2.2.1, table 2-1).
const EFER_LME: u64 = 1 << 8;
const HOST_EFER_CITE: &str = "11988499e62b 'KVM: x86: Skip EFER vs. guest CPUID checks for host-initiated writes': x86.c set_efer checks only efer_reserved_bits (what KVM supports) for a host write and __kvm_valid_efer (the guest's CPUID) for the guest's own; vcpu->arch.efer keeps the value (svm.c svm_set_efer, vmx.c vmx_set_efer), which KVM_GET_MSRS returns (6.1, 6.12, 7.2 set_efer alike); api.rst 4.19 KVM_SET_MSRS";

/// A host KVM_SET_MSRS of EFER.LME on a vCPU whose CPUID lacks LM is taken and reads back: the
/// guest-CPUID check is the guest's, not userspace's (restores come in any order).
fn host_efer_skips_cpuid(ctx: &Context) -> Outcome {
    let lm = cpuid::feature("LM").expect("in cpuid::FEATURES");
    if !ctx.facts.supported_cpuid.has(lm) {
        return Outcome::skip(
            "KVM_GET_SUPPORTED_CPUID lacks LM: EFER.LME is reserved for KVM itself",
        );
    }
    let mut without = ctx.facts.supported_cpuid.clone();
    without.set(lm, false);
    let (_vm, vcpu) = match vm_with_vcpu(ctx, 0, without) {
        Ok(x) => x,
        Err(e) => return Outcome::harness(e),
    };
    if vcpu.effective_cpuid.as_ref().is_none_or(|c| c.has(lm)) {
        return Outcome::skip("KVM_GET_CPUID2 still shows LM after KVM_SET_CPUID2 without it");
    }
    let io = vcpu.set_msrs(&[crate::kvm::MsrEntry {
        index: EFER,
        data: EFER_LME,
    }]);
    let back = vcpu.get_msr(EFER);
    let actual = format!("KVM_SET_MSRS {:?}, EFER then {back:x?}", io.result);
    if io.result == Ok(1) && back.is_some_and(|v| v & EFER_LME != 0) {
        Outcome::pass(actual)
    } else {
        Outcome::fail(
            "the write taken (1 entry) and EFER.LME set on read-back (11988499e62b)",
            actual,
        )
    }
}

use crate::msr_index::{IA32_TSC, IA32_TSC_DEADLINE as TSC_DEADLINE};
/// The LVT timer register's offset (SDM vol. 3A table 12-1) and its TSC-deadline mode (bits
/// 18:17 = 10b) with the entry masked (bit 16), so no interrupt is ever delivered.
const APIC_LVTT: usize = 0x320;
const LVTT_TSC_DEADLINE_MASKED: u32 = (0b10 << 17) | (1 << 16) | 0xec;
const DEADLINE_CITE: &str = "d2286ba7d574 'KVM: LAPIC: Prevent setting the tscdeadline timer if the lapic is hw disabled': lapic.c kvm_set_lapic_tscdeadline_msr and kvm_get_lapic_tscdeadline_msr return early when !kvm_apic_present (IA32_APIC_BASE.EN clear) or LVTT is not in TSC-deadline mode (6.1, 6.12, 7.2 alike); x86.c kvm_set_msr_common MSR_IA32_TSC_DEADLINE takes the write either way. The mode needs CPUID TSC_DEADLINE_TIMER in the vCPU's CPUID (lapic.c timer_mode_mask). SDM vol. 3A 12.5.4.1";

/// With LVTT in TSC-deadline mode: a host write of IA32_TSC_DEADLINE is kept while the APIC is
/// enabled (the control), reads 0 and is dropped while IA32_APIC_BASE.EN is clear.
fn tsc_deadline_hw_disabled_apic(ctx: &Context) -> Outcome {
    let f = cpuid::feature("TSC_DEADLINE").expect("in cpuid::FEATURES");
    let mut table = ctx.facts.supported_cpuid.clone();
    table.set(f, true);
    let (_vm, vcpu) = match vm_with_vcpu(ctx, 0, table) {
        Ok(x) => x,
        Err(e) => return Outcome::harness(e),
    };
    if vcpu.effective_cpuid.as_ref().is_none_or(|c| !c.has(f)) {
        return Outcome::skip("KVM_GET_CPUID2 does not show TSC_DEADLINE after KVM_SET_CPUID2 with it: no TSC-deadline mode");
    }
    let mut lapic = match vcpu.get_lapic() {
        Ok(l) => l,
        Err(e) => {
            return Outcome::fail("KVM_GET_LAPIC with the split irqchip", format!("errno {e}"))
        }
    };
    lapic.set_reg(APIC_LVTT, LVTT_TSC_DEADLINE_MASKED);
    if let Err(e) = vcpu.set_lapic(&lapic) {
        return Outcome::fail(
            "KVM_SET_LAPIC of LVTT in TSC-deadline mode",
            format!("errno {e}"),
        );
    }
    let (Some(base), Some(tsc)) = (vcpu.get_msr(APIC_BASE), vcpu.get_msr(IA32_TSC)) else {
        return Outcome::fail("host reads of IA32_APIC_BASE and IA32_TSC", "failed");
    };
    // A deadline seconds ahead (no expiry clears it while the check runs), and another one.
    let (kept, dropped) = (tsc + 10_000_000_000, tsc + 20_000_000_000);
    let write_read = |value: u64| {
        let taken = vcpu.set_msr(TSC_DEADLINE, value);
        (taken, vcpu.get_msr(TSC_DEADLINE))
    };
    let control = write_read(kept);
    let disable = vcpu.set_msr(APIC_BASE, base & !APIC_BASE_EN);
    let disabled = write_read(dropped);
    let enable = vcpu.set_msr(APIC_BASE, base);
    let after = vcpu.get_msr(TSC_DEADLINE);
    let actual = format!(
        "enabled: write {} read {:x?}; EN cleared {disable}: write {} read {:x?}; EN set again {enable}: read {after:x?}",
        control.0, control.1, disabled.0, disabled.1
    );
    if control != (true, Some(kept)) || !disable || !enable {
        return Outcome::fail(
            "the control: with the APIC enabled the deadline written reads back, and the host may clear and set EN",
            actual,
        );
    }
    // After EN is set again the earlier deadline (or 0, had it expired) is what KVM holds.
    if disabled == (true, Some(0)) && after != Some(dropped) {
        Outcome::pass(actual)
    } else {
        Outcome::fail(
            "with EN clear: the write taken but dropped (reads 0, and not there once EN is set again)",
            actual,
        )
    }
}

pub fn checks(_ctx: &Context) -> Vec<Check> {
    vec![
        Check::new(
            CheckId::fixed(Family::Regression, "mci-ctl2.without-cmci-p"),
            Some(MC0_CTL2),
            "with 4 banks and no MCG_CMCI_P: MC0_CTL2 reads 0 and takes only 0 from the host, MC4_CTL2 does not exist, the guest faults",
            CTL2_CITE,
            ctl2_without_cmci,
        ),
        Check::new(
            CheckId::fixed(Family::Regression, "mci-ctl2.with-cmci-p"),
            Some(MC0_CTL2),
            "with MCG_CMCI_P: host and guest write CMCI_EN and the threshold to MC0_CTL2 and read them back; other bits are refused",
            CTL2_CITE,
            ctl2_with_cmci,
        ),
        Check::new(
            CheckId::fixed(Family::Regression, "platform-info.cpuid-fault-clear-any-order"),
            Some(PLATFORM_INFO),
            "the host may clear PLATFORM_INFO.CPUID_FAULT while MISC_FEATURES_ENABLES.CPUID_FAULT is set (restore in any order; refused before 6.13)",
            "1ded7a57b805 'KVM: x86: Remove ordering check b/w MSR_PLATFORM_INFO and MISC_FEATURES_ENABLES' (6.13): x86.c kvm_set_msr_common MSR_PLATFORM_INFO checks only host_initiated; before, !(data & CPUID_FAULT) && cpuid_fault_enabled(vcpu) -> 1 (Debian 6.1, 6.12)",
            cpuid_fault_any_order,
        ),
        Check::new(
            CheckId::fixed(Family::Regression, "apic-base.x2apic-to-xapic-reinits-id"),
            Some(APIC_BASE),
            "a host write of IA32_APIC_BASE from x2APIC back to xAPIC (EN kept) re-derives the xAPIC ID: KVM_GET_LAPIC's APIC_ID is vcpu_id << 24 (vCPU 5)",
            XAPIC_ID_CITE,
            xapic_id_after_x2apic,
        ),
        Check::new(
            CheckId::fixed(Family::Regression, "sregs.efer-checked-against-cpuid"),
            None,
            "KVM_SET_SREGS with EFER.LME/LMA on a vCPU whose CPUID lacks LM fails with EINVAL and leaves EFER alone; the same sregs succeed with LM",
            SREGS_EFER_CITE,
            sregs_efer_vs_cpuid,
        ),
        Check::new(
            CheckId::fixed(Family::Regression, "efer.host-write-skips-guest-cpuid"),
            Some(EFER),
            "a host KVM_SET_MSRS of EFER.LME on a vCPU whose CPUID lacks LM is taken and reads back (the CPUID check is for the guest's own writes)",
            HOST_EFER_CITE,
            host_efer_skips_cpuid,
        ),
        Check::new(
            CheckId::fixed(Family::Regression, "tsc-deadline.hw-disabled-apic-drops-write"),
            Some(TSC_DEADLINE),
            "with LVTT in TSC-deadline mode, a host IA32_TSC_DEADLINE write reads back while the APIC is enabled and is dropped (reads 0) while IA32_APIC_BASE.EN is clear",
            DEADLINE_CITE,
            tsc_deadline_hw_disabled_apic,
        ),
    ]
}
