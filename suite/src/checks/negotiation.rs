//! Feature-MSR negotiation between userspace, KVM and the guest (api.rst 4.3, 4.18, 7.31;
//! x86.c kvm_get_feature_msr, do_set_msr, kvm_is_immutable_feature_msr).

use super::{hex, Check, Context, Outcome};
use crate::catalogue::{GateState, HostWhenClosed};
use crate::guest::{GuestOp, OpOutcome};
use crate::kvm::cpuid;
use crate::machine::Machine;

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

fn vcpu_matches_system(ctx: &Context, index: u32, quirks_off: u64) -> Outcome {
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
fn immutable_after_run(ctx: &Context, index: u32) -> Outcome {
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
fn guest_reads_what_userspace_set(ctx: &Context, index: u32) -> Outcome {
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
        (Some(d), _) => Outcome::fail("the guest program to complete", d.to_string()),
    }
}

/// KVM_CAP_MSR_PLATFORM_INFO: args[0] = 0 makes guest reads of PLATFORM_INFO #GP, 1 allows
/// them (api.rst 7.x KVM_CAP_MSR_PLATFORM_INFO; x86.c kvm_get_msr_common MSR_PLATFORM_INFO).
fn platform_info_cap(ctx: &Context, allow: bool) -> Outcome {
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
        Some(d) => return Outcome::fail("the guest program to complete", d.to_string()),
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

/// The enumerating CPUID bits KVM reports survive KVM_SET_CPUID2: KVM_GET_CPUID2 returns the
/// table userspace set (api.rst KVM_GET_CPUID2), apart from the runtime bits KVM updates itself
/// (OSXSAVE, APIC, OSPKE, MWAIT: cpuid.c kvm_update_cpuid_runtime).
fn cpuid_bit_kept(ctx: &Context, name: &'static str) -> Outcome {
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
fn guest_cpuid_matches(ctx: &Context, name: &'static str) -> Outcome {
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
        (Some(d), _) => return Outcome::fail("the guest program to complete", d.to_string()),
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
fn linux_arch_cap_detection(ctx: &Context) -> Outcome {
    let mut m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    let run = m.run_ops(&[GuestOp::Cpuid(7, 0), GuestOp::Rdmsr(0x10a)]);
    let (regs, rd) = match (run.death, run.outcomes[0], run.outcomes[1]) {
        (None, OpOutcome::Cpuid(r), rd) => (r, rd),
        (None, o, _) => return Outcome::fail("the guest executes CPUID", o.to_string()),
        (Some(d), _, _) => return Outcome::fail("the guest program to complete", d.to_string()),
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
fn guest_cpuid_follows_set_cpuid2(ctx: &Context) -> Outcome {
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
                (Some(d), _) => {
                    return Outcome::fail("the guest program to complete", d.to_string())
                }
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

/// With KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT disabled, MISC_ENABLE bit 18 (ENABLE_MWAIT) is no
/// longer plain storage: changing it needs guest SSE3, and CPUID.1:ECX.MONITOR follows it
/// (api.rst 7.31; x86.c kvm_set_msr_common MSR_IA32_MISC_ENABLE, cpuid.c
/// kvm_update_cpuid_runtime).
/// After KVM_RUN, KVM_SET_CPUID2 of the very table userspace set before is accepted
/// (cpuid.c kvm_set_cpuid: kvm_cpuid_check_equal applies KVM's runtime CPUID updates to the
/// incoming entries before comparing, "to avoid false failures due to KVM-owned feature flags"),
/// and a table with one feature bit changed is refused with EINVAL.
pub use crate::session::ids::SAME_CPUID_AFTER_RUN;

fn same_cpuid_after_run(ctx: &Context) -> Outcome {
    let mut m = match ctx.machine() {
        Ok(m) => m,
        Err(e) => return Outcome::harness(e),
    };
    if let Some(d) = m.run_ops(&[]).death {
        return Outcome::fail("KVM_RUN of an empty guest program", d.to_string());
    }
    let table = ctx.facts.supported_cpuid.clone();
    let same = m.vcpu.fd.set_cpuid2(&table.to_kvm()).map_err(|e| e.errno());
    // The selftests' way (cpuid_test.c test_set_cpuid_after_run): the table KVM_GET_CPUID2 returns.
    let read_back = match m.vcpu.read_cpuid() {
        Some(t) => m.vcpu.fd.set_cpuid2(&t.to_kvm()).map_err(|e| e.errno()),
        None => return Outcome::fail("KVM_GET_CPUID2 after KVM_RUN", "failed"),
    };
    let mut other = table.clone();
    let f = crate::kvm::cpuid::FEATURES[0];
    other.set(f, !table.has(f));
    let different = m.vcpu.fd.set_cpuid2(&other.to_kvm()).map_err(|e| e.errno());
    let actual = format!(
        "same table {same:?}, KVM_GET_CPUID2 table {read_back:?}, {} flipped {different:?}",
        f.name
    );
    if same.is_ok() && read_back.is_ok() && different == Err(libc::EINVAL) {
        Outcome::pass(actual)
    } else {
        Outcome::fail(
            "the same table and the KVM_GET_CPUID2 table Ok(()), a different one Err(22) (EINVAL)",
            actual,
        )
    }
}

fn misc_enable_mwait_drives_cpuid(ctx: &Context) -> Outcome {
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
        return Outcome::fail("the guest program to complete", d.to_string());
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

/// IA32_CORE_CAPABILITIES (0xcf) is not implemented by upstream KVM: no case in
/// kvm_get_msr_common/kvm_set_msr_common, in no list, and setting CPUID.7.0:EDX[30] does not
/// create it (the split-lock series that would have was never merged). So: not listed, a host
/// read fails and a guest RDMSR #GPs even with the CPUID bit set -- unless kvm.ignore_msrs, under
/// which both read 0 (x86.c kvm_do_msr_access).
fn core_capabilities_unsupported(ctx: &Context) -> Outcome {
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
        Some(d) => return Outcome::fail("the guest program to complete", d.to_string()),
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

/// How KVM judges a host write of a feature MSR (semantics §3.2; x86.c kvm_set_msr_common,
/// vmx.c vmx_set_vmx_msr, svm.c svm_set_msr MSR_AMD64_DE_CFG).
#[derive(Clone, Copy)]
struct Offer {
    index: u32,
    /// The CPUID feature that must be set for host writes of non-zero values.
    enumerating: Option<&'static str>,
    /// Bits a subset may clear (the whole value, or only the allowed-1 half of a VMX control MSR).
    clearable: u64,
    /// Bits outside the offer KVM rejects (None: KVM does not check, e.g. ARCH_CAPABILITIES in 6.18).
    checked: Option<u64>,
    cite: &'static str,
}

const OFFERS: &[Offer] = &[
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
fn offer_machine(ctx: &Context, o: &Offer) -> Result<Machine, Outcome> {
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

fn host_accepts_offer(ctx: &Context, o: Offer) -> Outcome {
    let Some(sys) = system_value(ctx, o.index) else {
        return Outcome::fail(
            "the system-level value readable",
            "KVM_GET_MSRS on /dev/kvm did not process it",
        );
    };
    let m = match offer_machine(ctx, &o) {
        Ok(m) => m,
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

fn host_rejects_beyond_offer(ctx: &Context, o: Offer) -> Outcome {
    let Some(sys) = system_value(ctx, o.index) else {
        return Outcome::fail(
            "the system-level value readable",
            "KVM_GET_MSRS on /dev/kvm did not process it",
        );
    };
    let m = match offer_machine(ctx, &o) {
        Ok(m) => m,
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

pub fn checks(ctx: &Context) -> Vec<Check> {
    let mut v = Vec::new();
    for &index in &ctx.facts.msr_feature_index_list {
        let id = ctx.catalogue.slug(index);
        let name = ctx.catalogue.name(index);
        if STUFFED_WITH_SYSTEM_VALUE.contains(&index) {
            v.push(Check::new(format!("feature.{id}.vcpu-matches-system"), Some(index), format!("{name}: a new vCPU holds the system value (STUFF_FEATURE_MSRS quirk)"), "api.rst 7.31 KVM_X86_QUIRK_STUFF_FEATURE_MSRS; x86.c kvm_arch_vcpu_create; selftests feature_msrs_test", move |c| vcpu_matches_system(c, index, 0)));
            v.push(Check::new(
                format!("feature.{id}.vcpu-zero-without-quirk"),
                Some(index),
                format!(
                    "{name}: a new vCPU holds 0 with KVM_X86_QUIRK_STUFF_FEATURE_MSRS disabled"
                ),
                "api.rst 7.31 KVM_CAP_DISABLE_QUIRKS2, KVM_X86_QUIRK_STUFF_FEATURE_MSRS",
                move |c| vcpu_matches_system(c, index, QUIRK_STUFF),
            ));
            v.push(Check::new(
                format!("guest.{id}.reads-what-userspace-set"),
                Some(index),
                format!("{name}: the guest reads exactly the value userspace set"),
                "api.rst 4.19 KVM_SET_MSRS; x86.c kvm_get_msr_common returns the vCPU's value",
                move |c| guest_reads_what_userspace_set(c, index),
            ));
        }
        v.push(Check::new(
            format!("feature.{id}.immutable-after-run"),
            Some(index),
            format!("{name}: after KVM_RUN, KVM_SET_MSRS refuses a different value and accepts the same one (UCODE_REV stays writable)"),
            "x86.c do_set_msr: kvm_vcpu_has_run && kvm_is_immutable_feature_msr -> -EINVAL unless the value is unchanged; UCODE_REV is excluded",
            move |c| immutable_after_run(c, index),
        ));
    }
    v.push(Check::new(SAME_CPUID_AFTER_RUN, None, "after KVM_RUN, KVM_SET_CPUID2 accepts the table userspace set before and refuses a changed one", "cpuid.c kvm_set_cpuid -> kvm_cpuid_check_equal (runtime updates applied to the incoming entries); api.rst 4.73 KVM_SET_CPUID2; selftests cpuid_test.c test_set_cpuid_after_run", same_cpuid_after_run));
    v.push(Check::new("guest.platform-info.cap-disallows-read", Some(PLATFORM_INFO), "KVM_CAP_MSR_PLATFORM_INFO(0): a guest RDMSR of PLATFORM_INFO #GPs, the host still reads it", "api.rst KVM_CAP_MSR_PLATFORM_INFO; x86.c kvm_get_msr_common: !host_initiated && !guest_can_read_msr_platform_info -> 1", |c| platform_info_cap(c, false)));
    v.push(Check::new("guest.platform-info.cap-allows-read", Some(PLATFORM_INFO), "KVM_CAP_MSR_PLATFORM_INFO(1): the guest reads PLATFORM_INFO", "api.rst KVM_CAP_MSR_PLATFORM_INFO; x86.c kvm_arch_init_vm: guest_can_read_msr_platform_info = true", |c| platform_info_cap(c, true)));
    v.push(Check::new("guest.misc-enable.quirk-misc-enable-no-mwait-off.mwait-drives-cpuid", Some(0x1a0), "with KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT disabled, MISC_ENABLE bit 18 toggles the guest's CPUID.1:ECX.MONITOR", "api.rst 7.31 KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT; x86.c kvm_set_msr_common MSR_IA32_MISC_ENABLE; cpuid.c kvm_update_cpuid_runtime", misc_enable_mwait_drives_cpuid));
    for o in OFFERS
        .iter()
        .copied()
        .filter(|o| ctx.facts.is_feature_msr(o.index))
    {
        let id = ctx.catalogue.slug(o.index);
        let name = ctx.catalogue.name(o.index);
        v.push(Check::new(format!("feature.{id}.host-accepts-offer"), Some(o.index), format!("{name}: before KVM_RUN the host may write the system value and each single-bit subset of it"), format!("api.rst 4.18 (feature MSRs are what KVM offers); {}", o.cite), move |c| host_accepts_offer(c, o)));
        if o.checked.is_some() {
            v.push(Check::new(
                format!("feature.{id}.host-rejects-beyond-offer"),
                Some(o.index),
                format!("{name}: KVM_SET_MSRS refuses each bit outside KVM's offer"),
                o.cite,
                move |c| host_rejects_beyond_offer(c, o),
            ));
        }
    }
    v.push(Check::new("feature.core-capabilities.not-implemented", Some(0xcf), "IA32_CORE_CAPABILITIES does not exist under KVM even with CPUID.7.0:EDX[30] set", "semantics §3.2: no MSR_IA32_CORE_CAPS case in x86.c kvm_get/set_msr_common, in no list; the emulation series (Xiaoyao Li, 2019-2020) was never merged; x86.c kvm_do_msr_access for ignore_msrs", core_capabilities_unsupported));
    v.push(Check::new(
        "guest.cpuid.follows-set-cpuid2",
        None,
        "a CPUID bit set on one vCPU and cleared on another reads so in each guest",
        "api.rst KVM_SET_CPUID2 (defines the vCPU's responses to CPUID); cpuid.c kvm_emulate_cpuid",
        guest_cpuid_follows_set_cpuid2,
    ));
    v.push(Check::new("guest.arch-capabilities.linux-detection", Some(0x10a), "a guest following Linux's x86_read_arch_cap_msr (CPUID bit, then RDMSR) reaches a consistent conclusion", "arch/x86/kernel/cpu/common.c x86_read_arch_cap_msr; SDM vol. 2A CPUID.7.0:EDX[29]", linux_arch_cap_detection));
    for (name, _) in crate::features::probe::ENUMERATING_BITS {
        let n: &'static str = name;
        v.push(Check::new(format!("guest.cpuid.{}.matches-kvm-get-cpuid2", n.to_ascii_lowercase().replace('_', "-")), None, format!("the guest's CPUID instruction shows {n} exactly as KVM_GET_CPUID2 reports it"), "api.rst KVM_SET_CPUID2 (defines the vCPU's responses to CPUID); cpuid.c kvm_emulate_cpuid", move |c| guest_cpuid_matches(c, n)));
    }
    for (name, _) in crate::features::probe::ENUMERATING_BITS {
        let n: &'static str = name;
        v.push(Check::new(format!("cpuid.{}.kept-by-set-cpuid2", n.to_ascii_lowercase().replace('_', "-")), None, format!("CPUID {n}, reported by KVM_GET_SUPPORTED_CPUID, is still set after KVM_SET_CPUID2"), "api.rst KVM_SET_CPUID2 / KVM_GET_CPUID2; cpuid.c kvm_update_cpuid_runtime changes only runtime bits (OSXSAVE, APIC, OSPKE, MWAIT)", move |c| cpuid_bit_kept(c, n)));
    }
    v
}
