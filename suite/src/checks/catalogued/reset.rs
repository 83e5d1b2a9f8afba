//! Reset values, from the host and from the guest.

use super::super::{hex, Context, Outcome};
use super::*;
use crate::catalogue::{AccessPath, GateState, HostWhenClosed};
use crate::guest::{GuestOp, OpOutcome};

pub(super) fn reset_host(ctx: &Context, index: u32, quirks_off: u64) -> Outcome {
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

pub(super) fn reset_guest(ctx: &Context, index: u32, quirks_off: u64) -> Outcome {
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

/// `host.<msr>.reset`, `guest.<msr>.reset` and their quirk-off variants.
pub(super) fn reset_checks(m: &MsrInfo, v: &mut Vec<Check>) {
    let (index, id, name) = (m.index, m.id.clone(), m.name.clone());
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
}
