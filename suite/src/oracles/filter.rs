//! The MSR filter oracle: what a guest access does on the real KVM under a filter equals what the
//! model (model/filter.rs) predicts -- handled in the kernel (as on an unfiltered twin), a FILTER
//! exit, or #GP -- and KVM accepts exactly the filters the model validates.

use super::Violation;
use crate::guest::{GuestOp, OpOutcome};
use crate::kvm::filter::set_msr_filter;
use crate::machine::{Machine, MsrReply};
use crate::model::filter::{self as model, Access, Filter};
use crate::msr_index::IA32_PAT;
use crate::session::Context;

/// KVM_MSR_EXIT_REASON_FILTER.
pub const REASON_FILTER: u32 = 4;

/// What happened to one guest access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Handled(OpOutcome),
    FilterExit,
    Gp,
    Other(OpOutcome),
}

/// A machine with the userspace-exit reasons in `mask` enabled.
pub fn machine_with_exits(ctx: &Context, mask: u32) -> crate::Result<Machine> {
    let m = ctx.machine()?;
    m.vm.enable_cap(
        kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR,
        [u64::from(mask), 0, 0, 0],
    )
    .map_err(|errno| crate::Error::Ioctl {
        what: "KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)",
        errno,
    })?;
    Ok(m)
}

/// The guest instruction for an access: reads as such; writes put back PAT's reset value or 0,
/// so a handled write changes nothing later accesses see.
pub fn op(index: u32, access: Access) -> GuestOp {
    match access {
        Access::Read => GuestOp::Rdmsr(index),
        Access::Write => GuestOp::Wrmsr(
            index,
            if index == IA32_PAT {
                0x0007_0406_0007_0406
            } else {
                0
            },
        ),
    }
}

/// Run one access; exits are completed with data 0.
pub fn observe(m: &mut Machine, index: u32, access: Access) -> Result<Seen, String> {
    let run = m.run_ops_with(&[op(index, access)], &mut |_| MsrReply {
        error: false,
        data: 0,
    });
    if let Some(d) = run.death {
        return Err(d.to_string());
    }
    let o = run.outcomes[0];
    Ok(match run.msr_exits.as_slice() {
        [e] if e.reason == REASON_FILTER && e.index == index => Seen::FilterExit,
        [] if o.is_gp() => Seen::Gp,
        [] => Seen::Handled(o),
        _ => Seen::Other(o),
    })
}

fn violation(oracle: &'static str, index: u32, expected: String, actual: String) -> Violation {
    Violation {
        oracle,
        msr: Some(index),
        expected,
        actual,
    }
}

/// Install `f` on a fresh machine (FILTER exits on if `exits`) and compare one access with the
/// model. The outer error is a harness failure; the inner one a violated oracle.
pub fn access_matches_model(
    ctx: &Context,
    f: &Filter,
    index: u32,
    access: Access,
    exits: bool,
) -> crate::Result<Result<String, Violation>> {
    let mask = if exits { REASON_FILTER } else { 0 };
    let mut m = machine_with_exits(ctx, mask)?;
    let set = set_msr_filter(&m.vm.fd, f);
    if set != f.validate() {
        return Ok(Err(violation(
            "filter-validation",
            index,
            format!("{:?} (model)", f.validate()),
            format!("{set:?}"),
        )));
    }
    if set.is_err() {
        return Ok(Ok(format!(
            "filter rejected as the model predicts: {set:?}"
        )));
    }
    let seen = match observe(&mut m, index, access) {
        Ok(s) => s,
        Err(d) => {
            return Ok(Err(violation(
                "guest-alive",
                index,
                "the guest to complete".into(),
                d,
            )))
        }
    };
    let want = if model::allowed(Some(f), index, access) {
        let mut twin = machine_with_exits(ctx, mask)?;
        match observe(&mut twin, index, access) {
            Ok(s) => s,
            Err(d) => {
                return Ok(Err(violation(
                    "guest-alive",
                    index,
                    "the unfiltered twin to complete".into(),
                    d,
                )))
            }
        }
    } else if exits {
        Seen::FilterExit
    } else {
        Seen::Gp
    };
    let same = match (seen, want) {
        (Seen::Handled(OpOutcome::Read(_)), Seen::Handled(OpOutcome::Read(_))) => true,
        (a, b) => a == b,
    };
    Ok(if same {
        Ok(format!("{index:#x} {access:?}: {seen:?}"))
    } else {
        Err(violation(
            "filter-model",
            index,
            format!("{want:?} ({access:?})"),
            format!("{seen:?}"),
        ))
    })
}
