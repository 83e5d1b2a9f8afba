//! Documented writes from each path, and what the other path then reads (`expected_after`:
//! the value a read returns after a write with a given outcome).

use super::super::{hex, Context, Outcome};
use super::*;
use crate::catalogue::{AccessPath, GateState, GuestVendor, MsrInfo, WriteOutcome, WriteRule};
use crate::guest::{GuestOp, OpOutcome};

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

/// The machine a write rule runs on, or why the rule does not apply on this backend.
fn write_machine(
    ctx: &Context,
    m: &MsrInfo,
    rule: &WriteRule,
    vendor: Option<GuestVendor>,
) -> Result<Machine, Outcome> {
    if let Some(o) = not_on_backend(ctx, m) {
        return Err(o);
    }
    machine_for_write(ctx, m, rule, vendor)
}

pub(super) fn write_host(
    ctx: &Context,
    index: u32,
    rule: &WriteRule,
    vendor: Option<GuestVendor>,
) -> Outcome {
    let m = info(ctx, index);
    let mut mach = match write_machine(ctx, m, rule, vendor) {
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

pub(super) fn write_guest(
    ctx: &Context,
    index: u32,
    rule: &WriteRule,
    vendor: Option<GuestVendor>,
) -> Outcome {
    let m = info(ctx, index);
    let mut mach = match write_machine(ctx, m, rule, vendor) {
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
}
