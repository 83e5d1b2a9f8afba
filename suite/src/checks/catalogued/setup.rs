//! The machines the catalogue's checks run on: the guest vendor, the rule's CPUID changes,
//! quirks, the MSR's `setup` steps, and the skip when a gate stays closed.

use super::super::{Context, Outcome};
use super::*;
use crate::catalogue::{GateState, GuestVendor, MsrInfo, Setup, WriteRule};
use crate::kvm::cpuid::{self, Vendor};
use crate::machine::Machine;

pub(super) fn vendor_class(v: Vendor) -> Option<GuestVendor> {
    if v.is_intel_compatible() {
        Some(GuestVendor::Intel)
    } else if v.is_amd_compatible() {
        Some(GuestVendor::Amd)
    } else {
        None
    }
}

/// A machine with KVM's supported CPUID, optionally with another guest vendor, in the state the
/// MSR's `setup` asks for.
pub(crate) fn machine_for(
    ctx: &Context,
    m: &MsrInfo,
    vendor: Option<GuestVendor>,
) -> crate::Result<Machine> {
    machine_quirks(ctx, m, vendor, 0, &[])
}

/// The machine a write rule runs on: `machine_for`, with the rule's `cpuid_clear` features
/// cleared from the vCPU's CPUID. A skip where KVM_GET_SUPPORTED_CPUID has none of them (there is
/// nothing to clear) or where KVM_GET_CPUID2 still shows one after KVM_SET_CPUID2 cleared it.
pub(super) fn machine_for_write(
    ctx: &Context,
    m: &MsrInfo,
    rule: &WriteRule,
    vendor: Option<GuestVendor>,
) -> std::result::Result<Machine, Outcome> {
    let offered = |n: &&str| cpuid::feature(n).is_some_and(|f| ctx.facts.supported_cpuid.has(f));
    if !rule.cpuid_clear.is_empty() && !rule.cpuid_clear.iter().any(offered) {
        return Err(Outcome::skip(format!(
            "KVM_GET_SUPPORTED_CPUID has none of {}: no vCPU CPUID to clear it from, so this case is the same as the write without the clear",
            rule.cpuid_clear.join(", ")
        )));
    }
    let mach = machine_quirks(ctx, m, vendor, 0, &rule.cpuid_clear).map_err(Outcome::harness)?;
    let kept: Vec<&str> = rule
        .cpuid_clear
        .iter()
        .copied()
        .filter(|n| {
            mach.vcpu
                .effective_cpuid
                .as_ref()
                .is_none_or(|t| cpuid::feature(n).is_some_and(|f| t.has(f)))
        })
        .collect();
    if !kept.is_empty() {
        return Err(Outcome::skip(format!(
            "KVM_GET_CPUID2 still shows {} after KVM_SET_CPUID2 cleared it (see cpuid.follows-set-cpuid2)",
            kept.join(", ")
        )));
    }
    Ok(mach)
}

/// `machine_for` on a VM with the quirks in `quirks_off` disabled.
pub(super) fn machine_quirks(
    ctx: &Context,
    m: &MsrInfo,
    vendor: Option<GuestVendor>,
    quirks_off: u64,
    clear: &[&str],
) -> crate::Result<Machine> {
    let mut t = ctx.facts.supported_cpuid.clone();
    for n in clear {
        t.set(cpuid::feature(n).expect("validated name"), false);
    }
    match vendor {
        Some(GuestVendor::Intel) => t.set_vendor(Vendor::Intel),
        Some(GuestVendor::Amd) => t.set_vendor(Vendor::Amd),
        None => {}
    }
    if m.setup.contains(&Setup::HypervInterface) || m.setup.contains(&Setup::HypervSynic) {
        t.set_hyperv_interface();
    }
    let mut mach = ctx.machine_with(t, quirks_off)?;
    apply_setup(&mut mach, m, true)?;
    Ok(mach)
}

/// The MSR's setup steps after the machine exists (`open_gates`: also the steps that open a
/// gate, which the gate-closed check leaves out).
pub(super) fn apply_setup(mach: &mut Machine, m: &MsrInfo, open_gates: bool) -> crate::Result<()> {
    for s in &m.setup {
        match s {
            Setup::HypervInterface => {} // in the CPUID: machine_quirks
            // The gate-closed check keeps SynIC off: that is its closed state.
            Setup::HypervSynic if !open_gates => {}
            Setup::HypervSynic => {
                mach.vcpu
                    .activate_synic()
                    .map_err(|errno| crate::Error::Ioctl {
                        what: "setup hyperv-synic: KVM_ENABLE_CAP(KVM_CAP_HYPERV_SYNIC2)",
                        errno,
                    })?;
            }
            Setup::X2apicMode => mach.vcpu.try_set_msr(
                "setup x2apic-mode: KVM_SET_MSRS (value 0xfee00d00)",
                crate::msr_index::IA32_APIC_BASE,
                0xfee0_0d00,
            )?,
        }
    }
    Ok(())
}

/// Guest checks need the gate open on the vCPU they run on.
pub(super) fn guest_gate_closed(m: &MsrInfo, mach: &Machine) -> Option<Outcome> {
    (gate_state(m, mach) == Some(GateState::Closed)).then(|| {
        let g = m.gate.as_ref().expect("gate");
        Outcome::skip(format!(
            "the guest may not access {} on this vCPU: gate {} closed in the effective CPUID/state ({}); see guest.{}.gate-closed",
            m.name,
            g.describe(),
            g.cite,
            m.id
        ))
    })
}

/// Skip when KVM cannot disable the quirks in `quirks_off` (KVM_CAP_DISABLE_QUIRKS2 returns the
/// supported mask, api.rst 7.31).
pub(super) fn quirks_unsupported(ctx: &Context, quirks_off: u64) -> Option<Outcome> {
    let supported = ctx.facts.cap("KVM_CAP_DISABLE_QUIRKS2").max(0) as u64;
    (quirks_off & !supported != 0).then(|| {
        Outcome::skip(format!("KVM_CAP_DISABLE_QUIRKS2 cannot disable quirk mask {quirks_off:#x} (supported {supported:#x})"))
    })
}
