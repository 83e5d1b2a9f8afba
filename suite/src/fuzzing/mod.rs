//! Fuzzing support: structured inputs (derive Arbitrary) and executors that run them through the
//! same oracles the checks use. The fuzz targets in `fuzz/` are thin wrappers over this module;
//! the seed corpus in `fixtures/corpus/` is replayed by `cargo test`.

mod filter;
mod guest;
mod host;
pub mod pool;
mod set_batch;
pub mod target;

pub use filter::{run_filter, FilterInput, RangeChoice};
pub use guest::{run_guest, GuestAccess, GuestInput, MAX_GUEST_OPS};
pub use host::{
    decode_host, run_host, CpuidChoice, HostEntry, HostIndex, HostInput, HostOp, HostRunner,
    HostValue, Lookups, Obs, MAX_HOST_ENTRIES, MAX_HOST_OPS,
};
pub use set_batch::{decode_set_batch, run_set_batch, SetBatchInput, MAX_BATCH};
pub use target::{Executor, Target};

use crate::oracles::Violation;
use crate::session::Context;
use arbitrary::Arbitrary;

/// Range edges where MSR handling changes hands (semantics §1.2, §1.9, §2).
pub const EDGE_INDICES: &[u32] = &[
    0x0,
    0x1fff,
    0x2000,
    0x800,
    0x8ff,
    0x900,
    0x4000_0000,
    0x4000_00ff,
    0x4b56_4d00,
    0x4b56_4dff,
    0xc000_0000,
    0xc000_1fff,
    0xc001_0000,
    0xc001_1fff,
    0xffff_ffff,
];

/// How an input names an MSR.
#[derive(Clone, Copy, Debug, Arbitrary)]
pub enum IndexChoice {
    /// The n-th MSR of the host's index list (modulo its length).
    Listed(u8),
    /// The n-th feature MSR.
    Feature(u8),
    /// A range edge.
    Edge(u8),
    /// Any 32-bit index.
    Raw(u32),
}

/// How an input picks a value.
#[derive(Clone, Copy, Debug, Arbitrary)]
pub enum ValueChoice {
    Zero,
    Ones,
    Bit(u8),
    /// Only the high dword set.
    High(u32),
    /// The highest canonical address and its first non-canonical neighbour, 48 or 57 bits.
    CanonicalEdge {
        la57: bool,
        above: bool,
    },
    Raw(u64),
}

#[derive(Clone, Copy, Debug, Arbitrary)]
pub struct EntryChoice {
    pub index: IndexChoice,
    pub value: ValueChoice,
}

impl IndexChoice {
    pub fn resolve(self, ctx: &Context) -> u32 {
        let pick = |l: &[u32], n: u8| {
            if l.is_empty() {
                0
            } else {
                l[n as usize % l.len()]
            }
        };
        match self {
            IndexChoice::Listed(n) => pick(&ctx.facts.msr_index_list, n),
            IndexChoice::Feature(n) => pick(&ctx.facts.msr_feature_index_list, n),
            IndexChoice::Edge(n) => pick(EDGE_INDICES, n),
            IndexChoice::Raw(i) => i,
        }
    }
}

impl ValueChoice {
    pub fn resolve(self) -> u64 {
        match self {
            ValueChoice::Zero => 0,
            ValueChoice::Ones => u64::MAX,
            ValueChoice::Bit(b) => 1u64 << (b % 64),
            ValueChoice::High(h) => u64::from(h) << 32,
            ValueChoice::CanonicalEdge { la57, above } => {
                let bits = if la57 { 57 } else { 48 };
                let top = (1u64 << (bits - 1)) - 1;
                if above {
                    top + 1
                } else {
                    top
                }
            }
            ValueChoice::Raw(v) => v,
        }
    }
}

/// MSRs whose value is a guest physical address KVM writes a structure to: KVM's (msr.rst: wall
/// clock, kvm-clock, async PF, steal time, PV EOI) and Hyper-V's page MSRs (hyperv.c: the
/// hypercall page gets a VMCALL stub once a guest OS id is set, the reference TSC page its
/// scale and offset; the VP assist, SIEFP and SIMP pages). A generated value would let KVM
/// overwrite the harness's own page tables or code -- for pooled vCPUs, in a VM later inputs
/// share -- so the executor keeps the low 12 bits (flags, alignment) and moves the address into
/// the scratch pages at 0x9000 (free in guest/layout.rs).
pub const GPA_MSRS: &[u32] = &[
    0x11,
    0x12,
    0x4b56_4d00,
    0x4b56_4d01,
    0x4b56_4d02,
    0x4b56_4d03,
    0x4b56_4d04,
    0x4000_0001,
    0x4000_0021,
    0x4000_0073,
    0x4000_0082,
    0x4000_0083,
];

