//! CPUID and KVM_SET_CPUID2 around the feature MSRs: enumerating bits kept, the guest's own
//! CPUID, the table frozen after KVM_RUN, MISC_ENABLE driving MONITOR.

use super::*;
use crate::guest::{GuestOp, OpOutcome};
use crate::kvm::{cpuid, Errno};

/// The enumerating CPUID bits KVM reports survive KVM_SET_CPUID2: KVM_GET_CPUID2 returns the
/// table userspace set (api.rst KVM_GET_CPUID2), apart from the runtime bits KVM updates itself
/// (OSXSAVE, APIC, OSPKE, MWAIT: cpuid.c kvm_update_cpuid_runtime).
pub(super) fn cpuid_bit_kept(ctx: &Context, name: &'static str) -> Outcome {
    let f = cpuid::feature(name).expect("known feature");
    if !ctx.facts.supported_cpuid.has(f) {
        return Outcome::skip(format!("KVM_GET_SUPPORTED_CPUID does not report {name}"));
    }
    let m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    if let Some(errno) = m.vcpu.set_cpuid_errno {
        return Outcome::fail(
            "KVM_SET_CPUID2 with KVM's supported CPUID accepted",
            format!("errno {errno}"),
        );
    }
    match m.vcpu.effective_cpuid.as_ref().map(|c| c.has(f)) {
        Some(true) => Outcome::pass(format!("{name} set, and KVM_GET_CPUID2 still has it")),
        Some(false) => Outcome::fail(
            format!(
                "KVM_GET_CPUID2 keeps {name}, which userspace set from KVM_GET_SUPPORTED_CPUID"
            ),
            format!("{name} cleared"),
        ),
        None => Outcome::fail("KVM_GET_CPUID2 to succeed", "it failed"),
    }
}

/// What the guest's own CPUID instruction returns for an enumerating bit equals the vCPU's
/// CPUID as KVM_GET_CPUID2 reports it: KVM_SET_CPUID2 "defines the vcpu responses to the cpuid
/// instruction" (api.rst KVM_SET_CPUID2; x86.c/cpuid.c kvm_emulate_cpuid).
pub(super) fn guest_cpuid_matches(ctx: &Context, name: &'static str) -> Outcome {
    let f = cpuid::feature(name).expect("known feature");
    let mut m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    let Some(eff) = m.vcpu.effective_cpuid.clone() else {
        return Outcome::fail("KVM_GET_CPUID2 to succeed", "it failed");
    };
    let run = m.run_ops(&[GuestOp::Cpuid(f.leaf, f.subleaf)]);
    let regs = match (run.death, run.outcomes[0]) {
        (None, OpOutcome::Cpuid(r)) => r,
        (None, o) => return Outcome::fail("the guest executes CPUID", o.to_string()),
        (Some(d), _) => return Outcome::died(d),
    };
    let reg = match f.reg {
        cpuid::Reg::Eax => regs[0],
        cpuid::Reg::Ebx => regs[1],
        cpuid::Reg::Ecx => regs[2],
        cpuid::Reg::Edx => regs[3],
    };
    let (guest, kvm) = (reg & (1 << f.bit) != 0, eff.has(f));
    if guest == kvm {
        Outcome::pass(format!(
            "the guest sees {name}={guest}, as KVM_GET_CPUID2 says"
        ))
    } else {
        Outcome::fail(
            format!("the guest's CPUID shows {name}={kvm} (KVM_GET_CPUID2)"),
            format!("the guest sees {name}={guest}"),
        )
    }
}

