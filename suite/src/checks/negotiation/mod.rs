//! Feature-MSR negotiation between userspace, KVM and the guest (api.rst 4.3, 4.18, 7.31;
//! x86.c kvm_get_feature_msr, do_set_msr, kvm_is_immutable_feature_msr).

use super::{hex, Check, Context, Outcome};
use crate::check_id::{CheckId, Family};
use crate::session::ids::SAME_CPUID_AFTER_RUN;

mod cpuid_checks;
mod feature_msrs;
mod offers;

use crate::catalogue::{GateState, HostWhenClosed};
use crate::machine::Machine;
use cpuid_checks::*;
use feature_msrs::*;
use offers::*;

use crate::msr_index::IA32_UCODE_REV as UCODE_REV;
use crate::msr_index::MSR_PLATFORM_INFO as PLATFORM_INFO;
const QUIRK_STUFF: u64 = kvm_bindings::KVM_X86_QUIRK_STUFF_FEATURE_MSRS as u64;

/// Feature MSRs KVM stuffs into a new vCPU under KVM_X86_QUIRK_STUFF_FEATURE_MSRS with the
/// system value (api.rst 7.31; x86.c kvm_arch_vcpu_create). UCODE_REV gets a vendor default
/// instead and the VMX MSRs the nested configuration.
const STUFFED_WITH_SYSTEM_VALUE: &[u32] = &[0x10a, 0x345, PLATFORM_INFO];

fn system_value(ctx: &Context, index: u32) -> Option<u64> {
    ctx.facts
        .feature_values
        .iter()
        .find(|f| f.index == index)
        .and_then(|f| f.value)
}

fn gate(ctx: &Context, m: &Machine, index: u32) -> Option<(GateState, HostWhenClosed)> {
    let g = ctx.catalogue.get(index)?.gate.as_ref()?;
    Some((m.gate_state(g), g.host_on(ctx.facts.kernel_version())))
}

/// A second value valid before the first KVM_RUN: 0 when the current value is not 0 (every
/// feature MSR accepts clearing what it offers), else the system value.
fn other_valid_value(ctx: &Context, index: u32, cur: u64) -> u64 {
    if cur != 0 {
        0
    } else {
        system_value(ctx, index).unwrap_or(0)
    }
}

