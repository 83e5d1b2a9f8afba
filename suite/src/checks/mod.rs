//! Checks: each is an id, the MSR it is about (if any), the source of its expectation, and a
//! function from the context to an outcome. A check never prints; it returns. The same list
//! feeds `cargo test` (one named test each), `kvm-msr report` and the fuzzer's oracles.

pub mod batch;
pub mod catalogued;
pub mod exits;
pub mod features;
pub mod filter;
pub mod filter_replace;
pub mod harness;
pub mod lists;
pub mod mce;
pub mod negotiation;
pub mod one_reg;
pub mod per_msr;
pub mod pv;
pub mod pv_edges;
pub mod regressions;
pub mod save_restore;
pub mod save_restore_written;
pub mod tsc;

pub use crate::session::msr_traits;
pub use crate::session::Context;

use crate::check_id::CheckId;

use std::fmt;
use std::sync::Arc;

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass { detail: String },
    Fail { expected: String, actual: String },
    Skip { reason: String },
}

impl Outcome {
    pub fn pass(detail: impl Into<String>) -> Self {
        Outcome::Pass {
            detail: detail.into(),
        }
    }
    pub fn fail(expected: impl Into<String>, actual: impl Into<String>) -> Self {
        Outcome::Fail {
            expected: expected.into(),
            actual: actual.into(),
        }
    }
    pub fn skip(reason: impl Into<String>) -> Self {
        Outcome::Skip {
            reason: reason.into(),
        }
    }
    /// Pass with `detail` when `problems` is empty; else fail, listing every one of them.
    pub fn unless(
        problems: Vec<String>,
        expected: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        if problems.is_empty() {
            Outcome::pass(detail)
        } else {
            Outcome::fail(expected, problems.join("; "))
        }
    }
    /// A guest that died before its program completed (internal error, shutdown, unexpected
    /// exception, timeout) fails the check that ran it.
    pub fn died(death: impl std::fmt::Display) -> Self {
        Outcome::fail("the guest program to complete", death.to_string())
    }
    /// A harness error (a VM could not be created, ...) fails the check that needed it.
    pub fn harness(e: crate::Error) -> Self {
        Outcome::fail(
            "the harness to set up the check",
            format!("harness error: {e}"),
        )
    }
}

pub type CheckFn = Arc<dyn Fn(&Context) -> Outcome + Send + Sync>;

/// One check, instantiated for this host.
#[derive(Clone)]
pub struct Check {
    /// `<family>.<subject>.<check>` (`check_id`), e.g. `guest.tsc.matches-host`. Stable: test
    /// names, KTAP lines, JSON keys and deviation records use it.
    pub id: CheckId,
    pub msr: Option<u32>,
    /// What is checked, one line.
    pub summary: String,
    /// Where the expectation comes from.
    pub cite: String,
    pub run: CheckFn,
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("id", &self.id)
            .field("msr", &self.msr)
            .finish()
    }
}

impl Check {
    /// `id` is built with [`CheckId`]'s typed constructors (no check id is built as text).
    pub fn new(
        id: CheckId,
        msr: Option<u32>,
        summary: impl Into<String>,
        cite: impl Into<String>,
        run: impl Fn(&Context) -> Outcome + Send + Sync + 'static,
    ) -> Check {
        Check {
            id,
            msr,
            summary: summary.into(),
            cite: cite.into(),
            run: Arc::new(run),
        }
    }
}

/// Every check for this host, in a stable order.
pub fn all(ctx: &Context) -> Vec<Check> {
    let mut v = Vec::new();
    v.extend(harness::checks(ctx));
    v.extend(lists::checks(ctx));
    v.extend(batch::checks(ctx));
    v.extend(features::checks(ctx));
    v.extend(per_msr::checks(ctx));
    v.extend(save_restore::checks(ctx));
    v.extend(save_restore_written::checks(ctx));
    v.extend(one_reg::checks(ctx));
    v.extend(catalogued::checks(ctx));
    v.extend(negotiation::checks(ctx));
    v.extend(tsc::checks(ctx));
    v.extend(mce::checks(ctx));
    v.extend(pv::checks(ctx));
    v.extend(pv_edges::checks(ctx));
    v.extend(exits::checks(ctx));
    v.extend(filter::checks(ctx));
    v.extend(regressions::checks(ctx));
    v.extend(filter_replace::checks(ctx));
    let emulated: Vec<Check> = v
        .iter()
        .filter_map(|c| Some(forced_emulation_variant(c, c.id.forced_emulation_twin()?)))
        .collect();
    v.extend(emulated);
    v
}

/// The same guest check with every RDMSR/WRMSR through KVM's instruction emulator
/// (`guest-fep.*`). It runs only where kvm.force_emulation_prefix makes KVM honour the prefix.
fn forced_emulation_variant(c: &Check, id: CheckId) -> Check {
    let inner = c.run.clone();
    Check {
        id,
        msr: c.msr,
        summary: format!("{} (through KVM's instruction emulator)", c.summary),
        cite: format!("{}; x86.c handle_ud: kvm.force_emulation_prefix makes KVM emulate the instruction after ud2; .ascii \"kvm\"", c.cite),
        run: std::sync::Arc::new(move |ctx: &Context| {
            if !ctx.facts.force_emulation_prefix() {
                return Outcome::skip(format!(
                    "kvm.force_emulation_prefix is {}: KVM ignores the forced-emulation prefix (load kvm with force_emulation_prefix=1)",
                    ctx.facts.kvm_params.get("force_emulation_prefix").map(String::as_str).unwrap_or("absent")
                ));
            }
            crate::machine::with_forced_emulation(|| inner(ctx))
        }),
    }
}

/// Format an MSR value for messages.
pub fn hex(v: u64) -> String {
    format!("{v:#x}")
}
