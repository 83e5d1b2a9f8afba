//! Checks generated from the catalogue's rules, for every catalogued MSR this backend has:
//! reset values, documented writes from each path (and what the other path then sees), reserved
//! bits walked one at a time, write-only reads, and the CPUID gate with its bit cleared.

use super::{hex, Check, Context, Outcome};
use crate::catalogue::{
    AccessPath, GateCondition, GateState, GuestVendor, HostWhenClosed, MsrInfo, Requirement,
    RuleContext, Setup, WriteOutcome, WriteRule,
};
use crate::guest::{GuestOp, OpOutcome};
use crate::kvm::cpuid::{self, Vendor};
use crate::machine::Machine;

fn info(ctx: &Context, index: u32) -> &MsrInfo {
    ctx.catalogue
        .get(index)
        .expect("checks are generated from catalogue entries")
}

/// The host conditions of `r` (capabilities, kvm parameters, supported CPUID) that do not hold.
pub(super) fn unmet(ctx: &Context, r: &Requirement) -> Vec<String> {
    let mut missing = Vec::new();
    for c in &r.caps {
        if ctx.facts.cap(c) <= 0 {
            missing.push(format!("{c} is absent"));
        }
    }
    for p in &r.kvm_params {
        if !matches!(
            ctx.facts.kvm_params.get(p).map(String::as_str),
            Some("Y" | "y" | "1")
        ) {
            missing.push(format!("kvm.{p} is not enabled"));
        }
    }
    let supported =
        |n: &String| cpuid::feature(n).is_some_and(|f| ctx.facts.supported_cpuid.has(f));
    if !r.cpuid_any.is_empty() && !r.cpuid_any.iter().any(supported) {
        missing.push(format!(
            "KVM_GET_SUPPORTED_CPUID has none of {}",
            r.cpuid_any.join(", ")
        ));
    }
    missing
}

/// The converse of `requires`: an MSR KVM lists only when its conditions hold (x86.c
/// kvm_init_msr_lists / kvm_probe_msr_to_save) must not be listed while one does not.
fn listed_only_when_supported(ctx: &Context, index: u32) -> Outcome {
    let m = info(ctx, index);
    let r = m
        .requires
        .as_ref()
        .expect("generated for MSRs with requirements");
    if !ctx.traits.get(index).in_lists() {
        return Outcome::skip(format!(
            "{} is not listed here: nothing to hold to its conditions",
            m.name
        ));
    }
    if let Some(p) = r
        .kvm_params
        .iter()
        .find(|p| !ctx.facts.kvm_params.contains_key(*p))
    {
        return Outcome::skip(format!(
            "kvm.{p} could not be read (/sys/module/kvm/parameters): its condition is unknown"
        ));
    }
    let mut missing = unmet(ctx, r);
    let mut note = String::new();
    if let Some((v, cite)) = &r.params_listing_since {
        if ctx.facts.kernel_version().is_some_and(|k| k < *v) {
            // Before `v` the listing did not look at the kvm parameters (`cite`).
            missing.retain(|m| !m.starts_with("kvm."));
            note = format!(
                " (before {v} KVM lists it whatever kvm.{} says: {cite})",
                r.kvm_params.join(", kvm.")
            );
        }
    }
    if missing.is_empty() {
        Outcome::pass(format!(
            "listed, and every condition for listing it holds{note}"
        ))
    } else {
        Outcome::fail(
            format!("listed only when its conditions hold ({})", r.cite),
            format!("listed, but {}", missing.join("; ")),
        )
    }
}

/// Skip, naming what is missing, when this host's KVM does not implement the MSR at all.
pub(super) fn not_on_backend(ctx: &Context, m: &MsrInfo) -> Option<Outcome> {
    if let Some((list, cite)) = &m.backends {
        if !list.contains(&ctx.facts.backend) {
            let names: Vec<&str> = list.iter().map(|b| b.name()).collect();
            return Some(Outcome::skip(format!(
                "{} exists only on {} ({cite})",
                m.name,
                names.join(", ")
            )));
        }
    }
    let r = m.requires.as_ref()?;
    let mut missing = unmet(ctx, r);
    if r.listed && !ctx.traits.get(m.index).in_lists() {
        missing.push("KVM does not list it on this host (the host lacks the feature)".into());
    }
    (!missing.is_empty()).then(|| {
        Outcome::skip(format!(
            "{} needs: {} ({})",
            m.name,
            missing.join("; "),
            r.cite
        ))
    })
}