/// `value` for `index`, confined to scratch memory when KVM would write at it. Values below 0x1000
/// (GPA page 0, which the harness leaves unused) stay as they are.
pub fn confine(index: u32, value: u64) -> u64 {
    if GPA_MSRS.contains(&index) && value >= 0x1000 {
        0x9000 | (value & 0xfff)
    } else {
        value
    }
}

/// Observable outcomes of one input as small integers: this kernel has no KCOV, so the fuzz
/// targets feed these to libFuzzer (an extra-counters section) as coverage of KVM's behaviour
/// classes -- operation, MSR class, result -- instead of coverage of the harness.
#[derive(Clone, Debug, Default)]
pub struct Features {
    pub ids: Vec<u32>,
}

impl Features {
    /// Record one feature made of `parts`: FNV-1a (64-bit) over whole words, then a
    /// multiplicative finish so that the low bits -- the fuzz crate keeps `id % 4096` -- depend
    /// on every bit of every part. (Byte-wise FNV-1a took four multiplies per part; the `host`
    /// target records ~40 features per input.)
    pub fn add(&mut self, parts: &[u32]) {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &p in parts {
            h = (h ^ u64::from(p)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= h >> 32;
        self.ids
            .push((h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32);
    }
}

/// Feedback key of an MSR: the index itself for MSRs KVM lists or the catalogue knows (each has
/// its own behaviour), a coarse range class for everything else.
pub fn msr_class(ctx: &Context, index: u32) -> u32 {
    let t = ctx.traits.get(index);
    if t.listed || t.feature || t.catalogued {
        return 0x100 | index;
    }
    match index {
        0x800..=0x8ff => 3,
        0x4000_0000..=0x4000_0fff => 4,
        0x4b56_4d00..=0x4b56_4dff => 5,
        0xc000_0000..=0xc000_1fff => 6,
        0xc001_0000..=0xc001_1fff => 7,
        _ => 8,
    }
}

/// The seed corpus of a target, sorted by file name.
pub fn corpus_files(target: &str) -> Vec<std::path::PathBuf> {
    let dir = crate::fixtures::fixtures_dir().join("corpus").join(target);
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A harness failure (no VM, no vCPU) as the violation a target reports.
pub fn harness_violation(e: crate::error::Error) -> Violation {
    Violation {
        oracle: "harness",
        msr: None,
        expected: "a VM and vCPU".into(),
        actual: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::layout;

    #[test]
    fn features_spread_over_the_fuzz_crates_counters() {
        // Like the host target's: operation, MSR (a range of indices), state, ran.
        let mut f = Features::default();
        for index in 0xc000_0000..0xc000_0000 + 2000u32 {
            for state in 0..3 {
                for ran in 0..2 {
                    f.add(&[10, index, state, ran]);
                }
            }
        }
        let counters: std::collections::BTreeSet<u32> = f.ids.iter().map(|id| id % 4096).collect();
        // 12,000 features thrown at random into 4,096 counters fill ~3,870 of them.
        assert!(counters.len() > 3700, "{} counters hit", counters.len());
        // Parts are ordered: a different order is a different feature.
        let mut g = Features::default();
        g.add(&[1, 2]);
        g.add(&[2, 1]);
        g.add(&[1, 2]);
        assert_ne!(g.ids[0], g.ids[1]);
        assert_eq!(g.ids[0], g.ids[2]);
    }

    #[test]
    fn confined_addresses_miss_the_harness() {
        // Every page the harness uses, as a generated value with the enable bit set.
        let used = [
            layout::GDT,
            layout::IDT,
            layout::TSS,
            layout::PML4,
            layout::PDPT,
            layout::PD,
            layout::LOOP_PARAMS,
            layout::MAILBOX,
            layout::CODE,
            layout::OPS,
        ];
        for &index in GPA_MSRS {
            for &page in &used {
                let v = confine(index, page | 1);
                assert_eq!(v, 0x9001, "{index:#x} = {:#x}", page | 1);
                assert!(!used.contains(&(v & !0xfff)));
            }
            // Page 0 is unused: left alone, as are the flags.
            assert_eq!(confine(index, 0x1), 0x1);
        }
        // Hyper-V's reference TSC page is one of them (hyperv.c kvm_hv_setup_tsc_page).
        assert_eq!(confine(0x4000_0021, 0x4001), 0x9001);
        // Other MSRs keep their value.
        assert_eq!(confine(0x10, 0x4001), 0x4001);
    }

    #[test]
    fn the_fuzzers_cpuid_choices_are_known_features() {
        // The list is frozen (corpus inputs number its entries); every name must still resolve.
        assert_eq!(host::input::CPUID_CHOICES.len(), 46);
        for name in host::input::CPUID_CHOICES {
            assert!(crate::kvm::cpuid::feature(name).is_some(), "{name}");
        }
    }
}
