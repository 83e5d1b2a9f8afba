//! What a `host` input is: its operations, how each names an MSR, picks a value or edits the
//! CPUID table, as libFuzzer's bytes decode into them (`arbitrary`).

use crate::fuzzing::{IndexChoice, ValueChoice};
use crate::kvm::cpuid::{self, Vendor};
use crate::kvm::CpuidTable;
use crate::session::Context;
use arbitrary::Arbitrary;

/// How a host write picks its value.
#[derive(Clone, Copy, Debug, Arbitrary)]
pub enum HostValue {
    Pick(ValueChoice),
    /// The MSR's current value with one bit flipped.
    FlipCurrent(u8),
    /// The current value with one of the catalogue's reserved bits set (any bit if none).
    ReservedBit(u8),
    /// The current value unchanged (a write KVM must accept even for frozen feature MSRs).
    Current,
}

/// How a host operation names an MSR: as the other targets do, or any MSR of the catalogue
/// (which holds many MSRs this host does not list: VMX, Hyper-V, PMU, AMD-only ones).
#[derive(Clone, Copy, Debug, Arbitrary)]
pub enum HostIndex {
    Choice(IndexChoice),
    Catalogued(u16),
}

impl HostIndex {
    pub fn resolve(self, ctx: &Context) -> u32 {
        match self {
            HostIndex::Choice(c) => c.resolve(ctx),
            HostIndex::Catalogued(n) => ctx.catalogue.nth_index(n as usize).unwrap_or(0),
        }
    }
}

#[derive(Clone, Copy, Debug, Arbitrary)]
pub struct HostEntry {
    pub index: HostIndex,
    pub value: HostValue,
}

/// The features `CpuidChoice` names by number. Frozen: a corpus input names a feature by its
/// position here, so features added to `kvm::cpuid::FEATURES` later must not renumber them.
pub const CPUID_CHOICES: &[&str] = &[
    "SSE3",
    "MWAIT",
    "MSR",
    "APIC",
    "SEP",
    "MTRR",
    "MCE",
    "PAT",
    "DS",
    "VMX",
    "PDCM",
    "X2APIC",
    "TSC_DEADLINE",
    "XSAVE",
    "HYPERVISOR",
    "TSC_ADJUST",
    "MPX",
    "RDPID",
    "SHSTK",
    "WAITPKG",
    "IBT",
    "SPEC_CTRL",
    "FLUSH_L1D",
    "ARCH_CAPABILITIES",
    "CORE_CAPABILITIES",
    "SSBD",
    "XSAVES",
    "SYSCALL",
    "NX",
    "RDTSCP",
    "LM",
    "SVM",
    "OSVW",
    "AMD_IBPB",
    "AMD_IBRS",
    "AMD_STIBP",
    "AMD_SSBD",
    "VIRT_SSBD",
    "SBPB",
    "KVM_CLOCKSOURCE",
    "KVM_ASYNC_PF",
    "KVM_STEAL_TIME",
    "KVM_PV_EOI",
    "KVM_CLOCKSOURCE2",
    "KVM_POLL_CONTROL",
    "KVM_ASYNC_PF_INT",
];

/// A KVM_SET_CPUID2 table: KVM's supported CPUID, edited.
#[derive(Clone, Copy, Debug, Arbitrary)]
pub enum CpuidChoice {
    Supported,
    /// Without the n-th feature of `CPUID_CHOICES`.
    Without(u8),
    /// With the n-th feature, supported or not.
    With(u8),
    /// With another vendor signature.
    Vendor(u8),
}

impl CpuidChoice {
    pub fn table(self, supported: &CpuidTable) -> CpuidTable {
        let mut t = supported.clone();
        let f = |n: u8| {
            let name = CPUID_CHOICES[n as usize % CPUID_CHOICES.len()];
            cpuid::feature(name).expect("CPUID_CHOICES names features of kvm::cpuid::FEATURES")
        };
        match self {
            CpuidChoice::Supported => {}
            CpuidChoice::Without(n) => {
                t.set(f(n), false);
            }
            CpuidChoice::With(n) => {
                t.set(f(n), true);
            }
            CpuidChoice::Vendor(n) => t.set_vendor(
                [
                    Vendor::Intel,
                    Vendor::Amd,
                    Vendor::Hygon,
                    Vendor::Zhaoxin,
                    Vendor::Other,
                ][n as usize % 5],
            ),
        }
        t
    }
}

#[derive(Clone, Debug, Arbitrary)]
pub enum HostOp {
    /// KVM_SET_MSRS of these entries, then KVM_GET_MSRS of the accepted ones.
    Set(Vec<HostEntry>),
    /// KVM_GET_MSRS of these indices.
    Get(Vec<HostIndex>),
    SetCpuid(CpuidChoice),
    /// KVM_RUN of the empty guest program.
    Run,
    /// Save every index-list MSR, restore into a fresh vCPU with the same CPUID, go on there.
    SaveRestore,
}

/// Input of the `host` target. Decoded by `host::decode` (by hand, as the derive would).
#[derive(Clone, Debug)]
pub struct HostInput {
    pub ops: Vec<HostOp>,
}

/// Most operations and most entries per batch one input runs.
pub const MAX_HOST_OPS: usize = 12;
pub const MAX_HOST_ENTRIES: usize = 16;

/// Decode a `host` corpus file exactly as libfuzzer-sys does for a typed target.
pub fn decode_host(bytes: &[u8]) -> arbitrary::Result<HostInput> {
    <HostInput as Arbitrary>::arbitrary_take_rest(arbitrary::Unstructured::new(bytes))
}
