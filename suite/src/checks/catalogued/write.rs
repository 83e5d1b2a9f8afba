//! Documented writes from each path, and what the other path then reads (`expected_after`:
//! the value a read returns after a write with a given outcome).

use super::super::{hex, Context, Outcome};
use super::*;
use crate::catalogue::{AccessPath, GateState, GuestVendor, MsrInfo, WriteOutcome, WriteRule};
use crate::guest::GuestOp;
use crate::machine::Access;

/// A rejected write left the value alone: equal, or for a counting MSR (`volatile`) moved on as
/// it does without writes (a monotonic one never backwards).
pub(super) fn unchanged(m: &MsrInfo, before: Option<u64>, after: Option<u64>) -> bool {
    match (m.volatile.as_ref().map(|v| &v.rule), before, after) {
        (Some(crate::catalogue::Volatility::Monotonic), Some(b), Some(a)) => a >= b,
        (Some(crate::catalogue::Volatility::Changes), Some(_), Some(_)) => true,
        _ => before == after,
    }
}

pub(super) fn canonical(v: u64, la57: bool) -> u64 {
    let bits = if la57 { 57 } else { 48 };
    (((v << (64 - bits)) as i64) >> (64 - bits)) as u64
}

/// The value a read returns after writing `value` over `before` with `outcome`; None: rejected.
/// The host decides the canonical width (KVM's LA57) and whether an unsupported write is dropped
/// (kvm.ignore_msrs) instead of refused.
pub(crate) fn expected_after(
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

/// What a write from one path left behind: the MSR, the host's read before it, the write and this path's
/// read back (None for a write-only MSR), the host's read after it; with the check's words for
/// the write (`host writes 0x..`) and the rule's cite.
struct Written {
    index: u32,
    before: Option<u64>,
    wrote: Access,
    back: Option<Access>,
    host_after: Option<u64>,
    said: String,
    cite: String,
}

/// `rule`'s write from `path`: rejected with the value left alone, or accepted with the
/// documented value read back from this path and seen from the other. Where the paths differ:
/// host writes follow a closed gate only where its mode says so (`host_writes_gated`), guest
/// accesses always (`guest_gate_closed`).
pub(super) fn write(
    ctx: &Context,
    index: u32,
    rule: &WriteRule,
    vendor: Option<GuestVendor>,
    path: AccessPath,
) -> Outcome {
    let m = info(ctx, index);
    if let Some(o) = not_on_backend(ctx, m) {
        return o;
    }
    let mut mach = match machine_for_write(ctx, m, rule, vendor) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let gate = gate_state(m, &mach);
    let gated = match path {
        AccessPath::Host => host_writes_gated(ctx, m, gate),
        AccessPath::Guest => guest_gate_closed(m, &mach),
    };
    if let Some(o) = gated {
        return o;
    }
    let (outcome, cite) = outcome_on(ctx, &mach, rule, path);
    if let Some(b) = rule.before {
        if !mach.vcpu.set_msr(index, b) {
            return Outcome::fail(format!("the host sets up {} first", hex(b)), "rejected");
        }
    }
    let readable = m.read_fails.is_none();
    let before = mach.vcpu.get_msr(index);
    let ops = [GuestOp::Wrmsr(index, rule.value), GuestOp::Rdmsr(index)];
    let done = match mach.access(path, &ops[..1 + usize::from(readable)]) {
        Ok(x) => x,
        Err(d) => return Outcome::died(d),
    };
    let back = done.get(1).copied();
    let w = Written {
        index,
        before,
        wrote: done[0],
        back,
        host_after: match path {
            AccessPath::Host => back.and_then(Access::value),
            AccessPath::Guest => mach.vcpu.get_msr(index),
        },
        said: format!("{} writes {}", path.name(), hex(rule.value)),
        cite,
    };
    match expected_after(ctx, outcome, rule.value, before.unwrap_or(0)) {
        want if !readable && path == AccessPath::Host => write_only(want.is_some(), &w),
        None => rejected(m, path, &w),
        Some(want) => accepted(&mut mach, path, gate, want, &w),
    }
}

/// A host write of a write-only MSR: acceptance is all there is to see.
fn write_only(accept: bool, w: &Written) -> Outcome {
    let (said, accepted) = (&w.said, w.wrote == Access::Wrote);
    match (accept, w.wrote) {
        (true, Access::Wrote) => Outcome::pass(format!("{said}: accepted (write-only)")),
        (false, a) if a.rejected() => Outcome::pass(format!("{said}: rejected (write-only)")),
        (_, _) => Outcome::fail(
            format!(
                "{said}: {} ({})",
                if accept { "accepted" } else { "rejected" },
                w.cite
            ),
            format!("accepted={accepted}"),
        ),
    }
}

/// Rejected as documented: refused (`Access::rejected`) and the host's view of the value
/// unchanged.
fn rejected(m: &MsrInfo, path: AccessPath, w: &Written) -> Outcome {
    let (said, before, after) = (&w.said, w.before, w.host_after);
    let refused = match path {
        AccessPath::Host => "rejected",
        AccessPath::Guest => "#GP",
    };
    if w.wrote.rejected() && unchanged(m, before, after) {
        return Outcome::pass(match path {
            AccessPath::Host => format!("{said}: rejected, value stays {before:x?}"),
            AccessPath::Guest => format!("{said}: #GP, value stays {before:x?} -> {after:x?}"),
        });
    }
    let wrote = match path {
        AccessPath::Host => format!("accepted={}, read", w.wrote == Access::Wrote),
        AccessPath::Guest => format!("{}, host reads", w.wrote),
    };
    Outcome::fail(
        format!("{said}: {refused} and the value unchanged ({})", w.cite),
        format!("{wrote} {before:x?} -> {after:x?}"),
    )
}

/// Accepted as documented: the write completed, this path reads `want` back and the other path
/// reads it too (the host after a guest write; the guest after a host write, where it may read
/// the MSR: its gate is open).
fn accepted(
    mach: &mut Machine,
    path: AccessPath,
    gate: Option<GateState>,
    want: u64,
    w: &Written,
) -> Outcome {
    let (said, after) = (&w.said, w.host_after);
    let this_ok = w.wrote == Access::Wrote && w.back.is_none_or(|b| b == Access::Read(want));
    let both = format!(
        "{said}: {} and {} read {}",
        path.name(),
        path.other().name(),
        hex(want)
    );
    match path {
        AccessPath::Guest if this_ok && (w.back.is_none() || after == Some(want)) => {
            Outcome::pass(both)
        }
        AccessPath::Guest => Outcome::fail(
            format!(
                "{said}: accepted; guest and host read {} ({})",
                hex(want),
                w.cite
            ),
            format!(
                "write {}, guest read {}, host reads {after:x?}",
                w.wrote,
                w.back.map_or("-".into(), |r| r.to_string())
            ),
        ),
        AccessPath::Host if !this_ok => Outcome::fail(
            format!("{said}: accepted, reads back {} ({})", hex(want), w.cite),
            format!("accepted={}, reads {after:x?}", w.wrote == Access::Wrote),
        ),
        AccessPath::Host if gate == Some(GateState::Closed) => Outcome::pass(format!(
            "{said}: reads back {after:x?} (guest view not checked: the guest may not read it)"
        )),
        AccessPath::Host => match mach.read(AccessPath::Guest, w.index) {
            Err(d) => Outcome::died(d),
            Ok(Access::Read(g)) if g == want => Outcome::pass(both),
            Ok(o) => Outcome::fail(
                format!("the guest reads what the host wrote: {after:x?}"),
                o.to_string(),
            ),
        },
    }
}

/// `host|guest.<msr>.write.<rule>[.intel-guest|.amd-guest]` for every write rule and path.
pub(super) fn write_checks(m: &MsrInfo, v: &mut Vec<Check>) {
    let (index, id, name) = (m.index, m.id.clone(), m.name.clone());
    for (k, w) in m.writes.iter().enumerate() {
        let vendors: Vec<Option<GuestVendor>> = if w.vendor_dependent() {
            vec![Some(GuestVendor::Intel), Some(GuestVendor::Amd)]
        } else {
            vec![None]
        };
        for vendor in vendors {
            let suffix = match vendor {
                Some(GuestVendor::Intel) => Some("intel-guest"),
                Some(GuestVendor::Amd) => Some("amd-guest"),
                None => None,
            };
            let cite = std::iter::once(w.cite.as_str())
                .chain(w.when.iter().map(|x| x.cite.as_str()))
                .collect::<Vec<_>>()
                .join("; ");
            for path in AccessPath::BOTH {
                if w.path.is_some_and(|p| p != path) {
                    continue;
                }
                let verb = path.write_call();
                v.push(Check::new(
                    {
                        let id = CheckId::msr(path.family(), &id, "write").then(&w.name);
                        match suffix {
                            Some(s) => id.then(s),
                            None => id,
                        }
                    },
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
                        write(c, index, rule, vendor, path)
                    },
                ));
            }
        }
    }
}