/// A Linux guest's detection (arch/x86/kernel/cpu/common.c x86_read_arch_cap_msr): read
/// IA32_ARCH_CAPABILITIES only if CPUID.7.0:EDX[29] says it exists. Whatever the guest sees, its
/// conclusion must be consistent: an enumerated MSR is readable.
pub(super) fn linux_arch_cap_detection(ctx: &Context) -> Outcome {
    let mut m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    let run = m.run_ops(&[GuestOp::Cpuid(7, 0), GuestOp::Rdmsr(0x10a)]);
    let (regs, rd) = match (run.death, run.outcomes[0], run.outcomes[1]) {
        (None, OpOutcome::Cpuid(r), rd) => (r, rd),
        (None, o, _) => return Outcome::fail("the guest executes CPUID", o.to_string()),
        (Some(d), _, _) => return Outcome::died(d),
    };
    let enumerated = regs[3] & (1 << 29) != 0;
    match (enumerated, rd) {
        (true, OpOutcome::Read(v)) => Outcome::pass(format!("CPUID enumerates ARCH_CAPABILITIES; a Linux guest reads {}", hex(v))),
        (true, o) => Outcome::fail("an enumerated IA32_ARCH_CAPABILITIES is readable", format!("CPUID.7.0:EDX[29]=1 but RDMSR: {o}")),
        (false, o) => Outcome::pass(format!("CPUID.7.0:EDX[29]=0: a Linux guest assumes ARCH_CAPABILITIES = 0 and never reads it (an RDMSR would give: {o})")),
    }
}

/// Differential: each of a few supported bits, cleared on one vCPU and left set on another, shows
/// up exactly so in KVM_GET_CPUID2 and in each guest's own CPUID (api.rst KVM_SET_CPUID2
/// defines the vCPU's responses to CPUID; cpuid.c kvm_emulate_cpuid).
pub(super) fn guest_cpuid_follows_set_cpuid2(ctx: &Context) -> Outcome {
    let bits: Vec<cpuid::Feature> = [
        "TSC_ADJUST",
        "SSBD",
        "X2APIC",
        "HYPERVISOR",
        "NX",
        "AMD_IBPB",
    ]
    .iter()
    .filter_map(|n| cpuid::feature(n))
    .filter(|f| ctx.facts.supported_cpuid.has(*f))
    .collect();
    if bits.is_empty() {
        return Outcome::skip(
            "KVM_GET_SUPPORTED_CPUID reports none of the bits this check toggles",
        );
    }
    let mut wrong = Vec::new();
    for f in &bits {
        for on in [true, false] {
            let mut t = ctx.facts.supported_cpuid.clone();
            t.set(*f, on);
            let mut m = match ctx.machine_with_cpuid(t) {
                Ok(m) => m,
                Err(e) => return Outcome::harness(e),
            };
            let kvm = m.vcpu.effective_cpuid.as_ref().is_some_and(|c| c.has(*f));
            let run = m.run_ops(&[GuestOp::Cpuid(f.leaf, f.subleaf)]);
            let regs = match (run.death, run.outcomes[0]) {
                (None, OpOutcome::Cpuid(r)) => r,
                (None, o) => return Outcome::fail("the guest executes CPUID", o.to_string()),
                (Some(d), _) => return Outcome::died(d),
            };
            let guest = regs[f.reg as usize] & (1 << f.bit) != 0;
            if kvm != on || guest != on {
                wrong.push(format!(
                    "{}={on}: KVM_GET_CPUID2 {kvm}, guest {guest}",
                    f.name
                ));
            }
        }
    }
    let names: Vec<&str> = bits.iter().map(|f| f.name).collect();
    if wrong.is_empty() {
        Outcome::pass(format!(
            "{} each followed KVM_SET_CPUID2, set and cleared",
            names.join(", ")
        ))
    } else {
        Outcome::fail(
            format!(
                "each of {} reads as userspace set it, in KVM_GET_CPUID2 and in the guest",
                names.join(", ")
            ),
            wrong.join("; "),
        )
    }
}

