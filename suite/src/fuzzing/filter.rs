//! The `filter` target: generated MSR filters, exit-reason masks and guest accesses against the
//! filter model (oracles::filter).

use super::{harness_violation, Features, IndexChoice};
use crate::oracles::Violation;
use crate::session::Context;
use arbitrary::Arbitrary;

/// One range of a generated filter.
#[derive(Clone, Debug, Arbitrary)]
pub struct RangeChoice {
    pub flags: u8,
    pub base: IndexChoice,
    pub nmsrs: u16,
    pub bitmap_seed: u64,
}

/// Input of the `filter` target: a filter, whether FILTER exits are on, and guest accesses.
#[derive(Clone, Debug, Arbitrary)]
pub struct FilterInput {
    pub default_deny: bool,
    /// Extra bits in the filter flags (usually invalid).
    pub flag_noise: u8,
    pub ranges: Vec<RangeChoice>,
    pub exits: bool,
    pub accesses: Vec<(IndexChoice, bool)>,
}

impl FilterInput {
    pub fn filter(&self, ctx: &Context) -> crate::model::filter::Filter {
        use crate::model::filter::{bitmap_bytes, Filter, Range};
        let ranges = self
            .ranges
            .iter()
            .take(crate::model::filter::MAX_RANGES)
            .map(|r| {
                let nmsrs = u32::from(r.nmsrs) % 0x3100; // straddles the 0x3000 limit
                let mut rng = crate::model::rng::SplitMix64::new(r.bitmap_seed);
                let bitmap = (0..bitmap_bytes(nmsrs))
                    .map(|_| rng.next_u64() as u8)
                    .collect();
                Range {
                    flags: u32::from(r.flags % 8),
                    base: r.base.resolve(ctx),
                    nmsrs,
                    bitmap,
                }
            })
            .collect();
        let noise = if self.flag_noise % 16 == 0 {
            u32::from(self.flag_noise) << 1
        } else {
            0
        };
        Filter {
            flags: u32::from(self.default_deny) | noise,
            ranges,
        }
    }
}

/// Run a `FilterInput` through the filter oracle (validation and every access vs the model).
pub fn run_filter(
    ctx: &Context,
    input: &FilterInput,
    feats: &mut Features,
) -> Result<(), Violation> {
    use crate::model::filter::Access;
    let f = input.filter(ctx);
    feats.add(&[
        4,
        crate::kvm::Errno::number(f.validate().err()) as u32,
        f.ranges.len() as u32,
        f.flags,
    ]);
    for (index, write) in input.accesses.iter().take(4) {
        let access = if *write { Access::Write } else { Access::Read };
        match crate::oracles::filter::access_matches_model(
            ctx,
            &f,
            index.resolve(ctx),
            access,
            input.exits,
        ) {
            Ok(Ok(_)) => {}
            Ok(Err(v)) => return Err(v),
            Err(e) => return Err(harness_violation(e)),
        }
    }
    Ok(())
}
