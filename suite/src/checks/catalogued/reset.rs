//! Reset values, from the host and from the guest.

use super::super::{hex, Context, Outcome};
use super::*;
use crate::catalogue::{AccessPath, GateState, HostWhenClosed, MsrInfo};
use crate::machine::Machine;

/// What the host reads of the MSR on `mach`: the reset value, unless a closed gate changes it
/// (semantics §1.6; None: the read fails).
fn host_reads(ctx: &Context, m: &MsrInfo, mach: &Machine, reset: u64) -> Option<u64> {
    match (
        gate_state(m, mach),
        m.gate
            .as_ref()
            .map(|g| g.host_on(ctx.facts.kernel_version())),
    ) {
        (Some(GateState::Closed), Some(HostWhenClosed::AdvertisedZero))
            if ctx.facts.is_advertised(m.index) =>
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
        _ => Some(reset),
    }
}

/// A fresh vCPU's read from `path` is the documented reset value. The host reads through a
/// closed gate as its mode says (`host_reads`); the guest needs the gate open; a path whose
/// reads fail (write-only) has nothing to read.
pub(super) fn reset(ctx: &Context, index: u32, quirks_off: u64, path: AccessPath) -> Outcome {
    let m = info(ctx, index);
    if let Some(o) = not_on_backend(ctx, m).or_else(|| quirks_unsupported(ctx, quirks_off)) {
        return o;
    }
    let rule = m.reset.as_ref().expect("reset rule");
    let (reset, cite) = rule.value_for(ctx.facts.backend, quirks_off);
    let mut mach = match machine_quirks(ctx, m, None, quirks_off, &[]) {
        Ok(x) => x,
        Err(e) => return Outcome::harness(e),
    };
    let want = match path {
        AccessPath::Host => host_reads(ctx, m, &mach, reset),
        AccessPath::Guest => match guest_gate_closed(m, &mach) {
            Some(o) => return o,
            None => Some(reset),
        },
    };
    if m.read_fails
        .as_ref()
        .is_some_and(|r| r.path.is_none_or(|p| p == path))
    {
        let p = path.name();
        return Outcome::skip(format!(
            "write-only: the {p} cannot read it (see {p}.<msr>.read-fails)"
        ));
    }
    let got = match mach.read(path, index) {
        Ok(a) => a,
        Err(d) => return Outcome::died(d),
    };
    let read = got.value();
    match path {
        AccessPath::Host if read == want => Outcome::pass(format!("reads {read:x?}")),
        AccessPath::Host => Outcome::fail(format!("{want:x?} ({cite})"), format!("{read:x?}")),
        AccessPath::Guest if read == want => Outcome::pass(format!("guest reads {}", hex(reset))),
        AccessPath::Guest => Outcome::fail(
            format!("guest reads {} ({cite})", hex(reset)),
            got.to_string(),
        ),
    }
}

/// `host.<msr>.reset`, `guest.<msr>.reset` and their quirk-off variants.
pub(super) fn reset_checks(m: &MsrInfo, v: &mut Vec<Check>) {
    let (index, id, name) = (m.index, m.id.clone(), m.name.clone());
    if let Some(r) = &m.reset {
        let cite = format!("{}; {}", r.cite, m.cite);
        for path in AccessPath::BOTH {
            v.push(Check::new(
                CheckId::msr(path.family(), &id, "reset"),
                Some(index),
                format!("{name}: a fresh vCPU's {} is the reset value", reader(path)),
                cite.clone(),
                move |c| reset(c, index, 0, path),
            ));
        }
        for (q, _, qcite) in &r.quirk_off {
            let (bit, qn) = (q.bit(), q.name().to_ascii_lowercase().replace('_', "-"));
            let cite = format!("api.rst 7.31 KVM_CAP_DISABLE_QUIRKS2; {qcite}");
            for path in AccessPath::BOTH {
                let p = path.name();
                v.push(Check::new(CheckId::msr(path.family(), &id, "reset").then(format!("quirk-{qn}-off")), Some(index), format!("{name}: the {p} reads the documented reset value with KVM_X86_QUIRK_{} disabled", q.name()), cite.clone(), move |c| reset(c, index, bit, path)));
            }
        }
    }
}
