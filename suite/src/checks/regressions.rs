//! Regression checks for upstream fixes that no other family covered
//! (fixtures/coverage/msr-fixes.toml maps every fix to its checks). Each check names the commit
//! it guards in its cite.

use super::mce::{set_up, support};
use super::{hex, Check, Context, Outcome};
use crate::catalogue::KernelVersion;
use crate::guest::{GuestOp, OpOutcome};

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
        return Outcome::fail("the guest program to complete", d.to_string());
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
        return Outcome::fail("the guest program to complete", d.to_string());
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

pub fn checks(_ctx: &Context) -> Vec<Check> {
    vec![
        Check::new(
            "regression.mci-ctl2.without-cmci-p",
            Some(MC0_CTL2),
            "with 4 banks and no MCG_CMCI_P: MC0_CTL2 reads 0 and takes only 0 from the host, MC4_CTL2 does not exist, the guest faults",
            CTL2_CITE,
            ctl2_without_cmci,
        ),
        Check::new(
            "regression.mci-ctl2.with-cmci-p",
            Some(MC0_CTL2),
            "with MCG_CMCI_P: host and guest write CMCI_EN and the threshold to MC0_CTL2 and read them back; other bits are refused",
            CTL2_CITE,
            ctl2_with_cmci,
        ),
        Check::new(
            "regression.platform-info.cpuid-fault-clear-any-order",
            Some(PLATFORM_INFO),
            "the host may clear PLATFORM_INFO.CPUID_FAULT while MISC_FEATURES_ENABLES.CPUID_FAULT is set (restore in any order; refused before 6.13)",
            "1ded7a57b805 'KVM: x86: Remove ordering check b/w MSR_PLATFORM_INFO and MISC_FEATURES_ENABLES' (6.13): x86.c kvm_set_msr_common MSR_PLATFORM_INFO checks only host_initiated; before, !(data & CPUID_FAULT) && cpuid_fault_enabled(vcpu) -> 1 (Debian 6.1, 6.12)",
            cpuid_fault_any_order,
        ),
    ]
}
