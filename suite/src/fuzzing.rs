//! Fuzzing support: structured inputs (derive Arbitrary) and executors that run them through the
//! same oracles the checks use. The fuzz targets in `fuzz/` are thin wrappers over this module;
//! the seed corpus in `fixtures/corpus/` is replayed by `cargo test`.

use crate::checks::Context;
use crate::kvm::raw::MsrEntry;
use crate::oracles::{self, Violation};
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

/// Input of the `set_batch` target: one KVM_SET_MSRS batch.
#[derive(Clone, Debug, Arbitrary)]
pub struct SetBatchInput {
    pub entries: Vec<EntryChoice>,
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

/// Most entries one input may hold (KVM accepts at most 255 per call).
pub const MAX_BATCH: usize = 64;

/// Run a `SetBatchInput`: the batch on one fresh machine, one by one on an identical twin.
pub fn run_set_batch(ctx: &Context, input: &SetBatchInput) -> Result<(), Violation> {
    let entries: Vec<MsrEntry> = input
        .entries
        .iter()
        .take(MAX_BATCH)
        .map(|e| MsrEntry {
            index: e.index.resolve(ctx),
            data: e.value.resolve(),
        })
        .collect();
    let (a, b) = match (ctx.machine(), ctx.machine()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            return Err(Violation {
                oracle: "harness",
                msr: None,
                expected: "two fresh machines".into(),
                actual: e.to_string(),
            })
        }
    };
    oracles::set_batch_matches_single(&ctx.catalogue, &a, &b, &entries, &[]).map(|_| ())
}

/// Decode a `set_batch` corpus file exactly as libfuzzer-sys does for a typed target.
pub fn decode_set_batch(bytes: &[u8]) -> arbitrary::Result<SetBatchInput> {
    <SetBatchInput as Arbitrary>::arbitrary_take_rest(arbitrary::Unstructured::new(bytes))
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
