//! What KVM offers for a feature MSR (its system value) and what the host may write before
//! KVM_RUN: the offer and its subsets accepted, bits beyond it refused.

use super::*;
use crate::catalogue::HostWhenClosed;
use crate::kvm::cpuid;
use crate::machine::Machine;

/// How KVM judges a host write of a feature MSR (semantics §3.2; x86.c kvm_set_msr_common,
/// vmx.c vmx_set_vmx_msr, svm.c svm_set_msr MSR_AMD64_DE_CFG).
#[derive(Clone, Copy)]
pub(super) struct Offer {
    pub(super) index: u32,
    /// The CPUID feature that must be set for host writes of non-zero values.
    pub(super) enumerating: Option<&'static str>,
    /// Bits a subset may clear (the whole value, or only the allowed-1 half of a VMX control MSR).
    pub(super) clearable: u64,
    /// Bits outside the offer KVM rejects (None: KVM does not check, e.g. ARCH_CAPABILITIES in 6.18).
    pub(super) checked: Option<u64>,
    pub(super) cite: &'static str,
}

pub(super) const OFFERS: &[Offer] = &[
    Offer { index: 0x10a, enumerating: Some("ARCH_CAPABILITIES"), clearable: u64::MAX, checked: None, cite: "x86.c kvm_set_msr_common MSR_IA32_ARCH_CAPABILITIES: any value once the guest has the CPUID bit (6.18)" },
    Offer { index: 0x345, enumerating: Some("PDCM"), clearable: u64::MAX, checked: Some(u64::MAX), cite: "x86.c kvm_set_msr_common MSR_IA32_PERF_CAPABILITIES: data & ~kvm_caps.supported_perf_cap -> 1" },
    Offer { index: 0xce, enumerating: None, clearable: u64::MAX, checked: None, cite: "x86.c kvm_set_msr_common MSR_PLATFORM_INFO: any host value before KVM_RUN" },
    Offer { index: 0xc001_1029, enumerating: None, clearable: u64::MAX, checked: Some(u64::MAX), cite: "svm.c svm_set_msr MSR_AMD64_DE_CFG: data & ~supported_de_cfg -> 1" },
    Offer { index: 0x48b, enumerating: Some("VMX"), clearable: 0xffff_ffff_0000_0000, checked: Some(0xffff_ffff_0000_0000), cite: "vmx.c vmx_set_vmx_msr / vmx_restore_control_msr: a value may only restrict KVM's allowed-1 settings" },
    Offer { index: 0x48d, enumerating: Some("VMX"), clearable: 0xffff_ffff_0000_0000, checked: Some(0xffff_ffff_0000_0000), cite: "vmx.c vmx_restore_control_msr: allowed-1 bits must be a subset of KVM's" },
    Offer { index: 0x48e, enumerating: Some("VMX"), clearable: 0xffff_ffff_0000_0000, checked: Some(0xffff_ffff_0000_0000), cite: "vmx.c vmx_restore_control_msr: allowed-1 bits must be a subset of KVM's" },
    Offer { index: 0x48f, enumerating: Some("VMX"), clearable: 0xffff_ffff_0000_0000, checked: Some(0xffff_ffff_0000_0000), cite: "vmx.c vmx_restore_control_msr: allowed-1 bits must be a subset of KVM's" },
    Offer { index: 0x490, enumerating: Some("VMX"), clearable: 0xffff_ffff_0000_0000, checked: Some(0xffff_ffff_0000_0000), cite: "vmx.c vmx_restore_control_msr: allowed-1 bits must be a subset of KVM's" },
];

/// A fresh machine whose CPUID has the enumerating bit, or why the gate stays closed.
pub(super) fn offer_machine(ctx: &Context, o: &Offer) -> Result<Machine, Outcome> {
    let mut t = ctx.facts.supported_cpuid.clone();
    if let Some(n) = o.enumerating {
        t.set(cpuid::feature(n).expect("known feature"), true);
    }
    let m = ctx.machine_with_cpuid(t).map_err(Outcome::harness)?;
    if let Some(n) = o.enumerating {
        if !m
            .vcpu
            .effective_cpuid
            .as_ref()
            .is_some_and(|c| c.has(cpuid::feature(n).expect("known")))
        {
            return Err(Outcome::skip(format!("KVM did not keep CPUID {n} set on the vCPU, so host writes of non-zero values are refused by the gate (see cpuid.*.kept-by-set-cpuid2)")));
        }
    }
    Ok(m)
}

/// The MSR's system value (what KVM offers) and a machine for the offer checks.
fn offered(ctx: &Context, o: &Offer) -> Result<(u64, Machine), Outcome> {
    let Some(sys) = system_value(ctx, o.index) else {
        return Err(Outcome::fail(
            "the system-level value readable",
            "KVM_GET_MSRS on /dev/kvm did not process it",
        ));
    };
    Ok((sys, offer_machine(ctx, o)?))
}

pub(super) fn host_accepts_offer(ctx: &Context, o: Offer) -> Outcome {
    let (sys, m) = match offered(ctx, &o) {
        Ok(x) => x,
        Err(out) => return out,
    };
    let mut refused = Vec::new();
    let bits = sys & o.clearable;
    for v in std::iter::once(sys).chain(
        (0..64)
            .filter(|b| bits & (1 << b) != 0)
            .map(|b| sys & !(1u64 << b)),
    ) {
        if !(m.vcpu.set_msr(o.index, v) && m.vcpu.get_msr(o.index) == Some(v)) {
            refused.push(hex(v));
        }
    }
    if refused.is_empty() {
        Outcome::pass(format!(
            "the offer {} and its {} single-bit subsets were accepted and read back",
            hex(sys),
            bits.count_ones()
        ))
    } else {
        Outcome::fail(
            format!(
                "the system value and every subset accepted before KVM_RUN ({})",
                o.cite
            ),
            format!("refused or not read back: {}", refused.join(", ")),
        )
    }
}

pub(super) fn host_rejects_beyond_offer(ctx: &Context, o: Offer) -> Outcome {
    let (sys, m) = match offered(ctx, &o) {
        Ok(x) => x,
        Err(out) => return out,
    };
    if let Some(n) = o.enumerating {
        let supported = ctx
            .facts
            .supported_cpuid
            .has(cpuid::feature(n).expect("known feature"));
        let gated = matches!(gate(ctx, &m, o.index), Some((_, h)) if h != HostWhenClosed::Exempt);
        if !supported && gated {
            return Outcome::skip(format!("KVM does not offer CPUID {n} (KVM_GET_SUPPORTED_CPUID), so the vCPU never has it whatever its CPUID table says (guest_cpu_cap_has needs KVM's support too, 6.14), and on this kernel the gate refuses every non-zero host write (or drops it under ignore_msrs): bits outside the offer cannot be told from the gate"));
        }
    }
    let beyond = o.checked.unwrap_or(0) & !sys;
    let accepted: Vec<u32> = (0..64)
        .filter(|b| beyond & (1 << b) != 0)
        .filter(|b| {
            let ok = m.vcpu.set_msr(o.index, sys | (1 << b));
            m.vcpu.set_msr(o.index, sys);
            ok
        })
        .collect();
    if accepted.is_empty() {
        Outcome::pass(format!(
            "each of the {} bits outside the offer {} rejected alone",
            beyond.count_ones(),
            hex(sys)
        ))
    } else {
        Outcome::fail(
            format!("every bit outside the offer rejected ({})", o.cite),
            format!("accepted bits {accepted:?}"),
        )
    }
}
