//! Reserved bits walked one at a time: the host is refused, the guest takes #GP.

use super::super::{hex, Context, Outcome};
use super::*;
use crate::catalogue::{AccessPath, MsrInfo, WriteOutcome};
use crate::guest::{GuestOp, OpOutcome};
use crate::kvm::cpuid::{self};
use crate::machine::Machine;

pub(super) fn reserved_base(ctx: &Context, m: &MsrInfo) -> u64 {
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
pub(super) fn reserved_mask(r: &crate::catalogue::ReservedRule, mach: &Machine) -> u64 {
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

pub(super) fn bits(mask: u64) -> impl Iterator<Item = u32> {
    (0..64).filter(move |b| mask & (1 << b) != 0)
}

pub(super) fn reserved_host(ctx: &Context, index: u32) -> Outcome {
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

pub(super) fn reserved_guest(ctx: &Context, index: u32) -> Outcome {
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

/// `host|guest.<msr>.reserved-bits`.
pub(super) fn reserved_checks(m: &MsrInfo, v: &mut Vec<Check>) {
    let (index, id, name) = (m.index, m.id.clone(), m.name.clone());
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
}
