//! Reserved bits walked one at a time: the host is refused, the guest takes #GP.

use super::super::{hex, Context, Outcome};
use super::*;
use crate::catalogue::{AccessPath, MsrInfo, WriteOutcome};
use crate::guest::GuestOp;
use crate::kvm::cpuid::{self};
use crate::machine::Access;
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

/// Each reserved bit written alone on top of the base value from `path` is refused
/// (`Access::rejected`), the base value restored after each. Where a write rule of the base value
/// on a fresh vCPU (no `before`) says this machine refuses it from `path` (e.g. a host PRED_CMD
/// write before 6.7 on a host without IBPB), each reserved bit must be refused too. Only the
/// guest needs the gate open.
pub(super) fn reserved(ctx: &Context, index: u32, path: AccessPath) -> Outcome {
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
    if let Some(o) = guest_gate_closed(m, &mach).filter(|_| path == AccessPath::Guest) {
        return o;
    }
    let mask = reserved_mask(r, &mach);
    let walked: Vec<u32> = bits(mask).collect();
    let mut ops = vec![GuestOp::Wrmsr(index, base)];
    for b in &walked {
        ops.push(GuestOp::Wrmsr(index, base | (1 << b)));
        ops.push(GuestOp::Wrmsr(index, base)); // restore if the bit was (wrongly) accepted
    }
    let done = match mach.access(path, &ops) {
        Ok(x) => x,
        Err(d) => return Outcome::died(d),
    };
    let accepted: Vec<(u32, Access)> = walked
        .iter()
        .zip(done[1..].chunks(2))
        .filter(|(_, o)| !o[0].rejected())
        .map(|(b, o)| (*b, o[0]))
        .collect();
    let n = walked.len();
    let refused_base = (done[0] != Access::Wrote).then(|| {
        m.writes
            .iter()
            .filter(|w| w.value == base && w.before.is_none() && w.path.is_none_or(|p| p == path))
            .map(|w| outcome_on(ctx, &mach, w, path))
            .find(|(o, _)| *o == WriteOutcome::Rejected)
    });
    match (refused_base, path) {
        (None, _) if accepted.is_empty() => Outcome::pass(match path {
            AccessPath::Host => format!(
                "all {n} reserved bits rejected one at a time on top of {}",
                hex(base)
            ),
            AccessPath::Guest => format!("#GP for each of the {n} reserved bits"),
        }),
        (Some(Some((_, cite))), _) if accepted.is_empty() => Outcome::pass(format!(
            "the base value {} is refused on this host ({cite}), and so is each of the {n} reserved bits",
            hex(base),
        )),
        (Some(None), p) => Outcome::fail(
            format!("the base value {} accepted", hex(base)),
            match p {
                AccessPath::Host => "rejected".to_string(),
                AccessPath::Guest => done[0].to_string(),
            },
        ),
        (_, AccessPath::Host) => Outcome::fail(
            format!("each of the {n} bits of {} rejected ({})", hex(mask), r.cite),
            format!("accepted bits {:?}", accepted.iter().map(|a| a.0).collect::<Vec<_>>()),
        ),
        (_, AccessPath::Guest) => Outcome::fail(
            format!("#GP for each bit of {} ({})", hex(mask), r.cite),
            accepted
                .iter()
                .map(|(b, o)| format!("bit {b}: {o}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    }
}

/// `host|guest.<msr>.reserved-bits`.
pub(super) fn reserved_checks(m: &MsrInfo, v: &mut Vec<Check>) {
    let (index, id, name) = (m.index, m.id.clone(), m.name.clone());
    if let Some(r) = &m.reserved {
        for path in AccessPath::BOTH {
            let mask = format!("{:#x}", r.mask);
            let summary = match path {
                AccessPath::Host => {
                    format!("{name}: KVM_SET_MSRS rejects each reserved bit ({mask}) alone")
                }
                AccessPath::Guest => {
                    format!("{name}: WRMSR of each reserved bit ({mask}) alone #GPs")
                }
            };
            v.push(Check::new(
                CheckId::msr(path.family(), &id, "reserved-bits"),
                Some(index),
                summary,
                r.cite.clone(),
                move |c| reserved(c, index, path),
            ));
        }
    }
}