fn vendor_class(v: Vendor) -> Option<GuestVendor> {
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
pub(super) fn machine_for(
    ctx: &Context,
    m: &MsrInfo,
    vendor: Option<GuestVendor>,
) -> crate::Result<Machine> {
    machine_quirks(ctx, m, vendor, 0, &[])
}

/// The machine a write rule runs on: `machine_for`, with the rule's `cpuid_clear` features
/// cleared from the vCPU's CPUID. A skip where KVM_GET_SUPPORTED_CPUID has none of them (there is
/// nothing to clear) or where KVM_GET_CPUID2 still shows one after KVM_SET_CPUID2 cleared it.
fn machine_for_write(
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
fn machine_quirks(
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
fn apply_setup(mach: &mut Machine, m: &MsrInfo, open_gates: bool) -> crate::Result<()> {
    for s in &m.setup {
        match s {
            Setup::HypervInterface => {} // in the CPUID: machine_quirks
            // The gate-closed check keeps SynIC off: that is its closed state.
            Setup::HypervSynic if !open_gates => {}
            Setup::HypervSynic => {
                mach.vcpu.activate_synic().map_err(|errno| {
                    crate::Error::Usage(format!(
                        "setup hyperv-synic: KVM_ENABLE_CAP(KVM_CAP_HYPERV_SYNIC2) failed with errno {errno}"
                    ))
                })?;
            }
            Setup::X2apicMode => {
                if !mach
                    .vcpu
                    .set_msr(crate::msr_index::IA32_APIC_BASE, 0xfee0_0d00)
                {
                    return Err(crate::Error::Usage(
                        "setup x2apic-mode: KVM_SET_MSRS of IA32_APIC_BASE = 0xfee00d00 was rejected".into(),
                    ));
                }
            }
        }
    }
    Ok(())
}

pub(super) fn gate_state(m: &MsrInfo, mach: &Machine) -> Option<GateState> {
    m.gate.as_ref().map(|g| mach.gate_state(g))
}

/// A skip when the gate is closed for this vCPU and host writes follow it (not exempt).
pub(super) fn host_writes_gated(
    ctx: &Context,
    m: &MsrInfo,
    gate: Option<GateState>,
) -> Option<Outcome> {
    let g = m.gate.as_ref()?;
    (gate == Some(GateState::Closed)
        && g.host_on(ctx.facts.kernel_version()) != HostWhenClosed::Exempt)
        .then(|| {
            Outcome::skip(format!(
                "gate closed for this vCPU and host writes follow it ({})",
                g.cite
            ))
        })
}

/// The documented outcome of `rule` on this machine (backend, its guest vendor) for `path`.
pub(super) fn outcome_on(
    ctx: &Context,
    mach: &Machine,
    rule: &WriteRule,
    path: AccessPath,
) -> (WriteOutcome, String) {
    let guest_vendor = mach
        .vcpu
        .effective_cpuid
        .as_ref()
        .and_then(|c| vendor_class(c.vendor()));
    let (o, cite) = rule.outcome_for(RuleContext {
        backend: ctx.facts.backend,
        kernel: ctx.facts.kernel_version(),
        kvm_cpuid: Some(&ctx.facts.supported_cpuid),
        guest_vendor,
        path,
        emulated: crate::machine::forced_emulation(),
    });
    (o, cite.to_string())
}

/// Guest checks need the gate open on the vCPU they run on.
fn guest_gate_closed(m: &MsrInfo, mach: &Machine) -> Option<Outcome> {
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

/// A rejected write left the value alone: equal, or for a counting MSR (`volatile`) moved on as
/// it does without writes (a monotonic one never backwards).
fn unchanged(m: &MsrInfo, before: Option<u64>, after: Option<u64>) -> bool {
    match (m.volatile.as_ref().map(|v| &v.rule), before, after) {
        (Some(crate::catalogue::Volatility::Monotonic), Some(b), Some(a)) => a >= b,
        (Some(crate::catalogue::Volatility::Changes), Some(_), Some(_)) => true,
        _ => before == after,
    }
}

fn canonical(v: u64, la57: bool) -> u64 {
    let bits = if la57 { 57 } else { 48 };
    (((v << (64 - bits)) as i64) >> (64 - bits)) as u64
}

/// The value a read returns after writing `value` over `before` with `outcome`; None: rejected.
/// The host decides the canonical width (KVM's LA57) and whether an unsupported write is dropped
/// (kvm.ignore_msrs) instead of refused.
pub(super) fn expected_after(
    ctx: &Context,
    outcome: WriteOutcome,
    value: u64,
    before: u64,
) -> Option<u64> {
    let (la57, ignore) = (ctx.facts.kvm_la57, ctx.facts.ignore_msrs());
    match outcome {
        WriteOutcome::Unsupported if ignore => Some(before),
        WriteOutcome::Unsupported => None,
        WriteOutcome::Same => Some(value),
        WriteOutcome::Low32 => Some(value & 0xffff_ffff),
        WriteOutcome::Canonical => Some(canonical(value, la57)),
        WriteOutcome::Canonical48 => Some(canonical(value, false)),
        WriteOutcome::Ignored => Some(before),
        WriteOutcome::ReadsZero => Some(0),
        WriteOutcome::Rejected => None,
    }
}

/// Skip when KVM cannot disable the quirks in `quirks_off` (KVM_CAP_DISABLE_QUIRKS2 returns the
/// supported mask, api.rst 7.31).
fn quirks_unsupported(ctx: &Context, quirks_off: u64) -> Option<Outcome> {
    let supported = ctx.facts.cap("KVM_CAP_DISABLE_QUIRKS2").max(0) as u64;
    (quirks_off & !supported != 0).then(|| {
        Outcome::skip(format!("KVM_CAP_DISABLE_QUIRKS2 cannot disable quirk mask {quirks_off:#x} (supported {supported:#x})"))
    })
}

fn reset_host(ctx: &Context, index: u32, quirks_off: u64) -> Outcome {
    let m = info(ctx, index);
    if let Some(o) = not_on_backend(ctx, m).or_else(|| quirks_unsupported(ctx, quirks_off)) {
        return o;
    }
    let rule = m.reset.as_ref().expect("reset rule");
    let (want, cite) = rule.value_for(ctx.facts.backend, quirks_off);
    let mach = match machine_quirks(ctx, m, None, quirks_off, &[]) {
        Ok(x) => x,
        Err(e) => return Outcome::harness(e),
    };
    let got = mach.vcpu.get_msr(index);
    // A closed gate changes what the host reads (semantics §1.6).
    let want = match (
        gate_state(m, &mach),
        m.gate
            .as_ref()
            .map(|g| g.host_on(ctx.facts.kernel_version())),
    ) {
        (Some(GateState::Closed), Some(HostWhenClosed::AdvertisedZero))
            if ctx.facts.is_advertised(index) =>
        {
            Some(0)
        }
        (Some(GateState::Closed), Some(HostWhenClosed::Unsupported)) if ctx.facts.ignore_msrs() => {
            Some(0)
        }
        (
            Some(GateState::Closed),
            Some(
                HostWhenClosed::AdvertisedZero
                | HostWhenClosed::Fails
                | HostWhenClosed::Unsupported,
            ),
        ) => None,
        _ => Some(want),
    };
    if got == want {
        Outcome::pass(format!("reads {got:x?}"))
    } else {
        Outcome::fail(format!("{want:x?} ({cite})"), format!("{got:x?}"))
    }
}

fn reset_guest(ctx: &Context, index: u32, quirks_off: u64) -> Outcome {
    let m = info(ctx, index);
    if let Some(o) = not_on_backend(ctx, m).or_else(|| quirks_unsupported(ctx, quirks_off)) {
        return o;
    }
    let rule = m.reset.as_ref().expect("reset rule");
    let (want, cite) = rule.value_for(ctx.facts.backend, quirks_off);
    let mut mach = match machine_quirks(ctx, m, None, quirks_off, &[]) {
        Ok(x) => x,
        Err(e) => return Outcome::harness(e),
    };
    if let Some(o) = guest_gate_closed(m, &mach) {
        return o;
    }
    if m.read_fails
        .as_ref()
        .is_some_and(|r| r.path != Some(AccessPath::Host))
    {
        return Outcome::skip("write-only: the guest cannot read it (see guest.<msr>.read-fails)");
    }
    let run = mach.run_ops(&[GuestOp::Rdmsr(index)]);
    if let Some(d) = run.death {
        return Outcome::fail("the guest program to complete", d.to_string());
    }
    match run.outcomes[0] {
        OpOutcome::Read(v) if v == want => Outcome::pass(format!("guest reads {}", hex(v))),
        o => Outcome::fail(format!("guest reads {} ({cite})", hex(want)), o.to_string()),
    }
}

fn write_host(ctx: &Context, index: u32, rule: &WriteRule, vendor: Option<GuestVendor>) -> Outcome {
    let m = info(ctx, index);
    if let Some(o) = not_on_backend(ctx, m) {
        return o;
    }
    let mut mach = match machine_for_write(ctx, m, rule, vendor) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let (outcome, cite) = outcome_on(ctx, &mach, rule, AccessPath::Host);
    let gate = gate_state(m, &mach);
    if let Some(o) = host_writes_gated(ctx, m, gate) {
        return o;
    }
    if let Some(b) = rule.before {
        if !mach.vcpu.set_msr(index, b) {
            return Outcome::fail(format!("the host sets up {} first", hex(b)), "rejected");
        }
    }
    let before = mach.vcpu.get_msr(index);
    let accepted = mach.vcpu.set_msr(index, rule.value);
    let after = mach.vcpu.get_msr(index);
    let want = expected_after(ctx, outcome, rule.value, before.unwrap_or(0));
    let written = format!("host writes {}", hex(rule.value));
    if m.read_fails.is_some() {
        // Write-only: acceptance is all there is to see.
        return match (want.is_some(), accepted) {
            (true, true) => Outcome::pass(format!("{written}: accepted (write-only)")),
            (false, false) => Outcome::pass(format!("{written}: rejected (write-only)")),
            (w, a) => Outcome::fail(
                format!(
                    "{written}: {} ({cite})",
                    if w { "accepted" } else { "rejected" }
                ),
                format!("accepted={a}"),
            ),
        };
    }
    match want {
        None if !accepted && unchanged(m, before, after) => {
            return Outcome::pass(format!("{written}: rejected, value stays {before:x?}"))
        }
        None => {
            return Outcome::fail(
                format!("{written}: rejected and the value unchanged ({cite})"),
                format!("accepted={accepted}, read {before:x?} -> {after:x?}"),
            )
        }
        Some(w) if accepted && after == Some(w) => {}
        Some(w) => {
            return Outcome::fail(
                format!("{written}: accepted, reads back {} ({cite})", hex(w)),
                format!("accepted={accepted}, reads {after:x?}"),
            )
        }
    }
    // The other path sees it.
    if gate == Some(GateState::Closed) || m.read_fails.is_some() {
        return Outcome::pass(format!(
            "{written}: reads back {after:x?} (guest view not checked: the guest may not read it)"
        ));
    }
    let run = mach.run_ops(&[GuestOp::Rdmsr(index)]);
    if let Some(d) = run.death {
        return Outcome::fail("the guest program to complete", d.to_string());
    }
    match (run.outcomes[0], after) {
        (OpOutcome::Read(g), Some(a)) if g == a => {
            Outcome::pass(format!("{written}: host and guest read {}", hex(a)))
        }
        (o, a) => Outcome::fail(
            format!("the guest reads what the host wrote: {a:x?}"),
            o.to_string(),
        ),
    }
}

fn write_guest(
    ctx: &Context,
    index: u32,
    rule: &WriteRule,
    vendor: Option<GuestVendor>,
) -> Outcome {
    let m = info(ctx, index);
    if let Some(o) = not_on_backend(ctx, m) {
        return o;
    }
    let mut mach = match machine_for_write(ctx, m, rule, vendor) {
        Ok(x) => x,
        Err(o) => return o,
    };
    if let Some(o) = guest_gate_closed(m, &mach) {
        return o;
    }
    let (outcome, cite) = outcome_on(ctx, &mach, rule, AccessPath::Guest);
    let readable = m.read_fails.is_none();
    if let Some(b) = rule.before {
        if !mach.vcpu.set_msr(index, b) {
            return Outcome::fail(format!("the host sets up {} first", hex(b)), "rejected");
        }
    }
    let before = mach.vcpu.get_msr(index);
    let mut ops = vec![GuestOp::Wrmsr(index, rule.value)];
    if readable {
        ops.push(GuestOp::Rdmsr(index));
    }
    let run = mach.run_ops(&ops);
    if let Some(d) = run.death {
        return Outcome::fail("the guest program to complete", d.to_string());
    }
    let host_after = mach.vcpu.get_msr(index);
    let written = format!("guest writes {}", hex(rule.value));
    let want = expected_after(ctx, outcome, rule.value, before.unwrap_or(0));
    let guest_read = if readable {
        Some(run.outcomes[1])
    } else {
        None
    };
    match want {
        None => {
            if run.outcomes[0].is_gp() && unchanged(m, before, host_after) {
                Outcome::pass(format!(
                    "{written}: #GP, value stays {before:x?} -> {host_after:x?}"
                ))
            } else {
                Outcome::fail(
                    format!("{written}: #GP and the value unchanged ({cite})"),
                    format!(
                        "{}, host reads {before:x?} -> {host_after:x?}",
                        run.outcomes[0]
                    ),
                )
            }
        }
        Some(w) => {
            let guest_ok = guest_read.is_none_or(|r| r == OpOutcome::Read(w));
            let host_ok = !readable || host_after == Some(w);
            if run.outcomes[0] == OpOutcome::Wrote && guest_ok && host_ok {
                Outcome::pass(format!("{written}: guest and host read {}", hex(w)))
            } else {
                Outcome::fail(
                    format!(
                        "{written}: accepted; guest and host read {} ({cite})",
                        hex(w)
                    ),
                    format!(
                        "write {}, guest read {}, host reads {host_after:x?}",
                        run.outcomes[0],
                        guest_read.map(|r| r.to_string()).unwrap_or("-".into())
                    ),
                )
            }
        }
    }
}

fn reserved_base(ctx: &Context, m: &MsrInfo) -> u64 {
    let r = m.reserved.as_ref().expect("reserved rule");
    r.base.unwrap_or_else(|| {
        m.reset
            .as_ref()
            .map(|x| x.value_for(ctx.facts.backend, 0).0)
            .unwrap_or(0)
    })
}

/// The reserved bits of `r` for this vCPU: the rule's mask, plus the bits from the vCPU's
/// MAXPHYADDR up where the rule says so (x86.c kvm_vcpu_reserved_gpa_bits_raw: rsvd_bits(
/// cpuid_maxphyaddr(vcpu), 63); cpuid.c cpuid_query_maxphyaddr: CPUID 0x80000008 EAX[7:0], 36
/// without the leaf).
fn reserved_mask(r: &crate::catalogue::ReservedRule, mach: &Machine) -> u64 {
    if !r.above_maxphyaddr {
        return r.mask;
    }
    let t = mach.vcpu.read_cpuid();
    let has_leaf = t
        .as_ref()
        .and_then(|t| t.reg(0x8000_0000, 0, cpuid::Reg::Eax))
        .is_some_and(|max| max >= 0x8000_0008);
    let maxphyaddr = t
        .as_ref()
        .filter(|_| has_leaf)
        .and_then(|t| t.reg(0x8000_0008, 0, cpuid::Reg::Eax))
        .map_or(36, |eax| eax & 0xff)
        .min(64);
    let above = if maxphyaddr >= 64 {
        0
    } else {
        !0u64 << maxphyaddr
    };
    r.mask | above
}

fn bits(mask: u64) -> impl Iterator<Item = u32> {
    (0..64).filter(move |b| mask & (1 << b) != 0)
}

fn reserved_host(ctx: &Context, index: u32) -> Outcome {
    let m = info(ctx, index);
    if let Some(o) = not_on_backend(ctx, m) {
        return o;
    }
    let r = m.reserved.as_ref().expect("reserved rule");
    let base = reserved_base(ctx, m);
    let mach = match machine_for(ctx, m, None) {
        Ok(x) => x,
        Err(e) => return Outcome::harness(e),
    };
    let base_ok = mach.vcpu.set_msr(index, base);
    let mask = reserved_mask(r, &mach);
    if !base_ok {
        // A write rule may say that this host refuses the base value itself (e.g. PRED_CMD
        // before 6.7 on a host without IBPB): then every reserved bit must be refused too.
        let refused_here = m.writes.iter().find(|w| {
            w.value == base
                && w.path != Some(AccessPath::Guest)
                && outcome_on(ctx, &mach, w, AccessPath::Host).0 == WriteOutcome::Rejected
        });
        let Some(w) = refused_here else {
            return Outcome::fail(format!("the base value {} accepted", hex(base)), "rejected");
        };
        let accepted: Vec<u32> = bits(mask)
            .filter(|b| mach.vcpu.set_msr(index, base | (1 << b)))
            .collect();
        return if accepted.is_empty() {
            Outcome::pass(format!(
                "the base value {} is refused on this host ({}), and so is each of the {} reserved bits",
                hex(base),
                outcome_on(ctx, &mach, w, AccessPath::Host).1,
                mask.count_ones()
            ))
        } else {
            Outcome::fail(
                format!(
                    "each of the {} bits of {} rejected ({})",
                    mask.count_ones(),
                    hex(mask),
                    r.cite
                ),
                format!("accepted bits {accepted:?}"),
            )
        };
    }
    let mut accepted = Vec::new();
    for b in bits(mask) {
        if mach.vcpu.set_msr(index, base | (1 << b)) {
            accepted.push(b);
            mach.vcpu.set_msr(index, base);
        }
    }
    let n = mask.count_ones();
    if accepted.is_empty() {
        Outcome::pass(format!(
            "all {n} reserved bits rejected one at a time on top of {}",
            hex(base)
        ))
    } else {
        Outcome::fail(
            format!(
                "each of the {n} bits of {} rejected ({})",
                hex(mask),
                r.cite
            ),
            format!("accepted bits {accepted:?}"),
        )
    }
}

fn reserved_guest(ctx: &Context, index: u32) -> Outcome {
    let m = info(ctx, index);
    if let Some(o) = not_on_backend(ctx, m) {
        return o;
    }
    let r = m.reserved.as_ref().expect("reserved rule");
    let base = reserved_base(ctx, m);
    let mut mach = match machine_for(ctx, m, None) {
        Ok(x) => x,
        Err(e) => return Outcome::harness(e),
    };
    if let Some(o) = guest_gate_closed(m, &mach) {
        return o;
    }
    let mask = reserved_mask(r, &mach);
    let walked: Vec<u32> = bits(mask).collect();
    let mut ops = vec![GuestOp::Wrmsr(index, base)];
    for b in &walked {
        ops.push(GuestOp::Wrmsr(index, base | (1 << b)));
        ops.push(GuestOp::Wrmsr(index, base)); // restore if the bit was (wrongly) accepted
    }
    let run = mach.run_ops(&ops);
    if let Some(d) = run.death {
        return Outcome::fail("the guest program to complete", d.to_string());
    }
    if run.outcomes[0] != OpOutcome::Wrote {
        return Outcome::fail(
            format!("the base value {} accepted", hex(base)),
            run.outcomes[0].to_string(),
        );
    }
    let accepted: Vec<String> = walked
        .iter()
        .zip(run.outcomes[1..].chunks(2))
        .filter(|(_, o)| !o[0].is_gp())
        .map(|(b, o)| format!("bit {b}: {}", o[0]))
        .collect();
    if accepted.is_empty() {
        Outcome::pass(format!(
            "#GP for each of the {} reserved bits",
            walked.len()
        ))
    } else {
        Outcome::fail(
            format!("#GP for each bit of {} ({})", hex(mask), r.cite),
            accepted.join(", "),
        )
    }
}

fn read_fails(ctx: &Context, index: u32, path: AccessPath) -> Outcome {
    let m = info(ctx, index);
    if let Some(o) = not_on_backend(ctx, m) {
        return o;
    }
    let mut mach = match machine_for(ctx, m, None) {
        Ok(x) => x,
        Err(e) => return Outcome::harness(e),
    };
    match path {
        AccessPath::Host => match mach.vcpu.get_msrs(&[index]) {
            io if io.result == Ok(0) => Outcome::pass("host read not processed"),
            io if write_only_read_ignored(ctx, m, OpOutcome::Read(io.entries[0].data))
                && io.result == Ok(1) =>
            {
                Outcome::pass("host read 0 (kvm.ignore_msrs=Y)")
            }
            io => Outcome::fail("Ok(0): the host read fails", format!("{:?}", io.result)),
        },
        AccessPath::Guest => {
            let run = mach.run_ops(&[GuestOp::Rdmsr(index)]);
            match (run.death, run.outcomes[0]) {
                (None, o) if o.is_gp() => Outcome::pass("guest RDMSR #GP"),
                (None, o) if write_only_read_ignored(ctx, m, o) => {
                    Outcome::pass("guest RDMSR read 0 (kvm.ignore_msrs=Y)")
                }
                (None, o) => Outcome::fail("guest RDMSR #GP", o.to_string()),
                (Some(d), _) => Outcome::fail("the guest program to complete", d.to_string()),
            }
        }
    }
}

/// A read of a write-only MSR that read 0 under kvm.ignore_msrs: where KVM's read handler has
/// no case for it (kvm_get_msr_common's default, KVM_MSR_RET_UNSUPPORTED), kvm_do_msr_access
/// reports success with 0 (semantics §1.6 step 5); handlers that return 1 still fail. Which one
/// applies is per MSR, so under ignore_msrs either is accepted.
fn write_only_read_ignored(ctx: &Context, m: &MsrInfo, read: OpOutcome) -> bool {
    ctx.facts.ignore_msrs() && m.read_fails.is_some() && read == OpOutcome::Read(0)
}

/// Clear the gate's CPUID bits (or use the default MCG_CAP) and check both paths.
fn gate_closed(ctx: &Context, index: u32) -> Outcome {
    let m = info(ctx, index);
    if let Some(o) = not_on_backend(ctx, m) {
        return o;
    }
    let g = m.gate.as_ref().expect("gate rule");
    let mut t = ctx.facts.supported_cpuid.clone();
    if let GateCondition::AnyCpuid(names) | GateCondition::PvFeature(names) = &g.condition {
        for n in names {
            t.set(cpuid::feature(n).expect("validated name"), false);
        }
    }
    let mut mach = match ctx
        .machine_with_cpuid(t)
        .and_then(|mut x| apply_setup(&mut x, m, false).map(|()| x))
    {
        Ok(x) => x,
        Err(e) => return Outcome::harness(e),
    };
    if matches!(g.condition, GateCondition::PvFeature(_)) {
        if ctx.facts.cap("KVM_CAP_ENFORCE_PV_FEATURE_CPUID") <= 0 {
            return Outcome::skip(
                "KVM_CAP_ENFORCE_PV_FEATURE_CPUID is absent: KVM never gates the PV MSRs",
            );
        }
        if let Err(errno) = mach.vcpu.enforce_pv_cpuid() {
            return Outcome::fail(
                "KVM_ENABLE_CAP(KVM_CAP_ENFORCE_PV_FEATURE_CPUID) on the vCPU",
                format!("errno {errno}"),
            );
        }
    }
    if gate_state(m, &mach) == Some(GateState::Open) {
        return Outcome::skip(format!(
            "could not close gate {}: it is still open in the effective CPUID/state",
            g.describe()
        ));
    }
    let value = m.writes.first().map(|w| w.value).unwrap_or(0);
    let host = mach.vcpu.get_msr(index);
    // Host writes of an UNSUPPORTED MSR (x86.c kvm_do_msr_access, semantics §1.6 step 3): a
    // write of 0 succeeds if KVM lists the MSR, any other value fails; under ignore_msrs both
    // succeed and are dropped. Before KVM_RUN: after it, do_set_msr refuses any change to an
    // immutable feature MSR (ARCH_CAPABILITIES, PERF_CAPABILITIES) before that rule applies.
    // A zero-only MSR: 0 accepted, any other value refused, ignore_msrs or not. Write-unsupported:
    // writes as UNSUPPORTED, reads as exempt (host) or #GP (guest), ignore_msrs or not.
    let nonzero = if value != 0 { value } else { 1 };
    let host_mode = g.host_on(ctx.facts.kernel_version());
    let zero_only = host_mode == HostWhenClosed::ZeroOnly;
    let reads_gated = host_mode != HostWhenClosed::WriteUnsupported;
    let exemption = matches!(
        host_mode,
        HostWhenClosed::AdvertisedZero | HostWhenClosed::WriteUnsupported
    );
    let unsupported = exemption || host_mode == HostWhenClosed::Unsupported;
    let writes = (unsupported || zero_only).then(|| {
        (
            mach.vcpu.set_msr(index, 0),
            mach.vcpu.set_msr(index, nonzero),
        )
    });
    let run = mach.run_ops(&[GuestOp::Rdmsr(index), GuestOp::Wrmsr(index, value)]);
    if let Some(d) = run.death {
        return Outcome::fail("the guest program to complete", d.to_string());
    }
    let ignore = ctx.facts.ignore_msrs();
    let ignored = ignore && unsupported;
    // An UNSUPPORTED host access with value 0 succeeds: listed (the 0-exemption, where the
    // kernel has it for this MSR) or ignore_msrs.
    let zero_ok = (exemption && ctx.facts.is_advertised(index)) || ignore;
    let (rd, wr) = (run.outcomes[0], run.outcomes[1]);
    let guest_ok = if ignored {
        (if reads_gated {
            rd == OpOutcome::Read(0)
        } else {
            rd.is_gp()
        }) && wr == OpOutcome::Wrote
    } else {
        (rd.is_gp() || write_only_read_ignored(ctx, m, rd)) && wr.is_gp()
    };
    let host_ok = match host_mode {
        _ if m.read_fails.is_some() => true, // write-only: no host read to judge
        HostWhenClosed::Exempt | HostWhenClosed::ZeroOnly | HostWhenClosed::WriteUnsupported => {
            host.is_some()
        }
        HostWhenClosed::AdvertisedZero | HostWhenClosed::Unsupported if zero_ok => host == Some(0),
        HostWhenClosed::AdvertisedZero | HostWhenClosed::Unsupported | HostWhenClosed::Fails => {
            host.is_none()
        }
    };
    let writes_ok = writes.is_none_or(|(zero, other)| {
        if zero_only {
            zero && !other
        } else {
            zero == zero_ok && other == ignore
        }
    });
    let shown = |ok: bool| if ok { "accepted" } else { "rejected" };
    let actual = format!(
        "guest RDMSR {rd}, WRMSR {} {wr}; host read {host:x?}{}",
        hex(value),
        writes.map_or(String::new(), |(zero, other)| format!(
            ", host write 0 {}, {} {}",
            shown(zero),
            hex(nonzero),
            shown(other)
        ))
    );
    if guest_ok && host_ok && writes_ok {
        Outcome::pass(actual)
    } else {
        Outcome::fail(
            format!(
                "guest {} ; host {:?}{} ({})",
                if ignored && !reads_gated {
                    "RDMSR #GP, WRMSR dropped (ignore_msrs=Y: only the write handler returns UNSUPPORTED)"
                } else if ignored {
                    "reads 0 and writes are dropped (ignore_msrs=Y)"
                } else {
                    "RDMSR and WRMSR #GP"
                },
                host_mode,
                match (unsupported, zero_ok, ignore) {
                    _ if zero_only =>
                        format!(" (a host write of 0 succeeds, of {} fails)", hex(nonzero)),
                    (false, _, _) => String::new(),
                    (true, _, true) => " (ignore_msrs: host reads 0, writes dropped)".into(),
                    (true, true, false) => format!(
                        " (advertised: host reads 0, a host write of 0 succeeds, of {} fails)",
                        hex(nonzero)
                    ),
                    (true, false, false) => " (not advertised: host reads and writes fail)".into(),
                },
                g.host_cite(ctx.facts.kernel_version())
            ),
            actual,
        )
    }
}

fn coverage(ctx: &Context) -> Outcome {
    let missing: Vec<String> = ctx
        .facts
        .msr_index_list
        .iter()
        .chain(&ctx.facts.msr_feature_index_list)
        .filter(|i| ctx.catalogue.get(**i).is_none())
        .map(|i| format!("{i:#x}"))
        .collect();
    if missing.is_empty() {
        Outcome::pass(format!(
            "all {} listed MSRs catalogued",
            ctx.facts.msr_index_list.len() + ctx.facts.msr_feature_index_list.len()
        ))
    } else {
        Outcome::fail(
            "every MSR this KVM lists is in fixtures/catalogue",
            format!("not catalogued: {}", missing.join(", ")),
        )
    }
}

pub fn checks(ctx: &Context) -> Vec<Check> {
    let mut v = vec![Check::new(
        "catalogue.covers-host-lists",
        None,
        "every MSR in this host's index and feature lists has a catalogue entry",
        "api.rst 4.3 (the lists); fixtures/catalogue/README.md",
        coverage,
    )];
    for m in ctx.catalogue.msrs.values() {
        let (index, id, name) = (m.index, m.id.clone(), m.name.clone());
        if let Some(r) = m
            .requires
            .as_ref()
            .filter(|r| !(r.caps.is_empty() && r.kvm_params.is_empty() && r.cpuid_any.is_empty()))
        {
            v.push(Check::new(
                format!("lists.{id}.listed-only-when-supported"),
                Some(index),
                format!("{name}: in KVM's lists only while the conditions for listing it hold"),
                r.cite.clone(),
                move |c| listed_only_when_supported(c, index),
            ));
        }
        if let Some(r) = &m.reset {
            let cite = format!("{}; {}", r.cite, m.cite);
            v.push(Check::new(
                format!("host.{id}.reset"),
                Some(index),
                format!("{name}: a fresh vCPU's host read is the reset value"),
                cite.clone(),
                move |c| reset_host(c, index, 0),
            ));
            v.push(Check::new(
                format!("guest.{id}.reset"),
                Some(index),
                format!("{name}: a fresh vCPU's guest RDMSR is the reset value"),
                cite,
                move |c| reset_guest(c, index, 0),
            ));
            for (q, _, qcite) in &r.quirk_off {
                let (bit, qn) = (q.bit(), q.name().to_ascii_lowercase().replace('_', "-"));
                let cite = format!("api.rst 7.31 KVM_CAP_DISABLE_QUIRKS2; {qcite}");
                v.push(Check::new(format!("host.{id}.reset.quirk-{qn}-off"), Some(index), format!("{name}: the host reads the documented reset value with KVM_X86_QUIRK_{} disabled", q.name()), cite.clone(), move |c| reset_host(c, index, bit)));
                v.push(Check::new(format!("guest.{id}.reset.quirk-{qn}-off"), Some(index), format!("{name}: the guest reads the documented reset value with KVM_X86_QUIRK_{} disabled", q.name()), cite, move |c| reset_guest(c, index, bit)));
            }
        }
        for (k, w) in m.writes.iter().enumerate() {
            let vendors: Vec<Option<GuestVendor>> = if w.vendor_dependent() {
                vec![Some(GuestVendor::Intel), Some(GuestVendor::Amd)]
            } else {
                vec![None]
            };
            for vendor in vendors {
                let suffix = match vendor {
                    Some(GuestVendor::Intel) => ".intel-guest",
                    Some(GuestVendor::Amd) => ".amd-guest",
                    None => "",
                };
                let cite = std::iter::once(w.cite.as_str())
                    .chain(w.when.iter().map(|x| x.cite.as_str()))
                    .collect::<Vec<_>>()
                    .join("; ");
                for path in [AccessPath::Host, AccessPath::Guest] {
                    if w.path.is_some_and(|p| p != path) {
                        continue;
                    }
                    let (fam, verb) = match path {
                        AccessPath::Host => ("host", "KVM_SET_MSRS"),
                        AccessPath::Guest => ("guest", "WRMSR"),
                    };
                    v.push(Check::new(
                        format!("{fam}.{id}.write.{}{suffix}", w.name),
                        Some(index),
                        format!(
                            "{name}: {verb} of {:#x} ({}){} has the documented outcome, seen from both paths",
                            w.value,
                            w.name,
                            if w.cpuid_clear.is_empty() {
                                String::new()
                            } else {
                                format!(" with {} cleared from the vCPU's CPUID", w.cpuid_clear.join(", "))
                            }
                        ),
                        cite.clone(),
                        move |c| {
                            let rule = &info(c, index).writes[k];
                            match path {
                                AccessPath::Host => write_host(c, index, rule, vendor),
                                AccessPath::Guest => write_guest(c, index, rule, vendor),
                            }
                        },
                    ));
                }
            }
        }
        if let Some(r) = &m.reserved {
            v.push(Check::new(
                format!("host.{id}.reserved-bits"),
                Some(index),
                format!(
                    "{name}: KVM_SET_MSRS rejects each reserved bit ({:#x}) alone",
                    r.mask
                ),
                r.cite.clone(),
                move |c| reserved_host(c, index),
            ));
            v.push(Check::new(
                format!("guest.{id}.reserved-bits"),
                Some(index),
                format!(
                    "{name}: WRMSR of each reserved bit ({:#x}) alone #GPs",
                    r.mask
                ),
                r.cite.clone(),
                move |c| reserved_guest(c, index),
            ));
        }
        if let Some(r) = &m.read_fails {
            for path in [AccessPath::Host, AccessPath::Guest] {
                if r.path.is_some_and(|p| p != path) {
                    continue;
                }
                let fam = if path == AccessPath::Host {
                    "host"
                } else {
                    "guest"
                };
                v.push(Check::new(
                    format!("{fam}.{id}.read-fails"),
                    Some(index),
                    format!("{name}: reads fail (write-only)"),
                    r.cite.clone(),
                    move |c| read_fails(c, index, path),
                ));
            }
        }
        if let Some(g) = &m.gate {
            v.push(Check::new(
                format!("guest.{id}.gate-closed"),
                Some(index),
                format!("{name}: with {} absent the guest faults and the host follows the documented exemption", g.describe()),
                g.cite.clone(),
                move |c| gate_closed(c, index),
            ));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sign_extends_at_the_host_width() {
        assert_eq!(
            canonical(0x0000_8000_0000_0000, false),
            0xffff_8000_0000_0000
        );
        assert_eq!(
            canonical(0x0000_7fff_ffff_ffff, false),
            0x0000_7fff_ffff_ffff
        );
        assert_eq!(
            canonical(0xaaaa_aaaa_aaaa_aaaa, false),
            0xffff_aaaa_aaaa_aaaa
        );
        assert_eq!(
            canonical(0x0100_0000_0000_0000, true),
            0xff00_0000_0000_0000
        );
    }
}
