//! Oracles: predicates over what KVM did that need no golden values. The checks call them with
//! chosen inputs; the fuzzer calls them with generated ones.

pub mod filter;
pub mod kmsg;
pub mod msr_io;

use crate::catalogue::Catalogue;
use crate::kvm::raw::MsrEntry;
use crate::kvm::Errno;
use crate::machine::Machine;
use std::fmt;

/// A violated oracle: which one, about which MSR, expected vs actual.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub oracle: &'static str,
    pub msr: Option<u32>,
    pub expected: String,
    pub actual: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oracle {} violated", self.oracle)?;
        if let Some(m) = self.msr {
            write!(f, " for MSR {m:#x}")?;
        }
        write!(f, ": expected {}, actual {}", self.expected, self.actual)
    }
}

/// What the batch-vs-single oracle saw, for callers that want more than a yes/no.
#[derive(Clone, Debug)]
pub struct BatchComparison {
    /// Index of the first entry the one-by-one twin rejected (entries.len() if none).
    pub first_rejected: usize,
    /// What KVM_SET_MSRS returned for the whole batch.
    pub batch_result: Result<usize, Errno>,
}

/// KVM_SET_MSRS semantics (api.rst 4.19): writing `entries` in one call on `batch` returns the
/// index of the first entry that a one-by-one twin rejects, and leaves `batch` in the same state
/// as the twin after exactly those writes. `batch` and `twin` must be identical fresh machines.
/// State is compared over the indices in `entries` plus `observe`, except MSRs the catalogue
/// documents as changing on their own (a counter differs between any two vCPUs).
pub fn set_batch_matches_single(
    catalogue: &Catalogue,
    batch: &Machine,
    twin: &Machine,
    entries: &[MsrEntry],
    observe: &[u32],
) -> Result<BatchComparison, Violation> {
    let first_rejected = entries
        .iter()
        .position(|e| !twin.vcpu.set_msr(e.index, e.data))
        .unwrap_or(entries.len());
    let mut indices: Vec<u32> = entries
        .iter()
        .map(|e| e.index)
        .chain(observe.iter().copied())
        .collect();
    indices.sort_unstable();
    indices.dedup();
    indices.retain(|&i| catalogue.get(i).is_none_or(|m| m.volatile.is_none()));
    let io = batch.vcpu.set_msrs(entries);
    let cmp = BatchComparison {
        first_rejected,
        batch_result: io.result,
    };
    if io.result != Ok(first_rejected) {
        return Err(Violation {
            oracle: "set-batch-count",
            msr: entries.get(first_rejected).map(|e| e.index),
            expected: format!("Ok({first_rejected}) (first entry a one-by-one twin rejects)"),
            actual: format!("{:?}", io.result),
        });
    }
    for &i in &indices {
        let (a, b) = (batch.vcpu.get_msr(i), twin.vcpu.get_msr(i));
        if a != b {
            return Err(Violation {
                oracle: "set-batch-state",
                msr: Some(i),
                expected: format!("{b:x?} (twin after {first_rejected} single writes)"),
                actual: format!("{a:x?}"),
            });
        }
    }
    Ok(cmp)
}
