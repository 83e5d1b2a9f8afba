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

/// Observable outcomes of one input as small integers: this kernel has no KCOV, so the fuzz
/// targets feed these to libFuzzer (an extra-counters section) as coverage of KVM's behaviour
/// classes -- operation, MSR class, result -- instead of coverage of the harness.
#[derive(Clone, Debug, Default)]
pub struct Features {
    pub ids: Vec<u32>,
}

impl Features {
    /// Record one feature made of `parts` (hashed with FNV-1a).
    pub fn add(&mut self, parts: &[u32]) {
        let mut h: u32 = 0x811c_9dc5;
        for p in parts {
            for b in p.to_le_bytes() {
                h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
            }
        }
        self.ids.push(h);
    }
}

/// Feedback key of an MSR: the index itself for MSRs KVM lists or the catalogue knows (each has
/// its own behaviour), a coarse range class for everything else.
pub fn msr_class(ctx: &Context, index: u32) -> u32 {
    if ctx.facts.is_advertised(index)
        || ctx.facts.is_feature_msr(index)
        || ctx.catalogue.get(index).is_some()
    {
        return 0x100 | index;
    }
    if ctx.facts.is_advertised(index) {
        0
    } else if ctx.facts.is_feature_msr(index) {
        1
    } else if ctx.catalogue.get(index).is_some() {
        2
    } else {
        match index {
            0x800..=0x8ff => 3,
            0x4000_0000..=0x4000_0fff => 4,
            0x4b56_4d00..=0x4b56_4dff => 5,
            0xc000_0000..=0xc000_1fff => 6,
            0xc001_0000..=0xc001_1fff => 7,
            _ => 8,
        }
    }
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
        (Err(e), _) | (_, Err(e)) => {
            return Err(Violation {
                oracle: "harness",
                msr: None,
                expected: "two fresh machines".into(),
                actual: e.to_string(),
            })
        }
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

/// The seed corpus of a target, sorted by file name.
pub fn corpus_files(target: &str) -> Vec<std::path::PathBuf> {
    let dir = crate::fixtures::fixtures_dir().join("corpus").join(target);
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

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

/// MSRs whose value is a guest physical address KVM writes a structure to (msr.rst: wall clock,
/// kvm-clock, async PF, steal time, PV EOI). A generated value would let KVM overwrite the
/// harness's own page tables or code, so the executor keeps the low 12 bits (flags, alignment)
/// and moves the address into the scratch pages at 0x9000 (free in guest/layout.rs).
pub const GPA_MSRS: &[u32] = &[
    0x11,
    0x12,
    0x4b56_4d00,
    0x4b56_4d01,
    0x4b56_4d02,
    0x4b56_4d03,
    0x4b56_4d04,
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
    let mut m = ctx.machine().map_err(|e| Violation {
        oracle: "harness",
        msr: None,
        expected: "a machine".into(),
        actual: e.to_string(),
    })?;
    let run = m.run_ops(&ops);
    if let Some(d) = run.death {
        return Err(Violation {
            oracle: "guest-alive",
            msr: None,
            expected: "the program to complete".into(),
            actual: d.to_string(),
        });
    }
    for (op, o) in ops.iter().zip(&run.outcomes) {
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
        f.validate().err().unwrap_or(0) as u32,
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
            Err(e) => {
                return Err(Violation {
                    oracle: "harness",
                    msr: None,
                    expected: "a machine".into(),
                    actual: e.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// The fuzz targets, by name: decode a corpus or crash file and run it with its oracles.
pub const TARGETS: &[&str] = &["set_batch", "guest", "filter"];

/// Decode `bytes` as an input of `target` and describe it; then run it.
pub fn replay(
    ctx: &Context,
    target: &str,
    bytes: &[u8],
) -> Result<(String, Result<(), Violation>), String> {
    let u = || arbitrary::Unstructured::new(bytes);
    match target {
        "set_batch" => {
            let i = SetBatchInput::arbitrary_take_rest(u()).map_err(|e| e.to_string())?;
            Ok((
                format!("{i:#?}"),
                run_set_batch(ctx, &i, &mut Features::default()),
            ))
        }
        "guest" => {
            let i = GuestInput::arbitrary_take_rest(u()).map_err(|e| e.to_string())?;
            Ok((
                format!("{i:#?}"),
                run_guest(ctx, &i, &mut Features::default()),
            ))
        }
        "filter" => {
            let i = FilterInput::arbitrary_take_rest(u()).map_err(|e| e.to_string())?;
            Ok((
                format!("{i:#?}\nfilter: {:#x?}", i.filter(ctx)),
                run_filter(ctx, &i, &mut Features::default()),
            ))
        }
        other => Err(format!(
            "unknown target {other:?}; expected one of {TARGETS:?}"
        )),
    }
}
