//! A new vCPU's feature MSRs against the system values, their immutability after KVM_RUN,
//! what the guest reads of them, and the capabilities that gate them.

use super::*;
use crate::catalogue::{GateState, HostWhenClosed};
use crate::guest::{GuestOp, OpOutcome};
use crate::kvm::cpuid;

pub(super) fn vcpu_matches_system(ctx: &Context, index: u32, quirks_off: u64) -> Outcome {
    let supported = ctx.facts.cap("KVM_CAP_DISABLE_QUIRKS2").max(0) as u64;
    if quirks_off & !supported != 0 {
        return Outcome::skip(
            "KVM_CAP_DISABLE_QUIRKS2 cannot disable KVM_X86_QUIRK_STUFF_FEATURE_MSRS here",
        );
    }
    let Some(sys) = system_value(ctx, index) else {
        return Outcome::fail(
            "the system-level value readable",
            "KVM_GET_MSRS on /dev/kvm did not process it",
        );
    };
    let m = match ctx.machine_with(ctx.facts.supported_cpuid.clone(), quirks_off) {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    let got = m.vcpu.get_msr(index);
    let (want, why) = match gate(ctx, &m, index) {
        Some((GateState::Closed, HostWhenClosed::AdvertisedZero)) => {
            (Some(0), "the enumerating CPUID bit is absent from the vCPU's effective CPUID, so a host read returns 0 (x86.c kvm_do_msr_access)".to_string())
        }
        _ if quirks_off != 0 => (Some(0), "with the quirk disabled the vCPU's feature MSRs start at 0 (api.rst 7.31)".to_string()),
        _ => (Some(sys), format!("the system value {} (api.rst 7.31 KVM_X86_QUIRK_STUFF_FEATURE_MSRS)", hex(sys))),
    };
    if got == want {
        Outcome::pass(format!("vCPU reads {got:x?}: {why}"))
    } else {
        Outcome::fail(format!("{want:x?}: {why}"), format!("{got:x?}"))
    }
}

/// After KVM_RUN a different value is refused and the same value accepted; UCODE_REV stays
/// writable (x86.c do_set_msr, kvm_is_immutable_feature_msr).
pub(super) fn immutable_after_run(ctx: &Context, index: u32) -> Outcome {
    let mut m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    if let Some((GateState::Closed, h)) = gate(ctx, &m, index) {
        if h != HostWhenClosed::Exempt {
            return Outcome::skip("the enumerating CPUID bit is absent from the vCPU's effective CPUID: host writes of non-zero values fail before and after KVM_RUN alike, so immutability cannot be told apart");
        }
    }
    let Some(cur) = m.vcpu.get_msr(index) else {
        return Outcome::fail("the vCPU value readable", "read failed");
    };
    let other = other_valid_value(ctx, index, cur);
    if other == cur {
        return Outcome::skip(format!(
            "no second valid value: current and system value are both {}",
            hex(cur)
        ));
    }
    if !m.vcpu.set_msr(index, other) || !m.vcpu.set_msr(index, cur) {
        return Outcome::fail(
            format!(
                "before KVM_RUN both {} and {} are accepted",
                hex(other),
                hex(cur)
            ),
            "a write was refused",
        );
    }
    let run = m.run_ops(&[]);
    if let Some(d) = run.death {
        return Outcome::fail("KVM_RUN of an empty guest program", d.to_string());
    }
    let same = m.vcpu.set_msr(index, cur);
    let different = m.vcpu.set_msr(index, other);
    let back = m.vcpu.get_msr(index);
    // Before 0094f62c7eaa "KVM: x86: Disallow writes to immutable feature MSRs after KVM_RUN"
    // (6.4) every feature MSR stayed writable.
    let before_freeze = ctx
        .facts
        .kernel_version()
        .is_some_and(|k| k < crate::catalogue::KernelVersion(6, 4));
    let mutable = index == UCODE_REV || before_freeze;
    let ok = same && (different == mutable) && back == Some(if mutable { other } else { cur });
    let actual = format!(
        "same value accepted={same}, {} accepted={different}, reads {back:x?}",
        hex(other)
    );
    if ok {
        Outcome::pass(actual)
    } else if mutable {
        Outcome::fail(
            format!(
                "{} after KVM_RUN: {} accepted",
                if before_freeze {
                    "before 0094f62c7eaa (6.4) every feature MSR stays writable"
                } else {
                    "UCODE_REV stays writable"
                },
                hex(other)
            ),
            actual,
        )
    } else {
        Outcome::fail(
            format!(
                "after KVM_RUN: {} refused, the same value {} accepted",
                hex(other),
                hex(cur)
            ),
            actual,
        )
    }
}

/// The guest reads exactly what userspace set (api.rst 4.19; semantics §3.4).
pub(super) fn guest_reads_what_userspace_set(ctx: &Context, index: u32) -> Outcome {
    let mut m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    if let Some((GateState::Closed, _)) = gate(ctx, &m, index) {
        return Outcome::skip("the enumerating CPUID bit is absent from the vCPU's effective CPUID: the guest may not read it (see guest.<msr>.gate-closed)");
    }
    let Some(cur) = m.vcpu.get_msr(index) else {
        return Outcome::fail("the vCPU value readable", "read failed");
    };
    let set = other_valid_value(ctx, index, cur);
    if !m.vcpu.set_msr(index, set) {
        return Outcome::fail(
            format!("KVM_SET_MSRS of {} accepted before KVM_RUN", hex(set)),
            "refused",
        );
    }
    let run = m.run_ops(&[GuestOp::Rdmsr(index)]);
    match (run.death, run.outcomes[0]) {
        (None, OpOutcome::Read(v)) if v == set => {
            Outcome::pass(format!("userspace set {}, the guest read it", hex(set)))
        }
        (None, o) => Outcome::fail(format!("the guest reads {}", hex(set)), o.to_string()),
        (Some(d), _) => Outcome::died(d),
    }
}

/// KVM_CAP_MSR_PLATFORM_INFO: args[0] = 0 makes guest reads of PLATFORM_INFO #GP, 1 allows
/// them (api.rst 7.x KVM_CAP_MSR_PLATFORM_INFO; x86.c kvm_get_msr_common MSR_PLATFORM_INFO).
pub(super) fn platform_info_cap(ctx: &Context, allow: bool) -> Outcome {
    if ctx.facts.cap("KVM_CAP_MSR_PLATFORM_INFO") <= 0 {
        return Outcome::skip("KVM_CAP_MSR_PLATFORM_INFO is absent");
    }
    let mut m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    if let Err(errno) = m.vm.enable_cap(
        kvm_bindings::KVM_CAP_MSR_PLATFORM_INFO,
        [u64::from(allow), 0, 0, 0],
    ) {
        return Outcome::fail(
            "KVM_ENABLE_CAP(KVM_CAP_MSR_PLATFORM_INFO) accepted",
            format!("errno {errno}"),
        );
    }
    let host = m.vcpu.get_msr(PLATFORM_INFO);
    let run = m.run_ops(&[GuestOp::Rdmsr(PLATFORM_INFO)]);
    let guest = match run.death {
        Some(d) => return Outcome::died(d),
        None => run.outcomes[0],
    };
    let guest_ok = if allow {
        guest == OpOutcome::Read(host.unwrap_or(u64::MAX))
    } else {
        guest.is_gp()
    };
    let actual = format!("guest {guest}, host {host:x?}");
    if guest_ok && host.is_some() {
        Outcome::pass(actual)
    } else {
        Outcome::fail(
            format!(
                "guest {}, host read unaffected",
                if allow { "reads the host value" } else { "#GP" }
            ),
            actual,
        )
    }
}

/// IA32_CORE_CAPABILITIES (0xcf) is not implemented by upstream KVM: no case in
/// kvm_get_msr_common/kvm_set_msr_common, in no list, and setting CPUID.7.0:EDX[30] does not
/// create it (the split-lock series that would have was never merged). So: not listed, a host
/// read fails and a guest RDMSR #GPs even with the CPUID bit set -- unless kvm.ignore_msrs, under
/// which both read 0 (x86.c kvm_do_msr_access).
pub(super) fn core_capabilities_unsupported(ctx: &Context) -> Outcome {
    use crate::msr_index::IA32_CORE_CAPS as CORE_CAPS;
    if ctx.traits.get(CORE_CAPS).in_lists() {
        return Outcome::fail(
            "0xcf in neither MSR list (upstream never implements it)",
            "listed by this host's KVM",
        );
    }
    let f = cpuid::feature("CORE_CAPABILITIES").expect("known");
    let mut t = ctx.facts.supported_cpuid.clone();
    t.set(f, true);
    let mut m = match ctx.machine_with_cpuid(t) {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    let bit_kept = m.vcpu.effective_cpuid.as_ref().is_some_and(|c| c.has(f));
    let host = m.vcpu.get_msr(CORE_CAPS);
    let run = m.run_ops(&[GuestOp::Rdmsr(CORE_CAPS)]);
    let guest = match run.death {
        Some(d) => return Outcome::died(d),
        None => run.outcomes[0],
    };
    let ignored = ctx.facts.ignore_msrs();
    let ok = if ignored {
        host == Some(0) && guest == OpOutcome::Read(0)
    } else {
        host.is_none() && guest.is_gp()
    };
    let actual = format!("CPUID bit set (kept: {bit_kept}); host read {host:x?}; guest {guest}");
    if ok {
        Outcome::pass(actual)
    } else {
        Outcome::fail(
            if ignored {
                "host and guest read 0 (kvm.ignore_msrs=Y)"
            } else {
                "the host read fails and the guest #GPs, CPUID bit or not"
            },
            actual,
        )
    }
}