/// After KVM_RUN, KVM_SET_CPUID2 of the very table userspace set before is accepted
/// (cpuid.c kvm_set_cpuid: kvm_cpuid_check_equal applies KVM's runtime CPUID updates to the
/// incoming entries before comparing, "to avoid false failures due to KVM-owned feature flags"),
/// and a table with one feature bit changed is refused with EINVAL.
pub(super) fn same_cpuid_after_run(ctx: &Context) -> Outcome {
    let mut m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    if let Some(d) = m.run_ops(&[]).death {
        return Outcome::fail("KVM_RUN of an empty guest program", d.to_string());
    }
    let table = ctx.facts.supported_cpuid.clone();
    let same = m.vcpu.fd.set_cpuid2(&table.to_kvm()).map_err(Errno::from);
    // The selftests' way (cpuid_test.c test_set_cpuid_after_run): the table KVM_GET_CPUID2 returns.
    let read_back = match m.vcpu.read_cpuid() {
        Some(t) => m.vcpu.fd.set_cpuid2(&t.to_kvm()).map_err(Errno::from),
        None => return Outcome::fail("KVM_GET_CPUID2 after KVM_RUN", "failed"),
    };
    let mut other = table.clone();
    let f = crate::kvm::cpuid::FEATURES[0];
    other.set(f, !table.has(f));
    let different = m.vcpu.fd.set_cpuid2(&other.to_kvm()).map_err(Errno::from);
    let actual = format!(
        "same table {same:?}, KVM_GET_CPUID2 table {read_back:?}, {} flipped {different:?}",
        f.name
    );
    if same.is_ok() && read_back.is_ok() && different == Err(Errno::EINVAL) {
        Outcome::pass(actual)
    } else {
        Outcome::fail(
            "the same table and the KVM_GET_CPUID2 table Ok(()), a different one Err(22) (EINVAL)",
            actual,
        )
    }
}

/// With KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT disabled, MISC_ENABLE bit 18 (ENABLE_MWAIT) is no
/// longer plain storage: changing it needs guest SSE3, and CPUID.1:ECX.MONITOR follows it
/// (api.rst 7.31; x86.c kvm_set_msr_common MSR_IA32_MISC_ENABLE, cpuid.c
/// kvm_update_cpuid_runtime).
pub(super) fn misc_enable_mwait_drives_cpuid(ctx: &Context) -> Outcome {
    use crate::msr_index::IA32_MISC_ENABLE as MISC_ENABLE;
    const MWAIT_EN: u64 = 1 << 18;
    let quirk = u64::from(kvm_bindings::KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT);
    if ctx.facts.cap("KVM_CAP_DISABLE_QUIRKS2").max(0) as u64 & quirk == 0 {
        return Outcome::skip(
            "KVM_CAP_DISABLE_QUIRKS2 cannot disable KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT here",
        );
    }
    let sse3 = cpuid::feature("SSE3").expect("known");
    let mut t = ctx.facts.supported_cpuid.clone();
    t.set(sse3, true);
    let mut m = match ctx.machine_with(t, quirk) {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    if !m.vcpu.effective_cpuid.as_ref().is_some_and(|c| c.has(sse3)) {
        return Outcome::skip(
            "the vCPU's effective CPUID lacks SSE3, which changing ENABLE_MWAIT requires",
        );
    }
    let Some(cur) = m.vcpu.get_msr(MISC_ENABLE) else {
        return Outcome::fail("MISC_ENABLE readable", "read failed");
    };
    let run = m.run_ops(&[
        GuestOp::Wrmsr(MISC_ENABLE, cur | MWAIT_EN),
        GuestOp::Cpuid(1, 0),
        GuestOp::Wrmsr(MISC_ENABLE, cur & !MWAIT_EN),
        GuestOp::Cpuid(1, 0),
    ]);
    if let Some(d) = run.death {
        return Outcome::died(d);
    }
    let monitor = |o: OpOutcome| match o {
        OpOutcome::Cpuid(r) => Some(r[2] & (1 << 3) != 0),
        _ => None,
    };
    let o = &run.outcomes;
    let actual = format!(
        "set: {} then MONITOR {:?}; clear: {} then MONITOR {:?}",
        o[0],
        monitor(o[1]),
        o[2],
        monitor(o[3])
    );
    if o[0] == OpOutcome::Wrote
        && o[2] == OpOutcome::Wrote
        && monitor(o[1]) == Some(true)
        && monitor(o[3]) == Some(false)
    {
        Outcome::pass(actual)
    } else {
        Outcome::fail("both writes accepted; CPUID.1:ECX.MONITOR set after setting bit 18 and clear after clearing it", actual)
    }
}