pub fn checks(ctx: &Context) -> Vec<Check> {
    let mut v = Vec::new();
    for &index in &ctx.facts.msr_feature_index_list {
        let id = ctx.catalogue.slug(index);
        let name = ctx.catalogue.name(index);
        if STUFFED_WITH_SYSTEM_VALUE.contains(&index) {
            v.push(Check::new(CheckId::msr(Family::Feature, &id, "vcpu-matches-system"), Some(index), format!("{name}: a new vCPU holds the system value (STUFF_FEATURE_MSRS quirk)"), "api.rst 7.31 KVM_X86_QUIRK_STUFF_FEATURE_MSRS; x86.c kvm_arch_vcpu_create; selftests feature_msrs_test", move |c| vcpu_matches_system(c, index, 0)));
            v.push(Check::new(
                CheckId::msr(Family::Feature, &id, "vcpu-zero-without-quirk"),
                Some(index),
                format!(
                    "{name}: a new vCPU holds 0 with KVM_X86_QUIRK_STUFF_FEATURE_MSRS disabled"
                ),
                "api.rst 7.31 KVM_CAP_DISABLE_QUIRKS2, KVM_X86_QUIRK_STUFF_FEATURE_MSRS",
                move |c| vcpu_matches_system(c, index, QUIRK_STUFF),
            ));
            v.push(Check::new(
                CheckId::msr(Family::Guest, &id, "reads-what-userspace-set"),
                Some(index),
                format!("{name}: the guest reads exactly the value userspace set"),
                "api.rst 4.19 KVM_SET_MSRS; x86.c kvm_get_msr_common returns the vCPU's value",
                move |c| guest_reads_what_userspace_set(c, index),
            ));
        }
        v.push(Check::new(
            CheckId::msr(Family::Feature, &id, "immutable-after-run"),
            Some(index),
            format!("{name}: after KVM_RUN, KVM_SET_MSRS refuses a different value and accepts the same one (UCODE_REV stays writable)"),
            "x86.c do_set_msr: kvm_vcpu_has_run && kvm_is_immutable_feature_msr -> -EINVAL unless the value is unchanged; UCODE_REV is excluded",
            move |c| immutable_after_run(c, index),
        ));
    }
    v.push(Check::new(SAME_CPUID_AFTER_RUN, None, "after KVM_RUN, KVM_SET_CPUID2 accepts the table userspace set before and refuses a changed one", "cpuid.c kvm_set_cpuid -> kvm_cpuid_check_equal (runtime updates applied to the incoming entries); api.rst 4.73 KVM_SET_CPUID2; selftests cpuid_test.c test_set_cpuid_after_run", same_cpuid_after_run));
    v.push(Check::new(CheckId::fixed(Family::Guest, "platform-info.cap-disallows-read"), Some(PLATFORM_INFO), "KVM_CAP_MSR_PLATFORM_INFO(0): a guest RDMSR of PLATFORM_INFO #GPs, the host still reads it", "api.rst KVM_CAP_MSR_PLATFORM_INFO; x86.c kvm_get_msr_common: !host_initiated && !guest_can_read_msr_platform_info -> 1", |c| platform_info_cap(c, false)));
    v.push(Check::new(CheckId::fixed(Family::Guest, "platform-info.cap-allows-read"), Some(PLATFORM_INFO), "KVM_CAP_MSR_PLATFORM_INFO(1): the guest reads PLATFORM_INFO", "api.rst KVM_CAP_MSR_PLATFORM_INFO; x86.c kvm_arch_init_vm: guest_can_read_msr_platform_info = true", |c| platform_info_cap(c, true)));
    v.push(Check::new(CheckId::fixed(Family::Guest, "misc-enable.quirk-misc-enable-no-mwait-off.mwait-drives-cpuid"), Some(0x1a0), "with KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT disabled, MISC_ENABLE bit 18 toggles the guest's CPUID.1:ECX.MONITOR", "api.rst 7.31 KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT; x86.c kvm_set_msr_common MSR_IA32_MISC_ENABLE; cpuid.c kvm_update_cpuid_runtime", misc_enable_mwait_drives_cpuid));
    for o in OFFERS
        .iter()
        .copied()
        .filter(|o| ctx.facts.is_feature_msr(o.index))
    {
        let id = ctx.catalogue.slug(o.index);
        let name = ctx.catalogue.name(o.index);
        v.push(Check::new(CheckId::msr(Family::Feature, &id, "host-accepts-offer"), Some(o.index), format!("{name}: before KVM_RUN the host may write the system value and each single-bit subset of it"), format!("api.rst 4.18 (feature MSRs are what KVM offers); {}", o.cite), move |c| host_accepts_offer(c, o)));
        if o.checked.is_some() {
            v.push(Check::new(
                CheckId::msr(Family::Feature, &id, "host-rejects-beyond-offer"),
                Some(o.index),
                format!("{name}: KVM_SET_MSRS refuses each bit outside KVM's offer"),
                o.cite,
                move |c| host_rejects_beyond_offer(c, o),
            ));
        }
    }
    v.push(Check::new(CheckId::fixed(Family::Feature, "core-capabilities.not-implemented"), Some(0xcf), "IA32_CORE_CAPABILITIES does not exist under KVM even with CPUID.7.0:EDX[30] set", "semantics §3.2: no MSR_IA32_CORE_CAPS case in x86.c kvm_get/set_msr_common, in no list; the emulation series (Xiaoyao Li, 2019-2020) was never merged; x86.c kvm_do_msr_access for ignore_msrs", core_capabilities_unsupported));
    v.push(Check::new(
        CheckId::fixed(Family::Guest, "cpuid.follows-set-cpuid2"),
        None,
        "a CPUID bit set on one vCPU and cleared on another reads so in each guest",
        "api.rst KVM_SET_CPUID2 (defines the vCPU's responses to CPUID); cpuid.c kvm_emulate_cpuid",
        guest_cpuid_follows_set_cpuid2,
    ));
    v.push(Check::new(CheckId::fixed(Family::Guest, "arch-capabilities.linux-detection"), Some(0x10a), "a guest following Linux's x86_read_arch_cap_msr (CPUID bit, then RDMSR) reaches a consistent conclusion", "arch/x86/kernel/cpu/common.c x86_read_arch_cap_msr; SDM vol. 2A CPUID.7.0:EDX[29]", linux_arch_cap_detection));
    for (name, _) in crate::features::probe::ENUMERATING_BITS {
        let n: &'static str = name;
        v.push(Check::new(CheckId::new(Family::Guest, "cpuid").then(n.to_ascii_lowercase().replace('_', "-")).then("matches-kvm-get-cpuid2"), None, format!("the guest's CPUID instruction shows {n} exactly as KVM_GET_CPUID2 reports it"), "api.rst KVM_SET_CPUID2 (defines the vCPU's responses to CPUID); cpuid.c kvm_emulate_cpuid", move |c| guest_cpuid_matches(c, n)));
    }
    for (name, _) in crate::features::probe::ENUMERATING_BITS {
        let n: &'static str = name;
        v.push(Check::new(CheckId::new(Family::Cpuid, n.to_ascii_lowercase().replace('_', "-")).then("kept-by-set-cpuid2"), None, format!("CPUID {n}, reported by KVM_GET_SUPPORTED_CPUID, is still set after KVM_SET_CPUID2"), "api.rst KVM_SET_CPUID2 / KVM_GET_CPUID2; cpuid.c kvm_update_cpuid_runtime changes only runtime bits (OSXSAVE, APIC, OSPKE, MWAIT)", move |c| cpuid_bit_kept(c, n)));
    }
    v
}
