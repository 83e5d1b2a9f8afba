//! The `guest` target: guest RDMSR/WRMSR programs run by the guest runtime, cross-checked with
//! host reads.

use super::{confine, harness_violation, msr_class, Features, IndexChoice, ValueChoice};
use crate::oracles::Violation;
use crate::session::Context;
use arbitrary::Arbitrary;

/// One guest access of the `guest` target.
#[derive(Clone, Copy, Debug, Arbitrary)]
pub struct GuestAccess {
    pub index: IndexChoice,
    /// None: RDMSR; Some: WRMSR of that value.
    pub write: Option<ValueChoice>,
}

/// Input of the `guest` target: a guest program of RDMSR/WRMSR.
#[derive(Clone, Debug, Arbitrary)]
pub struct GuestInput {
    pub ops: Vec<GuestAccess>,
}

/// Most ops one `guest` input runs (the emulator costs ~0.5 us per instruction on PVM).
pub const MAX_GUEST_OPS: usize = 32;

/// Run a guest program. Oracles: the guest never dies (every fault is a recorded exception, never
/// an internal error, shutdown or hang), and after the program the host reads what the guest
/// last read for every MSR the catalogue does not document as changing on its own.
pub fn run_guest(ctx: &Context, input: &GuestInput, feats: &mut Features) -> Result<(), Violation> {
    use crate::guest::{GuestOp, OpOutcome};
    let ops: Vec<GuestOp> = input
        .ops
        .iter()
        .take(MAX_GUEST_OPS)
        .map(|a| {
            let i = a.index.resolve(ctx);
            match a.write {
                None => GuestOp::Rdmsr(i),
                Some(v) => GuestOp::Wrmsr(i, confine(i, v.resolve())),
            }
        })
        .collect();
    let mut m = ctx.machine().map_err(harness_violation)?;
    let run = m.run_ops(&ops);
    if let Some(d) = run.death {
        return Err(Violation {
            oracle: "guest-alive",
            msr: None,
            expected: "the program to complete".into(),
            actual: d.to_string(),
        });
    }
    // Value profile: for a RDMSR of an MSR the program wrote successfully before, how many bits
    // of what the guest reads differ from what it wrote.
    let mut written: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    for (op, o) in ops.iter().zip(&run.outcomes) {
        match (op, o) {
            (GuestOp::Wrmsr(i, v), OpOutcome::Wrote) => {
                written.insert(*i, *v);
            }
            (GuestOp::Rdmsr(i), OpOutcome::Read(r)) => {
                if let Some(w) = written.get(i) {
                    feats.add(&[5, msr_class(ctx, *i), (w ^ r).count_ones()]);
                }
            }
            _ => {}
        }
        let (kind, zero) = match (op, o) {
            (_, OpOutcome::Read(v)) => (1, u32::from(*v == 0)),
            (_, OpOutcome::Wrote) => (2, 0),
            (_, OpOutcome::Fault { vector, .. }) => (16 + u32::from(*vector), 0),
            (_, _) => (3, 0),
        };
        feats.add(&[
            3,
            u32::from(matches!(op, GuestOp::Wrmsr(..))),
            msr_class(ctx, op.index()),
            kind,
            zero,
        ]);
    }
    // Reads after the program's last WRMSR must equal what the host reads afterwards. Only those:
    // a write can change other MSRs too (MSR_KVM_SYSTEM_TIME and _NEW alias vcpu->arch.time, the
    // two wall-clock MSRs alias kvm->arch.wall_clock, APIC_BASE switches the x2APIC range, a TSC
    // write moves TSC_ADJUST).
    let after_writes = ops
        .iter()
        .rposition(|op| matches!(op, GuestOp::Wrmsr(..)))
        .map_or(0, |p| p + 1);
    let mut last: std::collections::BTreeMap<u32, (GuestOp, OpOutcome)> =
        std::collections::BTreeMap::new();
    for (op, o) in ops.iter().zip(&run.outcomes).skip(after_writes) {
        last.insert(op.index(), (*op, *o));
    }
    for (index, (op, o)) in last {
        let volatile = ctx
            .catalogue
            .get(index)
            .is_some_and(|m| m.volatile.is_some());
        if let (GuestOp::Rdmsr(_), OpOutcome::Read(g), false) = (op, o, volatile) {
            let h = m.vcpu.get_msr(index);
            if h != Some(g) {
                return Err(Violation {
                    oracle: "host-sees-guest-read",
                    msr: Some(index),
                    expected: format!("Some({g:#x}) (the guest's last read)"),
                    actual: format!("{h:x?}"),
                });
            }
        }
    }
    Ok(())
}
