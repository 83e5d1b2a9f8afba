//! The `set_batch` target: one KVM_SET_MSRS batch against the same writes one by one on an
//! identical twin (api.rst 4.19; oracles::set_batch_matches_single).

use super::{confine, harness_violation, msr_class, EntryChoice, Features};
use crate::kvm::raw::MsrEntry;
use crate::oracles::{self, Violation};
use crate::session::Context;
use arbitrary::Arbitrary;

/// Input of the `set_batch` target: one KVM_SET_MSRS batch.
#[derive(Clone, Debug, Arbitrary)]
pub struct SetBatchInput {
    pub entries: Vec<EntryChoice>,
}

/// Most entries one input may hold (KVM accepts at most 255 per call).
pub const MAX_BATCH: usize = 64;

/// Run a `SetBatchInput`: the batch on one fresh machine, one by one on an identical twin.
pub fn run_set_batch(
    ctx: &Context,
    input: &SetBatchInput,
    feats: &mut Features,
) -> Result<(), Violation> {
    let entries: Vec<MsrEntry> = input
        .entries
        .iter()
        .take(MAX_BATCH)
        .map(|e| {
            let index = e.index.resolve(ctx);
            MsrEntry {
                index,
                data: confine(index, e.value.resolve()),
            }
        })
        .collect();
    let (a, b) = match (ctx.machine(), ctx.machine()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Err(harness_violation(e)),
    };
    let r = oracles::set_batch_matches_single(&ctx.catalogue, &a, &b, &entries, &[]);
    if let Ok(c) = &r {
        for (k, e) in entries.iter().enumerate() {
            // Which entries were processed, and which one stopped the batch.
            let state = u32::from(k < c.first_rejected) + 2 * u32::from(k == c.first_rejected);
            feats.add(&[1, msr_class(ctx, e.index), state, u32::from(e.data == 0)]);
        }
        feats.add(&[
            2,
            c.first_rejected.min(8) as u32,
            entries.len().min(8) as u32,
        ]);
    }
    r.map(|_| ())
}

/// Decode a `set_batch` corpus file exactly as libfuzzer-sys does for a typed target.
pub fn decode_set_batch(bytes: &[u8]) -> arbitrary::Result<SetBatchInput> {
    <SetBatchInput as Arbitrary>::arbitrary_take_rest(arbitrary::Unstructured::new(bytes))
}
